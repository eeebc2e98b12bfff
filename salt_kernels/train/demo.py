"""`salt-kernels demo`: the whole SALT recipe on a CPU in minutes.

1. train a small teacher from scratch;
2. train a student (about 3x the teacher's parameters) twice, from the same initialization and
   data order: baseline (cross-entropy only) and SALT (KD from the frozen teacher for n_KD steps,
   then cross-entropy only);
3. write runs/<name>/report.md, curves.png and summary.json comparing the two.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, TrainConfig, opt
from .config import LOSS_PATHS, DEVICES, BACKENDS, TRANSITIONS


@dataclass
class DemoConfig:
    name: str = opt("demo", "run name: everything goes to RUNS_DIR/NAME/")
    runs_dir: str = opt("runs", "parent folder of the run")
    data: list[str] = opt(help="your .txt/.jsonl files instead of the built-in corpus", factory=list)
    teacher_model: str = opt("teacher-s", "teacher preset (or local model directory)")
    student_model: str = opt("student-s", "student preset (or local model directory)")
    teacher_steps: int = opt(500, "teacher training steps")
    steps: int = opt(600, "student training steps (baseline and SALT each)")
    n_kd: int = opt(300, "SALT distillation steps (stage 1)")
    kd_weight: float = opt(0.5, "w in (1 - w) * CE + w * KD during stage 1")
    temperature: float = opt(1.0, "distillation temperature")
    transition: str = opt("step", "how w ends at n_KD: step or linear", TRANSITIONS)
    select_data: bool = opt(False, "SALT data selection during stage 1 (teacher-scored top half)")
    batch_size: int = opt(16, "sequences per step")
    seq_len: int = opt(128, "tokens per sequence")
    vocab_size: int = opt(2048, "BPE vocabulary size")
    lr: float = opt(3e-3, "peak learning rate")
    warmup_steps: int = opt(50, "warmup steps")
    eval_interval: int = opt(25, "evaluate every this many steps")
    seed: int = opt(0, "seed: initialization and data order, shared by baseline and SALT")
    device: str = opt("auto", "auto, cpu or cuda", DEVICES)
    threads: int = opt(0, "CPU threads (0: torch's default); 1 on a machine shared with other jobs")
    backend: str = opt("auto", "salt_loss backend", BACKENDS)
    loss: str = opt("linear", "linear (fused projection + loss) or logits (salt_loss on logits)",
                    LOSS_PATHS)
    resume: bool = opt(False, "continue an interrupted demo (finished runs are kept)")
    overwrite: bool = opt(False, "start over if RUNS_DIR/NAME already holds a demo")
    progress: bool = opt(True, "show progress bars")


def run_configs(dc: DemoConfig) -> dict[str, TrainConfig]:
    """The three runs of the demo as ordinary train configs (what `salt-kernels train` would get)."""
    root = Path(dc.runs_dir) / dc.name
    common = dict(data=list(dc.data), batch_size=dc.batch_size, seq_len=dc.seq_len,
                  vocab_size=dc.vocab_size, lr=dc.lr, warmup_steps=dc.warmup_steps,
                  eval_interval=dc.eval_interval, seed=dc.seed, device=dc.device, threads=dc.threads,
                  backend=dc.backend, loss=dc.loss, resume=dc.resume, overwrite=dc.overwrite,
                  progress=dc.progress, ckpt_interval=100)
    teacher_final = str(root / "teacher" / "final")
    teacher = TrainConfig().replace(role="teacher", model=dc.teacher_model, steps=dc.teacher_steps,
                                    out_dir=str(root / "teacher"), **common)
    student = dict(model=dc.student_model, steps=dc.steps, **common)
    baseline = TrainConfig().replace(role="baseline", tokenizer=teacher_final,
                                     out_dir=str(root / "baseline"), **student)
    salt = TrainConfig().replace(role="salt", teacher=teacher_final, n_kd=dc.n_kd,
                                 kd_weight=dc.kd_weight, temperature=dc.temperature,
                                 transition=dc.transition, select_data=dc.select_data,
                                 out_dir=str(root / "salt"), **student)
    return {"teacher": teacher, "baseline": baseline, "salt": salt}


def check_demo(dc: DemoConfig) -> None:
    if dc.n_kd > dc.steps:
        raise ConfigError(f"--n-kd {dc.n_kd} is beyond the student's --steps {dc.steps}")
    if dc.n_kd < 1:
        raise ConfigError("--n-kd must be at least 1 (SALT distills for the first n_KD steps)")
    root = Path(dc.runs_dir) / dc.name
    if (root / "teacher").exists() and not (dc.resume or dc.overwrite):
        raise ConfigError(f"{str(root)!r} already holds a demo: pass --resume to continue it, "
                          "--overwrite to start over, or choose another --name")
    from .config import check_config
    from .data import load_documents
    from .models import check_model_spec
    from .build import ensure_writable

    for cfg in run_configs(dc).values():
        # the SALT config names a teacher that does not exist yet: check the rest of it
        check_config(cfg)
        check_model_spec(cfg.model_spec(), "--teacher-model" if cfg.run.role == "teacher" else "--student-model")
    load_documents(dc.data)
    ensure_writable(root)


def run_demo(dc: DemoConfig, command: str = "salt-kernels demo") -> dict | None:
    """Train teacher, baseline and SALT in turn, then write the report. Returns the summary, or
    None when a run was interrupted (rerun with --resume)."""
    from .report import write_report
    from .metrics import log
    from .trainer import train

    check_demo(dc)
    root = Path(dc.runs_dir) / dc.name
    t0 = time.perf_counter()
    for name, cfg in run_configs(dc).items():
        log(f"==== {name}: {cfg.run.steps} steps -> {cfg.run.out_dir}")
        result = train(cfg)
        if result.status != "finished":
            log(f"demo stopped during the {name} run; continue with: {command} --resume")
            return None
    summary = None
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        summary = write_report(root, command)
        b, s = summary["baseline"], summary["salt"]
        stm = summary["steps_to_match"]
        log(f"==== done in {time.perf_counter() - t0:.0f}s: final val loss baseline "
            f"{b['final_val_loss']:.4f}, SALT {s['final_val_loss']:.4f}; SALT matches the baseline "
            + (f"at step {stm}/{b['steps']} ({summary['steps_to_match_fraction']:.0%})" if stm is not None
               else "nowhere within its steps")
            + f"\nreport: {root / 'report.md'}  curves: {root / 'curves.png'}")
    return summary
