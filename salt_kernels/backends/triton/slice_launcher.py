"""Launcher of the vocab-parallel slice kernels (slice_kernels.py beside this file), for
salt_kernels/distributed/vocab_parallel.py (docs/design.md, "Vocab-parallel"): tensors of one
rank's slice of the vocabulary -> row strides, flags and one launch of one program per row.
The all-reduces and the per-row merge are the caller's.

Triton is imported lazily, as in launcher.py: without it, or without a CUDA device,
supports_device() says why and nothing else here is called. On CPU tensors the kernels run only
under the Triton interpreter (TRITON_INTERPRET=1 set before slice_kernels is imported).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..base import LossOptions, unit_columns
from . import launcher

NO_INDEX = torch.iinfo(torch.int64).max  # "no maximum in this slice", the identity of MIN

def _load():
    """The slice kernels module (launcher.load_kernels); None when triton is not usable."""
    return launcher.load_kernels("slice_kernels")


def supports_device(device: torch.device) -> tuple[bool, str]:
    """(usable, reason) of the slice kernels on `device`: the triton backend's rule
    (launcher.supports_device: CUDA, or CPU under TRITON_INTERPRET=1), and on CPU the slice
    kernels built by the interpreter too."""
    ok, why = launcher.supports_device(device)
    if not ok:
        return ok, why
    if torch.device(device).type == "cpu" and type(_load().slice_stats_kernel).__name__ != "InterpretedFunction":
        return False, ("salt_kernels.backends.triton.slice_kernels was imported before TRITON_INTERPRET=1 was set; "
                       "set it before the first use of the triton backend")
    return True, ""


class SliceStats(NamedTuple):
    """Per row of one slice (fp32 unless said): maxima [n, 3] of z, z / tau (KD columns) and
    u / tau (KD columns; -inf without a teacher); sumexp [n, 3], each sum of exp(x - its
    maximum) (0 for an empty set); z_y, z[y] where the label is in this slice, else 0; sum_z,
    sum_j z_j when label smoothing is on, else 0; first [n] int64, the global index of the first
    maximum of z (NO_INDEX for an empty slice). z is the capped student, u the capped teacher."""

    maxima: torch.Tensor
    sumexp: torch.Tensor
    z_y: torch.Tensor
    sum_z: torch.Tensor
    first: torch.Tensor


def slice_stats(z: torch.Tensor, u: torch.Tensor | None, labels: torch.Tensor, *, start: int, vocab: int,
                temperature: float, ignore_index: int, options: LossOptions) -> SliceStats:
    """The statistics of rows z [n, local] (student, any float dtype) and u [n, local] (teacher,
    None for no KD) of the slice that starts at global column `start` of a `vocab`-column
    vocabulary; labels [n] are global ids (slice_kernels.slice_stats_kernel)."""
    k = _load()
    n, local = z.shape
    device = z.device
    out = torch.empty(n, k.STAT_FIELDS, dtype=torch.float32, device=device)
    first = torch.empty(n, dtype=torch.int64, device=device)
    if local == 0 or n == 0:
        out[:, :3] = -math.inf
        out[:, 3:] = 0.0
        first.fill_(NO_INDEX)
    else:
        z = unit_columns(z)
        has_teacher = u is not None
        u = unit_columns(u) if has_teacher else z
        plan = launcher.block_plan(local, 16)
        with launcher._on_device(device):
            k.slice_stats_kernel[(n,)](
                z, z.stride(0), u, u.stride(0) if has_teacher else 0, labels, labels.stride(0), out, first,
                start, local, options.kd_columns(start, local, vocab), int(ignore_index), 1.0 / float(temperature),
                float(options.softcap or 1.0), float(options.teacher_softcap or 1.0),
                BLOCK_V=plan["block_v"], HAS_TEACHER=has_teacher, SOFTCAP=options.softcap is not None,
                TEACHER_SOFTCAP=has_teacher and options.teacher_softcap is not None,
                SMOOTHING=options.label_smoothing > 0, num_warps=plan["num_warps"],
            )
    return SliceStats(out[:, 0:3], out[:, 3:6], out[:, 6], out[:, 7], first)


def slice_given_stats(z: torch.Tensor, u: torch.Tensor | None, labels: torch.Tensor, lse: torch.Tensor, *,
                      start: int, vocab: int, kd_weight: float, temperature: float, ignore_index: int,
                      options: LossOptions, parts: bool, grad: torch.Tensor | None = None,
                      d: torch.Tensor | None = None) -> torch.Tensor | None:
    """With lse [n, 3] the rows' global (lse_z, lse_zt, lse_u): returns (parts) the slice's
    partial sums of the divergence [n, 2] fp32 (column 1 for jsd only; u must be given), and
    writes (grad, [n, local] in the student's dtype, unit column stride) the slice's gradient
    of the row losses, unscaled. The gradient needs d [n], the group's D of the row for
    reverse_kl and its KL(q || m) for jsd (slice_kernels.slice_given_stats_kernel)."""
    k = _load()
    n, local = z.shape
    device = z.device
    has_teacher = u is not None and kd_weight > 0
    has_grad = grad is not None
    out = torch.zeros(n, 2, dtype=torch.float32, device=device) if parts else None
    if parts and not has_teacher:
        raise ValueError("the divergence's partial sums need the teacher's slice")
    if has_grad:
        if grad.shape != z.shape or (grad.stride(-1) != 1 and local > 1):
            raise ValueError(f"grad must be a {tuple(z.shape)} tensor with unit column stride")
        if has_teacher and options.divergence != "forward_kl" and d is None:
            raise ValueError(f"the gradient of {options.divergence} needs the group's divergence d per row")
    if n == 0 or local == 0 or not (parts or has_grad):
        return out
    z = unit_columns(z)
    u = unit_columns(u) if has_teacher else z
    lse = lse.to(torch.float32).contiguous()
    d = d.to(torch.float32).contiguous() if d is not None else lse
    plan = launcher.block_plan(local, 16)
    beta = float(options.beta)
    log_beta, log_1m_beta = (math.log(beta), math.log1p(-beta)) if options.divergence == "jsd" else (0.0, 0.0)
    with launcher._on_device(device):
        k.slice_given_stats_kernel[(n,)](
            z, z.stride(0), u, u.stride(0) if has_teacher else 0, labels, labels.stride(0), lse, d,
            out if parts else lse, grad if has_grad else z, grad.stride(0) if has_grad else 0,
            start, local, options.kd_columns(start, local, vocab), vocab, int(ignore_index), float(kd_weight),
            float(temperature), 1.0 / float(temperature), float(options.softcap or 1.0),
            float(options.teacher_softcap or 1.0), beta, log_beta, log_1m_beta,
            float(options.label_smoothing), float(options.z_loss),
            BLOCK_V=plan["block_v"], HAS_TEACHER=has_teacher, DIVERGENCE=k.DIVERGENCES[options.divergence] if has_teacher else 0,
            SOFTCAP=options.softcap is not None, TEACHER_SOFTCAP=has_teacher and options.teacher_softcap is not None,
            SMOOTHING=options.label_smoothing > 0, Z_LOSS=options.z_loss > 0, PARTS=parts, HAS_GRAD=has_grad,
            num_warps=plan["num_warps"],
        )
    return out
