"""The processes of a run: torchrun's process group, the device, SIGTERM/SIGINT handling, the
wall-clock checkpoint clock, the exit status of a stopped run and the clean-up of a failed start."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass
class Dist:
    """This process's place in the run (rank 0 of 1 without torchrun) and the collectives the
    loop uses; with one process they are plain Python."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1 if flag else 0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj) -> list:
        """`obj` of every process, by rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def init_distributed(device_kind: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join the group (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")), started_here=started)


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StopOnSignal:
    """SIGTERM/SIGINT set a flag; the loop looks at it at its log steps, saves and returns."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def _handler(self, signum, _frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C stops at once
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.SIG_DFL))

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def exit_status(signal_name: str) -> int:
    """The exit status of a run stopped by a signal, as a shell reports a process killed by it
    (128 + the signal's number: 143 for SIGTERM, 130 for SIGINT), so that a scheduler does not
    read a stopped run as a success."""
    try:
        return 128 + signal.Signals[signal_name].value
    except KeyError:
        return 1


class CheckpointClock:
    """Checkpoints by wall-clock: due() is true at a log step once `minutes` have passed since
    the last save (or the start), so a SIGKILL loses at most that much work. All processes call
    it at the same steps and agree (one collective); minutes <= 0 turns it off."""

    def __init__(self, minutes: float, d: Dist):
        self.seconds = minutes * 60.0
        self.d = d
        self.last = time.monotonic()

    def due(self) -> bool:
        if self.seconds <= 0:
            return False
        return self.d.any(time.monotonic() - self.last >= self.seconds)

    def saved(self) -> None:
        self.last = time.monotonic()


TRAINING_STATE = ("metrics.jsonl", "checkpoint.pt")


def _holds_training_state(path: Path) -> bool:
    return any(p.name in TRAINING_STATE for p in path.rglob("*"))


@contextmanager
def remove_if_failed_start(out_dir: str | os.PathLike):
    """A run (or demo) that fails before it trained anything leaves no folder behind: on an
    exception, OUT_DIR is removed, with the empty parents made for it, when it did not exist
    before and holds no metrics.jsonl or checkpoint.pt (only what the start wrote: config.json,
    tokenizer/). With torchrun only rank 0 removes."""
    path = Path(out_dir).absolute()
    created = []  # the folders this run may create, deepest first
    p = path
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        if created and int(os.environ.get("RANK", "0")) == 0 and path.is_dir() \
                and not _holds_training_state(path):
            shutil.rmtree(path, ignore_errors=True)
            for parent in created[1:]:
                try:
                    parent.rmdir()  # only when empty
                except OSError:
                    break
        raise
