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
from ..backends.base import LossOptions
from .common import backward_rows, check_addressable, fake_outputs, forward_rows, no_context, no_second_order, rows_autograd

OP = "salt_kernels::salt_loss"


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

    def rows(flat_labels, grad, scale):
        return impl.rows(student, teacher, flat_labels, kd_weight=kd_weight, temperature=temperature,
                         ignore_index=ignore_index, grad=grad, grad_scale=scale, options=options)

    return forward_rows(rows, student, labels, ignore_index, reduction, z_loss, compute_grad, want_accuracy)


@salt_loss_op.register_fake
def _(student, teacher, labels, kd_weight, temperature, ignore_index, reduction, backend, *options_and_flags):
    compute_grad = options_and_flags[-2]
    return fake_outputs(student, labels, reduction, compute_grad)


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

    def rows(flat_labels, grad, scale):
        return impl.rows(student, teacher, flat_labels, kd_weight=kd_weight, temperature=temperature,
                         ignore_index=ignore_index, grad=grad, grad_scale=scale, options=options)

    return backward_rows(rows, student, labels, ignore_index, reduction, grad_output)


@salt_loss_backward_op.register_fake
def _(student, *args):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


_ARGS = ("kd_weight", "temperature", "ignore_index", "reduction", "backend", "softcap", "teacher_softcap",
         "kd_vocab", "divergence", "beta", "label_smoothing", "z_loss")
setup_context, backward = rows_autograd(
    "salt_kernels.salt_loss", n_tensors=3, arg_names=_ARGS, backward_op=lambda: torch.ops.salt_kernels.salt_loss_backward
)
salt_loss_op.register_autograd(backward, setup_context=setup_context)
salt_loss_backward_op.register_autograd(no_second_order("salt_kernels.salt_loss"), setup_context=no_context)


class SaltLossFunction(torch.autograd.Function):
    """The op with its registered autograd, as an autograd.Function with setup_context, so that
    torch.func.grad / vjp work on it (they refuse the wrapper torch.library builds)."""

    @staticmethod
    def forward(*args):
        return torch.ops.salt_kernels.salt_loss(*args)

    setup_context = staticmethod(setup_context)
    backward = staticmethod(backward)
