"""Pieces shared by the ops: row counts and reductions, the gradient scale, the hand-out of a
gradient computed in the forward pass, and the checks that guard compiled code."""

from __future__ import annotations

import torch
from torch import Tensor

try:  # the tensor types torch.compile / make_fx trace with
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    _TRACING_TYPES: tuple = (FakeTensor, FunctionalTensor)
except ImportError:  # pragma: no cover - older torch
    _TRACING_TYPES = ()


def n_valid_rows(labels: Tensor, ignore_index: int) -> Tensor:
    """max(1, number of non-ignored rows), as an fp32 tensor on the labels' device."""
    return (labels != ignore_index).sum().clamp_(min=1).to(torch.float32)


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
