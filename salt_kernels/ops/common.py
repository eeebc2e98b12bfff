"""Pieces shared by the ops: row counts and reductions, the gradient scale, the hand-out of a
gradient computed in the forward pass, and the checks that guard compiled code."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import bad_label_error

try:  # the tensor types torch.compile / make_fx trace with
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    _TRACING_TYPES: tuple = (FakeTensor, FunctionalTensor)
except ImportError:  # pragma: no cover - older torch
    _TRACING_TYPES = ()


def n_valid_rows(labels: Tensor, ignore_index: int) -> Tensor:
    """max(1, number of non-ignored rows), as an fp32 tensor on the labels' device."""
    return (labels != ignore_index).sum().clamp_(min=1).to(torch.float32)


ACCURACY = 4  # position of the accuracy among the parts (loss, ce, kd, z_loss, accuracy)


def part_reduction(reduction: str, position: int) -> str:
    """The reduction of a part: the loss's, except that accuracy is a share for "sum" too."""
    return "mean" if position == ACCURACY and reduction == "sum" else reduction


def reduce_rows(rows: Tensor, reduction: str, n_valid: Tensor) -> Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    return total / n_valid.to(total.dtype) if reduction == "mean" else total


def z_loss_rows(out, z_loss: float) -> Tensor:
    """The z-loss part per row, z_loss * lse_z^2 (lse_z is 0 on ignored rows)."""
    lse_z = out.lse[:, 0]
    return z_loss * lse_z * lse_z if z_loss > 0 else torch.zeros_like(lse_z)


def accuracy_rows(out, student: Tensor, labels: Tensor, ignore_index: int, wanted: bool) -> Tensor:
    """1 where argmax_j z_j == label (ties to the lowest index; softcapping is monotone so the raw
    logits give the same argmax), 0 elsewhere and on ignored rows; the backend's own when it
    computed it, else derived here only when wanted (zeros otherwise)."""
    if out.accuracy is not None:
        return out.accuracy
    if not wanted or student.shape[0] == 0:
        return torch.zeros_like(out.loss)
    hit = (student.argmax(dim=-1) == labels) & (labels != ignore_index)
    return hit.to(out.loss.dtype)


def grad_scale_for(reduction: str, n_valid: Tensor, grad_output: Tensor | None) -> Tensor:
    """The rows' gradient scale: grad_output per row for "none", grad_output / n_valid for
    "mean", grad_output for "sum" (grad_output None stands for 1). fp32, shape [N] or [1]."""
    f32 = torch.float32
    if reduction == "none":
        return grad_output.reshape(-1).to(f32).contiguous()
    g = torch.ones(1, dtype=f32, device=n_valid.device) if grad_output is None else grad_output.to(f32).reshape(1)
    return g / n_valid if reduction == "mean" else g


def tracing(t: Tensor) -> bool:
    """True while torch.compile (dynamo or AOTAutograd) traces, rather than runs, this code."""
    return torch.compiler.is_compiling() or isinstance(t, _TRACING_TYPES)


def scale_inplace(t: Tensor | None, factor: Tensor) -> Tensor | None:
    """t *= factor for a gradient buffer owned by the op; a CPU factor of 1 costs nothing and a
    GPU factor is applied without reading it back (no sync)."""
    if t is None:
        return None
    if factor.device.type == "cpu":
        f = float(factor)
        if f != 1.0:
            t.mul_(f)
        return t
    return t.mul_(factor.to(t.dtype))


def finish_backward(grad: Tensor, grad_output: Tensor) -> Tensor:
    """The gradient computed in the forward pass, scaled by grad_output. In eager mode the buffer
    is scaled in place and handed out (autograd adopts it as .grad without a copy); while
    traced, a plain product keeps the graph functional."""
    if tracing(grad) or tracing(grad_output):
        return grad * grad_output.to(grad.dtype)
    return scale_inplace(grad, grad_output)


def once_differentiable(name: str, grads: tuple) -> tuple:
    """Under create_graph=True, tie the gradients to a node that raises when differentiated, so a
    second-order gradient fails loudly instead of silently treating them as constants."""
    if not torch.is_grad_enabled() or torch._C._functorch.maybe_current_level() is not None:
        return grads  # no create_graph, or inside a torch.func transform (which handles levels)
    live = [g for g in grads if isinstance(g, Tensor)]
    if not live:
        return grads
    err = torch._C._functions.DelayedError(
        f"{name}: second-order gradients are not implemented (the backward of the loss is not "
        "differentiable); compute the loss without create_graph=True".encode(),
        len(live),
    )

    def detached(g):
        g = g.detach()
        g.requires_grad_(g.is_floating_point())
        return g

    wrapped = err(*[detached(g) for g in live])
    wrapped = list(wrapped) if isinstance(wrapped, (tuple, list)) else [wrapped]
    out = []
    for g in grads:
        out.append(wrapped.pop(0) if isinstance(g, Tensor) else g)
    return tuple(out)


def check_addressable(*tensors: Tensor | None) -> None:
    """Compiled kernels get raw addresses: refuse any tensor without addressable storage (a
    tensor subclass or a meta tensor that slipped through) instead of passing address 0."""
    for t in tensors:
        if t is None:
            continue
        if type(t) not in (Tensor, torch.nn.Parameter) or t.device.type == "meta":
            raise TypeError(
                f"salt_kernels: got a {type(t).__name__} on {t.device}; the kernels need plain tensors "
                "with storage (pass plain tensors, e.g. a DTensor's full_tensor())"
            )
        if t.numel() > 0 and t.data_ptr() == 0:
            raise TypeError(f"salt_kernels: a {type(t).__name__} of shape {tuple(t.shape)} has no addressable storage")


def check_labels_in_op(labels: Tensor, vocab: int, ignore_index: int) -> None:
    """Labels in [0, vocab) or ignore_index: a ValueError naming the position on the CPU; on a
    GPU a device-side assert (no host sync)."""
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


def forward_rows(rows, student: Tensor, labels: Tensor, ignore_index: int, reduction: str, z_loss: float,
                 compute_grad: bool, want_accuracy: bool) -> tuple:
    """The forward of a row-wise loss op around `rows(flat_labels, grad, grad_scale) -> RowOutputs`:
    label check, gradient buffer (mean/sum with compute_grad), reductions of the five parts.
    Returns (loss, ce, kd, z_loss, accuracy, grad); grad is empty when not computed."""
    check_labels_in_op(labels, student.shape[1], ignore_index)
    shape, labels = labels.shape, labels.reshape(-1)
    n_valid = n_valid_rows(labels, ignore_index)
    grad = scale = None
    if compute_grad and reduction != "none":
        scale = grad_scale_for(reduction, n_valid, None)
        grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
    out = rows(labels, grad if student.shape[0] > 0 else None, scale)
    per_row = (out.loss, out.ce, out.kd, z_loss_rows(out, z_loss),
               accuracy_rows(out, student, labels, ignore_index, want_accuracy))
    out_shape = shape if reduction == "none" else ()
    parts = [reduce_rows(x, part_reduction(reduction, i), n_valid).reshape(out_shape) for i, x in enumerate(per_row)]
    return (*parts, student.new_empty(0) if grad is None else grad)


def backward_rows(rows, student: Tensor, labels: Tensor, ignore_index: int, reduction: str, grad_output: Tensor) -> Tensor:
    """The gradient of a row-wise loss op scaled by grad_output (the "none" reduction, or a
    second backward through a retained graph)."""
    labels = labels.reshape(-1)
    grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
    if student.shape[0] > 0:
        rows(labels, grad, grad_scale_for(reduction, n_valid_rows(labels, ignore_index), grad_output))
    return grad


def fake_outputs(student: Tensor, labels: Tensor, reduction: str, compute_grad: bool) -> tuple:
    """What forward_rows returns, as shapes and dtypes only."""
    from ..backends.base import result_dtype

    dtype = result_dtype(student.dtype)
    shape = labels.shape if reduction == "none" else ()
    parts = [student.new_empty(shape, dtype=dtype) for _ in range(5)]
    grad_shape = student.shape if compute_grad and reduction != "none" else (0,)
    return (*parts, student.new_empty(grad_shape))


def rows_autograd(name: str, *, n_tensors: int, arg_names: tuple, backward_op):
    """setup_context and backward of a row-wise loss op whose inputs are (student, *tensors,
    *args named arg_names, compute_grad, want_accuracy) and whose outputs end with the gradient
    buffer. The buffer computed in the forward is handed out once (kept on ctx, not saved: once
    handed out it belongs to autograd, which may adopt it as .grad and add into it); "none" and
    a second backward through a retained graph call backward_op()(*tensors, grad_output, *args)."""

    def setup_context(ctx, inputs, output):
        tensors, args = inputs[:n_tensors], inputs[n_tensors:]
        for arg, value in zip(arg_names, args):
            setattr(ctx, arg, value)
        loss, *parts, grad = output
        ctx.mark_non_differentiable(*parts, grad)
        # Outputs other than the loss get no gradient: without this autograd would hand backward
        # a zero tensor for each of them, one of which is as large as the logits.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*tensors)
        student = tensors[0]
        ctx.grad = grad if tuple(grad.shape) == tuple(student.shape) and ctx.reduction != "none" else None

    def backward(ctx, grad_loss, *_unused):
        n_inputs = n_tensors + len(arg_names) + 2
        if grad_loss is None:  # the loss got no gradient (grads are not materialized)
            return (None,) * n_inputs
        tensors = ctx.saved_tensors
        args = [getattr(ctx, arg) for arg in arg_names]
        grad, ctx.grad = ctx.grad, None  # handed out once; a second backward recomputes
        if grad is not None:
            g = finish_backward(grad, grad_loss)
        else:
            with torch.no_grad():  # not differentiable; once_differentiable below says so
                g = backward_op()(*tensors, grad_loss, *args)
        return once_differentiable(name, (g,)) + (None,) * (n_tensors - 1 + len(arg_names) + 2)

    return setup_context, backward


def no_second_order(name: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"{name}: second-order gradients are not implemented")

    return backward


def no_context(ctx, inputs, output) -> None:
    return None
