"""Model presets (Hugging Face LlamaForCausalLM) and loading of local causal-LM directories.

    from salt_kernels.train.models import build_model, MODEL_PRESETS
    model = build_model("student-s", vocab_size=2048)

Presets: the `-s` pair is what `salt-kernels demo` trains on two CPU cores in minutes (teacher
about a third of the student's parameters, as in the paper's 1.5B/2.8B-to-8.6B pairs); the `-m`
and `-l` pairs are GPU-sized; `tiny` is for tests.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import ConfigError


@dataclass(frozen=True)
class ModelPreset:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_seq_len: int = 2048
    tie_embeddings: bool = False


MODEL_PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    "teacher-s": ModelPreset(hidden_size=96, num_layers=2, num_heads=4, intermediate_size=256),
    "student-s": ModelPreset(hidden_size=160, num_layers=4, num_heads=5, intermediate_size=432),
    "teacher-m": ModelPreset(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1376),
    "student-m": ModelPreset(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048),
    "teacher-l": ModelPreset(hidden_size=1024, num_layers=16, num_heads=16, intermediate_size=2816),
    "student-l": ModelPreset(hidden_size=2048, num_layers=24, num_heads=16, intermediate_size=5632),
}


def is_model_dir(spec: str) -> bool:
    return os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "config.json"))


def check_model_spec(spec: str, what: str = "--model") -> None:
    """Fail early on a name that is neither a preset nor a local model directory."""
    if spec in MODEL_PRESETS or is_model_dir(spec):
        return
    if os.path.isdir(spec):
        raise ConfigError(f"{what} {spec!r} is a directory without config.json: point it at a "
                          "Hugging Face causal-LM directory (save_pretrained output)")
    raise ConfigError(f"{what} {spec!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor a "
                      "local Hugging Face model directory (downloads from the Hub are not used)")


def model_dir_vocab_size(path: str) -> int:
    """vocab_size from a model directory's config.json, without loading the weights."""
    with open(os.path.join(path, "config.json")) as fh:
        cfg = json.load(fh)
    if "vocab_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]
    if "vocab_size" not in cfg:
        raise ConfigError(f"{path}/config.json has no vocab_size: is it a causal language model?")
    return int(cfg["vocab_size"])


def preset_config(preset: str | ModelPreset, vocab_size: int, **overrides):
    """A LlamaConfig for a preset (name or ModelPreset) and a vocabulary size."""
    from transformers import LlamaConfig

    if isinstance(preset, str):
        if preset not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {preset!r}; presets: {', '.join(MODEL_PRESETS)}")
        preset = MODEL_PRESETS[preset]
    p = asdict(preset)
    p.update({k: v for k, v in overrides.items() if v is not None})
    if p["hidden_size"] % p["num_heads"]:
        raise ConfigError(f"hidden size {p['hidden_size']} is not divisible by the number of "
                          f"heads {p['num_heads']}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_layers"],
        num_attention_heads=p["num_heads"],
        num_key_value_heads=p["num_heads"],
        max_position_embeddings=p["max_seq_len"],
        tie_word_embeddings=p["tie_embeddings"],
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    )


def build_model(preset: str | ModelPreset, vocab_size: int, **overrides):
    """A freshly initialized LlamaForCausalLM from a preset name and a vocabulary size.

    overrides: hidden_size, num_layers, num_heads, intermediate_size, max_seq_len (None: keep).
    Initialization draws from torch's global RNG: seed it first for a reproducible model.
    """
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(preset_config(preset, vocab_size, **overrides))


@contextmanager
def _quiet_hf():
    """No "Loading weights" / "Writing model shards" bars in the middle of the training logs."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_model_dir(path: str, dtype=None):
    """A local Hugging Face causal-LM directory (any architecture AutoModelForCausalLM knows)."""
    from transformers import AutoModelForCausalLM

    if not is_model_dir(path):
        raise ConfigError(f"{path!r} is not a Hugging Face model directory (no config.json)")
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    with _quiet_hf():
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def make_model(spec: str, vocab_size: int, **overrides):
    """A preset name -> new model with `vocab_size`; a directory -> its pretrained weights."""
    if spec in MODEL_PRESETS:
        return build_model(spec, vocab_size, **overrides)
    check_model_spec(spec)
    model = load_model_dir(spec)
    if model.config.vocab_size != vocab_size:
        raise ConfigError(f"model {spec!r} has vocab_size {model.config.vocab_size} but the "
                          f"tokenizer/teacher vocabulary has {vocab_size}: they must match")
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model_dir(model, tokenizer, path: str | Path, state_dict: dict | None = None) -> None:
    """save_pretrained of the model (with `state_dict` when given: a sharded model's gathered
    weights) and its tokenizer, written to a temp dir then renamed."""
    import shutil

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with _quiet_hf():
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
