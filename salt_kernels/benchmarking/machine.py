"""What the benchmarks need to know about the machine: a description for the results, the memory
that is free for a case, device synchronization, per-process peak memory and the device's peak
FLOP rate (for model FLOP utilization)."""

from __future__ import annotations

import ctypes
import datetime
import os
import platform
import re
import socket

import torch

# Dense (no sparsity) peak tensor-core FLOP/s by (device-name pattern, dtype), from the vendors'
# data sheets. Matched in order against torch.cuda.get_device_name(); first match wins.
PEAK_FLOPS = (
    (r"H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),
    (r"H100.*PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 51e12}),
    (r"H100|H800", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),
    (r"A100|A800", {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}),
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def describe(device: torch.device) -> dict:
    """A JSON-ready description of the machine the numbers come from."""
    info = {
        "device": device.type,
        "name": device_name(device),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "load_average_start": load_average(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_bytes"] = props.total_memory
        info["cuda"] = torch.version.cuda
    else:
        try:
            from ..backends import cpu as cpu_backend

            info["cpu_isa"] = cpu_backend.isa()  # the instruction set of the fused CPU kernel
        except Exception:  # the description must not stop a run
            info["cpu_isa"] = None
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # triton is optional
        info["triton"] = None
    return info


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def busy_warning(machine: dict) -> str | None:
    """A warning when other work shared the CPU while the numbers were taken: the load before the
    run is others' work; at the end it includes this run's own threads."""
    cores = machine.get("cpu_cores") or 1
    start, end = machine.get("load_average_start"), machine.get("load_average_end")
    if (start is not None and start > 0.5 * cores) or (end is not None and end > 1.5 * cores):
        return (
            f"WARNING: the machine was busy (1-minute load average {start} at the start, {end} at the end, "
            f"{cores} cores): times are slower and noisier than on an idle machine."
        )
    return None


def available_bytes(device: torch.device) -> int:
    """Memory a new process can use now: MemAvailable on CPU, free device memory on GPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # Not Linux: fall back on the physical memory size.
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's dense peak FLOP/s for matmuls in `dtype`, or None when unknown (CPUs,
    GPUs not in PEAK_FLOPS)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    key = str(dtype).replace("torch.", "")
    for pattern, table in PEAK_FLOPS:
        if re.search(pattern, name):
            return table.get(key)
    return None


class PeakMemory:
    """Peak memory of this process above a baseline, between reset() and peak_above_baseline().

    GPU: torch.cuda.max_memory_allocated (tensor memory of the caching allocator).
    CPU: the process's resident set. Linux keeps its high-water mark (VmHWM), which writing "5"
    to /proc/self/clear_refs resets to the current RSS; freed heap memory is handed back to the
    OS first (malloc_trim) so that it does not hide in the baseline.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self._libc = None
        if device.type == "cpu":
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self._libc = None
            self.cpu_supported = self._can_reset_hwm()

    @staticmethod
    def _status_kb(field: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def _can_reset_hwm(self) -> bool:
        if self._status_kb("VmHWM") is None:
            return False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return True

    @property
    def supported(self) -> bool:
        return self.device.type == "cuda" or self.cpu_supported

    def current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        if self._libc is not None:
            self._libc.malloc_trim(0)
        return self._status_kb("VmRSS") or 0

    def set_baseline(self) -> int:
        """Record the memory held now (the inputs) as the baseline, after collecting the young
        garbage (cycles left by the calls just made; a full collection of a large process takes
        a good part of a second)."""
        import gc

        gc.collect(1)
        self.baseline = self.current()
        return self.baseline

    def reset(self) -> None:
        """Start a new peak window (the peak becomes the memory held now)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.cpu_supported:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak(self) -> int:
        """Peak since reset(), absolute."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return self._status_kb("VmHWM") or 0

    def peak_above_baseline(self) -> int:
        return max(0, self.peak() - self.baseline)
