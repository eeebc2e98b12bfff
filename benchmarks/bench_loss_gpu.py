"""SALT loss on a CUDA GPU at fixed sizes: forward and forward+backward of salt_loss's triton (and
cuda, when built) backends against plain PyTorch eager, torch.compile of the same function and
Liger-Kernel's CE + KL, N=16384, V in {32000, 128256, 256000}, bf16 and fp32, tau=2, kd_weight=0.5.
The harness of `salt-kernels bench` (same inputs; triton.testing.do_bench; peak allocated memory
above the inputs; the same JSON and tables), all cases in this process.

    python benchmarks/bench_loss_gpu.py --json out.json
    python benchmarks/bench_loss_gpu.py --vocab 128256 --dtype bf16 --sweep   # + triton launch plans
    python benchmarks/bench_loss_gpu.py --dry-run   # tiny shapes on the CPU: checks the script only

Without a CUDA device (and without --dry-run) it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

if "--dry-run" in sys.argv:  # the Triton interpreter must be chosen before triton is imported
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("SALT_TRITON_BLOCK_V", "128")  # several blocks per row: every loop runs

PASSES = {"fwd": "fwd", "fwd+bwd": "fwdbwd", "fwdbwd": "fwdbwd", "bwd": "bwd"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=16384, help="N, rows (tokens) per call (default 16384)")
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256, 256000], help="V values")
    p.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"], help="logit dtypes")
    p.add_argument("--variants", nargs="+", default=["triton", "cuda", "eager", "compile", "liger"],
                   help="salt_kernels backends, baselines or triton launch plans (triton-fused/-split/-sync)")
    p.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"], choices=list(PASSES), help="default: fwd fwd+bwd")
    p.add_argument("--compile-vocab", type=int, nargs="*", help="time torch.compile only at these V")
    p.add_argument("--compile-dtype", nargs="*", help="time torch.compile only at these dtypes")
    p.add_argument("--sweep", action="store_true", help="also time the triton launch plans x block sizes x warps")
    p.add_argument("--json", help="write the results here (the `salt-kernels bench` format)")
    p.add_argument("--dry-run", action="store_true", help="every code path once on tiny CPU shapes (Triton "
                   "interpreter): a check of the script, not a measurement")
    args = p.parse_args(argv)

    import torch

    from salt_kernels.backends import registry
    from salt_kernels.benchmarking import cases as C
    from salt_kernels.benchmarking import render
    from salt_kernels.benchmarking.runner import run_bench

    if not args.dry_run and not torch.cuda.is_available():
        print("bench_loss_gpu: no CUDA device here; nothing measured (run it on a GPU machine, or --dry-run "
              "to check the script on the CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    rows, vocab = (min(args.rows, 4), [1000]) if args.dry_run else (args.rows, args.vocab)
    variants = list(dict.fromkeys(args.variants + (list(C.TRITON_SWEEP) if args.sweep else [])))
    run, left_out = [], []
    for name in variants:
        if args.dry_run and name in ("compile", "liger"):
            ok, why = False, "skipped in --dry-run (compilation takes minutes on a CPU; Liger runs on CUDA only)"
        elif args.dry_run and C.base_variant(name) == "triton":
            ok, why = registry.backend_status("triton", device)
        else:
            ok, why = C.variant_status(name, device)
        (run.append(name) if ok else left_out.append((name, why)))
    cases = [c for c in C.make_cases(run, [rows], vocab, args.dtype) if c.variant != "compile"
             or ((args.compile_vocab is None or c.v in args.compile_vocab)
                 and (args.compile_dtype is None or c.dtype in args.compile_dtype))]
    if "compile" in run and (args.compile_vocab is not None or args.compile_dtype is not None):
        left_out.append(("compile", f"timed only at V in {args.compile_vocab} and dtypes {args.compile_dtype}"))
    passes = list(dict.fromkeys(PASSES[x] for x in args.passes))
    command = shlex.join(["python", "benchmarks/bench_loss_gpu.py", *(sys.argv[1:] if argv is None else argv)])
    quick = dict(repeats=1, warmup=1, min_time=0.0) if args.dry_run else dict(repeats=10, warmup=3, min_time=0.1)
    doc = run_bench(device=device, cases=cases, passes=passes, out_path=args.json, left_out=left_out,
                    command=command, isolate=False, **quick)
    print()
    print(render.text_report(doc))
    if args.json:
        print(f"\nresults: {args.json}")
    failed = any(r["status"] == "failed" for r in doc["results"])
    return 1 if failed or render.value_disagreements(doc) else 0


if __name__ == "__main__":
    sys.exit(main())
