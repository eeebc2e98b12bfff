"""torch.nn.Module forms of the functional API: they hold the keyword arguments."""

from __future__ import annotations

import torch

from .functional import linear_salt_loss, salt_loss


class SaltLoss(torch.nn.Module):
    """Module form of salt_kernels.salt_loss; holds the keyword arguments.

        crit = SaltLoss(kd_weight=0.5, temperature=2.0)
        loss = crit(student_logits, teacher_logits, labels)
    """

    def __init__(
        self,
        kd_weight: float = 0.5,
        temperature: float = 1.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        backend: str = "auto",
        return_parts: bool = False,
        validate: bool = True,
    ):
        super().__init__()
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.backend = backend
        self.return_parts = return_parts
        self.validate = validate

    def forward(self, student_logits, teacher_logits, labels):
        return salt_loss(
            student_logits,
            teacher_logits,
            labels,
            kd_weight=self.kd_weight,
            temperature=self.temperature,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            backend=self.backend,
            return_parts=self.return_parts,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return (
            f"kd_weight={self.kd_weight}, temperature={self.temperature}, "
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, backend={self.backend!r}"
        )


class LinearSaltLoss(torch.nn.Module):
    """Module form of linear_salt_loss; holds the keyword arguments.

        crit = LinearSaltLoss(kd_weight=0.5, temperature=2.0)
        loss = crit(h_s, student.lm_head.weight, h_t, teacher.lm_head.weight, labels)
    """

    def __init__(
        self,
        kd_weight: float = 0.5,
        temperature: float = 1.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        backend: str = "auto",
        return_parts: bool = False,
        chunk_size: int | None = None,
        validate: bool = True,
    ):
        super().__init__()
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.backend = backend
        self.return_parts = return_parts
        self.chunk_size = chunk_size
        self.validate = validate

    def forward(
        self,
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        labels,
        student_bias=None,
        teacher_bias=None,
    ):
        return linear_salt_loss(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            labels,
            student_bias=student_bias,
            teacher_bias=teacher_bias,
            kd_weight=self.kd_weight,
            temperature=self.temperature,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            backend=self.backend,
            return_parts=self.return_parts,
            chunk_size=self.chunk_size,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return (
            f"kd_weight={self.kd_weight}, temperature={self.temperature}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, backend={self.backend!r}, chunk_size={self.chunk_size}"
        )
