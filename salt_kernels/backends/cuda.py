"""Launcher of the hand-written CUDA kernel (csrc/cuda, bound in python/bind_cuda.cpp as
salt_kernels._salt_cuda). It only turns tensors into device addresses, strides, dtype codes, the
device ordinal and torch's current stream; the caller (functional.salt_loss) has validated the
inputs.

The module links the CUDA runtime statically, so it is built (where nvcc exists) and imported
without a GPU and without a CUDA-enabled torch. The kernel is compiled for sm_90 (Hopper) with a
compute_90 PTX fallback that the driver JIT-compiles for newer GPUs; older GPUs are refused.

Tuning knobs (read once at import): SALT_CUDA_BLOCK (32 = a warp per row, 256 or 512 threads per
block) and SALT_CUDA_CLUSTER (1, 2, 4 or 8 blocks per row as a thread-block cluster) override the
launch configuration the kernel picks from the vocabulary size and dtypes (see launch_config).
"""

from __future__ import annotations

import os

import torch

from .base import DTYPE_CODES, LossOptions, RowArgs, RowOutputs, topk_kernel_args

NAME = "cuda"
MIN_CAPABILITY = (9, 0)

try:
    from .. import _salt_cuda  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except ImportError as exc:  # not built: nvcc was missing at install time, or the build failed
    _salt_cuda = None
    _IMPORT_ERROR = (
        f"compiled module salt_kernels._salt_cuda is missing ({exc}); it is built by "
        "`pip install -e .` where nvcc is found (set CUDA_HOME or put nvcc on PATH)"
    )



def _int_env(name: str) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return 0
    try:
        return max(0, int(value))
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from exc


_BLOCK = _int_env("SALT_CUDA_BLOCK")
_CLUSTER = _int_env("SALT_CUDA_CLUSTER")


def is_available() -> tuple[bool, str]:
    if _salt_cuda is None:
        return False, _IMPORT_ERROR
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return False, "no CUDA device (this torch build has no CUDA support)"
        return False, "no CUDA device"
    return True, ""


# Options rows_kernel_options computes (docs/design.md, "Distillation options"); checked against
# the reference backend in the CUDA-kernel emulator (tests/test_cuda_backend.py).
_SUPPORTED_OPTIONS = frozenset(
    {"softcap", "teacher_softcap", "kd_vocab", "divergence", "beta", "label_smoothing", "z_loss"}
)


def supports_options(options: LossOptions) -> tuple[bool, str]:
    extra = [name for name in options.non_default() if name not in _SUPPORTED_OPTIONS]
    if extra:
        return False, f"backend {NAME} does not compute {', '.join(extra)} yet"
    return True, ""


def supports_device(device: torch.device) -> tuple[bool, str]:
    ok, why = is_available()
    if not ok:
        return ok, why
    if device.type != "cuda":
        return False, f"backend cuda runs on CUDA tensors, got a {device.type} tensor"
    index = device.index if device.index is not None else torch.cuda.current_device()
    cap = torch.cuda.get_device_capability(index)
    if cap < MIN_CAPABILITY:
        return False, (
            f"backend cuda is built for sm_90 (compute capability 9.0 or newer); "
            f"cuda:{index} has {cap[0]}.{cap[1]}"
        )
    return True, ""


def launch_config(vocab: int, student_dtype: torch.dtype, teacher_dtype: torch.dtype | None = None,
                  *, block: int | None = None, cluster: int | None = None) -> tuple[str, int, int]:
    """(mode, threads, cluster) the kernel uses for rows of `vocab` logits: mode "warp" (one warp
    per row) or "block" (a block of `threads`, or a cluster of `cluster` such blocks, per row)."""
    if _salt_cuda is None:
        raise RuntimeError(_IMPORT_ERROR)
    return _salt_cuda.launch_config(
        vocab,
        DTYPE_CODES[student_dtype],
        -1 if teacher_dtype is None else DTYPE_CODES[teacher_dtype],
        _BLOCK if block is None else block,
        _CLUSTER if cluster is None else cluster,
    )


def rows(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, *, block: int | None = None,
         cluster: int | None = None, **keywords) -> RowOutputs:
    """The row contract of backends/base.py (keywords: those of RowArgs) on CUDA tensors. `block` /
    `cluster` override the launch configuration (tests and tuning; None: SALT_CUDA_BLOCK /
    SALT_CUDA_CLUSTER, else automatic)."""
    a = RowArgs(student, teacher, labels, **keywords)
    n = student.shape[0]
    device = student.device
    out = RowOutputs.empty(n, device)
    if n == 0:
        return out
    # With an option on, the options kernel runs and computes the accuracy along the way; the
    # plain loss keeps its kernel (and leaves the accuracy to the op, when asked for).
    with_options = bool(a.options.non_default())
    if with_options:
        out.accuracy = torch.empty(n, dtype=torch.float32, device=device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    _salt_cuda.rows(
        **a.kernel_args(out, with_options=with_options),
        stream=torch.cuda.current_stream(device).cuda_stream,
        device=index,
        block=_BLOCK if block is None else block,
        cluster=_CLUSTER if cluster is None else cluster,
    )
    return out


def _topk_rows(student: torch.Tensor, indices: torch.Tensor, logprobs: torch.Tensor, labels: torch.Tensor, *,
               tail: str = "bucket", **keywords) -> RowOutputs:
    """The row contract with an offline top-k teacher (see reference.topk_rows; keywords: those of
    RowArgs) on CUDA tensors, by the kernel of csrc/cuda/topk_kernel.cuh (a block per row; rows of
    at most _salt_cuda.topk_max_vocab entries, whose bitmap of the slots fits in shared memory).
    lse holds (lse_z, lse_zt, lse_rest); the accuracy is computed along the way."""
    a = RowArgs(student, None, labels, **keywords)
    n, vocab = student.shape
    if vocab > _salt_cuda.topk_max_vocab:
        raise ValueError(f"backend cuda's top-k kernel takes rows of at most {_salt_cuda.topk_max_vocab} logits "
                         f"(its bitmap of the teacher's slots lives in shared memory), got {vocab}: use "
                         "backend='triton' (or 'auto') for this vocabulary")
    device = student.device
    out = RowOutputs.empty(n, device)
    out.accuracy = torch.empty(n, dtype=torch.float32, device=device)
    if n == 0:
        return out
    slots, _keep = topk_kernel_args(a, indices, logprobs, tail)
    index = device.index if device.index is not None else torch.cuda.current_device()
    _salt_cuda.topk_rows(**{**a.kernel_args(out), **slots}, stream=torch.cuda.current_stream(device).cuda_stream,
                         device=index)
    return out


# Advertised (registry.backend_status looks for the attribute) only when the built module has the
# top-k kernel, so an older build reports "no topk_rows kernel" instead of failing.
if _salt_cuda is not None and hasattr(_salt_cuda, "topk_rows"):
    topk_rows = _topk_rows
