"""Input checks of DESIGN.md section 5: each bad input raises ValueError or TypeError naming the
argument, what was expected and what came, before any work is done."""

from __future__ import annotations

import math
import numbers

import torch

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LABEL_DTYPES = (torch.int64, torch.int32)
REDUCTIONS = ("mean", "sum", "none")


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_logits(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in LOGIT_DTYPES:
        raise TypeError(
            f"{name} must have dtype {_dtype_names(LOGIT_DTYPES)}, got {str(x.dtype).replace('torch.', '')}"
        )
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (..., vocab), got a 0-d tensor")
    if x.shape[-1] < 1:
        raise ValueError(f"{name} must have a vocabulary dimension of at least 1, got shape {tuple(x.shape)}")


def check_scalar(name: str, value, *, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    lo_ok = value > low if low_open else value >= low
    if not (math.isfinite(value) and lo_ok and value <= high):
        lo = "(" if low_open else "["
        hi = "inf)" if math.isinf(high) else f"{high:g}]"
        raise ValueError(f"{name} must be finite and in {lo}{low:g}, {hi}, got {value!r}")
    return value


def validate_salt_inputs(
    student,
    teacher,
    labels,
    *,
    kd_weight,
    temperature,
    ignore_index,
    reduction,
    check_label_range: bool,
) -> tuple[float, float, int]:
    """Checks every argument of salt_loss; returns (kd_weight, temperature, ignore_index) as
    Python numbers. Labels are range-checked when check_label_range is set (a device sync on GPU)."""
    check_logits("student_logits", student)
    kd_weight = check_scalar("kd_weight", kd_weight, low=0.0, high=1.0)
    temperature = check_scalar("temperature", temperature, low=0.0, high=math.inf, low_open=True)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    ignore_index = int(ignore_index)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")

    if teacher is None:
        if kd_weight > 0:
            raise ValueError(
                f"teacher_logits is None but kd_weight is {kd_weight:g}; pass the teacher's logits "
                "or set kd_weight=0 for plain cross-entropy"
            )
    else:
        check_logits("teacher_logits", teacher)
        if teacher.shape != student.shape:
            raise ValueError(
                f"teacher_logits must have the shape of student_logits {tuple(student.shape)}, "
                f"got {tuple(teacher.shape)}"
            )
        if teacher.device != student.device:
            raise ValueError(
                f"teacher_logits must be on the device of student_logits ({student.device}), got {teacher.device}"
            )

    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(
            f"labels must have dtype {_dtype_names(LABEL_DTYPES)}, got {str(labels.dtype).replace('torch.', '')}"
        )
    if labels.shape != student.shape[:-1]:
        raise ValueError(
            f"labels must have shape student_logits.shape[:-1] = {tuple(student.shape[:-1])}, "
            f"got {tuple(labels.shape)}"
        )
    if labels.device != student.device:
        raise ValueError(f"labels must be on the device of student_logits ({student.device}), got {labels.device}")

    if check_label_range and labels.numel() > 0:
        check_label_values(labels, student.shape[-1], ignore_index)
    return kd_weight, temperature, ignore_index


def check_label_values(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    bad = ((labels < 0) | (labels >= vocab)) & (labels != ignore_index)
    if bool(bad.any()):
        position = tuple(int(i) for i in bad.nonzero()[0])
        value = int(labels[position])
        raise ValueError(
            f"labels must be in [0, {vocab}) or equal ignore_index ({ignore_index}); "
            f"got {value} at position {position}"
        )
