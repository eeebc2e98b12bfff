"""The training loop: one run of role teacher, baseline or salt (nanoGPT style).

    from salt_kernels.train import TrainConfig, train
    cfg = TrainConfig().replace(role="salt", teacher="runs/demo/teacher/final", n_kd=300)
    result = train(cfg)

Every loss is a SaltStep (step.py): by default the fused output projection + loss
(linear_salt_loss, which never materializes logits), or with --loss logits the model's logits +
salt_loss, with the run's distillation options (--divergence, --beta, --softcap,
--teacher-softcap, --label-smoothing, --z-loss, --kd-vocab; build.py resolves the defaults that
depend on the models). With --teacher-cache, stage 1 reads the teacher's top-k of each batch
from disk instead of running the teacher (the batch carries its sequence ids; the loss is the
top-k form, docs/design.md "Top-k teacher"). Baseline and teacher runs use the same step with
kd_weight 0 and no teacher. Under torchrun, every process trains on its own shard of the data with
DistributedDataParallel, or with --fsdp on a student sharded by FSDP2 (parallel.py).

Between two log steps the loop only queues work on the device: it synchronizes, reads the losses
back, reduces them over the processes and looks for a stop request at the log steps (every
--log-interval steps; the time per step is averaged over that interval). What a run builds before
its first step is in build.py, processes and signals in runtime.py, what it reports in metrics.py,
checkpoints in checkpoint.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from . import schedule
from .build import build_run, describe, resume_state, validate_inputs
from .config import ConfigError, TrainConfig
from .metrics import (Metrics, Pace, Progress, eval_line, eval_row, fmt_time, load_average, log,
                      run_summary, train_row)
from .models import count_parameters, save_model_dir
from .parallel import full_model_state
from .runtime import (CheckpointClock, Dist, StopOnSignal, init_distributed,
                      remove_if_failed_start, resolve_device)


@dataclass
class RunResult:
    status: str  # "finished" or "interrupted"
    step: int
    out_dir: Path
    summary: dict = field(default_factory=dict)
    signal: str = ""  # "interrupted": the signal that stopped it (runtime.exit_status gives the status)


def train(cfg: TrainConfig, *, on_step: Callable[[int, dict], None] | None = None) -> RunResult:
    """Run one training job to the end (or to a SIGTERM/SIGINT, after saving a checkpoint).

    on_step(step, row): called after each completed step (for tests and notebooks); row is the
    step's training row on log steps, else {"step", "w"} (losses are read back at log steps only).
    """
    with remove_if_failed_start(cfg.run.out_dir):  # a failed start leaves no folder behind
        docs = validate_inputs(cfg)  # every user error surfaces here, before anything is trained
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        device = resolve_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", "0")))
        # From here on a SIGTERM/SIGINT only sets a flag: the loop stops at its next log step with
        # a checkpoint, and one that comes after the last step lets the final save finish.
        with StopOnSignal() as stop:
            d = init_distributed(device.type)
            try:
                return _train(cfg, docs, device, d, stop, on_step)
            finally:
                if d.started_here:
                    dist.destroy_process_group()


def _train(cfg: TrainConfig, docs: list[str], device: torch.device, d: Dist, stop: StopOnSignal,
           on_step) -> RunResult:
    r, o = cfg.run, cfg.optim
    out = Path(r.out_dir)
    if r.batch_size % d.world:
        raise ConfigError(f"--batch-size {r.batch_size} is not divisible by the {d.world} processes")
    state = resume_state(cfg, d)
    if state is not None and state["step"] >= r.steps:
        log(f"{out}: already finished ({state['step']} steps); nothing to do")
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        return RunResult("finished", state["step"], out, summary)
    run = build_run(cfg, docs, device, d, resuming=state is not None)
    model, optimizer, salt = run.model, run.optimizer, run.salt
    pace = Pace(device, r.batch_size * cfg.data.seq_len)
    metrics = Metrics(out / "metrics.jsonl", d.main)
    start = 0
    if state is not None:
        start = ckpt.restore_run(state, model, optimizer, pace.counters, d)
        metrics.truncate_after(start)
        log(f"resumed {out} at step {start}/{r.steps}")
    if d.main:
        log(describe(cfg, run, d))
    if start == 0:
        log(eval_line(metrics.write(eval_row(0, model, run.val, device, d, pace)), r.steps))

    def save(step: int) -> None:
        ckpt.save_run(out / ckpt.CHECKPOINT, step, model, optimizer, pace.counters, cfg.to_dict(),
                      d, run.sampler)

    load_start = load_average()
    clock = CheckpointClock(r.ckpt_minutes, d)  # checkpoints by wall-clock too (--ckpt-minutes)
    step, status = start, "finished"
    with Progress(r, start, d) as bar:
        pace.start()
        for step in range(start, r.steps):
            w = salt.weight(step)
            lr = schedule.learning_rate(step, lr=o.lr, warmup_steps=o.warmup_steps,
                                        total_steps=r.steps, min_lr_ratio=o.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = run.batch(step)
            with run.autocast():
                teacher_out = run.teacher_out(batch) if w > 0 else None  # model or cached top-k
                loss, parts = run.module(batch.inputs, batch.targets, teacher_out, w)
            loss.backward()
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pace.step()
            bar.update()

            # Only at these steps does the loop wait for the device and read values back.
            done, row = step + 1, {"step": step + 1, "w": w}
            at_log = done % r.log_interval == 0 or done == r.steps
            at_eval = done % r.eval_interval == 0 or done == r.steps
            at_ckpt = done < r.steps and ((r.ckpt_interval > 0 and done % r.ckpt_interval == 0)
                                          or (at_log and clock.due()))
            if at_log or at_eval or at_ckpt or done == run.n_kd:
                pace.lap("stage1" if step < run.n_kd else "stage2")
                if at_log:
                    row = metrics.write(train_row(done, loss, parts, w, lr, pace, d))
                    bar.show(loss=f"{row['loss']:.3f}", w=f"{w:.2f}", tok_s=f"{row['tokens_per_s']:,.0f}")
                if at_eval:
                    ev = metrics.write(eval_row(done, model, run.val, device, d, pace))
                    log(eval_line(ev, r.steps, loss=loss.item(), w=w, lr=lr, tok_s=pace.lap_rate,
                                  time_s=pace.counters["train_time_s"]))
                if at_ckpt:
                    save(done)
                    clock.saved()
                pace.start()
            if on_step is not None:
                on_step(done, row)
            if at_log and done < r.steps and d.any(stop.requested):
                step, status = done, "interrupted"
                break
        else:
            step = r.steps

    if status == "interrupted":
        save(step)
        log(f"stopped by {stop.signal_name} after step {step}/{r.steps}; checkpoint saved to "
            f"{out / ckpt.CHECKPOINT}. Continue with the same command plus --resume.")
        return RunResult("interrupted", step, out, signal=stop.signal_name)
    save(r.steps)
    summary = run_summary(cfg, out, pace.counters, count_parameters(model), run.n_kd, d, device,
                          load_start)
    full = full_model_state(model)  # a collective under --fsdp; None otherwise
    if d.main:
        save_model_dir(model, run.tokenizer, out / "final", state_dict=full)
        ckpt.atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
        log(f"[{r.role}] done: final val loss {summary['final_val_loss']:.4f}, "
            f"{summary['tokens_per_s']:,.0f} tok/s, train time {fmt_time(summary['wall_time_s'])}; "
            f"model in {out / 'final'}")
    d.barrier()
    return RunResult("finished", r.steps, out, summary)
