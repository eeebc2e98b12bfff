"""Atomic checkpoints (temporary file, fsync, rename) with everything a resume needs: model,
optimizer, step, the RNG states of every process, counters, and the config that made the run.
Under --fsdp the model and optimizer states are gathered into full state dicts (parallel.py).
The data position is the step itself: batches are a pure function of (seed, step)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to PATH.tmp, flush to disk, then os.replace: a reader (or a crash) sees either
    the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: str | Path) -> dict:
    # weights_only=False: the checkpoint holds RNG states (numpy arrays, tuples) we wrote ourselves
    return torch.load(path, map_location="cpu", weights_only=False)


def save_run(path: str | Path, step: int, model, optimizer, counters: dict, config: dict, d,
             sampler) -> None:
    """The state of a run after `step` steps, written by the main process with the RNG states of
    every process (a collective: every process calls it)."""
    from .parallel import full_states

    model_state, optim_state = full_states(model, optimizer)  # a collective under --fsdp
    rngs = d.gather(rng_state())
    if d.main:
        atomic_save({"step": step, "model": model_state, "optimizer": optim_state,
                     "rng": rngs, "counters": dict(counters), "config": config, "world_size": d.world,
                     # batches are a function of (seed, step): the step is the position
                     "data_position": {"step": step, "epoch": sampler.epoch_of(step)}}, path)
    d.barrier()


def restore_run(state: dict, model, optimizer, counters: dict, d) -> int:
    """Load a save_run state into model, optimizer, counters and this process's RNGs; returns
    the step to continue from."""
    from .parallel import load_full_states

    load_full_states(model, optimizer, state["model"], state["optimizer"])
    set_rng_state(state["rng"][d.rank])
    counters.update(state["counters"])
    return state["step"]


def is_run_folder(path: str | Path) -> bool:
    """A training run's output folder (what --out-dir names): its config.json is a run config,
    or it holds metrics.jsonl / checkpoint.pt."""
    path = Path(path)
    if (path / CHECKPOINT).exists() or (path / "metrics.jsonl").exists():
        return True
    try:
        import json

        return "run" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def resolve_model_dir(path: str, flag: str = "--teacher") -> str:
    """The Hugging Face model directory that PATH names: PATH itself, or PATH/final when PATH is
    the folder of a finished training run (one log line says so). Anything else raises a
    ConfigError with one hint."""
    from .config import ConfigError
    from .metrics import log
    from .models import is_model_dir

    p = Path(path)
    if is_run_folder(p):
        final = p / "final"
        if is_model_dir(str(final)):
            log(f"{flag} {path} is a training run folder: using its model, {final}")
            return str(final)
        raise ConfigError(f"{flag} {path!r} is the folder of a training run that has not finished "
                          f"(no final/ model in it): finish it (rerun its command with --resume), "
                          f"then pass {path} or {final}")
    if is_model_dir(str(p)):
        return str(p)
    raise ConfigError(f"{flag} {path!r} is not a local Hugging Face model directory (a folder "
                      "with config.json, such as the final/ folder of a finished training run, or "
                      "that run's folder itself)")
