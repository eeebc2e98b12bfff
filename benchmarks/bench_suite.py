"""pytest-benchmark suite of the SALT loss: every salt_kernels backend and the baselines (PyTorch
eager, torch.compile, Liger-Kernel), forward / backward / forward + backward, parametrized over
the grid. Each case first checks its loss against the reference backend on the same inputs, so
a wrong variant fails instead of being timed.

    python -m pytest benchmarks/bench_suite.py --benchmark-enable            # tiny grid
    SALT_BENCH_GRID=default python -m pytest benchmarks/bench_suite.py --benchmark-enable
    SALT_BENCH_GRID=full    python -m pytest benchmarks/bench_suite.py --benchmark-enable \\
        --benchmark-json bench.json

SALT_BENCH_GRID: tiny (N=64, V=1000 and 4096; the default, a smoke test that runs in seconds),
default (what `salt-kernels bench` runs by default on this device), full (N 1024,4096,16384 x
V 32000,128256,256000). SALT_BENCH_DEVICE: cpu or cuda (default: cuda when visible).
pyproject's addopts has --benchmark-disable, so without --benchmark-enable each case runs once.
Variants that cannot run here, and cases whose estimated memory does not fit, are skipped with
the reason (shown by -ra). `salt-kernels bench` measures the same cases with peak memory and
the copy-bandwidth yardstick, each in its own process.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from salt_kernels.benchmarking import cases as C
from salt_kernels.benchmarking.machine import available_bytes

GRID = os.environ.get("SALT_BENCH_GRID", "tiny")
DEVICE = torch.device(os.environ.get("SALT_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
if GRID == "tiny":
    NS, VS = (64,), (1000, 4096)
elif GRID == "default":
    NS, VS = C.default_grid(DEVICE, full=False)
elif GRID == "full":
    NS, VS = C.FULL_N, C.FULL_V
else:
    raise pytest.UsageError(f"SALT_BENCH_GRID must be tiny, default or full, got {GRID!r}")


@functools.lru_cache(maxsize=1)
def _inputs(n, v, dtype):
    return C.make_inputs(n, v, C.DTYPES[dtype], DEVICE)


@functools.lru_cache(maxsize=4)
def _reference_value(n, v, dtype):
    s, t, y = _inputs(n, v, dtype)
    with torch.no_grad():
        return C.make_loss_fn("reference")(s, t, y).item()


@functools.lru_cache(maxsize=None)
def _loss_fn(variant):
    return C.make_loss_fn(variant)


def _skip_reason(variant, n, v, dtype):
    ok, why = C.variant_status(variant, DEVICE)
    if not ok:
        return f"{variant} not usable on {DEVICE.type}: {why}"
    if variant in C.OPT_IN and GRID != "tiny":
        return (f"{variant} is the plain-PyTorch oracle, not a performance backend (seconds per call at "
                "these sizes); it runs in the tiny grid, and in `salt-kernels bench --backends ...,reference`")
    if variant == "compile" and GRID == "tiny":
        return ("torch.compile compiles each shape and mode for 30-60 s on a small CPU: run it with "
                "SALT_BENCH_GRID=default or full")
    case = C.Case(variant, n, v, dtype)
    need, avail = case.estimated_bytes(), available_bytes(DEVICE)
    if need > 0.85 * avail:
        return (f"{variant} N={n} V={v} {dtype} needs ~{need / 2**30:.1f} GiB, "
                f"{avail / 2**30:.1f} GiB free on {DEVICE.type}")
    return None


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


@pytest.mark.parametrize("pass_", C.PASSES)
@pytest.mark.parametrize("variant", C.VARIANTS)
@pytest.mark.parametrize("v", VS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("dtype", list(C.DTYPES))
def test_salt_loss(benchmark, dtype, n, v, variant, pass_):
    why = _skip_reason(variant, n, v, dtype)
    if why:
        pytest.skip(why)
    fn = _loss_fn(variant)
    student, teacher, labels = _inputs(n, v, dtype)
    if variant == "liger":  # Liger's CE writes its gradient into its input: keep the cache intact
        student = student.clone()
    student = student.detach()

    # The variant must compute the loss it claims to before its time means anything.
    with torch.no_grad():
        value = fn(student.clone() if variant == "liger" else student, teacher, labels).item()
    expected = _reference_value(n, v, dtype)
    assert abs(value - expected) <= 1e-3 * abs(expected) + 1e-4, (
        f"{variant} computes {value}, the reference backend {expected} on the same inputs"
    )

    case = C.Case(variant, n, v, dtype)
    benchmark.extra_info.update(
        {"variant": variant, "n": n, "v": v, "dtype": dtype, "pass": pass_, "min_bytes": case.min_bytes(pass_),
         "device": DEVICE.type}
    )
    benchmark.group = f"{dtype} {pass_} N={n} V={v}"
    if pass_ == "fwd":
        student.requires_grad_(False)

        def run():
            with torch.no_grad():
                out = fn(student, teacher, labels)
            _sync()
            return out

        loss = benchmark(run)
    elif pass_ == "fwdbwd":
        student.requires_grad_(True)

        def run():
            student.grad = None
            out = fn(student, teacher, labels)
            out.backward()
            _sync()
            return out

        loss = benchmark(run)
        assert student.grad is not None and torch.isfinite(student.grad.float()).all()
    else:
        student.requires_grad_(True)

        def setup():
            student.grad = None
            out = fn(student, teacher, labels)
            _sync()
            return (out,), {}

        def run(out):
            out.backward()
            _sync()
            return out

        loss = benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1, iterations=1)
        assert student.grad is not None and torch.isfinite(student.grad.float()).all()
    assert torch.isfinite(loss).all()
