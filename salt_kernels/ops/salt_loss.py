"""The autograd.Function of the SALT loss: no math here, only the calls of the backend's rows()
and the reductions.

For "mean" and "sum" the gradient is computed in the forward pass, while each row is in cache,
already scaled for the reduction; backward then returns it as is when grad_output is 1 (the
usual loss.backward()), or scales it in place. For "none" the per-row grad_output is only known
in backward, which runs the kernel again with it as the row scale.
"""

from __future__ import annotations

import torch


def _reduce(rows: torch.Tensor, reduction: str, n_valid: torch.Tensor) -> torch.Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    return total / n_valid if reduction == "mean" else total


class SaltLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, labels, backend, kd_weight, temperature, ignore_index, reduction):
        n = student.shape[0]
        n_valid = (labels != ignore_index).sum().clamp_(min=1).to(torch.float32)
        grad = None
        scale = None
        if ctx.needs_input_grad[0] and reduction != "none":
            scale = (1.0 / n_valid).reshape(1) if reduction == "mean" else torch.ones(1, device=student.device)
            grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
        out = backend.rows(
            student,
            teacher,
            labels,
            kd_weight=kd_weight,
            temperature=temperature,
            ignore_index=ignore_index,
            grad=grad if n > 0 else None,
            grad_scale=scale,
        )
        loss = _reduce(out.loss, reduction, n_valid)
        ce = _reduce(out.ce, reduction, n_valid)
        kd = _reduce(out.kd, reduction, n_valid)
        ctx.mark_non_differentiable(ce, kd)
        ctx.backend = backend
        ctx.args = dict(kd_weight=kd_weight, temperature=temperature, ignore_index=ignore_index)
        ctx.reduction = reduction
        # The gradient buffer is kept on ctx, not in save_for_backward: once handed to autograd
        # it belongs to the caller (AccumulateGrad may adopt it as .grad and add into it).
        ctx.grad = grad
        ctx.scale = scale
        ctx.save_for_backward(student, teacher, labels)
        return loss, ce, kd

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        student, teacher, labels = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None
        if student.shape[0] == 0:
            return torch.zeros_like(student), None, None, None, None, None, None, None
        if ctx.reduction == "none":
            row_scale = grad_loss.reshape(-1).to(torch.float32).contiguous()
        elif grad is not None:
            # The buffer computed in forward is ours to hand out (or to scale in place) once.
            factor = float(grad_loss)
            if factor != 1.0:
                grad.mul_(factor)
            return grad, None, None, None, None, None, None, None
        else:
            # A second backward through a retained graph: the first one gave the buffer away.
            row_scale = (ctx.scale * grad_loss.to(torch.float32)).reshape(1)
        out_grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
        ctx.backend.rows(student, teacher, labels, grad=out_grad, grad_scale=row_scale, **ctx.args)
        return out_grad, None, None, None, None, None, None, None
