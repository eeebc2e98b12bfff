"""The CUDA row kernel (csrc/cuda/rows_kernel.cuh) run on the CPU, for tests on machines without
a GPU: emulate.cpp and emulation.h (beside this file) compile the kernel source with the host
compiler, one fiber per CUDA thread, with real barriers and every global load and store checked
for bounds and alignment against the regions declared here.

    lib = build()                                   # g++, cached under build/cuda_emulator/
    out = rows(lib, student, teacher, labels, kd_weight=..., temperature=..., ignore_index=...,
               grad=None, grad_scale=None, options=DEFAULT_OPTIONS, mode=None, block=None, cluster=None)

`rows` has the row contract of salt_kernels/backends/base.py on CPU tensors. The kernel
arguments come from base.compiled_rows_args, as for the real launcher (so the teacher is passed
as absent when kd_weight == 0), and the launch configuration is the real backend's choice
(salt_kernels.backends.cuda.launch_config) unless mode/block/cluster say otherwise.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import sysconfig
import tempfile

import torch

from salt_kernels.backends import cuda as cuda_backend
from salt_kernels.backends.base import DEFAULT_OPTIONS, RowArgs, RowOutputs, compiled_rows_args, topk_kernel_args

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SOURCE = os.path.join(HERE, "emulate.cpp")
INCLUDE_DIRS = [os.path.join(ROOT, "csrc", "cuda"), HERE]
CACHE_DIR = os.path.join(ROOT, "build", "cuda_emulator")
FLAGS = ["-O1", "-std=c++17", "-shared", "-fPIC", "-w"]


class EmulatorUnavailable(RuntimeError):
    """No host C++ compiler: the emulator cannot be built here."""


def _compiler() -> list[str]:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or sysconfig.get_config_var("CXX")
    if not cxx or not shutil.which(cxx.split()[0]):
        raise EmulatorUnavailable("no C++ compiler (CXX, g++, c++) to build the CUDA-kernel emulator with")
    return cxx.split()


def _inputs() -> list[str]:
    """Every file the build can read: the harness and the kernel's headers."""
    files = glob.glob(os.path.join(HERE, "*.cpp")) + glob.glob(os.path.join(HERE, "*.h"))
    files += glob.glob(os.path.join(ROOT, "csrc", "*.h"))
    files += glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.h")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cuh"))
    return sorted(files)


def build() -> ctypes.CDLL:
    """Compiles the emulator (about 10 s) unless a build of the same sources, flags and compiler
    is cached, and loads it. Raises EmulatorUnavailable without a compiler, RuntimeError with the
    compiler's output when the build fails."""
    cxx = _compiler()
    cmd = [*cxx, *FLAGS, *(f"-I{d}" for d in INCLUDE_DIRS), SOURCE]
    version = subprocess.run([*cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join(cmd + [version]).encode())
    for path in _inputs():
        with open(path, "rb") as f:
            key.update(path.encode() + b"\0" + f.read())
    cache_dir = CACHE_DIR
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError:  # a read-only checkout: build for this run only
        cache_dir = tempfile.mkdtemp(prefix="salt_cuda_emulator-")
    out = os.path.join(cache_dir, f"salt_cuda_emulator-{key.hexdigest()[:16]}.so")
    if not os.path.isfile(out):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
        os.close(fd)
        try:
            proc = subprocess.run([*cmd, "-o", tmp], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}\n{proc.stderr[-4000:]}")
            os.replace(tmp, out)  # atomic: a concurrent run sees the old state or a whole file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        for stale in glob.glob(os.path.join(cache_dir, "salt_cuda_emulator-*.so")):
            if stale != out:  # builds of older sources (a process that loaded one keeps its mapping)
                try:
                    os.remove(stale)
                except OSError:
                    pass
    lib = ctypes.CDLL(out)
    ints, doubles = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_double)
    tail = [ints, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]  # regions, their count, the error buffer
    lib.salt_emulate_rows.restype = lib.salt_emulate_topk_rows.restype = ctypes.c_int
    lib.salt_emulate_rows.argtypes = [ints, doubles, *tail]  # ia, fa
    lib.salt_emulate_topk_rows.argtypes = [ints, doubles, ints, *tail]  # ia, fa, ta
    return lib


# Trailing arguments of salt_emulate_rows that a shorter call leaves at their "off" values:
# ia: kd_vocab, divergence, accuracy; fa: softcap, teacher_softcap, beta, label_smoothing, z_loss.
_IA_LEN, _FA_DEFAULTS = 26, (0.0, 1.0, 0.0, 0.0, 0.5, 0.0, 0.0)


# The leading fields of ia, as compiled_rows_args names them (then: mode, block, cluster, ...).
_IA_ROWS_FIELDS = ("student", "student_row_stride", "student_dtype", "teacher", "teacher_row_stride",
                   "teacher_dtype", "labels", "labels_stride", "labels_int64", "n_rows", "vocab", "ignore_index",
                   "loss", "ce", "kd", "lse", "grad", "grad_row_stride", "grad_scale", "grad_scale_stride")


def launch(lib, ia, fa, regions, ta=None) -> tuple[int, str]:
    """One raw call of salt_emulate_rows, or with ta (the top-k slots) of salt_emulate_topk_rows
    (argument layout in emulate.cpp): (rc, error). ia and fa may stop after the plain loss's
    fields (23 and 2); the options then stay off."""
    flat = [int(v) for r in regions for v in r]
    err = ctypes.create_string_buffer(1024)
    ia = [int(v) for v in ia] + [0] * (_IA_LEN - len(ia))
    fa = [float(v) for v in fa] + list(_FA_DEFAULTS[len(fa):])
    args = [(ctypes.c_int64 * len(ia))(*ia), (ctypes.c_double * len(fa))(*fa)]
    if ta is not None:
        args.append((ctypes.c_int64 * len(ta))(*[int(v) for v in ta]))
    entry = lib.salt_emulate_rows if ta is None else lib.salt_emulate_topk_rows
    rc = entry(*args, (ctypes.c_int64 * max(1, len(flat)))(*flat), len(regions), err, len(err))
    return rc, err.value.decode(errors="replace")


def _grad_regions(grad, grad_scale, a: dict, n: int, vocab: int) -> list[list[int]]:
    """The gradient (written) and its per-row scale (read) as declared regions; none without grad."""
    if grad is None:
        return []
    gs_stride = a["grad_scale_stride"]
    return [region(grad, n, vocab, True), region(grad_scale, n if gs_stride else 1, 1, False, row_stride=gs_stride)]


def region(t: torch.Tensor, rows: int, row_elems: int, writable: bool, row_stride: int | None = None) -> list[int]:
    """A declared memory region: base, row stride in bytes, row bytes, rows, writable."""
    es = t.element_size()
    stride = t.stride(0) if row_stride is None else row_stride
    return [t.data_ptr(), stride * es, row_elems * es, rows, int(writable)]


def default_config(vocab: int, student_dtype, teacher_dtype) -> tuple[str, int, int]:
    """The launch the real backend makes for these rows; ("block", 256, 1) when the compiled
    module (which holds the choice) is not built."""
    if cuda_backend._salt_cuda is None:
        return "block", 256, 1
    return cuda_backend.launch_config(vocab, student_dtype, teacher_dtype)


def rows(lib, student, teacher, labels, *, kd_weight, temperature, ignore_index, grad=None, grad_scale=None,
         options=DEFAULT_OPTIONS, mode=None, block=None, cluster=None) -> RowOutputs:
    """backends/base.py's rows() with the CUDA kernel run by the emulator on CPU tensors. A
    problem the emulator finds (an access outside the declared regions, a misaligned vector
    access, a deadlock) raises AssertionError. With options, the accuracy is computed too (as by
    the real launcher) and the teacher is declared readable only up to kd_vocab."""
    n, vocab = student.shape
    out = RowOutputs.empty(n, student.device)
    if n == 0:
        return out
    with_options = bool(options.non_default())
    if with_options:
        out.accuracy = torch.empty(n, dtype=torch.float32)
    if grad is not None:
        grad_scale = grad_scale.to(torch.float32).contiguous()  # kept alive for the launch
    a = compiled_rows_args(student, teacher, labels, out, kd_weight=kd_weight, temperature=temperature,
                           ignore_index=ignore_index, grad=grad, grad_scale=grad_scale, options=options)
    use_teacher = a["teacher"] != 0
    if mode is None:
        mode, block, cluster = default_config(vocab, student.dtype, teacher.dtype if use_teacher else None)
    ia = [a[k] for k in _IA_ROWS_FIELDS]
    ia += [0 if mode == "warp" else 1, block, cluster, a["kd_vocab"], a["divergence"], a["accuracy"]]
    regions = [region(student, n, vocab, False), region(labels, n, 1, False, row_stride=a["labels_stride"])]
    if use_teacher:
        regions.append(region(teacher, n, options.kd_vocab or vocab, False))
    regions += _grad_regions(grad, grad_scale, a, n, vocab)
    fa = (a["kd_weight"], a["temperature"], a["softcap"], a["teacher_softcap"], a["beta"], a["label_smoothing"],
          a["z_loss"])
    rc, error = launch(lib, ia, fa, regions)
    assert rc == 0, error
    return out


def topk_rows(lib, student, indices, logprobs, labels, *, kd_weight, temperature, ignore_index, tail="bucket",
              grad=None, grad_scale=None, options=DEFAULT_OPTIONS) -> RowOutputs:
    """backends/base.py's top-k row contract (reference.topk_rows) with the CUDA top-k kernel
    (csrc/cuda/topk_kernel.cuh) run by the emulator on CPU tensors, a block per row as the real
    launcher starts it; the accuracy is computed too. The slots are declared readable only when
    they are read (kd_weight > 0)."""
    n, vocab = student.shape
    out = RowOutputs.empty(n, student.device)
    out.accuracy = torch.empty(n, dtype=torch.float32)
    if n == 0:
        return out
    if grad is not None:
        grad_scale = grad_scale.to(torch.float32).contiguous()
    a = compiled_rows_args(student, None, labels, out, kd_weight=kd_weight, temperature=temperature,
                           ignore_index=ignore_index, grad=grad, grad_scale=grad_scale, options=options)
    ia = [a[k] for k in _IA_ROWS_FIELDS] + [1, 256, 1, 0, 0, a["accuracy"]]
    slots, keep = topk_kernel_args(RowArgs(student, None, labels, kd_weight=kd_weight, temperature=temperature,
                                           ignore_index=ignore_index), indices, logprobs, tail)
    ta = [int(slots[f]) for f in ("indices", "indices_row_stride", "indices_int64", "logprobs", "logprobs_row_stride",
                                  "logprobs_dtype", "k", "bucket")]
    use_teacher, k = slots["k"] > 0, slots["k"]
    indices, logprobs = keep
    regions = [region(student, n, vocab, False), region(labels, n, 1, False, row_stride=a["labels_stride"])]
    if use_teacher:
        regions += [region(indices, n, k, False), region(logprobs, n, k, False)]
    regions += _grad_regions(grad, grad_scale, a, n, vocab)
    for t in (out.loss, out.ce, out.kd, out.accuracy):
        regions.append(region(t, 1, n, True))
    regions.append(region(out.lse, 1, 3 * n, True))
    fa = [float(slots["kd_weight"]), a["temperature"], a["softcap"], a["teacher_softcap"], a["beta"], a["label_smoothing"],
          a["z_loss"]]
    rc, error = launch(lib, ia, fa, regions, ta)
    assert rc == 0, error
    return out
