"""SALT's wall-clock accounting from our own measurements (the paper's "28% less wall-clock").

A baseline run trains S_b steps of CE at t_ce seconds each. SALT reaches the baseline's final
validation loss at step k (the demo's steps_to_match); its first n_KD steps are distillation
steps at t_kd seconds each, the rest CE steps at t_ce:

    T_baseline = S_b * t_ce
    T_SALT     = min(k, n_KD) * t_kd + max(0, k - n_KD) * t_ce
    saving     = 1 - T_SALT / T_baseline

The teacher's own training is not counted (SALT reuses an existing small model).
"""

from __future__ import annotations

import json
import os

PAPER_NOTE = "the paper (Rawat et al. 2024): baseline quality in ~70% of the steps, ~28% less wall-clock"


def load_summary(run: str) -> tuple[dict, str]:
    """(summary, path) from a demo directory (runs/<name>) or a summary.json path."""
    path = os.path.join(run, "summary.json") if os.path.isdir(run) else run
    if not os.path.exists(path):
        raise ValueError(
            f"no summary.json at {path}: point --accounting at a finished demo (runs/<name>, "
            "written by `salt-kernels demo`) or at its summary.json"
        )
    with open(path) as f:
        summary = json.load(f)
    missing = [k for k in ("baseline", "salt", "steps_to_match") if k not in summary]
    missing += [f"baseline.{k}" for k in ("steps",) if k not in summary.get("baseline", {})]
    missing += [f"salt.{k}" for k in ("n_kd",) if k not in summary.get("salt", {})]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: is it a `salt-kernels demo` summary?")
    return summary, path


def project(steps_baseline: int, steps_to_match: int | None, n_kd: int, t_ce: float, t_kd: float) -> dict:
    """The projection above; steps_to_match None means SALT never reached the baseline's loss."""
    out = {
        "steps_baseline": steps_baseline,
        "steps_to_match": steps_to_match,
        "n_kd": n_kd,
        "t_ce_s": t_ce,
        "t_kd_s": t_kd,
        "t_baseline_s": steps_baseline * t_ce,
    }
    if steps_to_match is None:
        out.update(t_salt_s=None, time_fraction=None, saving=None, kd_steps=None, ce_steps=None)
        return out
    kd_steps = min(steps_to_match, n_kd)
    ce_steps = max(0, steps_to_match - n_kd)
    t_salt = kd_steps * t_kd + ce_steps * t_ce
    out.update(
        kd_steps=kd_steps,
        ce_steps=ce_steps,
        t_salt_s=t_salt,
        time_fraction=t_salt / out["t_baseline_s"],
        saving=1 - t_salt / out["t_baseline_s"],
        step_fraction=steps_to_match / steps_baseline,
    )
    return out


def _ms(s: float) -> str:
    return f"{s:.2f} s" if s >= 1 else f"{s * 1000:.1f} ms"


def _dur(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s:.1f} s"


def explain(p: dict, source: str) -> list[str]:
    """Human-readable lines: the inputs, the formula with the numbers, the result."""
    lines = [f"  step times from {source}: CE-only t_ce = {_ms(p['t_ce_s'])}, "
             f"SALT stage 1 t_kd = {_ms(p['t_kd_s'])} ({p['t_kd_s'] / p['t_ce_s'] - 1:+.0%})"]
    lines.append(f"  T_baseline = S_b * t_ce = {p['steps_baseline']} * {_ms(p['t_ce_s'])} = {_dur(p['t_baseline_s'])}")
    if p["steps_to_match"] is None:
        lines.append("  SALT never reached the baseline's final validation loss within its steps: no projection")
        return lines
    lines.append(
        f"  T_SALT     = min(k, n_KD) * t_kd + max(0, k - n_KD) * t_ce = {p['kd_steps']} * {_ms(p['t_kd_s'])} "
        f"+ {p['ce_steps']} * {_ms(p['t_ce_s'])} = {_dur(p['t_salt_s'])}"
    )
    verdict = f"{-p['saving']:.0%} more" if p["saving"] < 0 else f"{p['saving']:.0%} less"
    lines.append(
        f"  => SALT reaches the baseline's quality in {p['step_fraction']:.0%} of its steps and "
        f"{p['time_fraction']:.0%} of its wall-clock time ({verdict} wall-clock)"
    )
    return lines


def accounting(summary: dict, path: str, t_ce: float | None, t_kd: float | None, measured_label: str) -> dict:
    """Projections from the profile's step times and from the demo's own, plus the text."""
    b, s = summary["baseline"], summary["salt"]
    k = summary["steps_to_match"]
    n_kd = s["n_kd"]
    lines = [
        f"SALT wall-clock accounting for {path}",
        "  T_baseline = S_b * t_ce;  T_SALT = min(k, n_KD) * t_kd + max(0, k - n_KD) * t_ce;  "
        "saving = 1 - T_SALT / T_baseline  (teacher training not counted)",
        f"  S_b = {b['steps']} baseline steps (final val loss {b.get('final_val_loss', float('nan')):.4f}), "
        f"k = {k if k is not None else 'never'} (SALT's first step at or below it), n_KD = {n_kd}",
    ]
    out = {"summary": path, "steps_to_match": k, "n_kd": n_kd, "steps_baseline": b["steps"]}
    if t_ce and t_kd:
        p = project(b["steps"], k, n_kd, t_ce, t_kd)
        out["measured"] = p
        lines += explain(p, measured_label)
    demo_t_ce = b.get("step_time_s")
    demo_t_kd = s.get("stage1_step_time_s")
    if demo_t_ce and demo_t_kd:
        p = project(b["steps"], k, n_kd, demo_t_ce, demo_t_kd)
        out["demo"] = p
        lines += explain(p, "the demo's own training (summary.json)")
    if summary.get("time_to_match_fraction") is not None:
        lines.append(
            f"  the demo measured SALT at the baseline's quality after {summary['time_to_match_fraction']:.0%} "
            f"of the baseline's training time"
        )
    lines.append(f"  ({PAPER_NOTE})")
    out["text"] = "\n".join(lines)
    return out
