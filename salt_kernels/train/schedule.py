"""Schedules as plain functions of the step (0-based index of the update about to be made)."""

from __future__ import annotations

import math

TRANSITIONS = ("step", "linear")  # how SALT's distillation weight ends at n_KD


def check_transition(transition: str) -> None:
    if transition not in TRANSITIONS:
        raise ValueError(f"transition must be one of {', '.join(TRANSITIONS)}, got {transition!r}")


def learning_rate(step: int, *, lr: float, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float) -> float:
    """Linear warmup to `lr` over `warmup_steps`, then cosine decay to lr * min_lr_ratio at the
    last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    min_lr = lr * min_lr_ratio
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def kd_weight(step: int, *, kd_weight: float, n_kd: int, transition: str = "step") -> float:
    """SALT's distillation weight w at optimizer step `step` (0-based): stage 1 (step < n_kd),
    then 0.

    step:   w for every step < n_kd.
    linear: w * (1 - step / n_kd), reaching 0 at n_kd.
    """
    check_transition(transition)
    if step >= n_kd or n_kd <= 0:
        return 0.0
    if transition == "step":
        return kd_weight
    return kd_weight * (1.0 - step / n_kd)
