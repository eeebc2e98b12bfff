"""Fused linear SALT loss on a CUDA GPU: forward+backward time and peak memory above inputs and
outputs, against plain PyTorch and Liger-Kernel's LigerFusedLinearJSDLoss (when installed).

    python benchmarks/bench_linear_gpu.py                       # N=8192, d_s=4096, d_t=2048, V=128256, bf16
    python benchmarks/bench_linear_gpu.py --n 4096 --json out.json
    python benchmarks/bench_linear_gpu.py --check-only          # correctness check only

Variants (mean over tokens of (1 - w) * CE + w * KL(teacher || student), w = 0.5, tau = 1):
  torch    plain PyTorch: both logits materialized by F.linear (teacher under no_grad),
           F.cross_entropy + F.kl_div (salt_kernels.benchmarking.baselines.torch_salt_loss)
  linear   salt_kernels.linear_salt_loss (backend "auto": triton, else the next usable one)
  liger    liger_kernel.chunked_loss.LigerFusedLinearJSDLoss with weight_hard_loss = 1 - w,
           weight_soft_loss = w and the beta that makes its divergence the forward KL (found
           by comparing with salt_kernels on a small problem, since the convention differs
           between Liger releases); skipped with the reason when liger-kernel is not usable
Temperature 1 because Liger's soft loss has no tau^2 factor; with it the three compute the
same value (printed, with each variant's difference from plain PyTorch).

Before timing, a correctness check at a small N compares linear_salt_loss's loss and gradients
with the float32 plain-PyTorch evaluation. Without a CUDA device the script says so and exits
with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

KD_WEIGHT = 0.5
TEMPERATURE = 1.0


def _inputs(n, d_s, d_t, vocab, dtype, device, seed=0):
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    h_s = torch.randn(n, d_s, generator=g, device=device, dtype=torch.float32).to(dtype).requires_grad_()
    w_s = (torch.randn(vocab, d_s, generator=g, device=device) * (3.0 / d_s**0.5)).to(dtype).requires_grad_()
    h_t = torch.randn(n, d_t, generator=g, device=device).to(dtype)
    w_t = (torch.randn(vocab, d_t, generator=g, device=device) * (3.0 / d_t**0.5)).to(dtype)
    y = torch.randint(0, vocab, (n,), generator=g, device=device)
    y[::97] = -100
    return h_s, w_s, h_t, w_t, y


def plain_step(h_s, w_s, h_t, w_t, y):
    import torch
    import torch.nn.functional as F

    from salt_kernels.benchmarking.baselines import torch_salt_loss

    z = F.linear(h_s, w_s)
    with torch.no_grad():
        u = F.linear(h_t, w_t)
    return torch_salt_loss(z, u, y, kd_weight=KD_WEIGHT, temperature=TEMPERATURE)


def linear_step(backend, chunk_size):
    import salt_kernels as sk

    def step(h_s, w_s, h_t, w_t, y):
        return sk.linear_salt_loss(h_s, w_s, h_t, w_t, y, kd_weight=KD_WEIGHT, temperature=TEMPERATURE,
                                   backend=backend, chunk_size=chunk_size)

    return step


def liger_step(device):
    """Liger's fused linear JSD loss set up to compute the SALT loss, or (None, reason)."""
    import torch

    import salt_kernels as sk

    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except Exception as exc:  # not installed, or a triton mismatch inside it
        return None, f"liger-kernel not usable: {exc}"
    # Which beta is KL(teacher || student)? Compare the soft loss alone with salt_kernels'.
    h_s, w_s, h_t, w_t, y = _inputs(64, 64, 32, 1000, torch.float32, device, seed=1)
    want = float(sk.linear_salt_loss(h_s, w_s, h_t, w_t, y, kd_weight=1.0))
    found = {}
    for beta in (0.0, 1.0):
        crit = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=1.0)
        found[beta] = float(crit(h_s, w_s, h_t, w_t, y, None, None))
    beta = min(found, key=lambda b: abs(found[b] - want))
    if abs(found[beta] - want) > 1e-3 * abs(want):
        return None, f"no beta of LigerFusedLinearJSDLoss gives KL(teacher||student): {found} vs {want}"
    crit = LigerFusedLinearJSDLoss(weight_hard_loss=1 - KD_WEIGHT, weight_soft_loss=KD_WEIGHT, beta=beta, temperature=TEMPERATURE)

    def step(h_s, w_s, h_t, w_t, y):
        return crit(h_s, w_s, h_t, w_t, y, None, None)

    return step, f"beta={beta:g}"


def check(args, device) -> dict:
    """linear_salt_loss vs plain PyTorch in float32 at a small N, the benchmark's V and dims."""
    import torch

    n = 256
    h_s, w_s, h_t, w_t, y = _inputs(n, args.ds, args.dt, args.vocab, getattr(torch, args.dtype), device, seed=2)
    out = {}
    loss = linear_step(args.backend, args.chunk_size)(h_s, w_s, h_t, w_t, y)
    loss.backward()
    g = (h_s.grad.float(), w_s.grad.float())
    a = [t.detach().float().requires_grad_() for t in (h_s, w_s)]
    ref = plain_step(a[0], a[1], h_t.float(), w_t.float(), y)
    ref.backward()
    out["loss_rel_err"] = abs(float(loss) - float(ref)) / abs(float(ref))
    out["grad_hidden_rel_err"] = float((g[0] - a[0].grad).norm() / a[0].grad.norm())
    out["grad_weight_rel_err"] = float((g[1] - a[1].grad).norm() / a[1].grad.norm())
    return out


def measure(step, inputs, reps, warmup):
    import torch

    h_s, w_s = inputs[0], inputs[1]

    def once():
        h_s.grad = None
        w_s.grad = None
        loss = step(*inputs)
        loss.backward()
        return loss

    for _ in range(warmup):
        once()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    h_s.grad = None
    w_s.grad = None
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = once()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    out_bytes = sum(t.grad.numel() * t.grad.element_size() for t in (h_s, w_s))
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        once()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return {"loss": float(loss.detach()), "step_s": statistics.median(times), "step_times_s": times,
            "peak_above_io_bytes": max(0, peak - base - out_bytes)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8192, help="tokens (default 8192)")
    p.add_argument("--ds", type=int, default=4096, help="student hidden size (default 4096)")
    p.add_argument("--dt", type=int, default=2048, help="teacher hidden size (default 2048)")
    p.add_argument("--vocab", type=int, default=128256, help="vocabulary (default 128256)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--reps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--chunk-size", type=int, default=None, help="linear_salt_loss chunk_size (default: its budget)")
    p.add_argument("--backend", default="auto", help="salt_kernels backend (default auto)")
    p.add_argument("--variants", default="torch,linear,liger", help="comma list of torch, linear, liger")
    p.add_argument("--check-only", action="store_true", help="run the correctness check only")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_linear_gpu.py: no CUDA device (torch.cuda.is_available() is False; "
              f"torch {torch.__version__}); nothing measured. Run it on a machine with an NVIDIA GPU "
              "and a CUDA build of torch; for the CPU use benchmarks/bench_linear_cpu.py.", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    from salt_kernels.backends import registry as dispatch

    backend_name = dispatch.resolve(args.backend, device).NAME
    name = torch.cuda.get_device_name(device)
    print(f"{name}, torch {torch.__version__}, salt_kernels backend {backend_name}")
    chk = check(args, device)
    tol = 1e-2 if args.dtype != "float32" else 1e-4
    ok = all(v <= tol for v in chk.values())
    print("check (N=256, vs float32 plain PyTorch): " + ", ".join(f"{k} {v:.2e}" for k, v in chk.items())
          + ("  OK" if ok else f"  FAILED (> {tol:g})"))
    results = {"device": name, "backend": backend_name, "check": chk, "check_ok": ok, "config": vars(args), "variants": {}}
    if not args.check_only:
        inputs = _inputs(args.n, args.ds, args.dt, args.vocab, getattr(torch, args.dtype), device)
        for v in [s.strip() for s in args.variants.split(",") if s.strip()]:
            note = ""
            if v == "torch":
                step = plain_step
            elif v == "linear":
                step = linear_step(args.backend, args.chunk_size)
            elif v == "liger":
                step, note = liger_step(device)
                if step is None:
                    print(f"liger: skipped ({note})")
                    results["variants"][v] = {"skipped": note}
                    continue
            else:
                p.error(f"--variants: unknown variant {v!r}")
            try:
                r = measure(step, inputs, args.reps, args.warmup)
            except torch.cuda.OutOfMemoryError as exc:
                r = {"error": f"out of memory: {exc}"}
            r["note"] = note
            results["variants"][v] = r
            torch.cuda.empty_cache()
        ref = results["variants"].get("torch", {})
        print(f"N={args.n} d_s={args.ds} d_t={args.dt} V={args.vocab} {args.dtype}, w={KD_WEIGHT}, tau={TEMPERATURE}")
        print(f"{'variant':<8} {'fwd+bwd ms':>11} {'vs torch':>9} {'peak MiB':>10} {'vs torch':>9} {'loss':>12}  note")
        for v, r in results["variants"].items():
            if "step_s" not in r:
                print(f"{v:<8} {r.get('skipped') or r.get('error')}")
                continue
            t_rel = f"{r['step_s'] / ref['step_s']:.2f}x" if "step_s" in ref else "-"
            m_rel = f"{100 * r['peak_above_io_bytes'] / max(1, ref['peak_above_io_bytes']):.1f}%" if "step_s" in ref else "-"
            print(f"{v:<8} {1000 * r['step_s']:>11.2f} {t_rel:>9} {r['peak_above_io_bytes'] / 2**20:>10.1f} {m_rel:>9} "
                  f"{r['loss']:>12.6f}  {r['note']}")
    results["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
