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

from ..backends import registry
from .common import check_addressable, define_row_ops, loss_options, op_signatures, options_params, row_kwargs

FORWARD, BACKWARD = op_signatures("Tensor student, Tensor? teacher, Tensor labels", options_params(),
                                  "bool compute_grad, bool want_accuracy")


def _rows(a):
    """rows(flat_labels, grad, grad_scale) of the backend the op's bound arguments `a` name."""
    impl = registry.get(a.backend)
    kwargs = row_kwargs(a, loss_options(a))
    check_addressable(a.student, a.teacher, a.labels)

    def rows(flat_labels, grad, scale):
        return impl.rows(a.student, a.teacher, flat_labels, grad=grad, grad_scale=scale, **kwargs)

    return rows


salt_loss_op, salt_loss_backward_op, SaltLossFunction = define_row_ops("salt_loss", FORWARD, BACKWARD, _rows)
