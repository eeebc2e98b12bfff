"""SALT's wall-clock accounting (the paper's "28% less wall-clock") from step times measured
interleaved in one process.

A baseline run trains S_b steps of CE at t_ce seconds each. SALT reaches the baseline's final
validation loss at step k (the demo's steps_to_match); its first n_KD steps are distillation
steps at t_kd seconds each, the rest CE steps at t_ce:

    T_baseline = S_b * t_ce
    T_SALT     = min(k, n_KD) * t_kd + max(0, k - n_KD) * t_ce
    saving     = 1 - T_SALT / T_baseline

t_ce and t_kd come from one measurement that alternates CE-only and SALT stage-1 steps of the
same student, on batches of the same shape, in one process (the profiler's method,
salt_kernels/benchmarking/profiling.py): a change in the machine's load hits both alike. The
runs' own whole-run times are never used here: the runs were trained one after the other, each
under whatever load the machine had then, so their ratio mixes SALT's cost with that load.

demo_accounting(summary) is the one function behind a demo's report.md, its summary.json
("accounting") and `salt-kernels profile --accounting RUN`, so the three give the same numbers.
The teacher's own training is not counted (SALT reuses an existing small model).
"""

from __future__ import annotations

import json
import os
import statistics

PAPER_NOTE = "the paper (Rawat et al. 2024): baseline quality in ~70% of the steps, ~28% less wall-clock"
FORMULA = ("T_baseline = S_b * t_ce;  T_SALT = min(k, n_KD) * t_kd + max(0, k - n_KD) * t_ce;  "
           "saving = 1 - T_SALT / T_baseline  (teacher training not counted)")


def load_summary(run: str) -> tuple[dict, str]:
    """(summary, path) from a demo directory (runs/<name>) or a summary.json path."""
    path = os.path.join(run, "summary.json") if os.path.isdir(run) else run
    if not os.path.exists(path):
        raise ValueError(
            f"--accounting: no summary.json at {path}: point it at a finished demo (runs/<name>, "
            "written by `salt-kernels demo`) or at its summary.json"
        )
    with open(path) as f:
        summary = json.load(f)
    missing = [k for k in ("baseline", "salt", "steps_to_match") if k not in summary]
    missing += [f"baseline.{k}" for k in ("steps",) if k not in summary.get("baseline", {})]
    missing += [f"salt.{k}" for k in ("n_kd",) if k not in summary.get("salt", {})]
    if missing:
        raise ValueError(f"--accounting: {path} lacks {', '.join(missing)}: is it a "
                         "`salt-kernels demo` summary?")
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
        out.update(t_salt_s=None, time_fraction=None, saving=None, kd_steps=None, ce_steps=None,
                   step_fraction=None)
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


def verdict(saving: float) -> str:
    return f"{-saving:.0%} more" if saving < 0 else f"{saving:.0%} less"


def explain(p: dict, source: str) -> list[str]:
    """Human-readable lines: the inputs, the formula with the numbers, the result."""
    lines = [f"  step times from {source}: CE-only t_ce = {_ms(p['t_ce_s'])}, "
             f"SALT stage 1 t_kd = {_ms(p['t_kd_s'])} ({p['t_kd_s'] / p['t_ce_s'] - 1:+.0%})"]
    lines += _formula_lines(p)
    return lines


def _formula_lines(p: dict, indent: str = "  ") -> list[str]:
    lines = [f"{indent}T_baseline = S_b * t_ce = {p['steps_baseline']} * {_ms(p['t_ce_s'])} = "
             f"{_dur(p['t_baseline_s'])}"]
    if p["steps_to_match"] is None:
        lines.append(f"{indent}SALT never reached the baseline's final validation loss within its "
                     "steps: no projection")
        return lines
    lines.append(
        f"{indent}T_SALT     = min(k, n_KD) * t_kd + max(0, k - n_KD) * t_ce = {p['kd_steps']} * "
        f"{_ms(p['t_kd_s'])} + {p['ce_steps']} * {_ms(p['t_ce_s'])} = {_dur(p['t_salt_s'])}"
    )
    lines.append(
        f"{indent}=> SALT reaches the baseline's quality in {p['step_fraction']:.0%} of its steps and "
        f"{p['time_fraction']:.0%} of its wall-clock time ({verdict(p['saving'])} wall-clock)"
    )
    return lines


def _load_range(st: dict) -> str:
    loads = [x for x in (st.get("load_avg_1m_start"), st.get("load_avg_1m_end")) if x is not None]
    if not loads:
        return "load average unknown"
    return f"1-minute load average {min(loads):.2f} to {max(loads):.2f}"


def demo_accounting(summary: dict) -> dict | None:
    """The wall-clock accounting of a demo from its interleaved step times (summary["step_times"],
    written by the demo) and the step counts of its runs (per seed: each SALT run against the
    baseline of the same seed). None when the demo holds no such measurement.

    Returns the numbers and "text", the lines that report.md shows and `salt-kernels profile
    --accounting` prints."""
    st = summary.get("step_times")
    if not st or not st.get("t_ce_s") or not st.get("t_kd_s"):
        return None
    t_ce, t_kd = st["t_ce_s"], st["t_kd_s"]
    b, s = summary["baseline"], summary["salt"]
    steps, n_kd = b["steps"], s["n_kd"]
    seeds = summary.get("per_seed") or [{"seed": None, "steps_to_match": summary["steps_to_match"]}]
    per_seed = []
    for row in seeds:
        p = project(steps, row["steps_to_match"], n_kd, t_ce, t_kd)
        p["seed"] = row["seed"]
        per_seed.append(p)
    savings = [p["saving"] for p in per_seed if p["saving"] is not None]
    full_extra = n_kd * (t_kd - t_ce)
    out = {
        "method": st.get("method", "interleaved"),
        "t_ce_s": t_ce,
        "t_kd_s": t_kd,
        "kd_step_overhead": t_kd / t_ce - 1,
        "steps_baseline": steps,
        "n_kd": n_kd,
        "seeds": len(per_seed),
        "seeds_matched": len(savings),
        "per_seed": per_seed,
        "saving_mean": statistics.fmean(savings) if savings else None,
        "saving_min": min(savings) if savings else None,
        "saving_max": max(savings) if savings else None,
        # SALT trained for all its steps (what the demo ran) against the baseline's run
        "full_run_extra_s": full_extra,
        "full_run_extra_fraction": full_extra / (steps * t_ce),
    }
    lines = [
        f"  step times measured interleaved in one process ({st.get('rounds', '?')} rounds of one "
        f"CE-only and one SALT stage-1 step of the student, alternating, "
        f"{st.get('batch_size', '?')} x {st.get('seq_len', '?')} tokens, loss path "
        f"{st.get('loss_path', '?')}, {st.get('threads', '?')} thread(s), {_load_range(st)}): "
        f"CE-only t_ce = {_ms(t_ce)}, SALT stage 1 t_kd = {_ms(t_kd)} ({out['kd_step_overhead']:+.0%})",
        f"  {FORMULA}",
        f"  S_b = {steps} baseline steps, n_KD = {n_kd}; k = SALT's first evaluated step at or below "
        "the final validation loss of the baseline with the same seed",
    ]
    if len(per_seed) == 1:
        p = per_seed[0]
        lines.append(f"  k = {p['steps_to_match'] if p['steps_to_match'] is not None else 'never'}")
        lines += _formula_lines(p)
    else:
        for p in per_seed:
            if p["saving"] is None:
                lines.append(f"  seed {p['seed']}: k = never: no projection")
            else:
                lines.append(
                    f"  seed {p['seed']}: k = {p['steps_to_match']}: T_SALT = {p['kd_steps']} * {_ms(t_kd)} "
                    f"+ {p['ce_steps']} * {_ms(t_ce)} = {_dur(p['t_salt_s'])} of T_baseline "
                    f"{_dur(p['t_baseline_s'])}: {p['step_fraction']:.0%} of the steps, "
                    f"{p['time_fraction']:.0%} of the wall-clock ({verdict(p['saving'])})")
        if savings:
            lines.append(
                f"  => over the {len(savings)} of {len(per_seed)} seeds where SALT matched: "
                f"mean {verdict(out['saving_mean'])} wall-clock (from {verdict(out['saving_min'])} "
                f"to {verdict(out['saving_max'])})")
        else:
            lines.append("  => SALT matched the baseline in no seed: no projection")
    lines.append(
        f"  all {steps} SALT steps (what the demo trained) cost n_KD * (t_kd - t_ce) = "
        f"{_dur(full_extra)} {'more' if full_extra >= 0 else 'less'} than the baseline's "
        f"{_dur(steps * t_ce)} ({out['full_run_extra_fraction']:+.1%})")
    lines.append(f"  ({PAPER_NOTE})")
    out["text"] = "\n".join(lines)
    return out


def accounting(summary: dict, path: str, t_ce: float | None, t_kd: float | None, measured_label: str) -> dict:
    """The projection from step times measured now by the profiler (for a demo whose
    summary.json holds no interleaved measurement of its own: written by an older demo)."""
    b, s = summary["baseline"], summary["salt"]
    k = summary["steps_to_match"]
    n_kd = s["n_kd"]
    lines = [
        f"SALT wall-clock accounting for {path}",
        f"  {FORMULA}",
        f"  S_b = {b['steps']} baseline steps (final val loss {b.get('final_val_loss', float('nan')):.4f}), "
        f"k = {k if k is not None else 'never'} (SALT's first step at or below it), n_KD = {n_kd}",
    ]
    out = {"summary": path, "steps_to_match": k, "n_kd": n_kd, "steps_baseline": b["steps"]}
    if t_ce and t_kd:
        p = project(b["steps"], k, n_kd, t_ce, t_kd)
        out["measured"] = p
        lines += explain(p, measured_label)
    else:
        lines.append("  no CE-only and SALT step pair was measured: no projection")
    lines.append(f"  ({PAPER_NOTE})")
    out["text"] = "\n".join(lines)
    return out
