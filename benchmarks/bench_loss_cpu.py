"""CPU benchmark of the SALT loss at a fixed size: the salt_kernels cpu backend against plain
PyTorch eager and torch.compile of the same function, forward and forward+backward, N=4096,
V=32000, fp32, tau=2, kd_weight=0.5 by default. The harness of `salt-kernels bench` (same inputs,
timer, memory probe, JSON format), each variant in its own process.

    python benchmarks/bench_loss_cpu.py [--n 4096 --v 32000 --repeats 5 --no-write]

Prints the table, writes benchmarks/results/loss_cpu.json and the table into
benchmarks/RESULTS.md between the cpu-loss markers (`python benchmarks/report.py` renders it
again from the JSON). pytest-benchmark timings of the same cases: benchmarks/bench_suite.py.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from salt_kernels.benchmarking.runner import run_fixed

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("cpu", "eager", "compile")
ALIASES = {"salt_kernels cpu": "cpu", "torch eager": "eager", "torch.compile": "compile"}  # earlier names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096, help="rows (tokens); default 4096")
    p.add_argument("--v", type=int, default=32000, help="vocabulary size; default 32000")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per variant and pass, at least; default 5")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--json", help="result file (default: benchmarks/results/loss_cpu.json, not with --no-write)")
    p.add_argument("--no-write", action="store_true",
                   help="print the table only: no benchmarks/RESULTS.md update, no JSON unless --json")
    args = p.parse_args(argv)
    variants = [ALIASES.get(s.strip(), s.strip()) for s in args.variants.split(",") if s.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    default_json = None if args.no_write else os.path.join(HERE, "results", "loss_cpu.json")
    command = shlex.join(["python", "benchmarks/bench_loss_cpu.py", *(sys.argv[1:] if argv is None else argv)])
    return run_fixed(op="loss", device="cpu", variants=variants, n=args.n, v=args.v, dtype="fp32",
                     passes=["fwd", "fwdbwd"], repeats=args.repeats, base="cpu", command=command,
                     section="cpu-loss", json_path=args.json or default_json,
                     md_path=None if args.no_write else os.path.join(HERE, "RESULTS.md"))


if __name__ == "__main__":
    sys.exit(main())
