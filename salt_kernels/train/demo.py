"""`salt-kernels demo`: the whole SALT recipe on a CPU in minutes.

1. train a small teacher from scratch;
2. train a student (about 3x the teacher's parameters) twice per seed, from the same
   initialization and data order: baseline (cross-entropy only) and SALT (KD from the frozen
   teacher for the first n_KD steps, then cross-entropy only); --seeds N repeats this pair for N
   seeds (one teacher);
3. with --topk: write the teacher's top-k over the training data to disk (`salt-kernels
   teacher-cache`, into runs/<name>/teacher-cache/) and train the first seed's student once more
   like the SALT run, distilling from that cache instead of the teacher model (salt-topk/);
4. time a CE-only step and a SALT stage-1 step of the student interleaved in this process (the
   profiler's method), for the wall-clock accounting;
5. write runs/<name>/report.md, curves.png and summary.json comparing the runs.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .config import BACKENDS, DEVICES, LOSS_PATHS, TRANSITIONS, ConfigError, TrainConfig, opt
from .report import TOPK_RUN

# the profiler's name of each loss path (salt_kernels.benchmarking.profiling.STEP_PATHS)
PROFILE_LOSS = {"linear": "linear", "logits": "fused"}
MEASURE_WARMUP = 2  # untimed rounds before the measured ones
TOPK_CACHE = "teacher-cache"  # the --topk run's cache, next to its run (report.TOPK_RUN)


@dataclass
class DemoConfig:
    name: str = opt("demo", "run name: everything goes to RUNS_DIR/NAME/")
    runs_dir: str = opt("runs", "parent folder of the run")
    data: list[str] = opt(help="your .txt/.jsonl files instead of the built-in corpus", factory=list)
    teacher_model: str = opt("teacher-s", "teacher preset (or local model directory)")
    student_model: str = opt("student-s", "student preset (or local model directory)")
    teacher_steps: int = opt(500, "teacher training steps")
    steps: int = opt(1200, "student training steps (baseline and SALT each); the default is where the "
                     "baseline has flattened (its validation loss falls by under 1% over its last 10% "
                     "of steps; the report gives this figure)")
    n_kd: int = opt(300, "SALT distillation steps (stage 1), at most --steps; the default is 25% of "
                    "--steps, the best of 15-25% in the sweep of benchmarks/RESULTS.md")
    kd_weight: float = opt(0.5, "w in (1 - w) * CE + w * KD during stage 1")
    temperature: float = opt(1.0, "distillation temperature")
    transition: str = opt("step", "how w ends at n_KD: step or linear", TRANSITIONS)
    select_data: bool = opt(False, "SALT data selection during stage 1 (teacher-scored top half)")
    topk: bool = opt(False, "also run salt-topk: cache the teacher's top --topk-k predictions over the "
                     "training data (`salt-kernels teacher-cache`), then train the first seed's student "
                     "like the SALT run from that cache; the report compares it with SALT and the "
                     "baseline, wall-clock including the cache's build time. Off by default: it adds a "
                     "third student run and the cache's build (about 430 MB of disk for the built-in "
                     "corpus at k = 64)")
    topk_k: int = opt(64, "--topk: teacher tokens kept per position (8 to 256)")
    seeds: int = opt(1, "seeds of the baseline/SALT pair (--seed, --seed + 1, ...; one teacher): "
                     "with 2 or more the report gives the mean and spread of each result")
    batch_size: int = opt(16, "sequences per step")
    seq_len: int = opt(128, "tokens per sequence")
    vocab_size: int = opt(2048, "BPE vocabulary size")
    lr: float = opt(3e-3, "peak learning rate")
    warmup_steps: int = opt(50, "warmup steps")
    eval_interval: int = opt(25, "evaluate every this many steps")
    seed: int = opt(0, "seed: initialization and data order, shared by baseline and SALT")
    measure_steps: int = opt(20, "rounds of one CE-only and one SALT stage-1 step, timed alternately "
                             "at the end for the wall-clock accounting (0: no wall-clock figure)")
    ckpt_minutes: float = opt(5.0, "checkpoint at least every this many minutes of wall-clock, "
                              "besides every 100 steps (0: by steps only)")
    device: str = opt("auto", "auto, cpu or cuda", DEVICES)
    threads: int = opt(0, "CPU threads (0: torch's default); 1 on a machine shared with other jobs")
    backend: str = opt("auto", "salt_loss backend", BACKENDS)
    loss: str = opt("linear", "linear (fused projection + loss) or logits (salt_loss on logits)",
                    LOSS_PATHS)
    resume: bool = opt(False, "continue an interrupted demo (finished runs are kept; the step "
                       "times are measured again and the report rewritten)")
    overwrite: bool = opt(False, "start over if RUNS_DIR/NAME already holds a demo")
    progress: bool = opt(True, "show progress bars")


@dataclass
class DemoResult:
    status: str  # "finished" or "interrupted"
    summary: dict | None = None
    signal: str = ""  # the signal that interrupted a run
    checkpoint: Path | None = None  # where the interrupted run saved its state


def seed_runs(dc: DemoConfig) -> list[dict]:
    """[{"seed", "baseline": folder, "salt": folder}] of the demo's seeds, in order."""
    from .report import seed_dirs

    out = []
    for i in range(dc.seeds):
        seed = dc.seed + i
        b, s = seed_dirs(seed, first=i == 0)
        out.append({"seed": seed, "baseline": b, "salt": s})
    return out


def run_configs(dc: DemoConfig) -> dict[str, TrainConfig]:
    """The runs of the demo, by folder name, as ordinary train configs (what `salt-kernels
    train` would get): the teacher, then baseline and SALT of each seed."""
    root = Path(dc.runs_dir) / dc.name
    common = dict(data=list(dc.data), batch_size=dc.batch_size, seq_len=dc.seq_len,
                  vocab_size=dc.vocab_size, lr=dc.lr, warmup_steps=dc.warmup_steps,
                  eval_interval=dc.eval_interval, device=dc.device, threads=dc.threads,
                  backend=dc.backend, loss=dc.loss, resume=dc.resume, overwrite=dc.overwrite,
                  progress=dc.progress, ckpt_interval=100, ckpt_minutes=dc.ckpt_minutes)
    teacher_final = str(root / "teacher" / "final")
    configs = {"teacher": TrainConfig().replace(role="teacher", model=dc.teacher_model,
                                                steps=dc.teacher_steps, seed=dc.seed,
                                                out_dir=str(root / "teacher"), **common)}
    for r in seed_runs(dc):
        student = dict(model=dc.student_model, steps=dc.steps, seed=r["seed"], **common)
        configs[r["baseline"]] = TrainConfig().replace(
            role="baseline", tokenizer=teacher_final, out_dir=str(root / r["baseline"]), **student)
        configs[r["salt"]] = TrainConfig().replace(
            role="salt", teacher=teacher_final, n_kd=dc.n_kd, kd_weight=dc.kd_weight,
            temperature=dc.temperature, transition=dc.transition, select_data=dc.select_data,
            out_dir=str(root / r["salt"]), **student)
    if dc.topk:  # the first seed's SALT run, its teacher read from the cache
        first = configs[seed_runs(dc)[0]["salt"]]
        configs[TOPK_RUN] = first.replace(teacher=None, teacher_cache=str(root / TOPK_CACHE),
                                          out_dir=str(root / TOPK_RUN))
    return configs


def cache_config(dc: DemoConfig):
    """The --topk run's teacher cache: the teacher's top --topk-k over the runs' training data."""
    from .teacher_cache import CacheConfig

    root = Path(dc.runs_dir) / dc.name
    return CacheConfig(teacher=str(root / "teacher" / "final"), out_dir=str(root / TOPK_CACHE), data=list(dc.data),
                       seq_len=dc.seq_len, k=dc.topk_k, device=dc.device, threads=dc.threads,
                       progress=dc.progress)


def check_demo(dc: DemoConfig) -> None:
    """Every check that needs no training, each error naming the demo's own flag."""
    for name in ("teacher_steps", "steps", "seeds", "batch_size", "seq_len", "eval_interval"):
        if getattr(dc, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(dc, name)}")
    for name in ("warmup_steps", "measure_steps", "threads", "ckpt_minutes"):
        if getattr(dc, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(dc, name)}")
    if not 1 <= dc.n_kd <= dc.steps:
        raise ConfigError(f"--n-kd must be between 1 and the student's --steps ({dc.steps}), got "
                          f"{dc.n_kd}: SALT distills for the first n_KD of the student's steps")
    if not 0 < dc.kd_weight <= 1:
        raise ConfigError(f"--kd-weight must be in (0, 1], got {dc.kd_weight}")
    if not dc.temperature > 0:
        raise ConfigError(f"--temperature must be positive, got {dc.temperature}")
    if dc.topk:
        from .teacher_cache import K_RANGE

        if not K_RANGE[0] <= dc.topk_k <= K_RANGE[1]:
            raise ConfigError(f"--topk-k must be in [{K_RANGE[0]}, {K_RANGE[1]}], got {dc.topk_k}")
    from .config import check_config
    from .models import check_model_spec

    for name, cfg in run_configs(dc).items():
        # the SALT configs name a teacher that does not exist yet: check the rest of them
        check_config(cfg)
        check_model_spec(cfg.model_spec(), "--teacher-model" if name == "teacher" else "--student-model")
    root = Path(dc.runs_dir) / dc.name
    if (root / "teacher").exists() and not (dc.resume or dc.overwrite):
        raise ConfigError(f"{str(root)!r} already holds a demo: pass --resume to continue it, "
                          "--overwrite to start over, or choose another --name")
    from .data import load_documents

    load_documents(dc.data)


def measure_step_times(dc: DemoConfig, teacher_dir: str) -> dict | None:
    """Median times of a CE-only step and of a SALT stage-1 step of the demo's student, measured
    alternately in this process (salt_kernels.benchmarking.profiling, the profiler's method):
    --measure-steps rounds of one step of each, the order rotating, after MEASURE_WARMUP untimed
    rounds, on batches of the demo's shape, so that the machine's load hits both alike."""
    import torch

    from ..benchmarking.profiling import ProfileConfig, run_profile
    from .metrics import log
    from .models import model_dir_vocab_size

    device = dc.device if dc.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    loss = PROFILE_LOSS[dc.loss]
    vocab = model_dir_vocab_size(teacher_dir)
    cfg = ProfileConfig(student=dc.student_model, teacher=teacher_dir, vocab_size=vocab,
                        batch_size=dc.batch_size, seq_len=dc.seq_len, device=device,
                        amp="bf16" if device == "cuda" else "none", steps=dc.measure_steps,
                        warmup=MEASURE_WARMUP, kd_weight=dc.kd_weight, temperature=dc.temperature,
                        backend=dc.backend, losses=[loss], seed=dc.seed)
    command = (f"salt-kernels profile --device {device} --student {dc.student_model} --teacher "
               f"{teacher_dir} --vocab-size {vocab} --batch-size {dc.batch_size} --seq-len "
               f"{dc.seq_len} --losses {loss} --backend {dc.backend} --steps {dc.measure_steps} "
               f"--warmup {MEASURE_WARMUP} --kd-weight {dc.kd_weight:g} --temperature "
               f"{dc.temperature:g}" + (f" --threads {dc.threads}" if dc.threads else ""))
    log(f"==== step times: {dc.measure_steps} rounds of one CE-only and one SALT stage-1 step, "
        "alternating (for the wall-clock accounting)")
    try:
        doc = run_profile(cfg, progress=dc.progress, command=command, log=log, interleave=True)
    except (ValueError, RuntimeError) as exc:
        log(f"step times not measured: {exc}")
        return None
    by = {(r["kind"], r["loss"]): r for r in doc["results"]}
    ce, kd = by.get(("ce", loss)), by.get(("salt", loss))
    if ce is None or kd is None:
        log(f"step times not measured: {doc['left_out']}")
        return None
    machine = doc["machine"]
    return {
        "method": "interleaved",
        "statistic": "median",
        "rounds": dc.measure_steps,
        "warmup_rounds": MEASURE_WARMUP,
        "t_ce_s": ce["step_s"],
        "t_kd_s": kd["step_s"],
        "ce_step_times_s": ce["step_times_s"],
        "kd_step_times_s": kd["step_times_s"],
        "loss_path": dc.loss,
        "batch_size": dc.batch_size,
        "seq_len": dc.seq_len,
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_start": machine.get("load_average_start"),
        "load_avg_1m_end": machine.get("load_average_end"),
        "date": machine.get("date"),
        "command": command,
    }


def _clear_old_report(root: Path, dc: DemoConfig) -> None:
    """--overwrite: the previous demo's report, and the folders of seeds this demo does not run."""
    keep = set(run_configs(dc))
    for name in ("summary.json", "report.md", "curves.png"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / TOPK_CACHE, ignore_errors=True)  # the teacher is trained again
    if TOPK_RUN not in keep:
        shutil.rmtree(root / TOPK_RUN, ignore_errors=True)
    if root.is_dir():
        from .report import SEED_DIR

        for p in root.iterdir():
            if p.is_dir() and SEED_DIR.match(p.name) and p.name not in keep:
                shutil.rmtree(p)


def run_demo(dc: DemoConfig, command: str = "salt-kernels demo") -> DemoResult:
    """Train the teacher, then baseline and SALT per seed, measure the step times and write the
    report. A run stopped by SIGTERM/SIGINT saves its checkpoint and the demo returns
    "interrupted" (rerun with --resume). A demo that fails before any run trained leaves no
    folder behind."""
    from .runtime import remove_if_failed_start

    check_demo(dc)
    root = Path(dc.runs_dir) / dc.name
    with remove_if_failed_start(root):
        from .build import ensure_writable

        ensure_writable(root)
        if dc.overwrite:
            _clear_old_report(root, dc)
        return _run(dc, root, command)


def _run(dc: DemoConfig, root: Path, command: str) -> DemoResult:
    from .checkpoint import CHECKPOINT
    from .metrics import log
    from .report import write_report
    from .trainer import train

    t0 = time.perf_counter()
    for name, cfg in run_configs(dc).items():
        if name == TOPK_RUN:
            from .teacher_cache import build_teacher_cache

            cc = cache_config(dc)
            log(f"==== {TOPK_CACHE}: the teacher's top {cc.k} over the training data -> {cc.out_dir}")
            try:
                build_teacher_cache(cc)
            except KeyboardInterrupt:
                log(f"demo stopped while writing {cc.out_dir} (its finished shards are kept); continue "
                    f"with: {command} --resume")
                return DemoResult("interrupted", signal="SIGINT")
        log(f"==== {name}: {cfg.run.steps} steps -> {cfg.run.out_dir}")
        result = train(cfg)
        if result.status != "finished":
            ckpt = Path(cfg.run.out_dir) / CHECKPOINT
            log(f"demo stopped by {result.signal or 'a stop request'} during the {name} run; its "
                f"checkpoint is {ckpt}; continue with: {command} --resume")
            return DemoResult("interrupted", signal=result.signal, checkpoint=ckpt)
    if int(os.environ.get("RANK", "0")) != 0:
        return DemoResult("finished")
    step_times = None
    if dc.measure_steps:
        step_times = measure_step_times(dc, str(root / "teacher" / "final"))
    summary = write_report(root, command, seed_runs(dc), step_times, topk=TOPK_RUN if dc.topk else None)
    log(f"==== done in {time.perf_counter() - t0:.0f}s: " + headline(summary)
        + f"\nreport: {root / 'report.md'}  curves: {root / 'curves.png'}")
    return DemoResult("finished", summary)


def headline(summary: dict) -> str:
    """The demo's result in a line: final losses, steps-to-match, wall-clock."""
    b, s, a = summary["baseline"], summary["salt"], summary["across_seeds"]
    n = len(summary["per_seed"])
    if n == 1:
        stm = summary["steps_to_match"]
        line = (f"final val loss baseline {b['final_val_loss']:.4f}, SALT {s['final_val_loss']:.4f}; "
                "SALT matches the baseline "
                + (f"at step {stm}/{b['steps']} ({summary['steps_to_match_fraction']:.0%})"
                   if stm is not None else "nowhere within its steps"))
    else:
        bl, sl, k = a["baseline_final_val_loss"], a["salt_final_val_loss"], a["steps_to_match"]
        line = (f"over {n} seeds, final val loss baseline {bl['mean']:.4f} ± {bl['std']:.4f}, SALT "
                f"{sl['mean']:.4f} ± {sl['std']:.4f}; SALT matches the baseline in "
                f"{a['seeds_matched']} of {n} seeds"
                + (f", at step {k['mean']:.0f} on average" if k else ""))
    topk = summary.get("topk")
    if topk:
        stm = topk["steps_to_match"]
        line += (f"; salt-topk (top-{topk['k']} cache) {topk['final_val_loss']:.4f}, "
                 + (f"matches at step {stm}" if stm is not None else "does not match"))
    acc = summary.get("accounting")
    if acc and acc["saving_mean"] is not None:
        from ..benchmarking.accounting import verdict

        line += (f"; wall-clock (interleaved step times, t_kd/t_ce {acc['kd_step_overhead']:+.0%}): "
                 f"{verdict(acc['saving_mean'])}")
    return line
