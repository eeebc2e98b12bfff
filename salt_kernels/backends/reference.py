"""Plain-PyTorch evaluation of the SALT loss (docs/design.md, "The loss"): the fallback backend
on any device and the readable statement of the math that the kernels implement.

Rows are processed in chunks of about CHUNK_ELEMENTS logits, so the extra memory stays bounded
(a few fp32 copies of one chunk) whatever the number of rows.
"""

from __future__ import annotations

import torch

from .base import RowOutputs, result_dtype

NAME = "reference"
CHUNK_ELEMENTS = 1 << 21


def is_available() -> tuple[bool, str]:
    return True, ""


def supports_device(device: torch.device) -> tuple[bool, str]:
    return True, ""


def combine_loss(ce: torch.Tensor, kd: torch.Tensor, kd_weight: float) -> torch.Tensor:
    """(1 - w) * CE + w * KD, dropping a term whose weight is 0 (so inf * 0 never makes NaN)."""
    loss = torch.zeros_like(ce)
    if kd_weight < 1:
        loss = loss + (1 - kd_weight) * ce
    if kd_weight > 0:
        loss = loss + kd_weight * kd
    return loss


def rows(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    grad: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
) -> RowOutputs:
    n, vocab = student.shape
    device = student.device
    math_dtype = result_dtype(student.dtype)
    out = RowOutputs.empty(n, device, math_dtype)
    use_teacher = teacher is not None and kd_weight > 0
    tau = temperature
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        z = student[r0:r1].to(math_dtype)
        y = labels[r0:r1].long()
        valid = y != ignore_index
        y_safe = torch.where(valid, y, torch.zeros_like(y))
        lse_z = torch.logsumexp(z, dim=-1)
        ce = lse_z - z.gather(1, y_safe[:, None])[:, 0]
        if use_teacher:
            zt = z / tau if tau != 1 else z
            ut = teacher[r0:r1].to(math_dtype) / tau
            lse_zt = torch.logsumexp(zt, dim=-1) if tau != 1 else lse_z
            lse_u = torch.logsumexp(ut, dim=-1)
            log_p = ut - lse_u[:, None]
            log_q = zt - lse_zt[:, None]
            p = log_p.exp()
            # p_j == 0 where the teacher is -inf: the term is 0 (not 0 * inf).
            term = torch.where(ut == float("-inf"), torch.zeros_like(p), p * (log_p - log_q))
            kd = tau * tau * term.sum(dim=-1)
        else:
            lse_zt = lse_z
            lse_u = torch.zeros_like(lse_z)
            kd = torch.zeros_like(ce)
        loss = combine_loss(ce, kd, kd_weight)
        zero = torch.zeros_like(loss)
        out.loss[r0:r1] = torch.where(valid, loss, zero)
        out.ce[r0:r1] = torch.where(valid, ce, zero)
        out.kd[r0:r1] = torch.where(valid, kd, zero)
        out.lse[r0:r1] = torch.where(valid[:, None], torch.stack([lse_z, lse_zt, lse_u], dim=1), zero[:, None])

        if grad is not None:
            g = (1 - kd_weight) * (z - lse_z[:, None]).exp()
            g.scatter_add_(1, y_safe[:, None], torch.full_like(ce[:, None], -(1 - kd_weight)))
            if use_teacher:
                g += kd_weight * tau * ((zt - lse_zt[:, None]).exp() - p)
            scale = grad_scale.to(math_dtype).expand(n)[r0:r1]
            g = torch.where(valid[:, None], g * scale[:, None], torch.zeros_like(g))
            grad[r0:r1].copy_(g)
    return out
