"""Fused linear SALT loss on the CPU against plain PyTorch at a fixed size: forward+backward time
and peak memory above the inputs and the gradients, N=4096, d_s=512, d_t=256, V=32000, fp32,
kd_weight=0.5, tau=2 by default. The harness of `salt-kernels bench` (same input builder, timer,
memory probe, JSON format), each variant in its own process.

    python benchmarks/bench_linear_cpu.py [--n 1024 --reps 2 --no-write]

Variants (the same value: mean SALT loss):
  torch         plain PyTorch: both logits materialized with F.linear (teacher under no_grad),
                F.cross_entropy + tau^2 * F.kl_div (salt_kernels.benchmarking.baselines.torch_salt_loss)
  torch+salt    both logits materialized, loss by salt_kernels.salt_loss (the fused row kernel)
  linear        salt_kernels.linear_salt_loss: no [tokens x vocab] tensor is held
  compile       torch.compile of the plain version (projections included); off by default

Prints the table, writes benchmarks/results/linear_cpu.json and the table into
benchmarks/RESULTS.md between the cpu-linear markers (`python benchmarks/report.py` renders it
again from the JSON).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from salt_kernels.benchmarking.runner import run_fixed

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("torch", "torch+salt", "linear", "compile")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096, help="tokens (default 4096)")
    p.add_argument("--ds", type=int, default=512, help="student hidden size (default 512)")
    p.add_argument("--dt", type=int, default=256, help="teacher hidden size (default 256)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary (default 32000)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "float32", "bfloat16"])
    p.add_argument("--reps", "--repeats", type=int, default=3, help="timed steps per variant, at least (default 3)")
    p.add_argument("--chunk-size", type=int, help="linear_salt_loss chunk_size (default: from its memory budget)")
    p.add_argument("--backend", default="cpu", help="salt_kernels backend (default cpu)")
    p.add_argument("--variants", default="torch,torch+salt,linear", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--json", help="result file (default: benchmarks/results/linear_cpu.json, not with --no-write)")
    p.add_argument("--no-write", action="store_true",
                   help="print the table only: no benchmarks/RESULTS.md update, no JSON unless --json")
    args = p.parse_args(argv)
    variants = [s.strip() for s in args.variants.split(",") if s.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    default_json = None if args.no_write else os.path.join(HERE, "results", "linear_cpu.json")
    command = shlex.join(["python", "benchmarks/bench_linear_cpu.py", *(sys.argv[1:] if argv is None else argv)])
    return run_fixed(op="linear", device="cpu", variants=variants, n=args.n, v=args.vocab, d_s=args.ds, d_t=args.dt,
                     dtype=args.dtype, passes=["fwdbwd"], repeats=args.reps, base="torch", command=command,
                     options={"backend": args.backend, "chunk_size": args.chunk_size}, section="cpu-linear",
                     json_path=args.json or default_json,
                     md_path=None if args.no_write else os.path.join(HERE, "RESULTS.md"))


if __name__ == "__main__":
    sys.exit(main())
