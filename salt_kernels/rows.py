"""The row-level contract every backend implements (the launcher layer).

    backend.rows(student [N, V], teacher [N, V] or None, labels [N], *, kd_weight, temperature,
                 ignore_index, grad=None, grad_scale=None) -> RowOutputs

computes per row the loss, its CE and KD parts and the three fp32 log-sum-exps (lse_z, lse_zt,
lse_u; zeros for ignored rows). When `grad` ([N, V], student dtype) is given it also writes
d loss_i / d student_i scaled by grad_scale ([N] or [1] fp32), zeros for ignored rows. The
vocabulary dimension of every tensor is contiguous; rows may have any stride. A backend never
reads the teacher when kd_weight == 0 and never writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowOutputs:
    loss: torch.Tensor  # [N] fp32
    ce: torch.Tensor  # [N] fp32
    kd: torch.Tensor  # [N] fp32
    lse: torch.Tensor  # [N, 3] fp32: lse_z, lse_zt, lse_u

    @classmethod
    def empty(cls, n: int, device) -> "RowOutputs":
        f32 = torch.float32
        return cls(
            loss=torch.empty(n, dtype=f32, device=device),
            ce=torch.empty(n, dtype=f32, device=device),
            kd=torch.empty(n, dtype=f32, device=device),
            lse=torch.empty(n, 3, dtype=f32, device=device),
        )
