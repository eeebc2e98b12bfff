"""What a run reports: log lines, the progress bar, metrics.jsonl (train and eval rows), the
training time (read without a device sync per step), validation metrics and summary.json."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .report import read_metrics
from .runtime import Dist, synchronize

_bar = None  # the progress bar while one is shown: log() writes above it


def log(msg: str) -> None:
    """A line a person can read; goes above the progress bar when one is shown."""
    if _bar is not None:
        _bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr, flush=True)


def fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every platform
        return None


class Progress:
    """A tqdm bar over the run's steps on the main process (with --progress; shown on a terminal,
    silent in log files, where the eval lines still print)."""

    def __init__(self, run_cfg, start: int, d: Dist):
        self.bar = None
        if run_cfg.progress and d.main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run_cfg.steps, initial=start, desc=run_cfg.role, unit="step",
                            dynamic_ncols=True, disable=None, file=sys.stderr)

    def __enter__(self) -> "Progress":
        global _bar
        _bar = self.bar
        return self

    def __exit__(self, *exc) -> bool:
        global _bar
        if self.bar is not None:
            self.bar.close()
        _bar = None
        return False

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, **fields) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**fields, refresh=False)


class Metrics:
    """metrics.jsonl: one JSON object per line, train rows and eval rows, each with "step"."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop rows a killed run wrote after its last checkpoint (they will be recomputed)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        keep = [r for r in rows if json.loads(r)["step"] <= step]
        ckpt.atomic_write_text("".join(r + "\n" for r in keep), self.path)

    def write(self, row: dict) -> dict:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        return row


class Pace:
    """Training time and tokens without a device sync at every step. The clock is read (after a
    sync) only by lap(), at the steps where the loop logs, evaluates, checkpoints or changes stage;
    the steps since the previous reading share its time. start() restarts it after such a step, so
    evaluation and checkpoints are not training time.

    counters (saved in checkpoints): tokens, train_time_s, and per stage its time and steps.
    """

    def __init__(self, device: torch.device, tokens_per_step: int):
        self.device = device
        self.tokens_per_step = tokens_per_step
        self.counters = {"tokens": 0, "train_time_s": 0.0, "stage1_time_s": 0.0, "stage1_steps": 0,
                         "stage2_time_s": 0.0, "stage2_steps": 0}
        self.lap_rate = 0.0  # tokens/s of the steps in the last lap
        self._interval = [0.0, 0]  # time and steps since the last train row
        self._t0, self._steps = 0.0, 0

    def start(self) -> None:
        synchronize(self.device)
        self._t0, self._steps = time.perf_counter(), 0

    def step(self) -> None:
        self._steps += 1
        self.counters["tokens"] += self.tokens_per_step

    def lap(self, stage: str) -> None:
        """Add the time since start() to `stage` ("stage1"/"stage2"): all its steps are in it."""
        synchronize(self.device)
        dt, n = time.perf_counter() - self._t0, self._steps
        c = self.counters
        c["train_time_s"] += dt
        c[f"{stage}_time_s"] += dt
        c[f"{stage}_steps"] += n
        self._interval = [self._interval[0] + dt, self._interval[1] + n]
        self.lap_rate = n * self.tokens_per_step / max(dt, 1e-9)

    def take_interval(self) -> tuple[float, float]:
        """(tokens per second, seconds per step) since the last call."""
        dt, n = self._interval
        self._interval = [0.0, 0]
        return n * self.tokens_per_step / max(dt, 1e-9), dt / max(n, 1)


def train_row(step: int, loss, parts, w: float, lr: float, pace: Pace, d: Dist) -> dict:
    """A log step's row: this step's loss, CE, KD, z-loss and next-token accuracy averaged over
    the processes (the loop's one read-back of them), and the tokens per second and time per
    step over the log interval."""
    values = torch.stack([loss.detach(), parts.ce, parts.kd, parts.z_loss, parts.accuracy]).float().tolist()
    lval, ce, kd, z_loss, accuracy = (v / d.world for v in d.sum(values))
    tokens_per_s, step_time_s = pace.take_interval()
    return {"step": step, "split": "train", "loss": lval, "ce": ce, "kd": kd, "z_loss": z_loss,
            "accuracy": accuracy, "w": w, "lr": lr,
            "tokens": pace.counters["tokens"], "tokens_per_s": tokens_per_s,
            "step_time_s": step_time_s, "train_time_s": round(pace.counters["train_time_s"], 4)}


@torch.no_grad()
def evaluate(model, val: torch.Tensor, device, d: Dist, batch_size: int = 32) -> dict:
    """Validation loss (mean CE per token), perplexity and next-token accuracy, over all processes."""
    was_training = model.training
    model.eval()
    loss_sum = correct = count = 0.0
    shard = val[d.rank::d.world]
    for start in range(0, len(shard), batch_size):
        batch = shard[start:start + batch_size].to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(input_ids=x).logits.float()
        loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    loss_sum, correct, count = d.sum([loss_sum, correct, count])
    model.train(was_training)
    loss = loss_sum / max(count, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_acc": correct / max(count, 1)}


def eval_row(step: int, model, val: torch.Tensor, device, d: Dist, pace: Pace) -> dict:
    return {"step": step, "split": "val", **evaluate(model, val, device, d),
            "tokens": pace.counters["tokens"], "train_time_s": round(pace.counters["train_time_s"], 4)}


def eval_line(row: dict, steps: int, **train) -> str:
    """The log line of an evaluation; `train` (loss, w, lr, tok_s, time_s) adds the training state."""
    line = (f"step {row['step']}/{steps} | val loss {row['val_loss']:.4f} | ppl {row['val_ppl']:.1f} | "
            f"acc {row['val_acc']:.3f}")
    if train:
        eta = (steps - row["step"]) * train["time_s"] / max(row["step"], 1)
        line += (f" | train loss {train['loss']:.4f} | w {train['w']:.2f} | lr {train['lr']:.2e} | "
                 f"{train['tok_s']:,.0f} tok/s | train {fmt_time(train['time_s'])} | eta {fmt_time(eta)}")
    return line


def run_summary(cfg, out: Path, counters: dict, n_params: int, n_kd: int, d: Dist,
                device: torch.device, load_start: float | None) -> dict:
    """summary.json of a finished run (main process; {} elsewhere)."""
    if not d.main:
        return {}
    evals = [row for row in read_metrics(out / "metrics.jsonl") if row["split"] == "val"]
    steps = cfg.run.steps
    t = counters["train_time_s"]
    summary = {
        "role": cfg.run.role,
        "model": cfg.model_spec(),
        "parameters": n_params,
        "steps": steps,
        "final_val_loss": evals[-1]["val_loss"],
        "final_val_ppl": evals[-1]["val_ppl"],
        "final_val_acc": evals[-1]["val_acc"],
        "wall_time_s": t,
        "tokens": counters["tokens"],
        "tokens_per_s": counters["tokens"] / max(t, 1e-9),
        "step_time_s": t / steps,
        "processes": d.world,
        "loss_path": cfg.run.loss,
        # what the times were measured on: with a load average above the core count, other
        # processes shared the CPU and the times are slower than the machine can do
        "device": device.type,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_start": load_start,
        "load_avg_1m_end": load_average(),
    }
    if cfg.run.role == "salt":
        summary.update({
            "n_kd": n_kd,
            "kd_weight": cfg.salt.kd_weight,
            "temperature": cfg.salt.temperature,
            "transition": cfg.salt.transition,
            "select_data": cfg.salt.select_data,
            "stage1_step_time_s": counters["stage1_time_s"] / max(counters["stage1_steps"], 1),
            "stage2_step_time_s": counters["stage2_time_s"] / max(counters["stage2_steps"], 1),
        })
    return summary
