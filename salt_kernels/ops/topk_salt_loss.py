"""The SALT loss with an offline top-k teacher as torch.library custom ops (docs/design.md,
"Top-k teacher"):

    torch.ops.salt_kernels.topk_salt_loss(student [N, V], indices [N, k], logprobs [N, k],
        labels (any shape, N), kd_weight, temperature, ignore_index, reduction, backend, tail,
        softcap, label_smoothing, z_loss, compute_grad, want_accuracy)
        -> (loss, ce, kd, z_loss, accuracy, grad)
    torch.ops.salt_kernels.topk_salt_loss_backward(student, indices, logprobs, labels,
        grad_output, kd_weight, ..., z_loss) -> grad

The teacher's indices are checked inside the op (range, duplicates in a row): on the CPU a
ValueError naming teacher_indices and the row; on a GPU a device-side assert (no host sync).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..backends import registry
from ..backends.base import LossOptions
from .common import backward_rows, check_addressable, fake_outputs, forward_rows, no_context, no_second_order, rows_autograd

# Log-probabilities above this are not rounding of a value <= 0 (bf16 keeps ~3 digits).
LOGPROB_TOLERANCE = 1e-2


def check_teacher_topk(indices: Tensor, logprobs: Tensor, vocab: int) -> None:
    """Indices in [0, vocab) or negative (empty slot), no index twice in a row, log-probs <= 0."""
    if indices.numel() == 0:
        return
    filled = indices >= 0
    srt = torch.sort(torch.where(filled, indices, -1 - torch.arange(indices.shape[-1], device=indices.device)), dim=-1)[0]
    duplicate = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
    out_of_range = indices >= vocab
    positive = filled & (logprobs.float() > LOGPROB_TOLERANCE)
    if indices.device.type != "cpu":
        bad = out_of_range.any() | duplicate.any() | positive.any()
        torch._assert_async(~bad, "salt_kernels: teacher_indices/teacher_logprobs out of range or duplicated")
        return
    if bool(out_of_range.any()):
        row = int(out_of_range.any(-1).nonzero()[0, 0])
        raise ValueError(
            f"teacher_indices must be in [0, {vocab}) (or negative for an empty slot); row {row} has "
            f"{int(indices[row].max())}"
        )
    if bool(duplicate.any()):
        row = int(duplicate.any(-1).nonzero()[0, 0])
        value = int(srt[row][1:][duplicate[row]][0])
        raise ValueError(f"teacher_indices must not repeat an index within a row; row {row} has {value} twice")
    if bool(positive.any()):
        row = int(positive.any(-1).nonzero()[0, 0])
        raise ValueError(
            f"teacher_logprobs must be log-probabilities (<= 0); row {row} has {float(logprobs[row].max()):g}"
        )


@torch.library.custom_op("salt_kernels::topk_salt_loss", mutates_args=())
def topk_salt_loss_op(
    student: Tensor,
    indices: Tensor,
    logprobs: Tensor,
    labels: Tensor,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    reduction: str,
    backend: str,
    tail: str,
    softcap: float | None,
    label_smoothing: float,
    z_loss: float,
    compute_grad: bool,
    want_accuracy: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    impl = registry.get(backend)
    options = LossOptions(softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss)
    check_addressable(student, indices, logprobs, labels)
    if kd_weight > 0:
        check_teacher_topk(indices, logprobs, student.shape[1])

    def rows(flat_labels, grad, scale):
        return impl.topk_rows(student, indices, logprobs, flat_labels, kd_weight=kd_weight, temperature=temperature,
                              ignore_index=ignore_index, tail=tail, grad=grad, grad_scale=scale, options=options)

    return forward_rows(rows, student, labels, ignore_index, reduction, z_loss, compute_grad, want_accuracy)


@topk_salt_loss_op.register_fake
def _(student, indices, logprobs, labels, kd_weight, temperature, ignore_index, reduction, *args):
    compute_grad = args[-2]
    return fake_outputs(student, labels, reduction, compute_grad)


@torch.library.custom_op("salt_kernels::topk_salt_loss_backward", mutates_args=())
def topk_salt_loss_backward_op(
    student: Tensor,
    indices: Tensor,
    logprobs: Tensor,
    labels: Tensor,
    grad_output: Tensor,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    reduction: str,
    backend: str,
    tail: str,
    softcap: float | None,
    label_smoothing: float,
    z_loss: float,
) -> Tensor:
    impl = registry.get(backend)
    options = LossOptions(softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss)
    check_addressable(student, indices, logprobs, labels)

    def rows(flat_labels, grad, scale):
        return impl.topk_rows(student, indices, logprobs, flat_labels, kd_weight=kd_weight, temperature=temperature,
                              ignore_index=ignore_index, tail=tail, grad=grad, grad_scale=scale, options=options)

    return backward_rows(rows, student, labels, ignore_index, reduction, grad_output)


@topk_salt_loss_backward_op.register_fake
def _(student, *args):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


_ARGS = ("kd_weight", "temperature", "ignore_index", "reduction", "backend", "tail", "softcap", "label_smoothing",
         "z_loss")
setup_context, backward = rows_autograd(
    "salt_kernels.topk_salt_loss", n_tensors=4, arg_names=_ARGS,
    backward_op=lambda: torch.ops.salt_kernels.topk_salt_loss_backward,
)
topk_salt_loss_op.register_autograd(backward, setup_context=setup_context)
topk_salt_loss_backward_op.register_autograd(no_second_order("salt_kernels.topk_salt_loss"), setup_context=no_context)


class TopkSaltLossFunction(torch.autograd.Function):
    """The op with its registered autograd, as an autograd.Function with setup_context (for the
    torch.func transforms)."""

    @staticmethod
    def forward(*args):
        return torch.ops.salt_kernels.topk_salt_loss(*args)

    setup_context = staticmethod(setup_context)
    backward = staticmethod(backward)
