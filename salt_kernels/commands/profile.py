"""`salt-kernels profile`: end-to-end training-step throughput, CE-only against SALT stage 1 and
plain-PyTorch loss against the fused ones; with --accounting RUN, SALT's wall-clock accounting of
a demo, from the interleaved step times the demo measured and stored in RUN/summary.json (the
same numbers as its report.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_OUT = os.path.join("benchmarks", "results", "profile_{device}.json")
# Per device: (student, teacher, vocab, batch, seq_len).
DEFAULTS = {
    "cpu": ("student-s", "teacher-s", 32000, 8, 128),
    "cuda": ("student-m", "teacher-m", 128256, 8, 1024),
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="training-step throughput: CE-only vs SALT stage 1, plain-PyTorch vs fused loss; "
             "SALT wall-clock accounting",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Times whole training steps of a student (with a frozen teacher for SALT stage 1) for a\n"
            "CE-only step and a SALT stage-1 step, each with the loss in plain PyTorch, fused\n"
            "(salt_loss on the logits) and fused linear (linear_salt_loss on the hidden states, no\n"
            "logits held). Reports tokens/s, the step split into teacher forward, student forward,\n"
            "loss, backward and optimizer (the device synchronized between phases), the distillation\n"
            "overhead over a CE-only step, peak memory, and MFU where the device's peak is known.\n\n"
            "Defaults: on CPU student-s + teacher-s, vocabulary 32000, 8 x 128 tokens, fp32; on CUDA\n"
            "student-m + teacher-m, vocabulary 128256, 8 x 1024 tokens, bf16 autocast. With\n"
            "--accounting RUN the model, batch and loss settings default to that\n"
            "--accounting RUN prints the wall-clock accounting of a demo: the CE-only and SALT\n"
            "stage-1 step times the demo measured interleaved at its end (RUN/summary.json), times\n"
            "the step counts of its runs; the same numbers as RUN/report.md. It measures nothing\n"
            "itself (`salt-kernels demo --name NAME --resume` measures again). For a summary.json of\n"
            "an older demo, without that measurement, it profiles the demo's model, batch and loss\n"
            "settings (RUN/salt/config.json) and projects from these step times."
        ),
    )
    p.add_argument("--student", help="student: a model preset (tiny, student-s, student-m, student-l, ...) or "
                                     "a local Hugging Face causal-LM directory (default: see above)")
    p.add_argument("--teacher", help="teacher: a preset (teacher-s, teacher-m, ...) or a local model "
                                     "directory (default: see above)")
    p.add_argument("--vocab-size", type=int, help="vocabulary size of both models (default: see above)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: 8)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: 128 on CPU, 1024 on CUDA)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = cuda when a GPU is visible, else cpu (default: auto)")
    p.add_argument("--amp", default="auto", choices=("auto", "none", "bf16"),
                   help="autocast: auto = bf16 on CUDA, none (fp32) on CPU, as the trainer does (default: auto)")
    p.add_argument("--losses", default="torch,fused,linear", metavar="L[,L...]",
                   help="loss implementations, comma-separated, from torch (plain PyTorch), fused "
                        "(salt_loss), linear (linear_salt_loss) (default: all three)")
    p.add_argument("--backend", default="auto",
                   help="salt_kernels backend of the fused losses: auto, cpu, triton, cuda, reference (default: auto)")
    p.add_argument("--steps", type=int, default=5, help="measured steps per variant; medians are reported (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before measuring (default: 2)")
    p.add_argument("--kd-weight", type=float, help="w of the SALT stage-1 loss (default: 0.5, or the demo's)")
    p.add_argument("--temperature", type=float, help="distillation temperature tau (default: 2.0, or the demo's)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch and the kernels (torch.set_num_threads); on a machine shared "
                        "with other jobs, fewer threads than cores give steadier numbers (default: one per core)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model initialization and the batch (default: 0)")
    p.add_argument("--peak-tflops", type=float,
                   help="the device's peak matmul TFLOP/s for MFU, when it is not in the built-in table "
                        "(H100/H200 bf16 989, A100 bf16 312; CPUs: unknown)")
    p.add_argument("--trace", metavar="DIR",
                   help="also write a torch.profiler Chrome trace per variant to DIR/trace_<step>_<loss>.json "
                        "(open in chrome://tracing or https://ui.perfetto.dev)")
    p.add_argument("--trace-steps", type=int, default=2, help="steps recorded in each trace (default: 2)")
    p.add_argument("--accounting", metavar="RUN",
                   help="a finished demo (runs/<name> with summary.json): print SALT's wall-clock "
                        "against the baseline from the step times the demo measured interleaved and "
                        "its steps-to-match (the numbers of its report.md)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="JSON result file (default: benchmarks/results/profile_<device>.json); "
                        "benchmarks/report.py renders it into RESULTS.md")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, measurement_defaults={a.dest: a.default for a in p._actions
                                                   if a.dest in MEASUREMENT_FLAGS})


def _demo_settings(run: str) -> dict:
    """Model, batch and loss settings of a demo's SALT run (runs/<name>/salt/config.json), as
    profile options; empty when the file is not there."""
    path = os.path.join(run, "salt", "config.json") if os.path.isdir(run) else None
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        c = json.load(f)
    out = {}
    try:
        model = c["model"]["model"]
        out["student"] = "student-s" if model == "auto" else model
        if c["salt"].get("teacher"):
            out["teacher"] = c["salt"]["teacher"]
        out["batch_size"] = c["run"]["batch_size"]
        out["seq_len"] = c["data"]["seq_len"]
        out["kd_weight"] = c["salt"]["kd_weight"]
        out["temperature"] = c["salt"]["temperature"]
        out["loss_path"] = c["run"].get("loss")
        out["backend"] = c["run"].get("backend")
    except (KeyError, TypeError):
        return {}
    # The vocabulary is the trained tokenizer's: read it from the teacher's model directory.
    teacher = out.get("teacher")
    if teacher and os.path.exists(os.path.join(teacher, "config.json")):
        with open(os.path.join(teacher, "config.json")) as f:
            out["vocab_size"] = json.load(f).get("vocab_size")
    return out


# The flags that set up a measurement: with --accounting of a demo that stored its own
# measurement, giving any of them is an error (they would change nothing).
MEASUREMENT_FLAGS = ("student", "teacher", "vocab_size", "batch_size", "seq_len", "device", "amp",
                     "losses", "backend", "steps", "warmup", "kd_weight", "temperature", "threads",
                     "seed", "peak_tflops", "trace", "trace_steps", "out")


def _stored_accounting(args, summary: dict, path: str) -> int:
    """--accounting of a demo that measured its step times: print its accounting, computed by
    the function behind its report.md from its summary.json."""
    from ..benchmarking import accounting as acc

    given = [f"--{k.replace('_', '-')}" for k, v in args.measurement_defaults.items() if getattr(args, k) != v]
    if given:
        print(f"salt-kernels profile: error: --accounting {args.accounting} prints the accounting of "
              f"the step times the demo measured and stored (summary.json); {', '.join(given)} "
              "would set up a new measurement: drop --accounting to profile, or measure the demo's "
              "step times again with `salt-kernels demo --name NAME --resume`", file=sys.stderr)
        return 2
    result = acc.demo_accounting(summary)
    print(f"SALT wall-clock accounting for {path}")
    print(result["text"])
    return 0


def _model_spec(spec: str, flag: str) -> str:
    """A preset name, or the model directory that `spec` names (a run folder: its final/);
    ConfigError naming `flag` otherwise."""
    from ..train.checkpoint import resolve_model_dir
    from ..train.models import MODEL_PRESETS, check_model_spec

    if spec in MODEL_PRESETS:
        return spec
    if os.path.isdir(spec):
        return resolve_model_dir(spec, flag)
    check_model_spec(spec, flag)
    return spec


def run(args) -> int:
    import torch

    from ..benchmarking import accounting as acc
    from ..benchmarking.profiling import LOSSES, ProfileConfig
    from ..train.config import ConfigError

    if args.accounting:
        try:
            summary, summary_path = acc.load_summary(args.accounting)
        except ValueError as exc:
            print(f"salt-kernels profile: error: {exc}", file=sys.stderr)
            return 2
        if summary.get("step_times"):
            return _stored_accounting(args, summary, summary_path)

    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        print(f"salt-kernels profile: --device cuda, but torch {torch.__version__} sees no CUDA device; "
              "use --device cpu", file=sys.stderr)
        return 2
    else:
        device = args.device

    demo = {}
    if args.accounting:  # an older demo: measure now, with its settings
        demo = _demo_settings(args.accounting)
        print(f"{summary_path} holds no interleaved step-time measurement (an older demo, or one "
              "run with --measure-steps 0): measuring the step times now with the demo's settings",
              file=sys.stderr)
    else:
        summary = summary_path = None

    d_student, d_teacher, d_vocab, d_batch, d_seq = DEFAULTS[device]

    def pick(flag, key, default):
        if flag is not None:
            return flag
        if demo.get(key) is not None:
            return demo[key]
        return default

    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    bad = [x for x in losses if x not in LOSSES]
    if bad or not losses:
        print(f"salt-kernels profile: --losses: unknown {', '.join(bad) or '(empty)'}; choose from "
              f"{', '.join(LOSSES)}", file=sys.stderr)
        return 2
    cfg = ProfileConfig(
        student=pick(args.student, "student", d_student),
        teacher=pick(args.teacher, "teacher", d_teacher),
        vocab_size=pick(args.vocab_size, "vocab_size", d_vocab),
        batch_size=pick(args.batch_size, "batch_size", d_batch),
        seq_len=pick(args.seq_len, "seq_len", d_seq),
        device=device,
        amp=("bf16" if device == "cuda" else "none") if args.amp == "auto" else args.amp,
        steps=args.steps,
        warmup=args.warmup,
        kd_weight=pick(args.kd_weight, "kd_weight", 0.5),
        temperature=pick(args.temperature, "temperature", 2.0),
        backend=pick(args.backend if args.backend != "auto" else None, "backend", "auto"),
        losses=losses,
        seed=args.seed,
        peak_tflops=args.peak_tflops,
    )
    try:
        cfg.student = _model_spec(cfg.student, "--student")
        cfg.teacher = _model_spec(cfg.teacher, "--teacher")
    except ConfigError as exc:
        print(f"salt-kernels profile: error: {exc}", file=sys.stderr)
        return 2
    problems = []
    for name in ("vocab_size", "batch_size", "seq_len", "steps"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        problems.append("--warmup must be 0 or more")
    if not 0 <= cfg.kd_weight <= 1:
        problems.append("--kd-weight must be in [0, 1]")
    if not cfg.temperature > 0:
        problems.append("--temperature must be positive")
    if args.threads is not None and args.threads < 1:
        problems.append("--threads must be at least 1")
    if problems:
        print("salt-kernels profile: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, cfg, device, losses, summary, summary_path, demo)
    finally:  # the command may run inside a longer-lived process (tests, notebooks)
        torch.set_num_threads(threads_before)


def _run(args, cfg, device, losses, summary, summary_path, demo) -> int:
    from ..benchmarking import accounting as acc
    from ..benchmarking import render, results
    from ..benchmarking.profiling import run_profile


    command = (
        f"salt-kernels profile --device {device} --student {cfg.student} --teacher {cfg.teacher} "
        f"--vocab-size {cfg.vocab_size} --batch-size {cfg.batch_size} --seq-len {cfg.seq_len} "
        f"--amp {cfg.amp} --losses {','.join(losses)} --backend {cfg.backend} --steps {cfg.steps} "
        f"--warmup {cfg.warmup} --kd-weight {cfg.kd_weight:g} --temperature {cfg.temperature:g}"
    )
    if args.threads:
        command += f" --threads {args.threads}"
    if args.accounting:
        command += f" --accounting {args.accounting}"
    try:
        doc = run_profile(cfg, trace_dir=args.trace, trace_steps=args.trace_steps,
                          progress=not args.no_progress, command=command)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"salt-kernels profile: {exc}", file=sys.stderr)
        return 2

    if summary is not None:
        by = {(r["kind"], r["loss"]): r for r in doc["results"]}
        # The demo's loss path: linear -> linear_salt_loss, logits -> salt_loss.
        wanted = {"linear": "linear", "logits": "fused"}.get(demo.get("loss_path") or "", None)
        order = ([wanted] if wanted else []) + ["linear", "fused", "torch"]
        loss = next((x for x in order if ("ce", x) in by and ("salt", x) in by), None)
        if loss is None:
            doc["accounting"] = acc.accounting(summary, summary_path, None, None, "")
        else:
            from ..benchmarking.profiling import LOSS_TITLES

            label = f"this profile ({LOSS_TITLES[loss]})"
            doc["accounting"] = acc.accounting(
                summary, summary_path, by[("ce", loss)]["step_s"], by[("salt", loss)]["step_s"], label)
            doc["accounting"]["loss"] = loss

    out = args.out.replace("{device}", device)
    results.save(doc, out)
    print()
    print(render.profile_tables(doc, with_accounting=False))
    if doc.get("accounting"):
        print()
        print(doc["accounting"]["text"])
    print(f"\nresults: {out}")
    for r in doc["results"]:
        if r.get("trace"):
            print(f"trace: {r['trace']}")
    return 0
