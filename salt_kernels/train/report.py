"""The comparison report of a demo: summary.json, report.md and curves.png under runs/<name>/."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import atomic_write_text


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def eval_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "val"]


def steps_to_match(salt_evals: list[dict], target: float) -> dict | None:
    """The first SALT evaluation whose validation loss is at or below `target`."""
    for row in salt_evals:
        if row["step"] > 0 and row["val_loss"] <= target:
            return row
    return None


def run_section(run_dir: Path) -> dict:
    """The fields the wall-clock accounting reads, from a run's summary.json."""
    s = json.loads((run_dir / "summary.json").read_text())
    keys = ("final_val_loss", "final_val_ppl", "final_val_acc", "steps", "wall_time_s",
            "tokens_per_s", "step_time_s", "parameters", "model", "loss_path", "processes", "n_kd",
            "kd_weight", "temperature", "transition", "select_data", "stage1_step_time_s",
            "stage2_step_time_s", "device", "threads", "cpu_count", "load_avg_1m_start",
            "load_avg_1m_end")
    return {k: s[k] for k in keys if k in s}


def build_summary(root: Path) -> dict:
    teacher, baseline, salt = (run_section(root / n) for n in ("teacher", "baseline", "salt"))
    target = baseline["final_val_loss"]
    match = steps_to_match(eval_rows(root / "salt"), target)
    summary = {
        "teacher": teacher,
        "baseline": baseline,
        "salt": salt,
        "steps_to_match": match["step"] if match else None,
        "steps_to_match_fraction": match["step"] / baseline["steps"] if match else None,
        "time_to_match_s": match["train_time_s"] if match else None,
        "time_to_match_fraction": (match["train_time_s"] / baseline["wall_time_s"]) if match else None,
        "val_loss_gain": target - salt["final_val_loss"],
    }
    return summary


def plot_curves(root: Path, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    styles = {"baseline": ("tab:blue", "-"), "salt": ("tab:orange", "-")}
    for name, (color, ls) in styles.items():
        rows = [r for r in eval_rows(root / name) if r["step"] > 0]
        label = "baseline (CE)" if name == "baseline" else "SALT (KD then CE)"
        ax.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], ls, color=color, label=label)
    n_kd = summary["salt"].get("n_kd")
    if n_kd:
        ax.axvline(n_kd, color="gray", ls=":", label=f"n_KD = {n_kd}")
    target = summary["baseline"]["final_val_loss"]
    ax.axhline(target, color="tab:blue", ls="--", lw=0.8, alpha=0.6,
               label=f"baseline final ({target:.3f})")
    teacher = summary["teacher"]["final_val_loss"]
    ax.axhline(teacher, color="tab:green", ls="-.", lw=0.8, alpha=0.7, label=f"teacher final ({teacher:.3f})")
    if summary["steps_to_match"] is not None:
        ax.plot([summary["steps_to_match"]], [target], "o", color="tab:orange",
                label=f"SALT matches at step {summary['steps_to_match']}")
    # zoom on the interesting part: from a bit above the teacher's loss down
    ys = [r["val_loss"] for n in styles for r in eval_rows(root / n) if r["step"] > 0]
    lo, hi = min(ys + [teacher]), max(ys)
    top = min(hi, max(teacher, target) + 3 * (max(teacher, target) - lo) + 0.05)
    ax.set_ylim(lo - 0.05 * (top - lo) - 1e-3, top)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("SALT vs baseline: validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _machine_line(*runs) -> str:
    r = runs[-1]
    loads = [x.get(k) for x in runs for k in ("load_avg_1m_start", "load_avg_1m_end")]
    loads = [x for x in loads if x is not None]
    line = (f"Measured on {r.get('device', '?')} with {r.get('threads', '?')} torch thread(s), "
            f"{r.get('processes', 1)} process(es), {r.get('cpu_count', '?')} CPU cores")
    if loads:
        line += f"; 1-minute load average {min(loads):.1f} to {max(loads):.1f} during the runs"
        if r.get("device") == "cpu" and r.get("cpu_count") and max(loads) > r["cpu_count"]:
            line += (" (above the core count: other processes shared the CPU, so times and "
                     "tokens/s are slower and noisier than the machine alone would give)")
    return line + "."


def _fmt(x, spec=".4f"):
    return "n/a" if x is None else format(x, spec)


def render_markdown(summary: dict, command: str) -> str:
    t, b, s = summary["teacher"], summary["baseline"], summary["salt"]
    stm = summary["steps_to_match"]
    if stm is not None:
        match = (f"SALT reaches the baseline's final validation loss ({b['final_val_loss']:.4f}) at "
                 f"step **{stm}** of {b['steps']} (**{summary['steps_to_match_fraction']:.0%}** of the "
                 f"baseline's steps), after {summary['time_to_match_s']:.1f} s of training time "
                 f"({summary['time_to_match_fraction']:.0%} of the baseline's {b['wall_time_s']:.1f} s).")
    else:
        match = (f"SALT does not reach the baseline's final validation loss "
                 f"({b['final_val_loss']:.4f}) within its {s['steps']} steps.")

    def row(name, r):
        ppl = r.get("final_val_ppl")
        acc = r.get("final_val_acc")
        return (f"| {name} | {r['model']} | {r['parameters'] / 1e6:.2f}M | {r['steps']} | "
                f"{r['final_val_loss']:.4f} | {_fmt(ppl, '.1f')} | {_fmt(acc, '.3f')} | "
                f"{r['wall_time_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['step_time_s'] * 1000:.1f} |")

    lines = [
        "# SALT demo report",
        "",
        f"Command: `{command}`",
        "",
        match,
        "",
        "| run | model | params | steps | final val loss | val ppl | val acc | train time (s) | tokens/s | ms/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
        row("teacher", t),
        row("baseline (CE only)", b),
        row("SALT", s),
        "",
        f"SALT: distillation for the first n_KD = {s.get('n_kd')} steps with w = {s.get('kd_weight')}, "
        f"temperature {s.get('temperature')}, transition `{s.get('transition')}`"
        f"{', with data selection' if s.get('select_data') else ''}; cross-entropy only after that. "
        f"Stage 1 costs {s.get('stage1_step_time_s', 0) * 1000:.1f} ms/step (student + frozen teacher "
        f"forward + fused KD loss), stage 2 {s.get('stage2_step_time_s', 0) * 1000:.1f} ms/step.",
        "",
        f"Final validation loss: baseline {b['final_val_loss']:.4f}, SALT {s['final_val_loss']:.4f} "
        f"(difference {summary['val_loss_gain']:+.4f} in SALT's favour when positive).",
        "",
        "Train time counts forward, backward and optimizer steps (evaluations and checkpoints "
        "excluded); the teacher's own training is not charged to SALT, as in the paper, where the "
        "small model already exists.",
        "",
        _machine_line(t, b, s),
        "",
        "![validation loss](curves.png)",
        "",
        "Files: `teacher/`, `baseline/`, `salt/` each hold `metrics.jsonl` (train and validation "
        "rows), `checkpoint.pt`, `final/` (a Hugging Face model directory) and `summary.json`; "
        "`summary.json` here holds the numbers above.",
        "",
    ]
    return "\n".join(lines)


def write_report(root: str | Path, command: str = "salt-kernels demo") -> dict:
    root = Path(root)
    summary = build_summary(root)
    atomic_write_text(json.dumps(summary, indent=2) + "\n", root / "summary.json")
    plot_curves(root, summary, root / "curves.png")
    atomic_write_text(render_markdown(summary, command), root / "report.md")
    return summary
