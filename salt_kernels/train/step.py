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

An offline teacher (`salt-kernels teacher-cache`, train/teacher_cache.py) replaces the teacher's
forward by a look-up of the batch's cached top-k: teacher_out is then a TopkTeacher (indices,
log-probabilities), from step.teacher_topk, and the loss is topk_salt_loss on the logits paths or
linear_topk_salt_loss on the linear path (docs/design.md, "Top-k teacher"; tail: the step's).

The teacher runs under torch.no_grad, and only while w > 0: stage 2 never calls it. The loss
itself is defined in docs/design.md, "The loss"; its fused linear form in "Fused linear form";
the distillation options a step passes to it (softcap, teacher_softcap, kd_vocab, divergence,
beta, label_smoothing, z_loss) in "Distillation options".

Final-logit softcapping (Gemma 2/3: logits = c * tanh(raw / c)) is part of a model's logits: a
step applies each model's own cap, read from its config (final_logit_softcapping, or softcap),
unless told another one. On the linear path the loss applies it to the raw projection; on the
logits paths the model has applied it already, so the loss only applies a cap the model lacks.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple

import torch

from .. import _validation
from ..backends.base import DEFAULT_OPTIONS
from ..backends.registry import BACKEND_NAMES
from ..functional import SaltParts, linear_salt_loss, linear_topk_salt_loss, salt_loss, topk_salt_loss
from . import schedule

IGNORE_INDEX = -100
TOPK_TAILS = ("bucket", "renormalize")
FUSED_PATHS = ("linear", "logits")  # the trainer's --loss choices: fused kernels, with parts
LOSS_PATHS = FUSED_PATHS + ("torch",)

# Config attributes (of a model's config or its text_config) holding a final-logit softcap c: the
# logits are c * tanh((hidden @ lm_head.weight.T + bias) / c). The losses apply it (softcap=).
FINAL_LOGIT_SOFTCAPS = (
    "final_logit_softcapping",  # Gemma 2/3 and others
    "softcap",  # the same, under another name
)

# Config attributes (of a model's config or its text_config) that make the logits something other
# than hidden @ lm_head.weight.T + bias, each with the values that leave the logits alone, and that
# the losses cannot reproduce (final-logit softcapping they can: FINAL_LOGIT_SOFTCAPS).
OUTPUT_SCALINGS = {
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


def _configs(model: torch.nn.Module) -> dict[str, Any]:
    """The model's config and its text_config (None where absent), by where they are."""
    config = getattr(unwrap_model(model), "config", None)
    return {"config": config, "config.text_config": getattr(config, "text_config", None)}


def final_logit_softcap(model: torch.nn.Module) -> float | None:
    """The model's final-logit softcap c (its logits are c * tanh(raw / c)), read from its config
    or text_config (FINAL_LOGIT_SOFTCAPS), or None when it has none. Pass it to the losses as
    softcap= (student) or teacher_softcap= (teacher) together with causal_lm_hidden's outputs."""
    found = {}
    for where, cfg in _configs(model).items():
        for attr in FINAL_LOGIT_SOFTCAPS:
            value = getattr(cfg, attr, None)  # None for cfg None
            if value is not None:
                found[f"{where}.{attr}"] = value
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{k} = {v!r}" for k, v in found.items())
        raise ValueError(f"{type(unwrap_model(model)).__name__} has conflicting final-logit softcaps ({listed})")
    return next(iter(found.values()), None)


def plain_projection(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """(base model, output projection) of a causal LM whose logits are
    base(...)[0] @ head.weight.T + head.bias, possibly soft-capped (final_logit_softcap(model)
    gives the cap, which the losses apply); ValueError saying why not, for any other model
    (logit scaling, output multipliers, no nn.Linear head)."""
    core = unwrap_model(model)
    for where, cfg in _configs(model).items():
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
    Models with final-logit softcapping (Gemma 2/3) are accepted: their logits are
    c * tanh((hidden @ weight.T + bias) / c), so pass softcap=final_logit_softcap(model) (the
    teacher's as teacher_softcap=) to the loss. Models whose logits are otherwise not a plain
    linear projection raise ValueError (plain_projection).
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


# --------------------------------------------------------------------------- vocabularies


def output_rows(model: torch.nn.Module) -> int | None:
    """The rows of the model's output projection (the vocabulary its logits cover), or its
    config's vocab_size when it has no such weight; None when neither is known."""
    core = unwrap_model(model)
    get_head = getattr(core, "get_output_embeddings", None)
    weight = getattr(get_head() if callable(get_head) else None, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    sizes = [getattr(cfg, "vocab_size", None) for cfg in _configs(model).values()]
    return next((int(v) for v in sizes if v), None)


def resolve_kd_vocab(student: torch.nn.Module, teacher: torch.nn.Module | None, kd_vocab: int | None,
                     tokenizer_len: int | None, *, option: str = "kd_vocab") -> tuple[int | None, str | None]:
    """(kd_vocab, note) for a step with these models. A given kd_vocab is checked against both
    vocabularies. None stays None when both output projections have the same rows; when they
    differ (padded vocabularies such as 151936 against 152064) it becomes the tokenizer's length,
    the real tokens, and `note` is the line that says so (None otherwise). ValueError, naming
    `option` (e.g. "--kd-vocab"), when the vocabularies differ and no tokenizer length is known."""
    v_s = output_rows(student)
    v_t = output_rows(teacher) if teacher is not None else None
    sizes = f"lm_head rows: teacher {v_t}, student {v_s}"
    known = [v for v in (v_s, v_t) if v is not None]
    smallest = min(known) if known else None
    if kd_vocab is not None:
        if smallest is not None and kd_vocab > smallest:
            where = f"the smaller vocabulary ({sizes})" if v_t is not None else f"the student's vocabulary ({v_s})"
            raise ValueError(f"{option} {kd_vocab} is larger than {where}")
        return kd_vocab, None
    if v_t is None or v_s is None or v_t == v_s:
        return None, None
    if tokenizer_len is None:
        raise ValueError(f"teacher and student vocabularies differ ({sizes}) and no tokenizer length is "
                         f"known: pass {option} with the number of real tokens both share (the tokenizer's "
                         f"length, at most {smallest}) so the distillation compares only real tokens")
    if tokenizer_len > smallest:
        raise ValueError(f"teacher and student vocabularies differ ({sizes}) and the tokenizer has "
                         f"{tokenizer_len} tokens, more than the smaller one: pass {option} (at most {smallest})")
    return tokenizer_len, (f"teacher and student vocabularies differ ({sizes}): distilling over the "
                           f"tokenizer's {tokenizer_len} tokens ({option} {tokenizer_len})")


# --------------------------------------------------------------------------- the step's loss


class LossInput(NamedTuple):
    """What SaltStep.forward reads from a model for the loss: `value`, a HiddenAndHead (path
    "linear") or the logits, and `softcap`, the final-logit softcap the loss still has to apply to
    it (None: none)."""

    value: Any
    softcap: float | None


_OPTION_NAMES = ("softcap", "teacher_softcap", "kd_vocab", "divergence", "beta", "label_smoothing", "z_loss")
# the options the top-k loss takes from the teacher's side: none (it holds the teacher's log-probs)
_TOPK_UNSUPPORTED = ("teacher_softcap", "kd_vocab", "divergence")


class TopkTeacher(NamedTuple):
    """A cached teacher's output for a batch: its top-k token ids (int32) and their
    log-probabilities at temperature 1 (bf16/fp16/fp32), each (batch, seq, k)."""

    indices: torch.Tensor
    logprobs: torch.Tensor


class SaltStep:
    """SALT's loss settings and the three parts of a step that involve the models: the teacher's
    forward, the student's forward, and the loss (1 - w) * CE + w * tau^2 * D (+ z-loss) with w
    from the schedule (w = 0: CE alone, the teacher is not needed).

    kd_weight: w in [0, 1] during stage 1; temperature: tau > 0; n_kd: stage 1's length in
    optimizer steps; transition: how w ends ("step", "linear"); path: one of LOSS_PATHS;
    backend, chunk_size, ignore_index: passed to the loss.
    Distillation options (docs/design.md, "Distillation options"), passed to the loss:
    softcap / teacher_softcap: the final-logit softcap of the student's / teacher's logits; None
        (default): the model's own (final_logit_softcap(model)), a number overrides it. On the
        logits paths a model that caps its logits itself must be given its own cap or None.
    kd_vocab: KD over the first k vocabulary entries (needed when the models' vocabularies differ:
        resolve_kd_vocab); divergence: "forward_kl" (SALT), "reverse_kl" or "jsd" with beta in
        (0, 1); label_smoothing; z_loss.
    tail: with a TopkTeacher (a cached top-k teacher), how the loss treats the teacher's mass
        outside its top k: "bucket" or "renormalize" (topk_salt_loss).
    Every setting is checked as the losses check it. The "torch" path computes the plain SALT
    loss only (no options).
    """

    def __init__(self, *, kd_weight: float = 0.5, temperature: float = 1.0, n_kd: int = 0,
                 transition: str = "step", path: str = "linear", backend: str = "auto",
                 chunk_size: int | None = None, ignore_index: int = IGNORE_INDEX,
                 softcap: float | None = None, teacher_softcap: float | None = None,
                 kd_vocab: int | None = None, divergence: str = "forward_kl", beta: float = 0.5,
                 label_smoothing: float = 0.0, z_loss: float = 0.0, tail: str = "bucket"):
        self.kd_weight, self.temperature, self.ignore_index = _validation.check_options(
            kd_weight=kd_weight, temperature=temperature, ignore_index=ignore_index, reduction="mean")
        if isinstance(n_kd, bool) or not isinstance(n_kd, int) or n_kd < 0:
            raise ValueError(f"n_kd must be an int >= 0, got {n_kd!r}")
        schedule.check_transition(transition)
        for name, value, allowed in (("path", path, LOSS_PATHS),
                                     ("backend", backend, ("auto",) + BACKEND_NAMES),
                                     ("tail", tail, TOPK_TAILS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        self.options = _validation.check_loss_options(
            softcap=softcap, teacher_softcap=teacher_softcap, kd_vocab=kd_vocab, divergence=divergence,
            beta=beta, label_smoothing=label_smoothing, z_loss=z_loss)
        if path == "torch" and self.options != DEFAULT_OPTIONS:
            changed = ", ".join(n for n in _OPTION_NAMES if getattr(self.options, n) != getattr(DEFAULT_OPTIONS, n))
            raise ValueError(f"the torch loss path computes the plain SALT loss only; it cannot take {changed}")
        self.n_kd, self.transition, self.path = n_kd, transition, path
        self.backend, self.chunk_size, self.tail = backend, chunk_size, tail

    # The options by name (read-only views of self.options).
    softcap = property(lambda self: self.options.softcap)
    teacher_softcap = property(lambda self: self.options.teacher_softcap)
    kd_vocab = property(lambda self: self.options.kd_vocab)
    divergence = property(lambda self: self.options.divergence)
    beta = property(lambda self: self.options.beta)
    label_smoothing = property(lambda self: self.options.label_smoothing)
    z_loss = property(lambda self: self.options.z_loss)

    def settings(self) -> dict:
        """The constructor's keyword arguments that make this step."""
        out = dict(kd_weight=self.kd_weight, temperature=self.temperature, n_kd=self.n_kd,
                   transition=self.transition, path=self.path, backend=self.backend,
                   chunk_size=self.chunk_size, ignore_index=self.ignore_index, tail=self.tail)
        out.update({n: getattr(self.options, n) for n in _OPTION_NAMES})
        return out

    def replace(self, **changes) -> "SaltStep":
        """A new step with some settings changed (checked again)."""
        return SaltStep(**{**self.settings(), **changes})

    def describe_options(self) -> str:
        """The distillation options that differ from the plain SALT loss, e.g. "divergence jsd
        (beta 0.3), z_loss 0.0001"; "" when none do."""
        out = []
        for name in self.options.non_default():
            if name == "beta":
                continue
            value = getattr(self.options, name)
            out.append(f"{name} {value}" + (f" (beta {self.beta})" if value == "jsd" else ""))
        return ", ".join(out)

    def __repr__(self) -> str:
        extra = "".join(f", {n}={getattr(self.options, n)!r}" for n in self.options.non_default())
        return (f"SaltStep(kd_weight={self.kd_weight}, temperature={self.temperature}, "
                f"n_kd={self.n_kd}, transition={self.transition!r}, path={self.path!r}, "
                f"backend={self.backend!r}{extra}"
                + (f", tail={self.tail!r}" if self.tail != "bucket" else "") + ")")

    def weight(self, step: int) -> float:
        """w at optimizer step `step` (0-based)."""
        return schedule.kd_weight(step, kd_weight=self.kd_weight, n_kd=self.n_kd,
                                  transition=self.transition)

    def loss_softcap(self, model: torch.nn.Module, role: str = "student") -> float | None:
        """The softcap the loss applies to what forward() reads from `model` (role "student" or
        "teacher"). The cap of the model's logits is the step's softcap / teacher_softcap, or the
        model's own when that is None. The linear path reads the raw projection, so the loss
        applies that cap; the logits paths read logits the model has capped itself (with its own
        cap), so the loss applies only a cap the model lacks. ValueError when a logits path is
        asked for a cap that differs from the one the model applies."""
        own = final_logit_softcap(model)
        wanted = self.softcap if role == "student" else self.teacher_softcap
        cap = own if wanted is None else wanted
        if self.path == "linear" or own is None:
            return cap
        if cap != own:
            raise ValueError(f"the {role} caps its logits at {own} itself (final-logit softcapping), so "
                             f"the {self.path!r} loss path cannot give them the {role} softcap {cap}; use "
                             f"the linear loss path (which caps the raw projection) or leave the {role} "
                             f"softcap unset (the model's own is used)")
        return None

    def _read(self, model: torch.nn.Module, role: str, inputs: dict) -> LossInput:
        cap = self.loss_softcap(model, role)
        if self.path == "linear":
            return LossInput(causal_lm_hidden(model, **inputs), cap)
        return LossInput(model(**inputs).logits, cap)

    def forward(self, model: torch.nn.Module, **inputs) -> LossInput:
        """What the loss reads from the student: HiddenAndHead (path "linear") or its logits,
        with the softcap the loss applies to them."""
        return self._read(model, "student", inputs)

    @torch.no_grad()
    def teacher_forward(self, teacher: torch.nn.Module, **inputs) -> LossInput:
        return self._read(teacher, "teacher", inputs)

    def teacher_topk(self, cache, seq_ids: torch.Tensor, device: torch.device | str | None = None) -> TopkTeacher:
        """The cached teacher's output for the batch of training sequences `seq_ids` (positions in
        the dataset): cache.lookup(seq_ids) (a TeacherCache) on `device`. Pass it to loss() as
        teacher_out."""
        indices, logprobs = cache.lookup(seq_ids.cpu())
        return TopkTeacher(indices.to(device, non_blocking=True), logprobs.to(device, non_blocking=True))

    def loss(self, student_out, teacher_out, targets: torch.Tensor, w: float, *,
             reduction: str = "mean") -> tuple[torch.Tensor, SaltParts | None]:
        """(loss, SaltParts(ce, kd, z_loss, accuracy)) from forward()'s and teacher_forward()'s
        (or teacher_topk()'s) outputs; teacher_out may be None when w == 0. (A bare HiddenAndHead
        or logits tensor gets the step's softcap / teacher_softcap.) Parts are None on the "torch"
        path, whose only reduction is "mean"."""
        if isinstance(teacher_out, TopkTeacher):
            return self._topk_loss(student_out, teacher_out, targets, w, reduction)
        student_out, s_cap = _unpack(student_out, self.softcap)
        teacher_out, t_cap = _unpack(teacher_out, self.teacher_softcap)
        kw = dict(kd_weight=w, temperature=self.temperature, ignore_index=self.ignore_index,
                  reduction=reduction)
        options = dict(softcap=s_cap, teacher_softcap=t_cap if teacher_out is not None else None,
                       kd_vocab=self.kd_vocab, divergence=self.divergence, beta=self.beta,
                       label_smoothing=self.label_smoothing, z_loss=self.z_loss)
        if self.path == "linear":
            s, t = student_out, teacher_out if teacher_out is not None else HiddenAndHead(None, None, None)
            return linear_salt_loss(s.hidden, s.weight, t.hidden, t.weight, targets.to(s.hidden.device),
                                    student_bias=s.bias, teacher_bias=t.bias, backend=self.backend,
                                    chunk_size=self.chunk_size, return_parts=True, **kw, **options)
        targets = targets.to(student_out.device)
        if self.path == "logits":
            return salt_loss(student_out, teacher_out, targets, backend=self.backend,
                             return_parts=True, **kw, **options)
        from ..benchmarking.baselines import torch_salt_loss

        if reduction != "mean":
            raise ValueError(f"the torch loss path reduces by the mean only, got reduction={reduction!r}")
        kw.pop("reduction")
        return torch_salt_loss(student_out, teacher_out, targets, **kw), None

    def _topk_loss(self, student_out, teacher_out: TopkTeacher, targets, w, reduction):
        """The loss against a cached top-k teacher: linear_topk_salt_loss on the linear path,
        topk_salt_loss on the logits path (the forward KL; docs/design.md, "Top-k teacher")."""
        changed = [n for n in _TOPK_UNSUPPORTED if getattr(self.options, n) != getattr(DEFAULT_OPTIONS, n)]
        if changed:
            raise ValueError(f"a top-k teacher gives its log-probabilities only: the step cannot apply "
                             f"{', '.join(changed)} to it")
        student_out, s_cap = _unpack(student_out, self.softcap)
        kw = dict(kd_weight=w, temperature=self.temperature, tail=self.tail, ignore_index=self.ignore_index,
                  reduction=reduction, backend=self.backend, return_parts=True, softcap=s_cap,
                  label_smoothing=self.label_smoothing, z_loss=self.z_loss)
        indices, logprobs = teacher_out
        if self.path == "linear":
            s = student_out
            return linear_topk_salt_loss(s.hidden, s.weight, indices, logprobs, targets.to(s.hidden.device),
                                         student_bias=s.bias, chunk_size=self.chunk_size, **kw)
        if self.path == "logits":
            return topk_salt_loss(student_out, indices, logprobs, targets.to(student_out.device), **kw)
        raise ValueError("the torch loss path has no top-k teacher form; use the linear or logits path")

    def __call__(self, model: torch.nn.Module, teacher: torch.nn.Module | None, targets: torch.Tensor,
                 w: float, *, reduction: str = "mean", **inputs):
        """teacher forward (when w > 0), student forward and loss: (loss, parts)."""
        teacher_out = self.teacher_forward(teacher, **inputs) if w > 0 else None
        return self.loss(self.forward(model, **inputs), teacher_out, targets, w, reduction=reduction)


def _unpack(out, default_cap: float | None):
    if isinstance(out, LossInput):
        return out.value, out.softcap
    return out, default_cap


class StudentLoss(torch.nn.Module):
    """The student and a SaltStep's loss as one module, so that DistributedDataParallel wraps the
    student's whole forward. forward(input_ids, targets, teacher_out, w) -> (loss, parts), with
    teacher_out from step.teacher_forward or step.teacher_topk (None when w == 0)."""

    def __init__(self, model: torch.nn.Module, step: SaltStep):
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, input_ids, targets, teacher_out, w: float):
        return self.step.loss(self.step.forward(self.model, input_ids=input_ids), teacher_out, targets, w)


__all__ = ["FINAL_LOGIT_SOFTCAPS", "FUSED_PATHS", "HiddenAndHead", "IGNORE_INDEX", "LOSS_PATHS", "LossInput",
           "OUTPUT_SCALINGS", "SaltStep", "StudentLoss", "TOPK_TAILS", "TopkTeacher", "causal_lm_hidden", "final_logit_softcap",
           "output_rows", "plain_projection", "resolve_kd_vocab", "unwrap_model"]
