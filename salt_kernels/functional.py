"""salt_loss: the functional API (DESIGN.md section 2)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import dispatch
from ._validation import validate_salt_inputs
from .autograd import SaltLossFunction


class SaltParts(NamedTuple):
    """The loss's two parts, detached, with the loss's reduction: CE and KD (tau^2 * KL)."""

    ce: torch.Tensor
    kd: torch.Tensor


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., V) -> (N, V) with a contiguous vocabulary dimension; a view whenever possible."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 or rows.shape[-1] == 1 else rows.contiguous()


def salt_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    kd_weight: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
    return_parts: bool = False,
    validate: bool = True,
):
    """SALT loss: (1 - w) * CE(student, labels) + w * tau^2 * KL(softmax(teacher/tau) ||
    softmax(student/tau)) per token, fused in one pass per row.

    student_logits: (..., V) float32/bfloat16/float16, the only input that gets a gradient
        (in its own dtype).
    teacher_logits: same shape, or None with kd_weight == 0. Never read when kd_weight == 0.
    labels: student_logits.shape[:-1], int64 or int32; rows equal to ignore_index count for nothing.
    reduction: "mean" over non-ignored rows, "sum", or "none" (per row, labels' shape, ignored rows 0).
    backend: "auto" (SALT_BACKEND, else the fastest usable), "reference", "cpu", "triton", "cuda".
    return_parts: also return SaltParts(ce, kd), detached, with the same reduction.
    validate: range-check labels; always done on CPU, skippable on GPU to avoid a device sync.

    Returns the loss in float32 (and the parts when asked).
    """
    on_cpu = isinstance(student_logits, torch.Tensor) and student_logits.device.type == "cpu"
    kd_weight, temperature, ignore_index = validate_salt_inputs(
        student_logits,
        teacher_logits,
        labels,
        kd_weight=kd_weight,
        temperature=temperature,
        ignore_index=ignore_index,
        reduction=reduction,
        check_label_range=validate or on_cpu,
    )
    impl = dispatch.resolve(backend, student_logits.device)
    use_teacher = teacher_logits is not None and kd_weight > 0
    student = as_rows(student_logits)
    teacher = as_rows(teacher_logits.detach()) if use_teacher else None
    flat_labels = labels.reshape(-1)
    loss, ce, kd = SaltLossFunction.apply(
        student, teacher, flat_labels, impl, kd_weight, temperature, ignore_index, reduction
    )
    if reduction == "none":
        shape = labels.shape
        loss, ce, kd = loss.reshape(shape), ce.reshape(shape), kd.reshape(shape)
    if return_parts:
        return loss, SaltParts(ce=ce, kd=kd)
    return loss
