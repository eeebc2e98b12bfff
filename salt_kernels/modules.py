"""torch.nn.Module forms of the functional API: they hold the keyword arguments."""

from __future__ import annotations

import inspect

import torch

from .functional import linear_salt_loss, salt_loss


class _LossModule(torch.nn.Module):
    """Keeps every keyword argument of the loss (the parameters of the subclass's __init__) as an
    attribute of the same name."""

    _keywords: tuple[str, ...] = ()
    _listed_last: tuple[str, ...] = ()  # keywords the repr lists after the others

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        names = tuple(inspect.signature(cls.__init__).parameters)[1:]
        cls._keywords = tuple(n for n in names if n not in cls._listed_last) + cls._listed_last

    def _keep(self, arguments: dict) -> None:
        """Called by __init__ with its locals(): the keyword arguments."""
        super().__init__()
        for name in self._keywords:
            setattr(self, name, arguments[name])

    def _kwargs(self) -> dict:
        return {name: getattr(self, name) for name in self._keywords}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self._keywords)


class SaltLoss(_LossModule):
    """Module form of salt_kernels.salt_loss; holds the keyword arguments.

        crit = SaltLoss(kd_weight=0.5, temperature=2.0)
        loss = crit(student_logits, teacher_logits, labels)
    """

    def __init__(
        self, kd_weight: float = 0.5, temperature: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
        backend: str = "auto", return_parts: bool = False, validate: bool = True,
        *,
        softcap: float | None = None, teacher_softcap: float | None = None, kd_vocab: int | None = None,
        divergence: str = "forward_kl", beta: float = 0.5, label_smoothing: float = 0.0, z_loss: float = 0.0,
    ):
        self._keep(locals())

    def forward(self, student_logits, teacher_logits, labels):
        return salt_loss(student_logits, teacher_logits, labels, **self._kwargs())


class LinearSaltLoss(_LossModule):
    """Module form of linear_salt_loss; holds the keyword arguments.

        crit = LinearSaltLoss(kd_weight=0.5, temperature=2.0)
        loss = crit(h_s, student.lm_head.weight, h_t, teacher.lm_head.weight, labels)
    """

    _listed_last = ("chunk_size",)

    def __init__(
        self, kd_weight: float = 0.5, temperature: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
        backend: str = "auto", return_parts: bool = False, chunk_size: int | None = None, validate: bool = True,
        *,
        softcap: float | None = None, teacher_softcap: float | None = None, kd_vocab: int | None = None,
        divergence: str = "forward_kl", beta: float = 0.5, label_smoothing: float = 0.0, z_loss: float = 0.0,
    ):
        self._keep(locals())

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, labels, student_bias=None,
                teacher_bias=None):
        return linear_salt_loss(
            student_hidden, student_weight, teacher_hidden, teacher_weight, labels, student_bias=student_bias,
            teacher_bias=teacher_bias, **self._kwargs(),
        )
