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
from .common import check_addressable, define_row_ops, loss_options, op_signatures, options_params, row_kwargs

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


# The options of a top-k teacher: those of the student side (the divergence is the forward KL).
TOPK_OPTIONS = options_params("softcap", "label_smoothing", "z_loss")
FORWARD, BACKWARD = op_signatures("Tensor student, Tensor indices, Tensor logprobs, Tensor labels",
                                  f"str tail, {TOPK_OPTIONS}", "bool compute_grad, bool want_accuracy")


def _rows(a):
    """rows(flat_labels, grad, grad_scale) of the backend the op's bound arguments `a` name."""
    impl = registry.get(a.backend)
    kwargs = row_kwargs(a, loss_options(a))
    check_addressable(a.student, a.indices, a.logprobs, a.labels)

    def rows(flat_labels, grad, scale):
        return impl.topk_rows(a.student, a.indices, a.logprobs, flat_labels, tail=a.tail, grad=grad, grad_scale=scale,
                              **kwargs)

    return rows


def _check_teacher(a) -> None:
    if a.kd_weight > 0:
        check_teacher_topk(a.indices, a.logprobs, a.student.shape[1])


topk_salt_loss_op, topk_salt_loss_backward_op, TopkSaltLossFunction = define_row_ops(
    "topk_salt_loss", FORWARD, BACKWARD, _rows, _check_teacher
)
