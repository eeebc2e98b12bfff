"""The public functional API: salt_loss and linear_salt_loss (docs/design.md, "API"); DTensor
arguments go to distributed/dtensor.py (docs/design.md, "Vocab-parallel").

Each function validates its arguments (_validation.py), resolves the backend (backends/) and
calls its op (ops/). Nothing here computes the loss.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._validation import (
    check_loss_options,
    check_scalar,
    matmul_dtype,
    validate_linear_inputs,
    validate_salt_inputs,
    validate_topk_inputs,
)
from .backends import registry
from .backends.base import unit_columns
from .distributed import dtensor as _dt
from .ops.linear_salt_loss import LinearSaltLossFunction, LinearTopkSaltLossFunction, plan_chunk_size
from .ops.salt_loss import SaltLossFunction
from .ops.topk_salt_loss import TopkSaltLossFunction


class SaltParts(NamedTuple):
    """The loss's parts, detached, with the loss's reduction (read them by name): ce (with label
    smoothing), kd (tau^2 * D), z_loss (z_loss * lse^2) and accuracy (share of non-ignored rows
    whose argmax is the label; 0/1 per row for "none")."""

    ce: torch.Tensor
    kd: torch.Tensor
    z_loss: torch.Tensor
    accuracy: torch.Tensor


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., V) -> (N, V) with a contiguous vocabulary dimension; a view whenever possible."""
    return unit_columns(x.reshape(-1, x.shape[-1]))


def _eager_label_check(validate: bool, x) -> bool:
    """The ops check labels themselves (CPU: a ValueError; GPU: a device-side assert, no sync).
    validate=True adds the host check on a GPU, for its clear message, in eager mode only."""
    device = getattr(x, "device", None)
    return bool(validate) and device is not None and device.type != "cpu" and not torch.compiler.is_compiling()


def _math_dtype(*dtypes) -> torch.dtype:
    """float64 when any input is float64 (computed in float64), else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _wants_grad(*tensors) -> bool:
    """Whether the forward should write gradients: grad mode on and an input requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _wants_grads(*tensors) -> list[bool]:
    """_wants_grad of each tensor (want_h, want_w, want_b of the fused linear ops)."""
    return [_wants_grad(t) for t in tensors]


def _check_topk(lead, indices, logprobs, labels, kd_weight, tail: str, lead_name: str) -> float:
    """kd_weight (as a float) and the cached top-k teacher of the top-k losses, checked."""
    kd_weight = check_scalar("kd_weight", kd_weight, low=0.0, high=1.0)
    validate_topk_inputs(lead, indices, logprobs, labels, kd_weight=kd_weight, tail=tail, lead_name=lead_name)
    return kd_weight


def _finish(loss, parts, shape, reduction: str, return_parts: bool):
    if reduction == "none":
        loss, parts = loss.reshape(shape), [p.reshape(shape) for p in parts]
    if return_parts:
        return loss, SaltParts(*parts)
    return loss


@_dt.routes_dtensors(_dt.salt_loss)
def salt_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    kd_weight: float = 0.5, temperature: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
    backend: str = "auto", return_parts: bool = False, validate: bool = True,
    softcap: float | None = None, teacher_softcap: float | None = None, kd_vocab: int | None = None,
    divergence: str = "forward_kl", beta: float = 0.5, label_smoothing: float = 0.0, z_loss: float = 0.0,
):
    """SALT loss: (1 - w) * CE(student, labels) + w * tau^2 * KL(softmax(teacher/tau) ||
    softmax(student/tau)) per token, fused in one pass per row.

    student_logits: (..., V) float32/bfloat16/float16 (or float64, computed in float64 by the
        reference backend, for gradcheck), the only input that gets a gradient (in its own dtype).
    teacher_logits: same shape, or None with kd_weight == 0. Never read when kd_weight == 0.
    labels: student_logits.shape[:-1], int64 or int32; rows equal to ignore_index count for nothing.
    reduction: "mean" over non-ignored rows, "sum", or "none" (per row, labels' shape, ignored rows 0).
    backend: "auto" (SALT_BACKEND, else the fastest usable), "reference", "cpu", "triton", "cuda".
    return_parts: also return SaltParts(ce, kd, z_loss, accuracy), detached, same reduction.
    validate: on a GPU in eager mode, also range-check labels on the host (a device sync) for a
        clear ValueError; the op always checks them itself (CPU: ValueError naming the position;
        GPU: a device-side assert).
    Distillation options (docs/design.md, "Distillation options"; the defaults give the plain
    SALT loss):
    softcap / teacher_softcap: z <- c * tanh(z / c) (student, differentiated through) and
        u <- c_t * tanh(u / c_t), applied before everything else (Gemma 2/3 final-logit capping).
    kd_vocab: KD over the first k entries only (padded vocabularies: teacher_logits may then have
        another last dimension V_t); CE always uses the student's full vocabulary.
    divergence: "forward_kl" (SALT), "reverse_kl" or "jsd" (generalized JSD with weight beta in
        (0, 1) on the teacher).
    label_smoothing: torch's definition. z_loss: adds z_loss * logsumexp(z)^2 per row.

    Returns the loss in float32 (float64 for float64 inputs), and the parts when asked. The
    gradient is only computed when grad mode is on and student_logits requires grad.
    """
    options = check_loss_options(softcap=softcap, teacher_softcap=teacher_softcap, kd_vocab=kd_vocab,
                                 divergence=divergence, beta=beta, label_smoothing=label_smoothing, z_loss=z_loss)
    kd_weight, temperature, ignore_index = validate_salt_inputs(
        student_logits, teacher_logits, labels, kd_weight=kd_weight, temperature=temperature, ignore_index=ignore_index,
        reduction=reduction, check_label_range=_eager_label_check(validate, student_logits), options=options,
    )
    use_teacher = teacher_logits is not None and kd_weight > 0
    dtypes = (student_logits.dtype, teacher_logits.dtype if use_teacher else None)
    name = registry.resolve_name(backend, student_logits.device, _math_dtype(*dtypes), options)
    student = as_rows(student_logits)
    teacher = as_rows(teacher_logits.detach()) if use_teacher else None
    loss, *parts, _ = SaltLossFunction.apply(student, teacher, labels, kd_weight, temperature, ignore_index, reduction,
                                             name, *options.as_args(), _wants_grad(student_logits), bool(return_parts))
    return _finish(loss, parts, labels.shape, reduction, return_parts)


@_dt.routes_dtensors(_dt.linear_salt_loss)
def linear_salt_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    kd_weight: float = 0.5, temperature: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
    backend: str = "auto", return_parts: bool = False, chunk_size: int | None = None, validate: bool = True,
    softcap: float | None = None, teacher_softcap: float | None = None, kd_vocab: int | None = None,
    divergence: str = "forward_kl", beta: float = 0.5, label_smoothing: float = 0.0, z_loss: float = 0.0,
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
    device = getattr(student_hidden, "device", None)
    options = check_loss_options(softcap=softcap, teacher_softcap=teacher_softcap, kd_vocab=kd_vocab,
                                 divergence=divergence, beta=beta, label_smoothing=label_smoothing, z_loss=z_loss)
    kd_weight, temperature, ignore_index = validate_linear_inputs(
        student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias, labels,
        kd_weight=kd_weight, temperature=temperature, ignore_index=ignore_index, reduction=reduction,
        chunk_size=chunk_size, check_label_range=_eager_label_check(validate, student_hidden), options=options,
    )
    use_teacher = kd_weight > 0
    autocast_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    compute_dtype = matmul_dtype("student", student_hidden, student_weight, student_bias, autocast_dtype)
    teacher_dtype = None
    if use_teacher:
        teacher_dtype = matmul_dtype("teacher", teacher_hidden, teacher_weight, teacher_bias, autocast_dtype)

    vocab, d_s = student_weight.shape
    n = labels.numel()
    name = registry.resolve_name(backend, device, _math_dtype(compute_dtype, teacher_dtype), options)
    h_s = student_hidden.reshape(n, d_s)
    h_t = w_t = b_t = None
    if use_teacher:
        h_t = teacher_hidden.detach().reshape(n, teacher_hidden.shape[-1])
        w_t = teacher_weight.detach()
        b_t = None if teacher_bias is None else teacher_bias.detach()
    loss, *parts = LinearSaltLossFunction.apply(
        h_s, student_weight, student_bias, h_t, w_t, b_t, labels, kd_weight, temperature, ignore_index, reduction, name,
        plan_chunk_size(chunk_size, n, vocab, compute_dtype, teacher_dtype, device), compute_dtype, teacher_dtype,
        *options.as_args(), *_wants_grads(student_hidden, student_weight, student_bias), bool(return_parts),
    )
    return _finish(loss, parts[:4], labels.shape, reduction, return_parts)


@_dt.routes_dtensors(_dt.topk_salt_loss)
def topk_salt_loss(
    student_logits: torch.Tensor,
    teacher_indices: torch.Tensor | None,
    teacher_logprobs: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    kd_weight: float = 0.5, temperature: float = 1.0, tail: str = "bucket", ignore_index: int = -100,
    reduction: str = "mean", backend: str = "auto", return_parts: bool = False, validate: bool = True,
    softcap: float | None = None, label_smoothing: float = 0.0, z_loss: float = 0.0,
):
    """SALT loss with an offline top-k teacher (docs/design.md, "Top-k teacher"): the teacher is
    its k most likely tokens per position, as cached by `salt-kernels teacher-cache` or returned
    by an inference server.

    teacher_indices: (..., k) int32/int64 token ids in [0, V); a negative id marks an empty slot.
        No id may repeat within a row.
    teacher_logprobs: (..., k) the teacher's log-probabilities at temperature 1 (<= 0).
    tail: "bucket" (default) treats the rest of the vocabulary as one more outcome with the
        teacher's remaining mass r = 1 - sum(exp(logprobs)) (computed in float64), compared with
        the student's mass outside the top k: at temperature 1 the exact KL of both distributions
        coarsened to the top k + "the rest". "renormalize" renormalizes the teacher over its top k.
    The other arguments are those of salt_loss (softcap, label_smoothing and z_loss apply to the
    student; the divergence is the forward KL).
    """
    options = check_loss_options(softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss)
    # kd_weight=0.0: the teacher side is checked by validate_topk_inputs
    _, temperature, ignore_index = validate_salt_inputs(
        student_logits, None, labels, kd_weight=0.0, temperature=temperature, ignore_index=ignore_index,
        reduction=reduction, check_label_range=_eager_label_check(validate, student_logits), options=options,
    )
    kd_weight = _check_topk(student_logits, teacher_indices, teacher_logprobs, labels, kd_weight, tail, "student_logits")
    use_teacher = kd_weight > 0
    dtypes = (student_logits.dtype, teacher_logprobs.dtype if use_teacher else None)
    name = registry.resolve_name(backend, student_logits.device, _math_dtype(*dtypes), options, kind="topk_rows")
    student = as_rows(student_logits)
    if use_teacher:
        k = teacher_indices.shape[-1]
        indices = teacher_indices.reshape(-1, k)
        logprobs = teacher_logprobs.detach().reshape(-1, k)
    else:
        indices, logprobs = _dummy_topk(student.shape[0], student.device)
    loss, *parts, _ = TopkSaltLossFunction.apply(
        student, indices, logprobs, labels, kd_weight, temperature, ignore_index, reduction, name, tail,
        options.softcap, options.label_smoothing, options.z_loss, _wants_grad(student_logits), bool(return_parts),
    )
    return _finish(loss, parts, labels.shape, reduction, return_parts)


def _dummy_topk(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One empty top-k slot per row: what the ops get when kd_weight == 0 (never read)."""
    return (torch.full((n, 1), -1, dtype=torch.int32, device=device),
            torch.zeros((n, 1), dtype=torch.float32, device=device))


def linear_topk_salt_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_indices: torch.Tensor | None,
    teacher_logprobs: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    student_bias: torch.Tensor | None = None,
    kd_weight: float = 0.5, temperature: float = 1.0, tail: str = "bucket", ignore_index: int = -100,
    reduction: str = "mean", backend: str = "auto", return_parts: bool = False, chunk_size: int | None = None,
    validate: bool = True, softcap: float | None = None, label_smoothing: float = 0.0, z_loss: float = 0.0,
):
    """topk_salt_loss of the student's output projection, without materializing its logits:
    equal in value and gradients to

        topk_salt_loss(student_hidden @ student_weight.T + student_bias, teacher_indices,
                       teacher_logprobs, labels, ...)

    Tokens are processed in chunks as in linear_salt_loss; the teacher side is the cached top-k
    (teacher_indices / teacher_logprobs, (..., k), see topk_salt_loss), so no teacher model runs.
    """
    options = check_loss_options(softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss)
    device = getattr(student_hidden, "device", None)
    # kd_weight=0.0: the teacher side is checked by validate_topk_inputs
    _, temperature, ignore_index = validate_linear_inputs(
        student_hidden, student_weight, student_bias, None, None, None, labels, kd_weight=0.0, temperature=temperature,
        ignore_index=ignore_index, reduction=reduction, chunk_size=chunk_size,
        check_label_range=_eager_label_check(validate, student_hidden), options=options,
    )
    kd_weight = _check_topk(student_hidden, teacher_indices, teacher_logprobs, labels, kd_weight, tail, "student_hidden")
    autocast_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    compute_dtype = matmul_dtype("student", student_hidden, student_weight, student_bias, autocast_dtype)
    vocab, d_s = student_weight.shape
    n = labels.numel()
    use_teacher = kd_weight > 0
    dtypes = (compute_dtype, teacher_logprobs.dtype if use_teacher else None)
    name = registry.resolve_name(backend, device, _math_dtype(*dtypes), options, kind="topk_rows")
    if use_teacher:
        k = teacher_indices.shape[-1]
        indices, logprobs = teacher_indices.reshape(n, k), teacher_logprobs.detach().reshape(n, k)
    else:
        indices, logprobs = _dummy_topk(n, device)
    loss, *parts = LinearTopkSaltLossFunction.apply(
        student_hidden.reshape(n, d_s), student_weight, student_bias, indices, logprobs, labels, kd_weight, temperature,
        ignore_index, reduction, name, plan_chunk_size(chunk_size, n, vocab, compute_dtype, None, device),
        compute_dtype, tail, options.softcap, options.label_smoothing, options.z_loss,
        *_wants_grads(student_hidden, student_weight, student_bias), bool(return_parts),
    )
    return _finish(loss, parts[:4], labels.shape, reduction, return_parts)
