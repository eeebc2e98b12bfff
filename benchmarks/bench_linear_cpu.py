"""Fused linear SALT loss on the CPU against plain PyTorch: forward+backward time and peak memory
above inputs and outputs, each variant measured in its own subprocess.

    python benchmarks/bench_linear_cpu.py                    # N=4096, d_s=512, d_t=256, V=32000, fp32
    python benchmarks/bench_linear_cpu.py --n 1024 --reps 2 --json out.json

Variants (the same value: mean SALT loss, kd_weight 0.5, temperature 2):
  torch         plain PyTorch: both logits materialized with F.linear (teacher under no_grad),
                F.cross_entropy + tau^2 * F.kl_div (salt_kernels.benchmarking.baselines.torch_salt_loss)
  torch+salt    both logits materialized, loss by salt_kernels.salt_loss (the fused row kernel)
  linear        salt_kernels.linear_salt_loss: no [tokens x vocab] tensor is held
  compile       torch.compile of the plain version (projections included); off by default

Memory: each variant runs in a fresh process; after a small warm-up (libraries loaded, thread
pools up) and the inputs' allocation it reads its resident set size, runs one step, and reports
its peak RSS (VmHWM, reset just before the step; ru_maxrss where that cannot be reset) minus
that RSS minus the bytes of the outputs (gradients of hidden and weight):
the memory the step needed beyond what it was given and what it returns.
Time: median of --reps forward+backward steps after one warm-up step, in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("torch", "torch+salt", "linear", "compile")
DEFAULT_VARIANTS = ("torch", "torch+salt", "linear")
KD_WEIGHT = 0.5
TEMPERATURE = 2.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _make_step(variant: str, args):
    import torch
    import torch.nn.functional as F

    import salt_kernels as sk
    from salt_kernels.benchmarking.baselines import torch_salt_loss

    def plain(h_s, w_s, h_t, w_t, y):
        z = F.linear(h_s, w_s)
        with torch.no_grad():
            u = F.linear(h_t, w_t)
        return torch_salt_loss(z, u, y, kd_weight=KD_WEIGHT, temperature=TEMPERATURE)

    if variant == "torch":
        return plain
    if variant == "compile":
        return torch.compile(plain, dynamic=False)
    if variant == "torch+salt":

        def step(h_s, w_s, h_t, w_t, y):
            z = F.linear(h_s, w_s)
            with torch.no_grad():
                u = F.linear(h_t, w_t)
            return sk.salt_loss(z, u, y, kd_weight=KD_WEIGHT, temperature=TEMPERATURE, backend=args.backend)

        return step
    if variant == "linear":

        def step(h_s, w_s, h_t, w_t, y):
            return sk.linear_salt_loss(
                h_s, w_s, h_t, w_t, y, kd_weight=KD_WEIGHT, temperature=TEMPERATURE,
                backend=args.backend, chunk_size=args.chunk_size,
            )

        return step
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


def _inputs(n, d_s, d_t, vocab, dtype, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    # Logits of std about 3: hidden ~ N(0, 1), weight ~ N(0, 3 / sqrt(d)).
    h_s = torch.randn(n, d_s, generator=g).to(dtype).requires_grad_()
    w_s = (torch.randn(vocab, d_s, generator=g) * (3.0 / d_s**0.5)).to(dtype).requires_grad_()
    h_t = torch.randn(n, d_t, generator=g).to(dtype)
    w_t = (torch.randn(vocab, d_t, generator=g) * (3.0 / d_t**0.5)).to(dtype)
    y = torch.randint(0, vocab, (n,), generator=g)
    return h_s, w_s, h_t, w_t, y


def worker(args) -> dict:
    import torch

    dtype = getattr(torch, args.dtype)
    step = _make_step(args.worker, args)

    def run_once(inputs):
        h_s, w_s = inputs[0], inputs[1]
        h_s.grad = None
        w_s.grad = None
        loss = step(*inputs)
        loss.backward()
        return loss

    # Warm-up on a small problem: loads kernels and starts thread pools outside the measurement
    # (for compile: also compiles once, so only recompilation for the new shape is measured).
    run_once(_inputs(64, args.ds, args.dt, 1000, dtype, 1))
    inputs = _inputs(args.n, args.ds, args.dt, args.vocab, dtype, args.seed)
    rss0 = _rss_bytes()
    reset_ok = _reset_peak_rss()
    t0 = time.perf_counter()
    loss = run_once(inputs)
    first_s = time.perf_counter() - t0
    peak = _peak_rss_bytes(reset_ok)
    out_bytes = sum(t.grad.numel() * t.grad.element_size() for t in inputs[:2])
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        run_once(inputs)
        times.append(time.perf_counter() - t0)
    return {
        "variant": args.worker,
        "loss": float(loss.detach()),
        "peak_above_io_bytes": max(0, peak - rss0 - out_bytes),
        "first_step_s": first_s,
        "step_s": statistics.median(times) if times else first_s,
        "step_times_s": times,
        "rss_before_step_bytes": rss0,
        "peak_rss_reset": reset_ok,
        "output_bytes": out_bytes,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096, help="tokens (default 4096)")
    p.add_argument("--ds", type=int, default=512, help="student hidden size (default 512)")
    p.add_argument("--dt", type=int, default=256, help="teacher hidden size (default 256)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary (default 32000)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=3, help="timed steps after the first (default 3)")
    p.add_argument("--chunk-size", type=int, default=None, help="linear_salt_loss chunk_size (default: from its memory budget)")
    p.add_argument("--backend", default="cpu", help="salt_kernels backend (default cpu)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    results = []
    base = [sys.executable, os.path.abspath(__file__)] + [a for a in (argv if argv is not None else sys.argv[1:])]
    for v in variants:
        proc = subprocess.run(base + ["--worker", v], capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{v}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
            results.append({"variant": v, "error": proc.stderr[-2000:]})
            continue
        results.append(json.loads(line[0][len("RESULT "):]))

    import torch

    ref = next((r for r in results if r.get("variant") == "torch" and "error" not in r), None)
    print(
        f"\nN={args.n} d_s={args.ds} d_t={args.dt} V={args.vocab} {args.dtype}, kd_weight={KD_WEIGHT}, "
        f"temperature={TEMPERATURE}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"{'variant':<12} {'fwd+bwd s':>10} {'vs torch':>9} {'peak MiB':>10} {'vs torch':>9} {'loss':>12}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<12} failed")
            continue
        mib = r["peak_above_io_bytes"] / 2**20
        t_rel = f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "-"
        m_rel = f"{100 * r['peak_above_io_bytes'] / max(1, ref['peak_above_io_bytes']):.1f}%" if ref else "-"
        print(f"{r['variant']:<12} {r['step_s']:>10.3f} {t_rel:>9} {mib:>10.1f} {m_rel:>9} {r['loss']:>12.6f}")
    if args.json:
        meta = {k: v for k, v in vars(args).items() if k not in ("worker", "json")}
        meta.update(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
                    processor=platform.processor(), date=time.strftime("%Y-%m-%d %H:%M:%S"))
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"config": meta, "results": results}, f, indent=2)
        print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
