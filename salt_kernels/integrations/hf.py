"""Hugging Face transformers integration: the fused linear SALT loss for users with their own
trainer, and a transformers.Trainer that runs SALT.

    from salt_kernels.integrations.hf import SaltTrainer, causal_lm_hidden

    # Your own loop: final hidden states and the output projection, no logits computed.
    h_s, w_s, b_s = causal_lm_hidden(student, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        h_t, w_t, b_t = causal_lm_hidden(teacher, input_ids=ids, attention_mask=mask)
    loss = salt_kernels.linear_salt_loss(h_s, w_s, h_t, w_t, shift_labels(labels),
                                         student_bias=b_s, teacher_bias=b_t, kd_weight=0.5)

    # Or the Trainer: SALT's two stages, KD from the frozen teacher for the first n_kd steps.
    trainer = SaltTrainer(model=student, teacher_model=teacher, args=TrainingArguments(...),
                          train_dataset=ds, kd_weight=0.5, temperature=2.0, n_kd=1000)
    trainer.train()

Requires transformers >= 5 (`pip install "salt-kernels[hf]"`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from transformers import Trainer
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "salt_kernels.integrations.hf needs transformers>=5 (and accelerate for the Trainer): "
        'pip install "salt-kernels[hf]"'
    ) from exc

# One step for every trainer: SaltTrainer's loss is the step salt-kernels train runs.
from ..train.schedule import kd_weight as salt_kd_weight  # SALT's w at an optimizer step
from ..train.step import IGNORE_INDEX, HiddenAndHead, SaltStep, causal_lm_hidden, unwrap_model


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Causal-LM targets aligned with the hidden states: position t predicts token t+1; the last
    position gets ignore_index (as transformers' ForCausalLMLoss does)."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


class SaltTrainer(Trainer):
    """transformers.Trainer for SALT: for the first n_kd optimizer steps the loss is
    (1 - w) * CE + w * tau^2 * KL(teacher || student) with the frozen teacher's next-token
    distribution, then CE alone (the teacher is not run any more). Both output projections are
    fused with the loss (salt_kernels.linear_salt_loss): no logits are materialized.

    teacher_model: a causal LM with the student's vocabulary; frozen here (eval mode, no grads).
    kd_weight: w in [0, 1] during stage 1; temperature: tau > 0.
    n_kd: number of optimizer steps with distillation (SALT's n_KD).
    transition: "step" (w until n_kd, then 0) or "linear" (w decays linearly to 0 at n_kd).
    chunk_size, backend: passed to linear_salt_loss.
    These settings make self.salt_step, the SaltStep (salt_kernels.train.step) that computes the
    loss, as it does in `salt-kernels train`; they are checked as the losses check them.

    Labels come from the batch's "labels" (shifted by one as in causal LM training, -100
    ignored) or its "shift_labels" (already aligned). Evaluation reports the CE loss (w = 0).
    Training logs gain "ce", "kd" and "kd_weight".
    """

    def __init__(
        self,
        *args,
        teacher_model: torch.nn.Module,
        kd_weight: float = 0.5,
        temperature: float = 1.0,
        n_kd: int = 0,
        transition: str = "step",
        chunk_size: int | None = None,
        backend: str = "auto",
        **kwargs,
    ):
        if not isinstance(teacher_model, torch.nn.Module):
            raise TypeError(f"teacher_model must be a torch.nn.Module, got {type(teacher_model).__name__}")
        self.salt_step = SaltStep(kd_weight=kd_weight, temperature=temperature, n_kd=n_kd, transition=transition,
                                  path="linear", backend=backend, chunk_size=chunk_size)
        super().__init__(*args, **kwargs)
        teacher_model.eval()
        teacher_model.requires_grad_(False)
        try:
            teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        except TypeError:  # an accelerate without evaluation_mode
            teacher_model = teacher_model.to(self.args.device)
        self.teacher_model = teacher_model
        self._salt_sums = {"ce": 0.0, "kd": 0.0, "kd_weight": 0.0, "n": 0}

    def current_kd_weight(self) -> float:
        return self.salt_step.weight(self.state.global_step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        targets = inputs.pop("shift_labels", None)
        if targets is None:
            if labels is None:
                raise ValueError("SaltTrainer needs 'labels' (or 'shift_labels') in each batch, e.g. from DataCollatorForLanguageModeling(mlm=False)")
            targets = shift_labels(labels)
        w = self.current_kd_weight() if model.training else 0.0
        if w > 0:
            self.teacher_model.eval()
        reduction = "sum" if num_items_in_batch is not None else "mean"
        loss, parts = self.salt_step(model, self.teacher_model, targets, w, reduction=reduction, **inputs)
        if model.training:
            s = self._salt_sums
            n_tokens = max(1, int((targets != IGNORE_INDEX).sum())) if reduction == "sum" else 1
            s["ce"] += float(parts.ce) / n_tokens
            s["kd"] += float(parts.kd) / n_tokens
            s["kd_weight"] += w
            s["n"] += 1
        if num_items_in_batch is not None:
            # Token-weighted over the whole accumulated batch, as transformers' own causal LM loss.
            denom = num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
            loss = loss / denom
            self.loss_is_scaled_for_ga = True
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
        else:
            self.loss_is_scaled_for_ga = False
        if return_outputs:
            return loss, {"loss": loss}
        return loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        s = self._salt_sums
        if "loss" in logs and s["n"]:
            # ce / kd: per token, averaged over the micro-batches since the last log.
            logs["ce"] = round(s["ce"] / s["n"], 6)
            logs["kd"] = round(s["kd"] / s["n"], 6)
            logs["kd_weight"] = round(s["kd_weight"] / s["n"], 6)
            self._salt_sums = {"ce": 0.0, "kd": 0.0, "kd_weight": 0.0, "n": 0}
        super().log(logs, *args, **kwargs)


__all__ = ["HiddenAndHead", "SaltTrainer", "causal_lm_hidden", "salt_kd_weight", "shift_labels", "unwrap_model"]
