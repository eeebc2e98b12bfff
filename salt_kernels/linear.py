"""linear_salt_loss: the SALT loss of the output projections of student and teacher, fused with
them so that neither [tokens x vocab] logits tensor is ever held (the Liger "fused linear"
approach, applied to both models at once).

    loss = sk.linear_salt_loss(h_s, lm_head_s.weight, h_t, lm_head_t.weight, labels,
                               kd_weight=0.5, temperature=2.0)

equals salt_loss(h_s @ W_s.T + b_s, h_t @ W_t.T + b_t, labels, ...) in value and gradients. Tokens
are processed in chunks (linear_autograd.py); the chunk size follows a memory budget.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import dispatch
from ._validation import (
    LABEL_DTYPES,
    LOGIT_DTYPES,
    REDUCTIONS,
    _dtype_names,
    check_label_values,
    check_scalar,
)
from .functional import SaltParts
from .linear_autograd import LinearPlan, LinearSaltLossFunction

# Memory budget of one chunk's [chunk x V] buffers (student logits, teacher logits, gradient).
# On the CPU the matmuls run near peak from about 100 rows on. On a GPU each chunk also reads and
# writes the fp32 weight-gradient accumulator (V x d_s), so chunks must be long enough for the
# GEMMs to stay compute bound (about 1400 rows at V=128256 in bf16); 1 GiB is still a fraction
# of the logits plain PyTorch holds at that size (not measured on a GPU yet).
DEFAULT_CHUNK_BYTES = 64 << 20
DEFAULT_CHUNK_BYTES_GPU = 1 << 30
# Chunks below this many rows make the weight-gradient GEMM memory bound; the budget is exceeded
# rather than going below it (unless there are fewer rows).
MIN_CHUNK_ROWS = 64


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_tensor(name: str, x, *, dims: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in LOGIT_DTYPES:
        raise TypeError(f"{name} must have dtype {_dtype_names(LOGIT_DTYPES)}, got {_name(x.dtype)}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must be {dims}-d, got shape {tuple(x.shape)}")
    if dims is None and x.dim() < 1:
        raise ValueError(f"{name} must have shape (..., hidden), got a 0-d tensor")


def _check_side(prefix: str, hidden, weight, bias, vocab: int | None) -> None:
    """Shapes of one model's (hidden, weight, bias)."""
    _check_tensor(f"{prefix}_hidden", hidden)
    _check_tensor(f"{prefix}_weight", weight, dims=2)
    d = hidden.shape[-1]
    if weight.shape[1] != d:
        raise ValueError(
            f"{prefix}_weight must have shape (vocab, {d}) to match {prefix}_hidden's last dimension, "
            f"got {tuple(weight.shape)}"
        )
    if weight.shape[0] < 1:
        raise ValueError(f"{prefix}_weight must have at least one row (the vocabulary), got {tuple(weight.shape)}")
    if vocab is not None and weight.shape[0] != vocab:
        raise ValueError(
            f"{prefix}_weight must have the student's vocabulary size {vocab} rows, got {tuple(weight.shape)}"
        )
    if bias is not None:
        _check_tensor(f"{prefix}_bias", bias, dims=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{prefix}_bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in ((f"{prefix}_weight", weight), (f"{prefix}_bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} must be on the device of student_hidden ({hidden.device}), got {t.device}")


def _matmul_dtype(prefix: str, hidden, weight, bias, autocast_dtype) -> torch.dtype:
    """The dtype the projection runs in: the autocast dtype under torch.autocast (as F.linear
    would), else the common dtype of hidden, weight and bias, which must agree."""
    if autocast_dtype is not None:
        return autocast_dtype
    for name, t in ((f"{prefix}_weight", weight), (f"{prefix}_bias", bias)):
        if t is not None and t.dtype != hidden.dtype:
            raise TypeError(
                f"{name} must have the dtype of {prefix}_hidden ({_name(hidden.dtype)}), got {_name(t.dtype)}; "
                "cast one of them or run under torch.autocast"
            )
    return hidden.dtype


def default_chunk_size(n_rows: int, vocab: int, bytes_per_row_element: int, budget: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that the chunk's [rows x vocab] buffers take about `budget` bytes
    (at least MIN_CHUNK_ROWS rows, at most n_rows, a multiple of 8 when above 8)."""
    rows = budget // max(1, vocab * bytes_per_row_element)
    rows = max(MIN_CHUNK_ROWS, rows)
    if rows > 8:
        rows -= rows % 8
    return max(1, min(rows, max(1, n_rows)))


def linear_salt_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    kd_weight: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
    return_parts: bool = False,
    chunk_size: int | None = None,
    validate: bool = True,
):
    """SALT loss of the output projections, without materializing either logits tensor:
    equal in value and gradients to

        salt_loss(student_hidden @ student_weight.T + student_bias,
                  teacher_hidden @ teacher_weight.T + teacher_bias, labels, ...)

    student_hidden: (..., d_s) float32/bfloat16/float16, the student's final hidden states.
    student_weight: (V, d_s) output embedding (lm_head.weight); student_bias: (V,) or None.
    teacher_hidden: (..., d_t) with the student's leading shape (d_t may differ from d_s), or None
        with kd_weight == 0. teacher_weight: (V, d_t); teacher_bias: (V,) or None. The teacher
        gets no gradient; its projection runs under no_grad in its own dtype and is never
        computed when kd_weight == 0.
    labels: student_hidden.shape[:-1], int64 or int32; rows equal to ignore_index are dropped
        before any projection.
    Hidden, weight and bias of one model must share a dtype, unless torch.autocast is on, in
    which case the projections run in the autocast dtype (as F.linear would).
    reduction, backend, return_parts, validate: as in salt_loss.
    chunk_size: token rows per chunk; default from a memory budget for the chunk's logits and
        gradient buffers: about 64 MiB on the CPU, 1 GiB on a GPU (at least 64 rows).

    Gradients go to student_hidden (its dtype), student_weight and student_bias (accumulated in
    fp32, returned in their dtype). Returns the loss in float32 (and SaltParts when asked).
    """
    _check_tensor("student_hidden", student_hidden)
    _check_side("student", student_hidden, student_weight, student_bias, None)
    vocab, d_s = student_weight.shape
    device = student_hidden.device
    kd_weight = check_scalar("kd_weight", kd_weight, low=0.0, high=1.0)
    temperature = check_scalar("temperature", temperature, low=0.0, high=math.inf, low_open=True)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    ignore_index = int(ignore_index)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
            raise TypeError(f"chunk_size must be a positive int or None, got {type(chunk_size).__name__}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")

    lead = tuple(student_hidden.shape[:-1])
    use_teacher = kd_weight > 0
    if use_teacher:
        if teacher_hidden is None or teacher_weight is None:
            missing = "teacher_hidden" if teacher_hidden is None else "teacher_weight"
            raise ValueError(
                f"{missing} is None but kd_weight is {kd_weight:g}; pass the teacher's hidden states "
                "and output weight, or set kd_weight=0 for plain cross-entropy"
            )
        _check_side("teacher", teacher_hidden, teacher_weight, teacher_bias, vocab)
        if tuple(teacher_hidden.shape[:-1]) != lead:
            raise ValueError(
                f"teacher_hidden must have the leading shape of student_hidden {lead} (any last dimension), "
                f"got {tuple(teacher_hidden.shape)}"
            )
        if teacher_hidden.device != device:
            raise ValueError(f"teacher_hidden must be on the device of student_hidden ({device}), got {teacher_hidden.device}")

    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(f"labels must have dtype {_dtype_names(LABEL_DTYPES)}, got {_name(labels.dtype)}")
    if tuple(labels.shape) != lead:
        raise ValueError(f"labels must have shape student_hidden.shape[:-1] = {lead}, got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels must be on the device of student_hidden ({device}), got {labels.device}")
    if (validate or device.type == "cpu") and labels.numel() > 0:
        check_label_values(labels, vocab, ignore_index)

    autocast_dtype = None
    if torch.is_autocast_enabled(device.type):
        autocast_dtype = torch.get_autocast_dtype(device.type)
    compute_dtype = _matmul_dtype("student", student_hidden, student_weight, student_bias, autocast_dtype)
    teacher_dtype = None
    if use_teacher:
        teacher_dtype = _matmul_dtype("teacher", teacher_hidden, teacher_weight, teacher_bias, autocast_dtype)

    impl = dispatch.resolve(backend, device)
    n = labels.numel()
    if chunk_size is None:
        per_element = 2 * compute_dtype.itemsize + (teacher_dtype.itemsize if use_teacher else 0)
        budget = DEFAULT_CHUNK_BYTES if device.type == "cpu" else DEFAULT_CHUNK_BYTES_GPU
        chunk_size = default_chunk_size(n, vocab, per_element, budget)
    plan = LinearPlan(
        backend=impl,
        kd_weight=kd_weight,
        temperature=temperature,
        ignore_index=ignore_index,
        reduction=reduction,
        chunk_size=int(chunk_size),
        compute_dtype=compute_dtype,
        teacher_dtype=teacher_dtype,
        use_teacher=use_teacher,
    )
    h_s = student_hidden.reshape(n, d_s)
    h_t = w_t = b_t = None
    if use_teacher:
        h_t = teacher_hidden.detach().reshape(n, teacher_hidden.shape[-1])
        w_t = teacher_weight.detach()
        b_t = None if teacher_bias is None else teacher_bias.detach()
    loss, ce, kd = LinearSaltLossFunction.apply(
        h_s, student_weight, student_bias, h_t, w_t, b_t, labels.reshape(n), plan
    )
    if reduction == "none":
        loss, ce, kd = loss.reshape(lead), ce.reshape(lead), kd.reshape(lead)
    if return_parts:
        return loss, SaltParts(ce=ce, kd=kd)
    return loss


class LinearSaltLoss(torch.nn.Module):
    """Module form of linear_salt_loss; holds the keyword arguments.

        crit = LinearSaltLoss(kd_weight=0.5, temperature=2.0)
        loss = crit(h_s, student.lm_head.weight, h_t, teacher.lm_head.weight, labels)
    """

    def __init__(
        self,
        kd_weight: float = 0.5,
        temperature: float = 1.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        backend: str = "auto",
        return_parts: bool = False,
        chunk_size: int | None = None,
        validate: bool = True,
    ):
        super().__init__()
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.backend = backend
        self.return_parts = return_parts
        self.chunk_size = chunk_size
        self.validate = validate

    def forward(
        self,
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        labels,
        student_bias=None,
        teacher_bias=None,
    ):
        return linear_salt_loss(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            labels,
            student_bias=student_bias,
            teacher_bias=teacher_bias,
            kd_weight=self.kd_weight,
            temperature=self.temperature,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            backend=self.backend,
            return_parts=self.return_parts,
            chunk_size=self.chunk_size,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return (
            f"kd_weight={self.kd_weight}, temperature={self.temperature}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, backend={self.backend!r}, chunk_size={self.chunk_size}"
        )
