"""The training loop: one run of role teacher, baseline or salt (nanoGPT style, one function).

    from salt_kernels.train import TrainConfig, train
    cfg = TrainConfig().replace(role="salt", teacher="runs/demo/teacher/final", n_kd=300)
    result = train(cfg)

Every loss goes through salt_kernels: by default the fused output projection + loss
(linear_salt_loss, which never materializes logits), or with --loss logits the model's logits +
salt_loss. Baseline and teacher runs use the same function with kd_weight 0 and no teacher.
Under torchrun, every process trains on its own shard of the data with DistributedDataParallel.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import schedule
from .config import ConfigError, TrainConfig, check_config
from .data import (
    Dataset,
    ShardSampler,
    build_dataset,
    has_tokenizer,
    load_documents,
    load_tokenizer,
    split_documents,
    train_tokenizer,
)
from .report import read_metrics
from .models import (
    check_model_spec,
    count_parameters,
    is_model_dir,
    load_model_dir,
    make_model,
    model_dir_vocab_size,
    output_projection,
    save_model_dir,
)

# Keys that may differ between a run and its resumption.
RESUME_FREE_KEYS = {"resume", "overwrite", "progress", "device", "backend", "log_interval",
                    "ckpt_interval", "eval_interval", "threads"}
RUN_ARTIFACTS = ("metrics.jsonl", "checkpoint.pt", "summary.json", "config.json", "selection.pt",
                 "final", "tokenizer")


@dataclass
class RunResult:
    status: str  # "finished" or "interrupted"
    step: int
    out_dir: Path
    summary: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- processes


@dataclass
class Dist:
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


def init_distributed(device_kind: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join the group (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        started = True
    else:
        started = False
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


class StopOnSignal:
    """SIGTERM/SIGINT set a flag; the loop checks it between steps, saves and returns."""

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


# --------------------------------------------------------------------------- the loss


class StudentLoss(torch.nn.Module):
    """The student and its SALT loss in one module, so DistributedDataParallel wraps both.

    forward(x, y, teacher_out, w) -> (loss, SaltParts). teacher_out is None when w == 0, else
    the teacher's logits (--loss logits) or (hidden, lm_head weight, lm_head bias) (--loss linear).
    """

    def __init__(self, model, loss_path: str, temperature: float, backend: str):
        super().__init__()
        self.model = model
        self.loss_path = loss_path
        self.temperature = temperature
        self.backend = backend

    def forward(self, x, y, teacher_out, w: float):
        from salt_kernels import linear_salt_loss, salt_loss

        kw = dict(kd_weight=w, temperature=self.temperature, backend=self.backend,
                  return_parts=True)
        if self.loss_path == "logits":
            logits = self.model(input_ids=x).logits
            return salt_loss(logits, teacher_out, y, **kw)
        decoder, head = output_projection(self.model)
        hidden = decoder(input_ids=x).last_hidden_state
        t_hidden, t_weight, t_bias = teacher_out if teacher_out is not None else (None, None, None)
        return linear_salt_loss(hidden, head.weight, t_hidden, t_weight, y,
                                student_bias=head.bias, teacher_bias=t_bias, **kw)


@torch.no_grad()
def teacher_forward(teacher, x, loss_path: str):
    if loss_path == "logits":
        return teacher(input_ids=x).logits
    decoder, head = output_projection(teacher)
    return decoder(input_ids=x).last_hidden_state, head.weight, head.bias


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


# --------------------------------------------------------------------------- checks


def ensure_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot write to the output directory {str(out_dir)!r} ({reason}): "
                          "choose a writable --out-dir") from None


def validate_inputs(cfg: TrainConfig) -> list[str]:
    """Every check that needs no training, in the order a user would fix them. Returns the
    documents (read once here) so a bad --data fails before anything is built."""
    check_config(cfg)
    check_model_spec(cfg.model_spec(), "--model")
    if cfg.run.role == "salt":
        teacher = cfg.salt.teacher
        if not is_model_dir(teacher):
            raise ConfigError(f"--teacher {teacher!r} is not a local Hugging Face model directory "
                              "(with config.json); train one with --role teacher and pass its "
                              "final/ folder")
    if cfg.data.tokenizer:
        load_tokenizer(cfg.data.tokenizer)  # raises a ConfigError for a bad path
    docs = load_documents(cfg.data.data)
    ensure_writable(Path(cfg.run.out_dir))
    return docs


def check_vocabularies(cfg: TrainConfig, tokenizer) -> int:
    """The model vocabulary size to use; ConfigError when teacher, student and tokenizer disagree."""
    n_tok = len(tokenizer)
    student_vocab = model_dir_vocab_size(cfg.model_spec()) if is_model_dir(cfg.model_spec()) else None
    if cfg.run.role == "salt":
        teacher_dir = cfg.salt.teacher
        teacher_vocab = model_dir_vocab_size(teacher_dir)
        if student_vocab is not None and student_vocab != teacher_vocab:
            raise ConfigError(f"teacher and student vocabularies differ: teacher {teacher_dir!r} has "
                              f"vocab_size {teacher_vocab}, student {cfg.model_spec()!r} has "
                              f"{student_vocab}. SALT needs one shared tokenizer.")
        if has_tokenizer(teacher_dir):
            teacher_tok = load_tokenizer(teacher_dir)
            if teacher_tok.get_vocab() != tokenizer.get_vocab():
                raise ConfigError(f"the tokenizer of this run differs from the teacher's "
                                  f"({teacher_dir!r}): drop --tokenizer to use the teacher's, or "
                                  "pass the tokenizer the teacher was trained with")
        student_vocab = teacher_vocab
    vocab = student_vocab if student_vocab is not None else n_tok
    if n_tok > vocab:
        raise ConfigError(f"the tokenizer has {n_tok} tokens but the model's vocab_size is {vocab}")
    return vocab


def prepare_out_dir(cfg: TrainConfig, d: Dist) -> bool:
    """Returns True when resuming from a checkpoint. Refuses to mix two runs in one folder."""
    out = Path(cfg.run.out_dir)
    has_ckpt = (out / ckpt.CHECKPOINT).exists()
    has_run = has_ckpt or (out / "metrics.jsonl").exists()
    if cfg.run.resume and has_ckpt:
        return True
    if has_run and not (cfg.run.overwrite or cfg.run.resume):
        raise ConfigError(f"{str(out)!r} already holds a run: pass --resume to continue it, "
                          "--overwrite to start over, or choose another --out-dir")
    if d.main:
        if cfg.run.resume:
            log(f"--resume: no checkpoint in {out}, starting from step 0")
        for name in RUN_ARTIFACTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    d.barrier()
    return False


# --------------------------------------------------------------------------- logging


_bar = None


def log(msg: str) -> None:
    """A line a person can read; goes above the progress bar when one is shown."""
    if _bar is not None:
        _bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr, flush=True)


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

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# --------------------------------------------------------------------------- the run


def train(cfg: TrainConfig, *, on_step: Callable[[int, dict], None] | None = None) -> RunResult:
    """Run one training job to the end (or to a SIGTERM/SIGINT, after saving a checkpoint).

    on_step(step, row): called after each completed step with its training row (for tests and
    notebooks).
    """
    global _bar
    docs = validate_inputs(cfg)  # every user error surfaces here, before anything is trained
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", "0")))
    d = init_distributed(device.type)
    try:
        return _train(cfg, docs, device, d, on_step)
    finally:
        _bar = None
        if d.started_here:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, docs: list[str], device: torch.device, d: Dist, on_step) -> RunResult:
    global _bar
    r, s, o = cfg.run, cfg.salt, cfg.optim
    out = Path(r.out_dir)
    if r.batch_size % d.world:
        raise ConfigError(f"--batch-size {r.batch_size} is not divisible by the {d.world} processes")
    resuming = prepare_out_dir(cfg, d)
    state = ckpt.load(out / ckpt.CHECKPOINT) if resuming else None
    if state is not None:
        _check_resume_compatible(state, cfg, d)
        if state["step"] >= r.steps:
            log(f"{out}: already finished ({state['step']} steps); nothing to do")
            summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
            return RunResult("finished", state["step"], out, summary)

    # ---- data: split, tokenizer, sequences
    train_docs, val_docs = split_documents(docs, cfg.data.val_fraction)
    tokenizer = _resolve_tokenizer(cfg, train_docs, out, d, resuming)
    vocab = check_vocabularies(cfg, tokenizer)
    data: Dataset = build_dataset(train_docs, val_docs, tokenizer, cfg.data.seq_len)
    n_eval = cfg.data.eval_sequences or len(data.val)
    eval_ids = torch.linspace(0, len(data.val) - 1, min(n_eval, len(data.val))).long().unique()
    val = data.val[eval_ids]
    if d.main:
        ckpt.atomic_write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", out / "config.json")

    # ---- models: the student from the seed (same init for baseline and SALT), then the teacher
    random.seed(r.seed)
    np.random.seed(r.seed)
    torch.manual_seed(r.seed)
    m = cfg.model
    model = make_model(cfg.model_spec(), vocab, hidden_size=m.hidden_size, num_layers=m.num_layers,
                       num_heads=m.num_heads, intermediate_size=m.intermediate_size)
    model.to(device).train()
    teacher = None
    n_kd = cfg.n_kd_steps()
    if r.role == "salt":
        teacher_dtype = _teacher_dtype(s.teacher_dtype, device)
        teacher = load_model_dir(s.teacher, dtype=teacher_dtype).to(device).eval()
        teacher.requires_grad_(False)
    if r.loss == "linear":
        output_projection(model)
        if teacher is not None:
            output_projection(teacher)
    module = StudentLoss(model, r.loss, s.temperature, r.backend)
    if d.world > 1:
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=(o.beta1, o.beta2))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    # ---- data order: this process's shard; with --select-data, stage 1 reads the top scorers
    per_rank = r.batch_size // d.world
    all_ids = torch.arange(len(data.train))
    sampler = ShardSampler(all_ids, per_rank, r.seed, d.rank, d.world)
    stage1_sampler = None
    if s.select_data and n_kd > 0:
        stage1_sampler = _selection_sampler(cfg, teacher, data, sampler, device, d, out, per_rank)

    # ---- resume
    start = 0
    counters = {"tokens": 0, "train_time_s": 0.0, "stage1_time_s": 0.0, "stage1_steps": 0,
                "stage2_time_s": 0.0, "stage2_steps": 0}
    metrics = Metrics(out / "metrics.jsonl", d.main)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"][d.rank])
        start = state["step"]
        counters.update(state["counters"])
        metrics.truncate_after(start)
        log(f"resumed {out} at step {start}/{r.steps}")

    n_params = count_parameters(model)
    if d.main:
        stage = f", distillation for {n_kd} steps (w={s.kd_weight}, tau={s.temperature}, {s.transition})" if n_kd else ""
        log(f"[{r.role}] {cfg.model_spec()}: {n_params / 1e6:.2f}M parameters, vocab {vocab}, "
            f"{len(data.train)} train / {len(data.val)} val sequences of {cfg.data.seq_len} tokens, "
            f"{r.steps} steps x {r.batch_size} sequences on {d.world} x {device.type}, "
            f"loss path {r.loss}{stage}")

    def save_checkpoint(step: int) -> None:
        rngs = [None] * d.world
        if d.world > 1:
            dist.all_gather_object(rngs, ckpt.rng_state())
        else:
            rngs = [ckpt.rng_state()]
        if d.main:
            ckpt.atomic_save({"step": step, "model": model.state_dict(),
                              "optimizer": optimizer.state_dict(), "rng": rngs,
                              "counters": dict(counters), "config": cfg.to_dict(),
                              "world_size": d.world,
                              # batches are a function of (seed, step): the step is the position
                              "data_position": {"step": step, "epoch": sampler.epoch_of(step)}},
                             out / ckpt.CHECKPOINT)
        d.barrier()

    def eval_row(step: int) -> dict:
        row = {"step": step, "split": "val", **evaluate(model, val, device, d),
               "tokens": counters["tokens"], "train_time_s": round(counters["train_time_s"], 4)}
        metrics.write(row)
        return row

    if start == 0:
        row = eval_row(0)
        log(f"step 0/{r.steps} | val loss {row['val_loss']:.4f} | ppl {row['val_ppl']:.1f} | "
            f"acc {row['val_acc']:.3f}")

    # ---- the loop
    load_start = _load_average()
    tokens_per_step = r.batch_size * cfg.data.seq_len
    _bar = _make_bar(r, start, d)
    status = "finished"
    interval_tokens, interval_time = 0, 0.0
    step = start
    with StopOnSignal() as stop:
        for step in range(start, r.steps):
            if d.any(stop.requested):
                status = "interrupted"
                break
            w = schedule.kd_weight(step, kd_weight=s.kd_weight, n_kd=n_kd, transition=s.transition)
            lr = schedule.learning_rate(step, lr=o.lr, warmup_steps=o.warmup_steps,
                                        total_steps=r.steps, min_lr_ratio=o.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            in_stage1 = step < n_kd
            ids = (stage1_sampler if in_stage1 and stage1_sampler is not None else sampler).batch(step)
            batch = data.train[ids].to(device, non_blocking=True)
            x, y = batch[:, :-1], batch[:, 1:]

            t0 = time.perf_counter()
            with amp if amp is not None else _nullcontext():
                teacher_out = teacher_forward(teacher, x, r.loss) if w > 0 else None
                loss, parts = module(x, y, teacher_out, w)
            loss.backward()
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0

            stage = "stage1" if in_stage1 else "stage2"
            counters[f"{stage}_time_s"] += dt
            counters[f"{stage}_steps"] += 1
            counters["train_time_s"] += dt
            counters["tokens"] += tokens_per_step
            interval_tokens += tokens_per_step
            interval_time += dt
            done = step + 1
            row = None
            if done % r.log_interval == 0 or done == r.steps:
                lval, ce, kd = d.sum([loss.item(), parts.ce.item(), parts.kd.item()])
                row = {"step": done, "split": "train", "loss": lval / d.world, "ce": ce / d.world,
                       "kd": kd / d.world, "w": w, "lr": lr, "tokens": counters["tokens"],
                       "tokens_per_s": interval_tokens / max(interval_time, 1e-9),
                       "train_time_s": round(counters["train_time_s"], 4)}
                metrics.write(row)
                interval_tokens, interval_time = 0, 0.0
            if _bar is not None:
                _bar.update(1)
                _bar.set_postfix(loss=f"{loss.item():.3f}", w=f"{w:.2f}",
                                 tok_s=f"{tokens_per_step / max(dt, 1e-9):,.0f}", refresh=False)
            if done % r.eval_interval == 0 or done == r.steps:
                ev = eval_row(done)
                eta = (r.steps - done) * counters["train_time_s"] / max(done - 0, 1)
                log(f"step {done}/{r.steps} | val loss {ev['val_loss']:.4f} | ppl {ev['val_ppl']:.1f} | "
                    f"acc {ev['val_acc']:.3f} | train loss {loss.item():.4f} | w {w:.2f} | "
                    f"lr {lr:.2e} | {tokens_per_step / max(dt, 1e-9):,.0f} tok/s | "
                    f"train {_fmt_time(counters['train_time_s'])} | eta {_fmt_time(eta)}")
            if r.ckpt_interval and done % r.ckpt_interval == 0 and done < r.steps:
                save_checkpoint(done)
            if on_step is not None:
                on_step(done, row or {"step": done, "w": w, "loss": loss.item()})
        else:
            step = r.steps
    if _bar is not None:
        _bar.close()
        _bar = None

    if status == "interrupted":
        save_checkpoint(step)
        log(f"stopped by {stop.signal_name} after step {step}/{r.steps}; checkpoint saved to "
            f"{out / ckpt.CHECKPOINT}. Continue with the same command plus --resume.")
        return RunResult("interrupted", step, out)

    save_checkpoint(r.steps)
    summary = _run_summary(cfg, out, counters, n_params, n_kd, d, device, load_start)
    if d.main:
        save_model_dir(model, tokenizer, out / "final")
        ckpt.atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
        log(f"[{r.role}] done: final val loss {summary['final_val_loss']:.4f}, "
            f"{summary['tokens_per_s']:,.0f} tok/s, train time {_fmt_time(summary['wall_time_s'])}; "
            f"model in {out / 'final'}")
    d.barrier()
    return RunResult("finished", r.steps, out, summary)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _make_bar(r, start: int, d: Dist):
    if not (r.progress and d.main):
        return None
    from tqdm.auto import tqdm

    # disable=None: shown on a terminal, silent in log files (the eval lines still print)
    return tqdm(total=r.steps, initial=start, desc=r.role, unit="step", dynamic_ncols=True,
                disable=None, file=sys.stderr)


def _teacher_dtype(name: str, device: torch.device):
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _resolve_tokenizer(cfg: TrainConfig, train_docs: list[str], out: Path, d: Dist, resuming: bool):
    """The run's tokenizer, saved to OUT_DIR/tokenizer: the resumed run's own, --tokenizer, the
    teacher's (SALT), the student directory's, or a BPE trained here on the training split."""
    saved = out / "tokenizer"
    if resuming and has_tokenizer(str(saved)):
        return load_tokenizer(str(saved))
    source = cfg.data.tokenizer
    if source is None and cfg.run.role == "salt" and has_tokenizer(cfg.salt.teacher):
        source = cfg.salt.teacher
    if source is None and is_model_dir(cfg.model_spec()) and has_tokenizer(cfg.model_spec()):
        source = cfg.model_spec()
    if source is None and cfg.run.role == "salt":
        raise ConfigError(f"the teacher {cfg.salt.teacher!r} has no tokenizer files: pass "
                          "--tokenizer with the tokenizer it was trained with")
    if source is not None:
        tokenizer = load_tokenizer(source)
        if d.main:
            tokenizer.save_pretrained(saved)
        d.barrier()
        return tokenizer
    if d.main:
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(train_docs, cfg.data.vocab_size)
        tokenizer.save_pretrained(saved)
        log(f"trained a byte-level BPE tokenizer ({len(tokenizer)} tokens) in "
            f"{time.perf_counter() - t0:.1f}s; saved to {saved}")
    d.barrier()
    return load_tokenizer(str(saved))


def _selection_sampler(cfg, teacher, data: Dataset, sampler: ShardSampler, device, d: Dist,
                       out: Path, per_rank: int) -> ShardSampler:
    """Score this process's shard with the teacher; stage 1 samples the top fraction of it."""
    from .selection import score_sequences, select_top_fraction

    s = cfg.salt
    path = out / ("selection.pt" if d.world == 1 else f"selection-rank{d.rank}.pt")
    ids = sampler.ids
    cached = torch.load(path, weights_only=True) if path.exists() else None
    if cached is not None and torch.equal(cached["ids"], ids) and cached["top_k"] == s.select_top_k:
        scores = cached["scores"]
    else:
        t0 = time.perf_counter()
        scores = score_sequences(teacher, data.train[ids], top_k=s.select_top_k, device=device)
        torch.save({"ids": ids, "scores": scores, "top_k": s.select_top_k}, path)
        if d.main:
            log(f"data selection: the teacher scored {len(ids)} sequences in "
                f"{time.perf_counter() - t0:.1f}s")
    chosen = select_top_fraction(scores, ids, s.select_fraction)
    if d.main:
        finite = scores[torch.isfinite(scores)]
        log(f"data selection: distillation draws from the top {len(chosen)} of {len(ids)} "
            f"sequences (score = median teacher loss over top-{s.select_top_k} tokens; "
            f"kept >= {float(scores[chosen].min()):.3f}, all median {float(finite.median()):.3f})")
    # stream 1: its own order; the shard is already this process's, so rank 0 of world 1
    return ShardSampler(chosen, per_rank, cfg.run.seed, 0, 1, stream=1)


def _check_resume_compatible(state: dict, cfg: TrainConfig, d: Dist) -> None:
    if state.get("world_size", 1) != d.world:
        raise ConfigError(f"the checkpoint was written by {state['world_size']} processes, this run "
                          f"has {d.world}: resume with the same --nproc_per_node")
    saved, now = state["config"], cfg.to_dict()
    diffs = []
    for section, values in saved.items():
        for key, value in values.items():
            if key not in RESUME_FREE_KEYS and now.get(section, {}).get(key) != value:
                diffs.append(f"{key}: checkpoint {value!r}, now {now[section][key]!r}")
    if diffs:
        raise ConfigError("--resume with settings that differ from the checkpoint's; rerun with the "
                          "original flags (or start over with --overwrite):\n  " + "\n  ".join(diffs))


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every platform
        return None


def _run_summary(cfg: TrainConfig, out: Path, counters: dict, n_params: int, n_kd: int, d: Dist,
                 device: torch.device, load_start: float | None) -> dict:
    if not d.main:
        return {}
    rows = read_metrics(out / "metrics.jsonl")
    evals = [row for row in rows if row["split"] == "val"]
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
        "load_avg_1m_end": _load_average(),
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
