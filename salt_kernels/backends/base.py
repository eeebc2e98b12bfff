"""The row-level contract every backend implements (the launcher layer).

    backend.rows(student [N, V], teacher [N, V] or None, labels [N], *, kd_weight, temperature,
                 ignore_index, grad=None, grad_scale=None) -> RowOutputs

computes per row the loss, its CE and KD parts and the three fp32 log-sum-exps (lse_z, lse_zt,
lse_u; zeros for ignored rows); float64 for float64 inputs, which only the reference backend takes. When `grad` ([N, V], student dtype) is given it also writes
d loss_i / d student_i scaled by grad_scale ([N] or [1] fp32), zeros for ignored rows. The
vocabulary dimension of every tensor is contiguous; rows may have any stride. A backend never
reads the teacher when kd_weight == 0 and never writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowOutputs:
    loss: torch.Tensor  # [N] fp32
    ce: torch.Tensor  # [N] fp32
    kd: torch.Tensor  # [N] fp32
    lse: torch.Tensor  # [N, 3] fp32: lse_z, lse_zt, lse_u

    @classmethod
    def empty(cls, n: int, device, dtype: torch.dtype = torch.float32) -> "RowOutputs":
        return cls(
            loss=torch.empty(n, dtype=dtype, device=device),
            ce=torch.empty(n, dtype=dtype, device=device),
            kd=torch.empty(n, dtype=dtype, device=device),
            lse=torch.empty(n, 3, dtype=dtype, device=device),
        )


def result_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """Loss and parts come back in float32 (as autocast's cross_entropy), float64 for float64."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


# dtype codes of csrc/salt_math.h (salt::Dtype), shared by the compiled backends' launchers.
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def compiled_rows_args(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    out: RowOutputs,
    *,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    grad: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
) -> dict:
    """The fields of salt::RowsArgs (csrc/salt_math.h) as keyword arguments of the pybind11
    `rows` functions: addresses, strides and dtype codes. Address 0 stands for "absent"; the
    teacher is passed as absent when kd_weight == 0, so no kernel can read it."""
    n, vocab = student.shape
    use_teacher = teacher is not None and kd_weight > 0
    if grad is not None:
        grad_scale = grad_scale.to(device=student.device, dtype=torch.float32).contiguous()
    return dict(
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
    )
