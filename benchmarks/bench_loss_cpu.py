"""CPU benchmark of the SALT loss: backend `cpu` against plain PyTorch eager and
torch.compile of the same function, forward and forward+backward, at N=4096, V=32000, tau=2,
kd_weight=0.5, fp32 by default.

Two ways to run it:

    # the table (median time, peak memory above the inputs, each variant in its own process),
    # printed and written into benchmarks/RESULTS.md between the cpu-loss markers:
    python benchmarks/bench_loss_cpu.py [--n 4096 --v 32000 --repeats 5 --no-write]

    # pytest-benchmark timings (no memory), side by side:
    python -m pytest benchmarks/bench_loss_cpu.py --benchmark-enable
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
VARIANTS = ("salt_kernels cpu", "torch eager", "torch.compile")
MODES = ("fwd", "fwd+bwd")
KD_WEIGHT, TAU = 0.5, 2.0


def make_inputs(n: int, v: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, v, generator=g) * 3.0).to(dtype)
    u = (torch.randn(n, v, generator=g) * 3.0).to(dtype)
    y = torch.randint(0, v, (n,), generator=g)
    return z, u, y


def loss_fn(variant: str):
    import salt_kernels as sk
    from salt_kernels.benchmarking import baselines

    if variant == "salt_kernels cpu":
        return lambda z, u, y: sk.salt_loss(z, u, y, kd_weight=KD_WEIGHT, temperature=TAU, backend="cpu")
    if variant == "torch eager":
        return baselines.eager(KD_WEIGHT, TAU)
    if variant == "torch.compile":
        return baselines.compiled(KD_WEIGHT, TAU)
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def step(fn, mode, z, u, y):
    if mode == "fwd":
        with torch.no_grad():
            return fn(z, u, y)
    z.grad = None
    loss = fn(z, u, y)
    loss.backward()
    return loss


# ---- per-process measurement (the worker) ---------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def worker(variant: str, mode: str, n: int, v: int, repeats: int) -> dict:
    z, u, y = make_inputs(n, v)
    z.requires_grad_(mode != "fwd")
    fn = loss_fn(variant)
    step(fn, mode, z, u, y)  # warm-up: compilation, thread pools, allocator
    z.grad = None
    import gc

    gc.collect()
    base_kib = _rss_kib("VmRSS")
    reset = _reset_peak_rss()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(fn, mode, z, u, y)
        times.append(time.perf_counter() - t0)
    peak_kib = _rss_kib("VmHWM")
    return {
        "variant": variant,
        "mode": mode,
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_above_inputs_mb": (peak_kib - base_kib) / 1024 if reset else None,
        "logits_tensor_mb": n * v * 4 / 2**20,
    }


def run_in_subprocess(variant, mode, n, v, repeats) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, mode, "--n", str(n), "--v", str(v), "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- table --------------------------------------------------------------------------------


def machine_name() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from salt_kernels.backends import cpu as cpu_backend

    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, kernel ISA {cpu_backend.isa()}"


def render(results: list[dict], n: int, v: int, repeats: int, command: str) -> str:
    by = {(r["variant"], r["mode"]): r for r in results}
    lines = [
        f"Machine: {machine_name()}. Date: {_dt.date.today().isoformat()}. Command: `{command}`.",
        f"Shape N={n}, V={v}, fp32, tau={TAU}, kd_weight={KD_WEIGHT}; median of {repeats} runs after one warm-up;",
        "memory is the peak RSS above the inputs during the timed runs, each variant in its own process",
        f"(one logits tensor is {n * v * 4 / 2**20:.0f} MB).",
        "",
        "| variant | fwd (s) | fwd+bwd (s) | fwd+bwd vs ours | peak mem fwd+bwd (MB) | × one logits tensor |",
        "|---|---|---|---|---|---|",
    ]
    ours = by.get(("salt_kernels cpu", "fwd+bwd"))
    for variant in VARIANTS:
        f, fb = by.get((variant, "fwd")), by.get((variant, "fwd+bwd"))
        if not f or not fb:
            continue
        ratio = fb["median_s"] / ours["median_s"] if ours else float("nan")
        mem = fb["peak_above_inputs_mb"]
        mem_s = f"{mem:.0f}" if mem is not None else "n/a"
        x = f"{mem / fb['logits_tensor_mb']:.2f}" if mem is not None else "n/a"
        lines.append(f"| {variant} | {f['median_s']:.3f} | {fb['median_s']:.3f} | {ratio:.2f}x | {mem_s} | {x} |")
    return "\n".join(lines) + "\n"


def write_section(markdown: str, marker: str = "cpu-loss") -> None:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{start}\n{markdown}{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096, help="rows (tokens); default 4096")
    p.add_argument("--v", type=int, default=32000, help="vocabulary size; default 32000")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant after one warm-up; default 5")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--no-write", action="store_true", help="print the table only; do not update benchmarks/RESULTS.md")
    p.add_argument("--json", type=pathlib.Path, help="also write the raw results to this JSON file")
    p.add_argument("--worker", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.n, args.v, args.repeats)))
        return 0
    variants = [s.strip() for s in args.variants.split(",") if s.strip()]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    results = []
    for variant in variants:
        for mode in MODES:
            print(f"running {variant:18s} {mode:8s} ...", end=" ", flush=True)
            r = run_in_subprocess(variant, mode, args.n, args.v, args.repeats)
            mem = r["peak_above_inputs_mb"]
            print(f"median {r['median_s']:.3f} s, peak above inputs {mem:.0f} MB" if mem is not None else f"median {r['median_s']:.3f} s")
            results.append(r)
    command = shlex.join(["python", "benchmarks/bench_loss_cpu.py", *(sys.argv[1:] if argv is None else argv)])
    table = render(results, args.n, args.v, args.repeats, command)
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not args.no_write:
        write_section(table)
        print(f"updated {RESULTS}")
    return 0


# ---- pytest-benchmark ---------------------------------------------------------------------

try:
    import pytest
except ImportError:  # running as a script without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def inputs():
        n = int(os.environ.get("SALT_BENCH_N", 4096))
        v = int(os.environ.get("SALT_BENCH_V", 32000))
        return make_inputs(n, v)

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("variant", VARIANTS)
    def test_loss_cpu(benchmark, inputs, variant, mode):
        z, u, y = inputs
        z = z.detach().requires_grad_(mode != "fwd")
        fn = loss_fn(variant)
        step(fn, mode, z, u, y)  # warm-up (compilation for torch.compile)
        benchmark.group = f"salt loss {mode}"
        benchmark.pedantic(step, args=(fn, mode, z, u, y), rounds=3, iterations=1)


if __name__ == "__main__":
    sys.exit(main())
