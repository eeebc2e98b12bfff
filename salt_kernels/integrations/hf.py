"""Hugging Face transformers integration: the fused linear SALT loss for users with their own
trainer, and a transformers.Trainer that runs SALT.

    from salt_kernels.integrations.hf import SaltTrainer, causal_lm_hidden, final_logit_softcap

    # Your own loop: final hidden states and the output projection, no logits computed.
    h_s, w_s, b_s = causal_lm_hidden(student, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        h_t, w_t, b_t = causal_lm_hidden(teacher, input_ids=ids, attention_mask=mask)
    loss = salt_kernels.linear_salt_loss(h_s, w_s, h_t, w_t, shift_labels(labels),
                                         student_bias=b_s, teacher_bias=b_t, kd_weight=0.5,
                                         softcap=final_logit_softcap(student),          # Gemma 2/3
                                         teacher_softcap=final_logit_softcap(teacher))  # else None

    # Or the Trainer: SALT's two stages, KD from the frozen teacher for the first n_kd steps.
    trainer = SaltTrainer(model=student, teacher_model=teacher, args=TrainingArguments(...),
                          train_dataset=ds, kd_weight=0.5, temperature=2.0, n_kd=1000)
    trainer.train()

Requires transformers >= 5 (`pip install "salt-kernels[hf]"`).
"""

from __future__ import annotations

import logging
import numbers

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
from ..train.step import (
    IGNORE_INDEX,
    HiddenAndHead,
    SaltStep,
    causal_lm_hidden,
    final_logit_softcap,
    resolve_kd_vocab,
    unwrap_model,
)

logger = logging.getLogger(__name__)

# Part sums kept between two training logs (see SaltTrainer.log).
_PART_NAMES = ("ce", "kd", "z_loss", "accuracy")


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Causal-LM targets aligned with the hidden states: position t predicts token t+1; the last
    position gets ignore_index (as transformers' ForCausalLMLoss does)."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def _tokenizer_len(processing_class) -> int | None:
    """len() of the trainer's tokenizer (or of a processor's tokenizer); None without one."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    try:
        return len(tokenizer) if tokenizer is not None else None
    except TypeError:
        return None


def _check_stage_length(n_kd, kd_fraction) -> None:
    if n_kd is None and kd_fraction is None:
        raise ValueError(
            "SaltTrainer needs the length of the distillation stage: pass n_kd, the number of "
            "optimizer steps that distill from the teacher (n_kd=0: none), or kd_fraction, that "
            "share of the run's max_steps (n_kd = round(kd_fraction * max_steps); e.g. "
            "kd_fraction=0.17, about the share of steps the SALT paper distilled for)"
        )
    if n_kd is not None and kd_fraction is not None:
        raise ValueError(f"pass n_kd or kd_fraction, not both (got n_kd={n_kd!r}, kd_fraction={kd_fraction!r})")
    if kd_fraction is not None:
        if (isinstance(kd_fraction, bool) or not isinstance(kd_fraction, numbers.Real)
                or not 0.0 < float(kd_fraction) <= 1.0):
            raise ValueError(f"kd_fraction must be a number in (0, 1], got {kd_fraction!r}")


class SaltTrainer(Trainer):
    """transformers.Trainer for SALT: for the first n_kd optimizer steps the loss is
    (1 - w) * CE + w * tau^2 * D(teacher, student) (+ z-loss) with the frozen teacher's next-token
    distribution, then the student's loss alone (the teacher is not run any more). Both output
    projections are fused with the loss (salt_kernels.linear_salt_loss): no logits are
    materialized.

    teacher_model: a causal LM sharing the student's tokenizer; frozen here (eval mode, no grads).
    kd_weight: w in [0, 1] during stage 1; temperature: tau > 0.
    n_kd or kd_fraction (exactly one): stage 1's length, as a number of optimizer steps (SALT's
        n_KD; 0: no distillation) or as a share of max_steps in (0, 1] (n_kd = round(kd_fraction *
        max_steps), at least 1; the SALT paper distilled for about 17% of its steps).
    transition: "step" (w until n_kd, then 0) or "linear" (w decays linearly to 0 at n_kd).
    chunk_size, backend: passed to linear_salt_loss.
    Distillation options (docs/design.md, "Distillation options"), as `salt-kernels train` has them:
    softcap / teacher_softcap: final-logit softcap of the student's / teacher's logits; None
        (default): each model's own (config final_logit_softcapping, e.g. Gemma 2/3).
    kd_vocab: KD over the first k vocabulary entries. None: the whole vocabulary, or, when the two
        models' output layers differ in size (padded vocabularies), the tokenizer's length
        (processing_class; said once in the log); without a tokenizer that is a ValueError.
    divergence: "forward_kl" (SALT), "reverse_kl" or "jsd" (teacher weight beta in (0, 1)).
    label_smoothing: of the CE term; None (default): args.label_smoothing_factor.
    z_loss: adds z_loss * logsumexp(logits)^2 per token.
    These settings make self.salt_step, the SaltStep (salt_kernels.train.step) that computes the
    loss, as it does in `salt-kernels train`; they are checked as the losses check them.

    Labels come from the batch's "labels" (shifted by one as in causal LM training, -100
    ignored) or its "shift_labels" (already aligned). With bf16=True / fp16=True the output
    projections and the loss run under the autocast the model's forward gets. Evaluation runs
    under torch.no_grad and reports the student's cross-entropy (w = 0, without label smoothing
    and z-loss, so that it compares across runs). Training logs gain "ce", "kd", "z_loss",
    "accuracy" (next-token) and "kd_weight".
    """

    def __init__(
        self,
        *args,
        teacher_model: torch.nn.Module,
        kd_weight: float = 0.5,
        temperature: float = 1.0,
        n_kd: int | None = None,
        kd_fraction: float | None = None,
        transition: str = "step",
        chunk_size: int | None = None,
        backend: str = "auto",
        softcap: float | None = None,
        teacher_softcap: float | None = None,
        kd_vocab: int | None = None,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        label_smoothing: float | None = None,
        z_loss: float = 0.0,
        **kwargs,
    ):
        if not isinstance(teacher_model, torch.nn.Module):
            raise TypeError(f"teacher_model must be a torch.nn.Module, got {type(teacher_model).__name__}")
        _check_stage_length(n_kd, kd_fraction)
        # Checked before the Trainer is built; label_smoothing and kd_vocab are settled below.
        step = SaltStep(kd_weight=kd_weight, temperature=temperature, n_kd=0 if n_kd is None else n_kd,
                        transition=transition, path="linear", backend=backend, chunk_size=chunk_size,
                        softcap=softcap, teacher_softcap=teacher_softcap, kd_vocab=kd_vocab,
                        divergence=divergence, beta=beta,
                        label_smoothing=0.0 if label_smoothing is None else label_smoothing, z_loss=z_loss)
        super().__init__(*args, **kwargs)
        if label_smoothing is None:
            step = step.replace(label_smoothing=self.args.label_smoothing_factor)
        k, note = resolve_kd_vocab(self.model, teacher_model, step.kd_vocab,
                                   _tokenizer_len(self.processing_class), option="kd_vocab")
        self.salt_step = step.replace(kd_vocab=k)
        if note and self.is_world_process_zero():
            logger.warning(note)
        self.kd_fraction = None if kd_fraction is None else float(kd_fraction)
        if self.kd_fraction is not None and self.args.max_steps > 0:
            self._n_kd_for(self.args.max_steps)
        teacher_model.eval()
        teacher_model.requires_grad_(False)
        try:
            teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        except TypeError:  # an accelerate without evaluation_mode
            teacher_model = teacher_model.to(self.args.device)
        self.teacher_model = teacher_model
        self._eval_step = (None, None)  # (train step, its evaluation form)
        self._salt_sums = dict.fromkeys(_PART_NAMES + ("kd_weight", "n"), 0.0)

    def _n_kd_for(self, max_steps: int) -> None:
        """Set n_kd from kd_fraction once the run's length is known."""
        n_kd = max(1, round(self.kd_fraction * max_steps))
        if n_kd != self.salt_step.n_kd:
            self.salt_step = self.salt_step.replace(n_kd=n_kd)

    def current_kd_weight(self) -> float:
        if self.kd_fraction is not None and self.state.max_steps > 0:
            self._n_kd_for(self.state.max_steps)
        return self.salt_step.weight(self.state.global_step)

    def evaluation_step(self) -> SaltStep:
        """The step evaluation uses: the training step without label smoothing and z-loss."""
        train_step, eval_step = self._eval_step
        if train_step is not self.salt_step:
            eval_step = self.salt_step.replace(label_smoothing=0.0, z_loss=0.0)
            self._eval_step = (self.salt_step, eval_step)
        return eval_step

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        targets = inputs.pop("shift_labels", None)
        if targets is None:
            if labels is None:
                raise ValueError("SaltTrainer needs 'labels' (or 'shift_labels') in each batch, e.g. from DataCollatorForLanguageModeling(mlm=False)")
            targets = shift_labels(labels)
        training = model.training
        w = self.current_kd_weight() if training else 0.0
        step = self.salt_step if training else self.evaluation_step()
        if w > 0:
            self.teacher_model.eval()
        # accelerate's mixed precision wraps only model.forward in autocast: the output projections
        # and the loss run outside it unless entered here (then in bf16/fp16, like the model's).
        with self.accelerator.autocast():
            loss, parts = step(model, self.teacher_model, targets, w, **inputs)  # mean over tokens
        if training:
            s = self._salt_sums
            for name in _PART_NAMES:
                s[name] += float(getattr(parts, name))
            s["kd_weight"] += w
            s["n"] += 1
        if num_items_in_batch is not None:
            # Token-weighted over the whole accumulated batch, as transformers' own causal LM loss:
            # this micro-batch's token sum over the batch's number of tokens.
            n_tokens = (targets != step.ignore_index).sum().to(device=loss.device, dtype=loss.dtype)
            denom = num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
            loss = loss * n_tokens / denom
            self.loss_is_scaled_for_ga = True
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
        else:
            self.loss_is_scaled_for_ga = False
        if return_outputs:
            return loss, {"loss": loss}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Evaluation needs no gradient: under no_grad the losses skip all gradient work.
        with torch.no_grad():
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        s = self._salt_sums
        if "loss" in logs and s["n"]:
            # ce / kd / z_loss and next-token accuracy (means over a micro-batch's tokens) and w:
            # averaged over the micro-batches since the last log.
            for name in _PART_NAMES + ("kd_weight",):
                logs[name] = round(s[name] / s["n"], 6)
            self._salt_sums = dict.fromkeys(_PART_NAMES + ("kd_weight", "n"), 0.0)
        super().log(logs, *args, **kwargs)


__all__ = ["HiddenAndHead", "SaltTrainer", "causal_lm_hidden", "final_logit_softcap", "salt_kd_weight",
           "shift_labels", "unwrap_model"]
