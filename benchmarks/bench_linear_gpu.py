"""Fused linear SALT loss on a CUDA GPU at a fixed size: forward+backward time and peak memory
above the inputs and the gradients, against plain PyTorch and Liger-Kernel's
LigerFusedLinearJSDLoss (when installed), N=8192, d_s=4096, d_t=2048, V=128256, bf16, kd_weight
0.5, tau 1 (Liger's soft loss has no tau^2 factor; at tau 1 all variants compute the same value,
and a variant whose loss disagrees fails the run). The harness of `salt-kernels bench` (same
input builder; triton.testing.do_bench; peak allocated memory; the same JSON), all variants in
this process.

    python benchmarks/bench_linear_gpu.py --json out.json
    python benchmarks/bench_linear_gpu.py --n 4096 --variants torch,linear

Without a CUDA device it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from salt_kernels.benchmarking.runner import run_fixed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8192, help="tokens (default 8192)")
    p.add_argument("--ds", type=int, default=4096, help="student hidden size (default 4096)")
    p.add_argument("--dt", type=int, default=2048, help="teacher hidden size (default 2048)")
    p.add_argument("--vocab", type=int, default=128256, help="vocabulary (default 128256)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "bfloat16", "float32"])
    p.add_argument("--reps", "--repeats", type=int, default=5, help="timed steps per variant, at least (default 5)")
    p.add_argument("--chunk-size", type=int, help="linear_salt_loss chunk_size (default: its memory budget)")
    p.add_argument("--backend", default="auto", help="salt_kernels backend (default auto)")
    p.add_argument("--variants", default="torch,linear,liger", help="comma list of torch, torch+salt, linear, liger")
    p.add_argument("--json", help="write the results here (the `salt-kernels bench` format)")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(f"bench_linear_gpu.py: no CUDA device (torch {torch.__version__}); nothing measured. Run it on a "
              "machine with an NVIDIA GPU; for the CPU use benchmarks/bench_linear_cpu.py.", file=sys.stderr)
        return 2
    command = shlex.join(["python", "benchmarks/bench_linear_gpu.py", *(sys.argv[1:] if argv is None else argv)])
    return run_fixed(op="linear", device="cuda", variants=[s.strip() for s in args.variants.split(",") if s.strip()],
                     n=args.n, v=args.vocab, d_s=args.ds, d_t=args.dt, dtype=args.dtype, passes=["fwdbwd"],
                     repeats=args.reps, warmup=2, min_time=0.1, temperature=1.0, base="torch", command=command,
                     options={"backend": args.backend, "chunk_size": args.chunk_size}, section="cuda-linear",
                     json_path=args.json, md_path=None, isolate=False)


if __name__ == "__main__":
    sys.exit(main())
