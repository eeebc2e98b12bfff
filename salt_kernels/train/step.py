"""One SALT training step's loss, for every caller: the trainer (train/trainer.py), the profiler
(benchmarking/profiling.py) and the Hugging Face SaltTrainer (integrations/hf.py).

    step = SaltStep(kd_weight=0.5, temperature=2.0, n_kd=300, path="linear")
    w = step.weight(global_step)                       # SALT's schedule: kd_weight, then 0
    teacher_out = step.teacher_forward(teacher, input_ids=x) if w > 0 else None
    loss, parts = step.loss(step.forward(student, input_ids=x), teacher_out, targets, w)
    # or all three lines at once: loss, parts = step(student, teacher, targets, w, input_ids=x)

The loss paths (LOSS_PATHS):

    linear   final hidden states + output projection, fused with the loss (linear_salt_loss):
             no logits are materialized; needs a plain output projection (causal_lm_hidden)
    logits   the models' logits + salt_loss
    torch    the models' logits + the loss in plain PyTorch (F.cross_entropy + F.kl_div), what a
             user writes without this package; the profiler's reference. It returns no parts.

The teacher runs under torch.no_grad, and only while w > 0: stage 2 never calls it. The loss
itself is defined in docs/design.md, "The loss"; its fused linear form in "Fused linear form".
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import torch

from .. import _validation
from ..backends.registry import BACKEND_NAMES
from ..functional import SaltParts, linear_salt_loss, salt_loss
from . import schedule

IGNORE_INDEX = -100
FUSED_PATHS = ("linear", "logits")  # the trainer's --loss choices: fused kernels, with parts
LOSS_PATHS = FUSED_PATHS + ("torch",)

# Config attributes (of a model's config or its text_config) that make the logits something other
# than hidden @ lm_head.weight.T + bias, each with the values that leave the logits alone.
OUTPUT_SCALINGS = {
    "final_logit_softcapping": (None,),  # Gemma 2/3 and others: cap * tanh(logits / cap)
    "softcap": (None,),  # the same, under another name
    "logit_scale": (None, 1),  # Cohere: logits * scale
    "logits_scaling": (None, 1),  # Granite: logits / s; MiniCPM3: hidden / s; HyperCLOVA X: logits * s
    "lm_head_multiplier": (None, 1),  # Falcon-H1
    "logits_mup_width_multiplier": (None, 1),  # muP: hidden / m
    "output_multiplier": (None, 1),
    "output_multiplier_scale": (None, 1),
}


# --------------------------------------------------------------------------- hidden states + head


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


def plain_projection(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """(base model, output projection) of a causal LM whose logits are exactly
    base(...)[0] @ head.weight.T + head.bias; ValueError saying why not, for any other model
    (logit scaling, output multipliers, final-logit softcapping, no nn.Linear head)."""
    core = unwrap_model(model)
    config = getattr(core, "config", None)
    configs = {"config": config, "config.text_config": getattr(config, "text_config", None)}
    for where, cfg in configs.items():
        for attr, neutral in OUTPUT_SCALINGS.items():
            value = getattr(cfg, attr, None)  # None for cfg None
            if value not in neutral:
                raise ValueError(
                    f"{type(core).__name__}'s {where}.{attr} is {value!r}: its logits are not "
                    "hidden @ lm_head.weight.T + bias, so the fused linear loss would compute a "
                    "different loss; compute the loss on its logits (salt_loss, --loss logits)"
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
        raise ValueError(
            "model must have a base model under its lm_head (like LlamaForCausalLM.model), got "
            f"{type(core).__name__}"
        )
    return base, head


def _accepts(fn, name: str) -> bool:
    return name in _parameters(getattr(fn, "__func__", fn))  # a bound method: its function


@functools.lru_cache(maxsize=64)
def _parameters(fn) -> frozenset:
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()


def causal_lm_hidden(model: torch.nn.Module, **inputs) -> HiddenAndHead:
    """Run a transformers causal LM (e.g. LlamaForCausalLM) up to its final hidden states (after
    the final norm), without computing logits; return them with the output embedding's weight and
    bias. `inputs` are the model's forward arguments (input_ids, attention_mask, ...); labels
    must not be among them (the loss is yours to compute).

    The model's own forward is called (so wrappers such as DistributedDataParallel or an
    accelerate autocast wrapper still run), asking for no logit positions (logits_to_keep with
    no index); models whose forward lacks logits_to_keep get their base model called directly.
    Models whose logits are not a plain linear projection raise ValueError (plain_projection).
    """
    if "labels" in inputs or "shift_labels" in inputs:
        raise ValueError("causal_lm_hidden computes no loss: pass the model inputs without labels / shift_labels")
    base, head = plain_projection(model)
    core = unwrap_model(model)
    kwargs = dict(inputs)
    if _accepts(core.forward, "use_cache"):
        kwargs.setdefault("use_cache", False)
    if not _accepts(core.forward, "logits_to_keep"):
        return HiddenAndHead(base(**kwargs)[0], head.weight, head.bias)
    captured: list[torch.Tensor] = []

    def hook(_module, _args, output):
        captured.append(output if isinstance(output, torch.Tensor) else output[0])

    handle = base.register_forward_hook(hook)
    ref = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    device = ref.device if isinstance(ref, torch.Tensor) else head.weight.device
    try:
        model(**kwargs, logits_to_keep=torch.empty(0, dtype=torch.long, device=device))
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected the base model to run once, it ran {len(captured)} times")
    return HiddenAndHead(captured[0], head.weight, head.bias)


# --------------------------------------------------------------------------- the step's loss


class SaltStep:
    """SALT's loss settings and the three parts of a step that involve the models: the teacher's
    forward, the student's forward, and the loss (1 - w) * CE + w * tau^2 * KL with w from the
    schedule (w = 0: CE alone, the teacher is not needed).

    kd_weight: w in [0, 1] during stage 1; temperature: tau > 0 (both checked as the losses check
    them); n_kd: stage 1's length in optimizer steps; transition: how w ends ("step", "linear");
    path: one of LOSS_PATHS; backend, chunk_size, ignore_index: passed to the loss.
    """

    def __init__(self, *, kd_weight: float = 0.5, temperature: float = 1.0, n_kd: int = 0,
                 transition: str = "step", path: str = "linear", backend: str = "auto",
                 chunk_size: int | None = None, ignore_index: int = IGNORE_INDEX):
        self.kd_weight, self.temperature, self.ignore_index = _validation.check_options(
            kd_weight=kd_weight, temperature=temperature, ignore_index=ignore_index, reduction="mean")
        if isinstance(n_kd, bool) or not isinstance(n_kd, int) or n_kd < 0:
            raise ValueError(f"n_kd must be an int >= 0, got {n_kd!r}")
        schedule.check_transition(transition)
        for name, value, allowed in (("path", path, LOSS_PATHS),
                                     ("backend", backend, ("auto",) + BACKEND_NAMES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        self.n_kd, self.transition, self.path = n_kd, transition, path
        self.backend, self.chunk_size = backend, chunk_size

    def __repr__(self) -> str:
        return (f"SaltStep(kd_weight={self.kd_weight}, temperature={self.temperature}, "
                f"n_kd={self.n_kd}, transition={self.transition!r}, path={self.path!r}, "
                f"backend={self.backend!r})")

    def weight(self, step: int) -> float:
        """w at optimizer step `step` (0-based)."""
        return schedule.kd_weight(step, kd_weight=self.kd_weight, n_kd=self.n_kd,
                                  transition=self.transition)

    def forward(self, model: torch.nn.Module, **inputs):
        """What the loss reads from a model: HiddenAndHead (path "linear") or its logits."""
        if self.path == "linear":
            return causal_lm_hidden(model, **inputs)
        return model(**inputs).logits

    @torch.no_grad()
    def teacher_forward(self, teacher: torch.nn.Module, **inputs):
        return self.forward(teacher, **inputs)

    def loss(self, student_out, teacher_out, targets: torch.Tensor, w: float, *,
             reduction: str = "mean") -> tuple[torch.Tensor, SaltParts | None]:
        """(loss, SaltParts(ce, kd)) from forward()'s outputs; teacher_out may be None when w == 0.
        Parts are None on the "torch" path, whose only reduction is "mean"."""
        kw = dict(kd_weight=w, temperature=self.temperature, ignore_index=self.ignore_index,
                  reduction=reduction)
        if self.path == "linear":
            s, t = student_out, teacher_out if teacher_out is not None else HiddenAndHead(None, None, None)
            return linear_salt_loss(s.hidden, s.weight, t.hidden, t.weight, targets.to(s.hidden.device),
                                    student_bias=s.bias, teacher_bias=t.bias, backend=self.backend,
                                    chunk_size=self.chunk_size, return_parts=True, **kw)
        targets = targets.to(student_out.device)
        if self.path == "logits":
            return salt_loss(student_out, teacher_out, targets, backend=self.backend,
                             return_parts=True, **kw)
        from ..benchmarking.baselines import torch_salt_loss

        if reduction != "mean":
            raise ValueError(f"the torch loss path reduces by the mean only, got reduction={reduction!r}")
        kw.pop("reduction")
        return torch_salt_loss(student_out, teacher_out, targets, **kw), None

    def __call__(self, model: torch.nn.Module, teacher: torch.nn.Module | None, targets: torch.Tensor,
                 w: float, *, reduction: str = "mean", **inputs):
        """teacher forward (when w > 0), student forward and loss: (loss, parts)."""
        teacher_out = self.teacher_forward(teacher, **inputs) if w > 0 else None
        return self.loss(self.forward(model, **inputs), teacher_out, targets, w, reduction=reduction)


class StudentLoss(torch.nn.Module):
    """The student and a SaltStep's loss as one module, so that DistributedDataParallel wraps the
    student's whole forward. forward(input_ids, targets, teacher_out, w) -> (loss, parts), with
    teacher_out from step.teacher_forward (None when w == 0)."""

    def __init__(self, model: torch.nn.Module, step: SaltStep):
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, input_ids, targets, teacher_out, w: float):
        return self.step.loss(self.step.forward(self.model, input_ids=input_ids), teacher_out, targets, w)


__all__ = ["FUSED_PATHS", "HiddenAndHead", "IGNORE_INDEX", "LOSS_PATHS", "OUTPUT_SCALINGS", "SaltStep",
           "StudentLoss", "causal_lm_hidden", "plain_projection", "unwrap_model"]
