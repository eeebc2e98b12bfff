"""The SALT loss as torch.library custom ops (docs/design.md, "Ops, torch.compile and autograd").

    torch.ops.salt_kernels.salt_loss(student [N, V_s], teacher [N, V_t] | None, labels (any shape, N),
        kd_weight, temperature, ignore_index, reduction, backend, *options, compute_grad,
        want_accuracy) -> (loss, ce, kd, z_loss, accuracy, grad)
    torch.ops.salt_kernels.salt_loss_backward(student, teacher, labels, grad_output,
        kd_weight, temperature, ignore_index, reduction, backend, *options) -> grad

where *options are the fields of backends.base.LossOptions in order (softcap, teacher_softcap,
kd_vocab, divergence, beta, label_smoothing, z_loss).

No math here: both call a backend's rows() (backends/base.py). `backend` is a concrete backend
name (the functional layer resolves "auto"). For "mean" and "sum" with compute_grad, the forward
writes the gradient while each row is in cache, already scaled for the reduction; backward
hands that buffer out (scaled by grad_output), without a copy in eager mode. For "none", or for a
second backward through a retained graph, backward runs salt_loss_backward with grad_output as
the row scale. Without compute_grad no gradient buffer is allocated ("grad" is then empty).

Label ranges are checked inside the op, never on the host before it: on the CPU a bad label
raises a ValueError naming its position; on a GPU a device-side assert costs no sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..backends import registry
from ..backends.base import LossOptions, result_dtype
from .._validation import bad_label_error
from .common import (
    check_addressable,
    finish_backward,
    grad_scale_for,
    accuracy_rows,
    n_valid_rows,
    once_differentiable,
    reduce_rows,
    z_loss_rows,
)

OP = "salt_kernels::salt_loss"


def check_labels_in_op(labels: Tensor, vocab: int, ignore_index: int) -> None:
    if labels.numel() == 0:
        return
    bad = ((labels < 0) | (labels >= vocab)) & (labels != ignore_index)
    if labels.device.type == "cpu":
        if bool(bad.any()):
            raise bad_label_error(labels, bad, vocab, ignore_index)
    else:
        torch._assert_async(
            ~bad.any(), f"salt_kernels: labels must be in [0, {vocab}) or equal ignore_index ({ignore_index})"
        )


@torch.library.custom_op(OP, mutates_args=())
def salt_loss_op(
    student: Tensor,
    teacher: Tensor | None,
    labels: Tensor,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    reduction: str,
    backend: str,
    softcap: float | None,
    teacher_softcap: float | None,
    kd_vocab: int | None,
    divergence: str,
    beta: float,
    label_smoothing: float,
    z_loss: float,
    compute_grad: bool,
    want_accuracy: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    impl = registry.get(backend)
    options = LossOptions(softcap, teacher_softcap, kd_vocab, divergence, beta, label_smoothing, z_loss)
    check_addressable(student, teacher, labels)
    check_labels_in_op(labels, student.shape[1], ignore_index)
    shape, labels = labels.shape, labels.reshape(-1)
    n = student.shape[0]
    n_valid = n_valid_rows(labels, ignore_index)
    grad = scale = None
    if compute_grad and reduction != "none":
        scale = grad_scale_for(reduction, n_valid, None)
        grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
    out = impl.rows(
        student,
        teacher,
        labels,
        kd_weight=kd_weight,
        temperature=temperature,
        ignore_index=ignore_index,
        grad=grad if n > 0 else None,
        grad_scale=scale,
        options=options,
    )
    rows_out = (out.loss, out.ce, out.kd, z_loss_rows(out, z_loss), accuracy_rows(out, student, labels, ignore_index, want_accuracy))
    out_shape = shape if reduction == "none" else ()
    parts = [reduce_rows(x, reduction, n_valid).reshape(out_shape) for x in rows_out]
    if grad is None:
        grad = student.new_empty(0)
    return (*parts, grad)


@salt_loss_op.register_fake
def _(student, teacher, labels, kd_weight, temperature, ignore_index, reduction, backend, *options_and_flags):
    compute_grad = options_and_flags[-2]
    dtype = result_dtype(student.dtype)
    shape = labels.shape if reduction == "none" else ()
    parts = [student.new_empty(shape, dtype=dtype) for _ in range(5)]
    grad_shape = student.shape if compute_grad and reduction != "none" else (0,)
    return (*parts, student.new_empty(grad_shape))


@torch.library.custom_op("salt_kernels::salt_loss_backward", mutates_args=())
def salt_loss_backward_op(
    student: Tensor,
    teacher: Tensor | None,
    labels: Tensor,
    grad_output: Tensor,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    reduction: str,
    backend: str,
    softcap: float | None,
    teacher_softcap: float | None,
    kd_vocab: int | None,
    divergence: str,
    beta: float,
    label_smoothing: float,
    z_loss: float,
) -> Tensor:
    impl = registry.get(backend)
    options = LossOptions(softcap, teacher_softcap, kd_vocab, divergence, beta, label_smoothing, z_loss)
    check_addressable(student, teacher, labels)
    labels = labels.reshape(-1)
    grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
    if student.shape[0] == 0:
        return grad
    n_valid = n_valid_rows(labels, ignore_index)
    scale = grad_scale_for(reduction, n_valid, grad_output)
    impl.rows(
        student,
        teacher,
        labels,
        kd_weight=kd_weight,
        temperature=temperature,
        ignore_index=ignore_index,
        grad=grad,
        grad_scale=scale,
        options=options,
    )
    return grad


@salt_loss_backward_op.register_fake
def _(student, *args):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


# ---- autograd: one setup_context and one backward, used by the op's registration and by the
# autograd.Function below (which torch.func transforms need: they refuse the op's own wrapper).

_ARGS = ("kd_weight", "temperature", "ignore_index", "reduction", "backend", "softcap", "teacher_softcap",
         "kd_vocab", "divergence", "beta", "label_smoothing", "z_loss")


def setup_context(ctx, inputs, output):
    student, teacher, labels, *options = inputs
    for name, value in zip(_ARGS, options):
        setattr(ctx, name, value)
    loss, *parts, grad = output
    ctx.mark_non_differentiable(*parts, grad)
    ctx.save_for_backward(student, teacher, labels)
    # The buffer is kept on ctx, not saved: once handed out it belongs to autograd (which may
    # adopt it as .grad and add into it), so a saved copy would fail the version check of a
    # second backward through a retained graph (which recomputes instead).
    ctx.grad = grad if tuple(grad.shape) == tuple(student.shape) and ctx.reduction != "none" else None


def backward(ctx, grad_loss, *_unused):
    student, teacher, labels = ctx.saved_tensors
    options = [getattr(ctx, name) for name in _ARGS]
    grad, ctx.grad = ctx.grad, None  # handed out once; a second backward recomputes below
    if grad is not None:
        g = finish_backward(grad, grad_loss)
    else:
        with torch.no_grad():  # not differentiable; once_differentiable below says so
            g = torch.ops.salt_kernels.salt_loss_backward(student, teacher, labels, grad_loss, *options)
    return once_differentiable("salt_kernels.salt_loss", (g,)) + (None,) * 16


def _no_second_order(ctx, *grads):
    raise RuntimeError("salt_kernels.salt_loss: second-order gradients are not implemented")


salt_loss_op.register_autograd(backward, setup_context=setup_context)
salt_loss_backward_op.register_autograd(_no_second_order, setup_context=lambda ctx, inputs, output: None)


class SaltLossFunction(torch.autograd.Function):
    """The op with its registered autograd, as an autograd.Function with setup_context, so that
    torch.func.grad / vjp work on it (they refuse the wrapper torch.library builds)."""

    @staticmethod
    def forward(*args):
        return torch.ops.salt_kernels.salt_loss(*args)

    setup_context = staticmethod(setup_context)
    backward = staticmethod(backward)
