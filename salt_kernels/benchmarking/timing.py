"""The timer of every benchmark: one pass of a case's function, its peak memory, and the
machine's copy bandwidth.

A pass is one call: fwd = the loss under no_grad, inputs that need no gradient; fwd_nograd =
the loss under torch.no_grad() with inputs that require grad (an evaluation step of a model in
training: the losses skip all gradient work, no gradient buffer); fwdbwd = the loss and
torch.autograd.grad of it (a fresh gradient per call, nothing accumulates); bwd = that
autograd.grad alone, after an untimed forward before each call.

CPU: torch.utils.benchmark.Timer.blocked_autorange for fwd, fwd_nograd and fwdbwd, for at least
`min_time` seconds and at least `repeats` calls (a second blocked_autorange tops up when one
call outlasts the blocks); the peak resident set over the timed calls. GPU:
triton.testing.do_bench (L2 flushed before each call, median) for those passes; the peak
allocated memory of one call, measured alone. bwd needs an untimed forward before every call,
which neither timer has: it is timed call by call (perf_counter on CPU, CUDA events with the L2
flushed on GPU), the peak taken while the backward runs (the forward's saved tensors count).

The fused salt_kernels backends compute the gradient during the forward of a training step
(each row is in cache then), so their "bwd" is close to zero and their "fwdbwd" is about their
training forward; compare fwd+bwd across variants.
"""

from __future__ import annotations

import statistics
import time

import torch

from .machine import PeakMemory, synchronize

MAX_SETUP_CALLS = 50  # calls of a pass with an untimed setup (bwd), at most


def summary(times: list[float], calls: int) -> dict:
    """Median, min and max of per-call times (one per timed block), and the calls timed."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        "repeats": calls,
    }


def pass_calls(fn, inputs, grad_inputs, pass_):
    """(prepare, call) for a pass: prepare, when not None, runs untimed before each call."""
    if pass_ in ("fwd", "fwd_nograd"):
        for t in grad_inputs:  # fwd_nograd: grad mode alone tells the loss that no gradient is wanted
            t.requires_grad_(pass_ == "fwd_nograd")

        def call():
            with torch.no_grad():
                fn(*inputs)

        return None, call
    for t in grad_inputs:
        t.requires_grad_(True)
    if pass_ == "fwdbwd":
        return None, lambda: torch.autograd.grad(fn(*inputs), grad_inputs)
    if pass_ == "bwd":
        held = []
        return (lambda: held.append(fn(*inputs))), (lambda: torch.autograd.grad(held.pop(), grad_inputs))
    raise ValueError(f"unknown pass {pass_!r}")


def _warm_up(prepare, call, device, warmup):
    """Untimed calls (compilation happens here); (first call's seconds, last call's seconds,
    last call's seconds with its prepare)."""
    first = last = iteration = None
    for i in range(warmup):
        t_prep = time.perf_counter()
        if prepare:
            prepare()
            synchronize(device)
        t0 = time.perf_counter()
        call()
        synchronize(device)
        t1 = time.perf_counter()
        first = t1 - t0 if i == 0 else first
        last, iteration = t1 - t0, t1 - t_prep
    return first, last, iteration


def _blocked_autorange(call, repeats, min_time) -> tuple[list[float], int]:
    from torch.utils.benchmark import Measurement, Timer

    timer = Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_time)
    calls = len(m.raw_times) * m.number_per_run
    if calls < repeats:  # a block is one call that outlasts min_time: top up to `repeats` calls
        more = timer.blocked_autorange(min_run_time=(repeats - calls - 0.5) * m.median)
        calls += len(more.raw_times) * more.number_per_run
        (m,) = Measurement.merge([m, more])
    return list(m.times), calls


def _do_bench(call, rep_ms) -> tuple[list[float], int | None]:
    """(seconds per call, calls timed); a triton before return_mode="all" gives min, median and
    max only (and no count)."""
    import triton.testing

    try:
        ms = triton.testing.do_bench(call, warmup=25, rep=rep_ms, return_mode="all")
        return [t / 1000.0 for t in ms], len(ms)
    except (AssertionError, TypeError, ValueError):
        ms = triton.testing.do_bench(call, warmup=25, rep=rep_ms, quantiles=[0.0, 0.5, 1.0])
        return [t / 1000.0 for t in ms], None


def _with_setup(prepare, call, device, n, mem) -> tuple[list[float], int]:
    """n calls, each after an untimed prepare(); (seconds per call, peak above the baseline)."""
    flush = torch.empty(256 << 20, dtype=torch.int8, device=device) if device.type == "cuda" else None
    mem.set_baseline()  # the inputs (and the L2-flush buffer)
    times, peak = [], 0
    for _ in range(n):
        prepare()
        synchronize(device)
        mem.reset()
        if flush is None:
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        else:
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        peak = max(peak, mem.peak_above_baseline())
    return times, peak


def measure_pass(fn, inputs, grad_inputs, pass_, *, repeats=3, warmup=1, min_time=1.0) -> dict:
    """Time one pass; {"median_s", "min_s", "max_s", "times_s", "repeats" (calls timed),
    "first_call_s", "peak_bytes" (above the inputs; None where the OS cannot tell)}."""
    device = inputs[0].device
    gpu = device.type == "cuda"
    prepare, call = pass_calls(fn, inputs, grad_inputs, pass_)
    first, estimate, iteration = _warm_up(prepare, call, device, max(warmup, 1) if gpu else warmup)
    mem = PeakMemory(device)
    if prepare is not None:
        budget = max(min_time, 0.1) if gpu else min_time
        n = max(repeats, min(MAX_SETUP_CALLS, int(budget / iteration))) if iteration else repeats
        times, peak = _with_setup(prepare, call, device, n, mem)
        calls = n
    else:
        mem.set_baseline()
        mem.reset()
        if gpu:  # the peak of one call, alone: do_bench's L2-flush buffer must not count
            call()
            peak = mem.peak_above_baseline()
            times, calls = _do_bench(call, max(100.0, 1000.0 * min_time, 1000.0 * estimate * repeats * 1.5))
        else:
            times, calls = _blocked_autorange(call, repeats, min_time)
            peak = mem.peak_above_baseline()
    out = summary(times, calls)
    out["first_call_s"] = first
    out["peak_bytes"] = peak if mem.supported else None
    return out


def measure_passes(fn, inputs, grad_inputs, passes, **kw) -> dict:
    """{pass: measure_pass(...)} for the passes asked for."""
    return {p: measure_pass(fn, inputs, grad_inputs, p, **kw) for p in passes}


def copy_bandwidth(device: torch.device, nbytes: int | None = None) -> float:
    """Achieved bandwidth (bytes/s) of dst.copy_(src) on a buffer far larger than the caches,
    counting the read and the write (2 x size), timed like the passes: the yardstick for the
    loss kernels' GB/s."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    if device.type == "cuda":
        seconds = statistics.median(_do_bench(lambda: dst.copy_(src), 100.0)[0])
    else:
        seconds = statistics.median(_blocked_autorange(lambda: dst.copy_(src), 5, 0.2)[0])
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the case processes need this memory
    return 2 * nbytes / seconds
