"""Kernel-level GPU check of the SALT loss at the target size (N=16384 rows, V=128256, bf16,
tau=2, kd_weight=0.5), one part per call so that benchmarks/gpu/check.sh can order and budget
them. Timings use the harness of `salt-kernels bench` (salt_kernels/benchmarking: the same
inputs, triton.testing.do_bench with the L2 flushed, the peak allocated memory of one call).

Parts:
  roofline    what the memory system gives for this access pattern: torch.add(z, u, out=g)
              (2 reads + 1 write of N x V bf16, the traffic floor of a fused forward+backward)
              and a copy (1 read + 1 write).
  triton      forward+backward of every triton launch plan (fused / split / sync x block x
              warps) and of the automatic choice, with Liger-Kernel (CE + KL) and PyTorch eager.
  cuda        forward+backward of the cuda backend's automatic configuration and of every
              block x cluster configuration.
  crosscheck  the automatic configuration of each backend at full size; per-row loss and
              gradient of sampled rows (the first, random ones and the last ones) against the
              float64 reference backend on those rows (docs/design.md, "Numerical acceptance").
  extra       forward-only (no gradient) timings; tau = 1.5 (no integer-tau exp reuse); the
              automatic configurations at V = 32000 and 256000.
  ncu         runs each plan once (for `ncu ... python kernel_check.py --part ncu`: DRAM bytes
              and L2 hit rate per plan).

    python benchmarks/gpu/kernel_check.py --part roofline triton --json out.json
    python benchmarks/gpu/kernel_check.py --part all --dry-run     # tiny CPU shapes: checks the script

Each record: part, variant, n, v, dtype, tau, pass, median_ms, min_ms, gbps (the bytes a fused
kernel must move / median time), floor_ms (those bytes at the roofline's bandwidth, when
measured in the same process), peak_gib, loss, and for crosscheck the errors. Without a CUDA
device (and without --dry-run) it exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

if "--dry-run" in sys.argv:  # the Triton interpreter must be chosen before triton is imported
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("SALT_TRITON_BLOCK_V", "128")

PARTS = ("roofline", "triton", "cuda", "crosscheck", "extra", "ncu")
KD_WEIGHT = 0.5


def _bytes(n: int, v: int, elem: int, grad: bool) -> int:
    """Traffic floor of a fused kernel: read student and teacher once, write the gradient once."""
    return n * v * elem * (3 if grad else 2)


class Checker:
    def __init__(self, args):
        import torch

        self.torch = torch
        self.args = args
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.n, self.v = (8, 1000) if self.dry else (args.rows, args.vocab)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        self.records: list[dict] = []
        self.bandwidth = None  # bytes/s of the 2-read + 1-write pattern, once measured
        self._inputs = {}

    # ---- helpers ----------------------------------------------------------------------------
    def inputs(self, n, v):
        from salt_kernels.benchmarking import cases as C

        key = (n, v)
        if key not in self._inputs:
            self._inputs.clear()
            if self.device.type == "cuda":
                self.torch.cuda.empty_cache()
            self._inputs[key] = C.make_inputs(n, v, self.dtype, self.device, seed=0)
        return self._inputs[key]

    def emit(self, rec: dict):
        self.records.append(rec)
        keys = ("part", "variant", "v", "tau", "pass", "median_ms", "gbps", "floor_ms", "peak_gib", "loss", "error")
        print("  " + "  ".join(f"{k}={rec[k]}" for k in keys if rec.get(k) is not None), flush=True)

    def time_variant(self, part, variant, *, n=None, v=None, tau=2.0, pass_="fwdbwd", status=None):
        from salt_kernels.benchmarking import cases as C
        from salt_kernels.benchmarking.timing import measure_pass

        n, v = n or self.n, v or self.v
        rec = dict(part=part, variant=variant, n=n, v=v, dtype=self.args.dtype, tau=tau, **{"pass": pass_})
        ok, why = status if status is not None else C.variant_status(variant, self.device)
        if self.dry and C.base_variant(variant) == "triton":
            ok, why = True, ""
        if not ok:
            rec["error"] = f"not run: {why}"
            return self.emit(rec)
        try:
            fn = C.make_loss_fn(variant, KD_WEIGHT, tau)
            student, teacher, labels = self.inputs(n, v)
            quick = dict(repeats=1, warmup=1, min_time=0.0) if self.dry else dict(repeats=10, warmup=2, min_time=0.1)
            m = measure_pass(fn, (student, teacher, labels), (student,), pass_, **quick)
            with self.torch.no_grad():
                loss = float(fn(student, teacher, labels))
            student.requires_grad_(False)
            nbytes = _bytes(n, v, student.element_size(), pass_ != "fwd")
            rec.update(median_ms=round(m["median_s"] * 1e3, 4), min_ms=round(m["min_s"] * 1e3, 4),
                       first_call_s=round(m["first_call_s"], 3), gbps=round(nbytes / m["median_s"] / 1e9, 1),
                       peak_gib=None if m["peak_bytes"] is None else round(m["peak_bytes"] / 2**30, 3),
                       loss=round(loss, 6))
            if self.bandwidth:
                rec["floor_ms"] = round(nbytes / self.bandwidth * 1e3, 4)
        except Exception as exc:  # one failing configuration must not end the part
            rec["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            traceback.print_exc()
        self.emit(rec)

    def bench_ms(self, call) -> float:
        if self.dry:
            t0 = time.perf_counter()
            call()
            return (time.perf_counter() - t0) * 1e3
        import triton.testing

        return float(triton.testing.do_bench(call, warmup=25, rep=100, return_mode="median"))

    # ---- parts -------------------------------------------------------------------------------
    def roofline(self):
        torch = self.torch
        z, u, _ = self.inputs(self.n, self.v)
        g = torch.empty_like(z)
        nbytes = 3 * z.numel() * z.element_size()
        ms = self.bench_ms(lambda: torch.add(z, u, out=g))
        self.bandwidth = nbytes / (ms / 1e3)
        self.emit(dict(part="roofline", variant="torch.add(z, u, out=g)", n=self.n, v=self.v, dtype=self.args.dtype,
                       median_ms=round(ms, 4), gbps=round(self.bandwidth / 1e9, 1), bytes=nbytes))
        ms = self.bench_ms(lambda: g.copy_(z))
        self.emit(dict(part="roofline", variant="g.copy_(z)", n=self.n, v=self.v, dtype=self.args.dtype,
                       median_ms=round(ms, 4), gbps=round(2 * z.numel() * z.element_size() / (ms / 1e3) / 1e9, 1)))
        del g

    def triton(self):
        from salt_kernels.benchmarking import cases as C

        sweep = C.TRITON_SWEEP[:3:2] + C.TRITON_SWEEP[6:7] if self.dry else C.TRITON_SWEEP
        for variant in ("triton", *sweep, "liger", "eager"):
            self.time_variant("triton", variant)

    def cuda(self):
        from salt_kernels.benchmarking import cases as C

        for variant in ("cuda", *C.CUDA_SWEEP):
            self.time_variant("cuda", variant)

    def crosscheck(self, samples: int = 48, last: int = 12):
        torch = self.torch
        from salt_kernels import salt_loss

        n, v = self.n, self.v
        student, teacher, labels = self.inputs(n, v)
        g = torch.Generator().manual_seed(1)
        picked = torch.cat([torch.tensor([0]), torch.randint(1, max(n - last, 2), (samples,), generator=g),
                            torch.arange(max(n - last, 0), n)]).unique().to(self.device)
        kw = dict(kd_weight=KD_WEIGHT, temperature=self.args.tau)
        zs, us = (t[picked].double().detach() for t in (student, teacher))
        ys = labels[picked]
        zs.requires_grad_(True)
        ref_rows = salt_loss(zs, us, ys, reduction="none", backend="reference", **kw)
        (ref_grad,) = torch.autograd.grad(ref_rows.sum(), zs)
        for backend in ("triton", "cuda"):
            rec = dict(part="crosscheck", variant=backend, n=n, v=v, dtype=self.args.dtype, tau=self.args.tau,
                       rows_checked=int(picked.numel()))
            try:
                from salt_kernels.backends import registry

                ok, why = registry.backend_status(backend, self.device)
                if not ok and not (self.dry and backend == "triton"):
                    rec["error"] = f"not run: {why}"
                    self.emit(rec)
                    continue
                x = student.detach().requires_grad_(True)
                rows = salt_loss(x, teacher, labels, reduction="none", backend=backend, **kw)
                (grad,) = torch.autograd.grad(rows.sum(), x)
                got, ref = rows.detach()[picked].double(), ref_rows.detach()
                loss_rel = float(((got - ref).abs() / ref.abs().clamp_min(1e-6)).max())
                gs, gr = grad[picked].double(), ref_grad
                grad_rel = float((gs - gr).norm() / gr.norm())
                row_rel = float(((gs - gr).norm(dim=1) / gr.norm(dim=1).clamp_min(1e-30)).max())
                tol_grad = 1e-5 if grad.dtype == torch.float32 else 1e-2
                rec.update(loss_max_rel=loss_rel, grad_rel=grad_rel, grad_row_max_rel=row_rel,
                           finite=bool(torch.isfinite(rows).all() and torch.isfinite(grad).all()),
                           ok=bool(loss_rel <= 1e-5 and row_rel <= tol_grad))
                del x, rows, grad
            except Exception as exc:
                rec["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                traceback.print_exc()
            self.emit(rec)
            print(f"  {backend}: {json.dumps({k: rec.get(k) for k in ('loss_max_rel', 'grad_rel', 'grad_row_max_rel', 'ok')})}")

    def extra(self):
        for variant in ("triton", "cuda", "liger", "eager"):
            self.time_variant("extra", variant, pass_="fwd")
        for variant in ("triton", "cuda", "liger"):
            self.time_variant("extra", variant, tau=1.5)
        if not self.dry:
            for v in (32000, 256000):
                for variant in ("triton", "cuda", "liger"):
                    self.time_variant("extra", variant, v=v)

    def ncu(self):
        """One forward+backward call per plan, for ncu to profile (no timing here)."""
        from salt_kernels.benchmarking import cases as C

        student, teacher, labels = self.inputs(self.n, self.v)
        for variant in ("triton-fused", "triton-split", "triton-sync", "cuda", "cuda-b512-c1", "cuda-b512-c4"):
            ok, why = C.variant_status(variant, self.device)
            if not ok and not (self.dry and C.base_variant(variant) == "triton"):
                print(f"  {variant}: not run: {why}")
                continue
            fn = C.make_loss_fn(variant, KD_WEIGHT, 2.0)
            x = student.detach().requires_grad_(True)
            self.torch.autograd.grad(fn(x, teacher, labels), x)
            if self.device.type == "cuda":
                self.torch.cuda.synchronize()
            print(f"  {variant}: ran", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", nargs="+", default=["all"], choices=PARTS + ("all",), help="parts to run, in order")
    p.add_argument("--rows", type=int, default=16384, help="N (default 16384)")
    p.add_argument("--vocab", type=int, default=128256, help="V (default 128256)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="logit dtype (default bf16)")
    p.add_argument("--tau", type=float, default=2.0, help="temperature of the crosscheck (default 2)")
    p.add_argument("--json", help="append the records to this JSON list (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (Triton interpreter): "
                   "checks the script, measures nothing")
    args = p.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("kernel_check: no CUDA device here; nothing measured (--dry-run checks the script on the CPU)",
              file=sys.stderr)
        return 2
    parts = [x for x in PARTS if x != "ncu"] if "all" in args.part else args.part
    c = Checker(args)
    for part in parts:
        print(f"== {part}", flush=True)
        if part in ("triton", "cuda", "extra") and c.bandwidth is None:
            c.roofline()
        getattr(c, part)()
        if args.json:  # after every part: a part cut by a timeout keeps what came before
            old = []
            if os.path.exists(args.json):
                with open(args.json) as f:
                    old = json.load(f)
            with open(args.json, "w") as f:
                json.dump(old + c.records, f, indent=1)
            c.records = []
    failed = False
    if args.json and os.path.exists(args.json):
        with open(args.json) as f:
            done = json.load(f)
        failed = any(r.get("part") == "crosscheck" and r.get("ok") is False for r in done)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
