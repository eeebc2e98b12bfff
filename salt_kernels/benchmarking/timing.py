"""Timing of one loss variant for one pass, its peak memory, and the machine's copy bandwidth.

CPU: time.perf_counter around each call, median over at least `repeats` calls (more while the
total stays under `min_time` seconds) after `warmup` untimed calls. When both are asked for,
fwd+bwd and bwd come from the same training steps (the clock read between loss and
loss.backward(); CPU ops are synchronous), which saves a third of the run.
GPU: triton.testing.do_bench's median (L2 flushed before each call) for fwd and fwd+bwd; the
backward alone is timed with CUDA events around loss.backward() after an untimed forward, the
L2 flushed in between, median over the calls.

The fused salt_kernels backends compute the gradient during the forward of a training step
(each row is in cache then), so their "bwd" is close to zero and their "fwdbwd" is about
their training forward; compare fwd+bwd across variants.
"""

from __future__ import annotations

import statistics
import time

import torch

from .machine import PeakMemory, synchronize

MAX_CPU_REPEATS = 50


def _median_summary(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        "repeats": len(times),
    }


def _pass_callables(fn, student, teacher, labels, pass_):
    """(prepare, timed) for a pass: prepare() runs untimed before each timed() call."""
    if pass_ == "fwd":
        student.requires_grad_(False)

        def prepare():
            return None

        def timed():
            with torch.no_grad():
                fn(student, teacher, labels)

        return prepare, timed
    student.requires_grad_(True)
    if pass_ == "fwdbwd":

        def prepare():
            student.grad = None

        def timed():
            fn(student, teacher, labels).backward()

        return prepare, timed
    if pass_ == "bwd":
        holder = {}

        def prepare():
            student.grad = None
            holder["loss"] = fn(student, teacher, labels)

        def timed():
            holder.pop("loss").backward()

        return prepare, timed
    raise ValueError(f"unknown pass {pass_!r}")


def measure_pass_cpu(fn, student, teacher, labels, pass_, *, repeats=3, warmup=1, min_time=1.0):
    """Median time and peak memory above the inputs of one pass on CPU tensors."""
    device = student.device
    prepare, timed = _pass_callables(fn, student, teacher, labels, pass_)
    mem = PeakMemory(device)
    first = None
    for i in range(warmup):
        prepare()
        t0 = time.perf_counter()
        timed()
        if i == 0:
            first = time.perf_counter() - t0
    student.grad = None
    mem.set_baseline()
    peak = 0
    times: list[float] = []
    start = time.perf_counter()
    # At least `repeats` calls; more while the pass's wall time (untimed forwards of "bwd"
    # included) stays under min_time.
    while len(times) < repeats or (time.perf_counter() - start < min_time and len(times) < MAX_CPU_REPEATS):
        prepare()
        if pass_ == "bwd":  # the peak while the backward runs (the forward's saved tensors count)
            mem.reset()
        elif not times:
            mem.reset()
        t0 = time.perf_counter()
        timed()
        times.append(time.perf_counter() - t0)
        if pass_ == "bwd":
            peak = max(peak, mem.peak_above_baseline())
    if pass_ != "bwd":
        peak = mem.peak_above_baseline()
    student.grad = None
    out = _median_summary(times)
    out["first_call_s"] = first
    out["peak_bytes"] = peak if mem.supported else None
    return out


def measure_train_cpu(fn, student, teacher, labels, *, repeats=3, warmup=1, min_time=1.0):
    """(fwdbwd, bwd) results from the same training steps on CPU tensors: each step's total and
    its backward part; the peak of the whole step and of its backward, above the inputs."""
    device = student.device
    student.requires_grad_(True)
    mem = PeakMemory(device)
    first = None
    first_bwd = None
    for i in range(warmup):
        student.grad = None
        t0 = time.perf_counter()
        loss = fn(student, teacher, labels)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        del loss
        if i == 0:
            first, first_bwd = t2 - t0, t2 - t1
    student.grad = None
    mem.set_baseline()
    totals: list[float] = []
    backwards: list[float] = []
    peak_step = peak_bwd = 0
    start = time.perf_counter()
    while len(totals) < repeats or (time.perf_counter() - start < min_time and len(totals) < MAX_CPU_REPEATS):
        student.grad = None
        mem.reset()
        t0 = time.perf_counter()
        loss = fn(student, teacher, labels)
        t1 = time.perf_counter()
        peak_fwd = mem.peak_above_baseline()
        mem.reset()  # the backward's own peak (the forward's saved tensors count, they are held)
        t1b = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        bwd_peak = mem.peak_above_baseline()
        del loss
        totals.append((t1 - t0) + (t2 - t1b))
        backwards.append(t2 - t1b)
        peak_bwd = max(peak_bwd, bwd_peak)
        peak_step = max(peak_step, peak_fwd, bwd_peak)
    student.grad = None
    fwdbwd = _median_summary(totals)
    fwdbwd.update(first_call_s=first, peak_bytes=peak_step if mem.supported else None)
    bwd = _median_summary(backwards)
    bwd.update(first_call_s=first_bwd, peak_bytes=peak_bwd if mem.supported else None)
    return fwdbwd, bwd


def measure_passes(fn, student, teacher, labels, passes, **kw) -> dict:
    """{pass: measurements} for the passes asked for."""
    out = {}
    if student.device.type == "cpu" and "fwdbwd" in passes and "bwd" in passes:
        out["fwdbwd"], out["bwd"] = measure_train_cpu(fn, student, teacher, labels, **kw)
    for pass_ in passes:
        if pass_ not in out:
            out[pass_] = measure_pass(fn, student, teacher, labels, pass_, **kw)
    return {p: out[p] for p in passes}


def measure_pass_gpu(fn, student, teacher, labels, pass_, *, repeats=10, warmup=3, min_time=0.1):
    """Median time (do_bench / CUDA events) and peak allocated memory above the inputs on GPU."""
    import triton.testing

    device = student.device
    prepare, timed = _pass_callables(fn, student, teacher, labels, pass_)
    # Warm up (torch.compile and Triton compile here), timing the first call.
    first = None
    estimate = None  # seconds of one timed call
    iteration = None  # seconds of prepare + timed call
    for i in range(max(1, warmup)):
        synchronize(device)
        t_prep = time.perf_counter()
        prepare()
        synchronize(device)
        t0 = time.perf_counter()
        timed()
        synchronize(device)
        t1 = time.perf_counter()
        if i == 0:
            first = t1 - t0
        estimate, iteration = t1 - t0, t1 - t_prep
    # Peak memory of one call, measured alone (do_bench's L2-flush buffer must not count).
    mem = PeakMemory(device)
    student.grad = None
    mem.set_baseline()
    prepare()
    mem.reset()
    timed()
    peak = mem.peak_above_baseline()
    student.grad = None
    rep_ms = max(100.0, 1000.0 * min_time, 1000.0 * estimate * repeats * 1.5)  # >= `repeats` calls
    if pass_ in ("fwd", "fwdbwd"):
        try:
            times_ms = triton.testing.do_bench(
                timed, warmup=25, rep=rep_ms, grad_to_none=[student], return_mode="all"
            )
        except (AssertionError, ValueError):  # triton before return_mode="all": min, median, max
            times_ms = triton.testing.do_bench(
                timed, warmup=25, rep=rep_ms, grad_to_none=[student], quantiles=[0.0, 0.5, 1.0]
            )
            summary = _median_summary([t / 1000.0 for t in times_ms])
            summary.update(times_s=None, repeats=None, first_call_s=first, peak_bytes=peak)
            student.grad = None
            return summary
    else:
        flush = torch.empty(256 << 20, dtype=torch.int8, device=device)
        # Enough backward calls for about rep_ms of wall time, forwards included (the fused
        # backends' backward is microseconds, their forward is not): at least `repeats`, at most 200.
        n = max(repeats, min(200, int(rep_ms / max(1e-3, 1000.0 * iteration))))
        times_ms = []
        for _ in range(n):
            prepare()
            flush.zero_()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            timed()
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
        del flush
    student.grad = None
    out = _median_summary([t / 1000.0 for t in times_ms])
    out["first_call_s"] = first
    out["peak_bytes"] = peak
    return out


def measure_pass(fn, student, teacher, labels, pass_, **kw):
    if student.device.type == "cuda":
        return measure_pass_gpu(fn, student, teacher, labels, pass_, **kw)
    return measure_pass_cpu(fn, student, teacher, labels, pass_, **kw)


def copy_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 10) -> float:
    """Achieved bandwidth (bytes/s) of dst.copy_(src) on a buffer far larger than the caches,
    counting the read and the write (2 x size): the yardstick for the loss kernels' GB/s."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    if device.type == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
        src = dst = None
        torch.cuda.empty_cache()  # the case processes need this memory
        return 2 * nbytes / (ms / 1000.0)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    src = dst = None
    return 2 * nbytes / statistics.median(times)
