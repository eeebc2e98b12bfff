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

import inspect
from typing import NamedTuple

import torch
import torch.nn.functional as F

try:
    from transformers import Trainer
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "salt_kernels.integrations.hf needs transformers>=5 (and accelerate for the Trainer): "
        'pip install "salt-kernels[hf]"'
    ) from exc

from ..functional import linear_salt_loss

IGNORE_INDEX = -100
TRANSITIONS = ("step", "linear")
# Config attributes of models whose logits are not a plain linear projection of the hidden states.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class HiddenAndHead(NamedTuple):
    """The final hidden states (batch, seq, d) and the output projection's weight (V, d) and bias
    (V,) or None: the logits would be hidden @ weight.T + bias."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        else:
            return model


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def causal_lm_hidden(model: torch.nn.Module, **inputs) -> HiddenAndHead:
    """Run a transformers causal LM (e.g. LlamaForCausalLM) up to its final hidden states (after
    the final norm), without computing logits; return them with the output embedding's weight and
    bias. `inputs` are the model's forward arguments (input_ids, attention_mask, ...); labels
    must not be among them (the loss is yours to compute).

    The model's own forward is called (so wrappers such as DistributedDataParallel or an
    accelerate autocast wrapper still run), asking for no logit positions (logits_to_keep with
    no index); models whose forward lacks logits_to_keep get their base model called directly.
    Models whose logits are not a linear projection (softcapping, logit scales) raise ValueError.
    """
    if "labels" in inputs or "shift_labels" in inputs:
        raise ValueError("causal_lm_hidden computes no loss: pass the model inputs without labels / shift_labels")
    core = unwrap_model(model)
    config = getattr(core, "config", None)
    for attr in _LOGIT_TRANSFORMS:
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"model's config.{attr} is {value!r}: its logits are not hidden @ lm_head.weight.T, "
                "so the fused linear loss would compute a different loss; use salt_loss on its logits"
            )
    get_head = getattr(core, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"model must be a causal LM whose get_output_embeddings() is a torch.nn.Linear, got "
            f"{type(head).__name__} from {type(core).__name__}"
        )
    base = getattr(core, "base_model", None)
    if base is None or base is core:
        raise ValueError(f"model must have a base model under its lm_head (like LlamaForCausalLM.model), got {type(core).__name__}")

    kwargs = dict(inputs)
    if _accepts(core.forward, "use_cache"):
        kwargs.setdefault("use_cache", False)
    if _accepts(core.forward, "logits_to_keep"):
        captured: list[torch.Tensor] = []

        def hook(_module, _args, output):
            captured.append(output[0] if not isinstance(output, torch.Tensor) else output)

        handle = base.register_forward_hook(hook)
        ref = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        device = ref.device if isinstance(ref, torch.Tensor) else head.weight.device
        try:
            model(**kwargs, logits_to_keep=torch.empty(0, dtype=torch.long, device=device))
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"expected the base model to run once, it ran {len(captured)} times")
        hidden = captured[0]
    else:
        hidden = base(**kwargs)[0]
    return HiddenAndHead(hidden, head.weight, head.bias)


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Causal-LM targets aligned with the hidden states: position t predicts token t+1; the last
    position gets ignore_index (as transformers' ForCausalLMLoss does)."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def salt_kd_weight(step: int, *, kd_weight: float, n_kd: int, transition: str = "step") -> float:
    """SALT's distillation weight at optimizer step `step` (0-based): kd_weight for step < n_kd
    ("step"), or decaying linearly to 0 at n_kd ("linear"); 0 from n_kd on."""
    from ..train.schedule import kd_weight as schedule_kd_weight  # the trainer's own schedule

    if transition not in TRANSITIONS:
        raise ValueError(f"transition must be one of {', '.join(TRANSITIONS)}, got {transition!r}")
    return schedule_kd_weight(step, kd_weight=kd_weight, n_kd=n_kd, transition=transition)


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
        if not (isinstance(kd_weight, (int, float)) and 0.0 <= kd_weight <= 1.0):
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if isinstance(n_kd, bool) or not isinstance(n_kd, int) or n_kd < 0:
            raise ValueError(f"n_kd must be an int >= 0, got {n_kd!r}")
        if transition not in TRANSITIONS:
            raise ValueError(f"transition must be one of {', '.join(TRANSITIONS)}, got {transition!r}")
        super().__init__(*args, **kwargs)
        self.kd_weight = float(kd_weight)
        self.temperature = float(temperature)
        self.n_kd = n_kd
        self.transition = transition
        self.chunk_size = chunk_size
        self.backend = backend
        teacher_model.eval()
        teacher_model.requires_grad_(False)
        try:
            teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        except TypeError:  # an accelerate without evaluation_mode
            teacher_model = teacher_model.to(self.args.device)
        self.teacher_model = teacher_model
        self._salt_sums = {"ce": 0.0, "kd": 0.0, "kd_weight": 0.0, "n": 0}

    def current_kd_weight(self) -> float:
        return salt_kd_weight(
            self.state.global_step, kd_weight=self.kd_weight, n_kd=self.n_kd, transition=self.transition
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        targets = inputs.pop("shift_labels", None)
        if targets is None:
            if labels is None:
                raise ValueError("SaltTrainer needs 'labels' (or 'shift_labels') in each batch, e.g. from DataCollatorForLanguageModeling(mlm=False)")
            targets = shift_labels(labels)
        w = self.current_kd_weight() if model.training else 0.0
        h_s, w_s, b_s = causal_lm_hidden(model, **inputs)
        h_t = w_t = b_t = None
        if w > 0:
            self.teacher_model.eval()
            with torch.no_grad():
                h_t, w_t, b_t = causal_lm_hidden(self.teacher_model, **inputs)
        reduction = "sum" if num_items_in_batch is not None else "mean"
        loss, parts = linear_salt_loss(
            h_s, w_s, h_t, w_t, targets.to(h_s.device),
            student_bias=b_s, teacher_bias=b_t, kd_weight=w, temperature=self.temperature,
            ignore_index=IGNORE_INDEX, reduction=reduction, backend=self.backend,
            return_parts=True, chunk_size=self.chunk_size,
        )
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
