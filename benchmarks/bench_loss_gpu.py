"""SALT loss on a CUDA GPU: forward and forward+backward of salt_loss's triton
(and cuda, when built) backends against plain PyTorch eager, torch.compile of the same function
and Liger-Kernel's LigerCrossEntropyLoss + LigerKLDIVLoss (salt_kernels.benchmarking.baselines).

    python benchmarks/bench_loss_gpu.py                      # N=16384, V in {32000, 128256, 256000}, bf16 + fp32, tau=2
    python benchmarks/bench_loss_gpu.py --vocab 128256 --dtype bf16 --json out.json
    python benchmarks/bench_loss_gpu.py --sweep              # also time triton launch plans / blocks / warps
    python benchmarks/bench_loss_gpu.py --dry-run            # tiny shapes on the CPU: checks the script only

Per (V, dtype, pass, variant): median milliseconds (triton.testing.do_bench), GB/s over the
minimal bytes (forward: read student and teacher logits once; forward+backward: that plus
writing the gradient once), that as a fraction of the device-to-device copy bandwidth measured
in the same run (a copy reads and writes: 2 * bytes / time), and the peak memory above the
inputs (torch.cuda.max_memory_allocated; the fwd+bwd peak includes the gradient).

salt_loss runs with validate=False (no label range check, which costs a device sync), as a
training loop that trusts its labels would; kd_weight=0.5 and labels with every 64th ignored.
Variants that run out of memory are reported as OOM. Without a CUDA device the script says so
and exits with status 2 (as bench_linear_gpu.py does).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time

VARIANTS = ("triton", "triton-fused", "triton-split", "triton-sync", "cuda", "eager", "compile", "liger")
DEFAULT_VARIANTS = ("triton", "cuda", "eager", "compile", "liger")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
PASSES = ("fwd", "fwd+bwd")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--rows", type=int, default=16384, help="N, rows (tokens) per call (default 16384)")
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256, 256000], help="V values (default 32000 128256 256000)")
    p.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES), help="logit dtypes (default bf16 fp32)")
    p.add_argument("--tau", type=float, default=2.0, help="temperature (default 2)")
    p.add_argument("--kd-weight", type=float, default=0.5, help="KD weight w (default 0.5)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS,
                   help="what to time (default: %(default)s); triton-fused/-split/-sync force one launch plan")
    p.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES, help="default: both")
    p.add_argument("--compile-vocab", type=int, nargs="*", default=None,
                   help="time torch.compile only at these V (each shape and pass costs a compilation)")
    p.add_argument("--compile-dtype", nargs="*", default=None, choices=list(DTYPES),
                   help="time torch.compile only at these dtypes")
    p.add_argument("--rep", type=int, default=100, help="do_bench time budget per measurement, ms (default 100)")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms (default 25)")
    p.add_argument("--sweep", action="store_true",
                   help="also time the triton backend's launch plans x block sizes x warps (fwd+bwd)")
    p.add_argument("--sweep-vocab", type=int, nargs="*", default=None, help="V values for --sweep (default: all)")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.add_argument("--dry-run", action="store_true",
                   help="run every code path once on tiny CPU shapes (Triton interpreter, perf_counter "
                        "timing): a check of the script, not a measurement")
    return p.parse_args(argv)


# ---- timing, memory ----------------------------------------------------------------------------


class Device:
    """do_bench and CUDA memory statistics on a GPU; perf_counter and no memory in --dry-run."""

    def __init__(self, args):
        import torch

        self.torch = torch
        self.dry = args.dry_run
        self.dev = torch.device("cpu" if self.dry else "cuda")
        self.rep, self.warmup = args.rep, args.warmup

    def sync(self):
        if not self.dry:
            self.torch.cuda.synchronize()

    def bench(self, fn, grad_to_none=None) -> float:
        if self.dry:
            times = []
            for _ in range(3):
                if grad_to_none:
                    for t in grad_to_none:
                        t.grad = None
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
        from triton.testing import do_bench

        ms = do_bench(fn, warmup=self.warmup, rep=self.rep, grad_to_none=grad_to_none, quantiles=[0.5])
        return float(ms[0] if isinstance(ms, (list, tuple)) else ms)

    def peak_extra_mib(self, fn, grad_to_none=None):
        """Peak allocated memory while fn runs, above what was allocated before, in MiB."""
        if self.dry:
            return None
        torch = self.torch
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    def copy_gbps(self) -> float:
        torch = self.torch
        n = (1 << 28) if not self.dry else (1 << 22)  # 1 GiB of fp32 on a GPU
        src = torch.empty(n, dtype=torch.float32, device=self.dev).uniform_()
        dst = torch.empty_like(src)
        ms = self.bench(lambda: dst.copy_(src))
        del src, dst
        return 2 * n * 4 / (ms * 1e-3) / 1e9

    def is_oom(self, exc) -> bool:
        return isinstance(exc, self.torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


# ---- variants ----------------------------------------------------------------------------------


def make_loss(variant, args, vocab, dtype_name):
    """fn(student, teacher, labels) -> scalar loss, or (None, reason) when the variant is unusable."""
    import salt_kernels as sk
    from salt_kernels.benchmarking import baselines
    from salt_kernels.backends.triton import launcher as triton_backend

    w, tau = args.kd_weight, args.tau
    if variant.startswith("triton") or variant == "cuda":
        backend = "cuda" if variant == "cuda" else "triton"
        ok, why = sk.available_backends()[backend]
        if not ok:
            return None, why
        mode = variant.split("-", 1)[1] if "-" in variant else "auto"

        def fn(z, u, y):
            triton_backend.MODE = mode
            try:
                return sk.salt_loss(z, u, y, kd_weight=w, temperature=tau, backend=backend, validate=False)
            finally:
                triton_backend.MODE = "auto"

        return fn, ""
    if variant == "eager":
        return baselines.eager(w, tau), ""
    if variant == "compile":
        if args.dry_run:
            return None, "skipped in --dry-run (compilation takes minutes on a CPU)"
        if args.compile_vocab is not None and vocab not in args.compile_vocab:
            return None, f"not timed at V={vocab} (--compile-vocab {' '.join(map(str, args.compile_vocab))})"
        if args.compile_dtype is not None and dtype_name not in args.compile_dtype:
            return None, f"not timed for {dtype_name} (--compile-dtype {' '.join(args.compile_dtype)})"
        return baselines.compiled(w, tau), ""
    if variant == "liger":
        ok, why = baselines.liger_available()
        if not ok:
            return None, why
        if args.dry_run:
            return None, "Liger-Kernel runs on CUDA tensors only"
        return baselines.liger(w, tau), ""
    raise ValueError(variant)


def make_inputs(dev, rows, vocab, dtype_name, seed=0):
    torch = dev.torch
    dtype = getattr(torch, DTYPES[dtype_name])
    g = torch.Generator(device=dev.dev).manual_seed(seed)
    z = torch.empty(rows, vocab, dtype=dtype, device=dev.dev)
    u = torch.empty(rows, vocab, dtype=dtype, device=dev.dev)
    for t in (z, u):  # in row blocks: no fp32 temporary of the whole tensor
        for r in range(0, rows, 1024):
            blk = torch.randn(min(1024, rows - r), vocab, generator=g, device=dev.dev) * 3.0
            t[r:r + 1024] = blk.to(dtype)
    y = torch.randint(0, vocab, (rows,), generator=g, device=dev.dev)
    y[::64] = -100
    return z, u, y


def minimal_bytes(rows, vocab, elem, pass_name):
    reads = 2 * rows * vocab * elem
    return reads + (rows * vocab * elem if pass_name == "fwd+bwd" else 0)


def measure(dev, fn, z, u, y, pass_name):
    """(median ms, peak MiB above the inputs) of one pass."""
    torch = dev.torch
    if pass_name == "fwd":
        zf = z.detach()

        def run():
            with torch.no_grad():
                fn(zf, u, y)

        grads = None
    else:
        zf = z.detach().requires_grad_()

        def run():
            fn(zf, u, y).backward()

        grads = [zf]
    run()  # compile / autotune / first-call costs stay out of the timing
    dev.sync()
    peak = dev.peak_extra_mib(run, grads)
    ms = dev.bench(run, grad_to_none=grads)
    zf.grad = None
    return ms, peak


def run_matrix(dev, args, copy_gbps, variants, passes, vocabs, note=""):
    import gc

    torch = dev.torch
    results = []
    for vocab in vocabs:
        for dtype_name in args.dtype:
            try:
                z, u, y = make_inputs(dev, args.rows, vocab, dtype_name)
            except Exception as exc:
                if not dev.is_oom(exc):
                    raise
                print(f"  V={vocab} {dtype_name}: inputs do not fit ({exc})", flush=True)
                continue
            for variant in variants:
                tag = variant if isinstance(variant, str) else variant[0]
                fn, why = make_loss(variant, args, vocab, dtype_name) if isinstance(variant, str) else (variant[1], "")
                for pass_name in passes:
                    rec = dict(vocab=vocab, dtype=dtype_name, rows=args.rows, tau=args.tau, kd_weight=args.kd_weight,
                               pass_=pass_name, variant=tag, note=note)
                    if fn is None:
                        rec.update(status="skipped", reason=why)
                    else:
                        try:
                            ms, peak = measure(dev, fn, z, u, y, pass_name)
                            nbytes = minimal_bytes(args.rows, vocab, z.element_size(), pass_name)
                            gbps = nbytes / (ms * 1e-3) / 1e9
                            rec.update(status="ok", ms=ms, gbps=gbps, frac_copy=gbps / copy_gbps, peak_extra_mib=peak,
                                       minimal_bytes=nbytes)
                        except Exception as exc:
                            if not dev.is_oom(exc):
                                raise
                            rec.update(status="OOM", reason=str(exc).splitlines()[0])
                        finally:
                            gc.collect()
                            if not dev.dry:
                                torch.cuda.empty_cache()
                    results.append(rec)
                    print("  " + fmt_row(rec), flush=True)
            del z, u, y
            gc.collect()
            if not dev.dry:
                torch.cuda.empty_cache()
    return results


def sweep_variants(args):
    """(label, fn) for every triton launch plan x block x warps worth trying on a GPU."""
    import salt_kernels as sk
    from salt_kernels.backends.triton import launcher as tb

    out = []
    for mode in ("fused", "split", "sync"):
        for block, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 16)):
            def fn(z, u, y, mode=mode, block=block, warps=warps):
                saved = tb.MODE, tb.BLOCK_V, tb.NUM_WARPS
                tb.MODE, tb.BLOCK_V, tb.NUM_WARPS = mode, block, warps
                try:
                    return sk.salt_loss(z, u, y, kd_weight=args.kd_weight, temperature=args.tau,
                                        backend="triton", validate=False)
                finally:
                    tb.MODE, tb.BLOCK_V, tb.NUM_WARPS = saved

            out.append((f"triton {mode} b{block} w{warps}", fn))
    return out


# ---- output ------------------------------------------------------------------------------------

HEADER = f"{'V':>7} {'dtype':>5} {'pass':>7} {'variant':<24} {'ms':>9} {'GB/s':>7} {'%copy':>6} {'peak+MiB':>9}"


def fmt_row(r) -> str:
    head = f"{r['vocab']:>7} {r['dtype']:>5} {r['pass_']:>7} {r['variant']:<24}"
    if r["status"] != "ok":
        return f"{head} {r['status']}: {r.get('reason', '')}"
    peak = "-" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.0f}"
    return f"{head} {r['ms']:>9.3f} {r['gbps']:>7.0f} {100 * r['frac_copy']:>5.0f}% {peak:>9}"


def summary(results) -> list[str]:
    """The lines of the final table: every measured row, plus triton's speed-up over Liger and eager."""
    ok = [r for r in results if r["status"] == "ok" and not r["note"]]
    lines = [HEADER]
    lines += [fmt_row(r) for r in results if not r["note"]]
    by_key = {(r["vocab"], r["dtype"], r["pass_"], r["variant"]): r for r in ok}
    speedups = []
    for (v, d, p, var), r in sorted(by_key.items()):
        if var != "triton":
            continue
        for base in ("liger", "eager", "compile"):
            b = by_key.get((v, d, p, base))
            if b:
                speedups.append(f"V={v} {d} {p}: speed-up of triton over {base}: {b['ms'] / r['ms']:.2f}x")
    return lines + speedups


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        # The interpreter must be chosen before salt_kernels.backends.triton.kernels is imported.
        os.environ["TRITON_INTERPRET"] = "1"
        args.rows, args.rep, args.warmup = min(args.rows, 4), 1, 1
        if args.vocab == [32000, 128256, 256000]:
            args.vocab = [1000]
        if args.sweep_vocab is None:
            args.sweep_vocab = args.vocab[:1]
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("bench_loss_gpu: no CUDA device here; nothing measured (run it on a GPU machine, or "
              "--dry-run to check the script on the CPU)", file=sys.stderr)
        return 2
    import salt_kernels as sk
    from salt_kernels.backends.triton import launcher as tb

    dev = Device(args)
    if args.dry_run:
        tb.BLOCK_V = 128  # several blocks per row, so every loop runs more than once
    name = "CPU (dry run, Triton interpreter)" if args.dry_run else torch.cuda.get_device_name()
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    copy = dev.copy_gbps()
    print(f"device: {name}; torch {torch.__version__}; triton {triton_version}; "
          f"device-to-device copy {copy:.0f} GB/s", flush=True)
    print(f"N={args.rows} tau={args.tau} kd_weight={args.kd_weight}; backends: {sk.available_backends()}", flush=True)
    print(HEADER, flush=True)
    results = run_matrix(dev, args, copy, args.variants, args.passes, args.vocab)
    if args.sweep:
        print("sweep of the triton backend's launch plans (fwd+bwd):", flush=True)
        vocabs = args.sweep_vocab if args.sweep_vocab is not None else args.vocab
        results += run_matrix(dev, args, copy, sweep_variants(args), ["fwd+bwd"], vocabs, note="sweep")
    lines = summary(results)
    if args.sweep:
        best = {}
        for r in results:
            if r["note"] == "sweep" and r["status"] == "ok":
                key = (r["vocab"], r["dtype"])
                if key not in best or r["ms"] < best[key]["ms"]:
                    best[key] = r
        lines += [f"best plan at V={v} {d}: {r['variant']} {r['ms']:.3f} ms ({100 * r['frac_copy']:.0f}% of copy)"
                  for (v, d), r in sorted(best.items())]
    print("\n".join(["", "summary:"] + lines))
    if args.json:
        doc = dict(
            device=name, date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            command=" ".join([os.path.basename(sys.executable)] + sys.argv), host=platform.node(),
            torch=torch.__version__, triton=triton_version, copy_gbps=copy, dry_run=args.dry_run,
            args=vars(args), results=results, summary=lines,
        )
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
