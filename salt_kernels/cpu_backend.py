"""Launcher of the compiled CPU kernel (csrc/cpu, bound in python/bind_cpu.cpp as
salt_kernels._salt_cpu). It only turns tensors into addresses, strides and dtype codes; the
caller (functional.salt_loss) has validated the inputs."""

from __future__ import annotations

import torch

from .rows import RowOutputs

NAME = "cpu"

try:
    from . import _salt_cpu  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except ImportError as exc:  # not built: `pip install -e .` compiles it
    _salt_cpu = None
    _IMPORT_ERROR = f"compiled module salt_kernels._salt_cpu is missing ({exc}); run `pip install -e .` to build it"

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def is_available() -> tuple[bool, str]:
    return (_salt_cpu is not None), _IMPORT_ERROR


def supports_device(device: torch.device) -> tuple[bool, str]:
    ok, why = is_available()
    if not ok:
        return ok, why
    if device.type != "cpu":
        return False, f"backend cpu runs on CPU tensors, got a {device.type} tensor"
    return True, ""


def isa() -> str:
    """Instruction set the kernel uses on this machine (avx512, avx2 or generic)."""
    return _salt_cpu.isa() if _salt_cpu is not None else "not built"


def rows(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    grad: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
) -> RowOutputs:
    n, vocab = student.shape
    out = RowOutputs.empty(n, student.device)
    use_teacher = teacher is not None and kd_weight > 0
    if grad is not None:
        grad_scale = grad_scale.to(torch.float32).contiguous()
    _salt_cpu.rows(
        student=student.data_ptr(),
        student_row_stride=student.stride(0),
        student_dtype=DTYPE_CODES[student.dtype],
        teacher=teacher.data_ptr() if use_teacher else 0,
        teacher_row_stride=teacher.stride(0) if use_teacher else 0,
        teacher_dtype=DTYPE_CODES[teacher.dtype] if use_teacher else 0,
        labels=labels.data_ptr(),
        labels_stride=labels.stride(0) if labels.dim() else 0,
        labels_int64=labels.dtype == torch.int64,
        n_rows=n,
        vocab=vocab,
        kd_weight=kd_weight if use_teacher else 0.0,
        temperature=temperature,
        ignore_index=ignore_index,
        loss=out.loss.data_ptr(),
        ce=out.ce.data_ptr(),
        kd=out.kd.data_ptr(),
        lse=out.lse.data_ptr(),
        grad=grad.data_ptr() if grad is not None else 0,
        grad_row_stride=grad.stride(0) if grad is not None else 0,
        grad_scale=grad_scale.data_ptr() if grad is not None else 0,
        grad_scale_stride=(1 if grad_scale.numel() > 1 else 0) if grad is not None else 0,
        num_threads=torch.get_num_threads(),
    )
    return out
