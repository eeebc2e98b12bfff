"""Atomic checkpoints (temporary file, fsync, rename) with everything a resume needs: model,
optimizer, step, the RNG states of every process, counters, and the config that made the run.
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
    rngs = d.gather(rng_state())
    if d.main:
        atomic_save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "rng": rngs, "counters": dict(counters), "config": config, "world_size": d.world,
                     # batches are a function of (seed, step): the step is the position
                     "data_position": {"step": step, "epoch": sampler.epoch_of(step)}}, path)
    d.barrier()


def restore_run(state: dict, model, optimizer, counters: dict, d) -> int:
    """Load a save_run state into model, optimizer, counters and this process's RNGs; returns
    the step to continue from."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"][d.rank])
    counters.update(state["counters"])
    return state["step"]
