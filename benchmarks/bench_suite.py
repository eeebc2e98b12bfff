"""pytest-benchmark suite of the SALT loss: every salt_kernels backend and the baselines (PyTorch
eager, torch.compile, Liger-Kernel), forward / backward / forward + backward, parametrized over
the grid. Each case first checks its loss against the reference backend on the same inputs, so
a wrong variant fails instead of being timed.

    python -m pytest benchmarks/bench_suite.py --benchmark-enable            # tiny grid
    SALT_BENCH_GRID=default python -m pytest benchmarks/bench_suite.py --benchmark-enable
    SALT_BENCH_GRID=full SALT_BENCH_OUT=bench.json python -m pytest benchmarks/bench_suite.py \\
        --benchmark-enable --benchmark-json pytest-bench.json

The cases, their inputs, the timer and the memory probe are `salt-kernels bench`'s
(salt_kernels.benchmarking: blocked_autorange on CPU, do_bench on GPU); pytest-benchmark gets
the per-call times from that timer for its tables, --benchmark-json and --benchmark-compare, and
each test's results record (the `salt-kernels bench` format) in its extra_info. SALT_BENCH_OUT
also writes the records as a `salt-kernels bench` results file (benchmarks/report.py renders it).

SALT_BENCH_GRID: tiny (N=64, V=1000 and 4096; the default, a smoke test), default (what
`salt-kernels bench` runs by default on this device), full (N 1024,4096,16384 x V
32000,128256,256000). SALT_BENCH_DEVICE: cpu or cuda (default: cuda when visible).
pyproject's addopts has --benchmark-disable: without --benchmark-enable each case is timed once
(a check that it runs). Variants that cannot run here, and cases whose estimated memory does not
fit, are skipped with the reason (shown by -ra). `salt-kernels bench` measures the same cases,
each in its own process.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from salt_kernels.benchmarking import cases as C
from salt_kernels.benchmarking import results
from salt_kernels.benchmarking.machine import available_bytes
from salt_kernels.benchmarking.timing import measure_pass

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
# `salt-kernels bench`'s defaults on this device; once, untimed warm-up included, when disabled.
TIMING = dict(repeats=3, warmup=3, min_time=0.1) if DEVICE.type == "cuda" else dict(repeats=3, warmup=1, min_time=1.0)
QUICK = dict(repeats=1, warmup=0, min_time=0.0)
RECORDS: list[dict] = []


@functools.lru_cache(maxsize=1)
def _inputs(n, v, dtype):
    return C.case_inputs(C.Case("eager", n, v, dtype), DEVICE)[0]


@functools.lru_cache(maxsize=4)
def _reference_value(n, v, dtype):
    with torch.no_grad():
        return C.make_loss_fn("reference")(*_inputs(n, v, dtype)).item()


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


def _publish(benchmark, times):
    """Hand the shared timer's per-call times to pytest-benchmark. It has no public call for
    times measured elsewhere: this is what its own pedantic() does with the times it takes."""
    benchmark._mode = "benchmark.pedantic(...)"
    stats = benchmark._make_stats(1)
    for t in times:
        stats.update(t)


@pytest.fixture(scope="module", autouse=True)
def _results_file():
    yield
    path = os.environ.get("SALT_BENCH_OUT")
    if path and RECORDS:
        config = {**TIMING, "kd_weight": C.KD_WEIGHT, "temperature": C.TEMPERATURE, "passes": list(C.PASSES),
                  "op": "loss", "n": list(NS), "v": list(VS), "dtypes": list(C.DTYPES), "grid": GRID,
                  "variants": list(dict.fromkeys(r["variant"] for r in RECORDS)), "isolated": False}
        doc = results.new_document("salt-kernels-bench", DEVICE, f"SALT_BENCH_GRID={GRID} python -m pytest "
                                   "benchmarks/bench_suite.py --benchmark-enable", config, copy_bandwidth={})
        doc["results"] = RECORDS
        results.fill_derived(RECORDS, None)
        results.save(doc, path)


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

    benchmark.group = f"{dtype} {pass_} N={n} V={v}"

    def measure():
        return measure_pass(fn, (student, teacher, labels), (student,), pass_,
                            **(TIMING if benchmark.enabled else QUICK))

    if benchmark.enabled:
        m = measure()
        _publish(benchmark, m["times_s"])
    else:
        m = benchmark.pedantic(measure)  # disabled: runs it once, records nothing
    assert m["median_s"] > 0 and m["repeats"] >= 1
    record = results.record(C.Case(variant, n, v, dtype), pass_, status="ok", reason="", loss_value=value, **m)
    benchmark.extra_info.update(record)
    RECORDS.append(record)
