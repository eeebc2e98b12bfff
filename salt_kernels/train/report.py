"""The comparison report of a demo: summary.json, report.md and curves.png under runs/<name>/.

Quality comes from the runs' validation curves: final validation loss and steps-to-match (the
first SALT evaluation at or below the final validation loss of the baseline with the same seed),
per seed and, with several seeds, their mean and spread. Wall-clock comes only from the demo's
interleaved step-time measurement (summary.json "step_times") through
salt_kernels.benchmarking.accounting.demo_accounting; the runs' whole-run times are reported as
measured, with the load they were measured under, and never compared across runs, except in the
section of the demo's --topk run (salt-topk, distilled from a teacher cache): its cost is the
cache's build time plus a run, which only the runs' recorded times give (measured one after
another, so under the load each met; the report says so)."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from .checkpoint import atomic_write_text

SEED_DIR = re.compile(r"^(baseline|salt)-seed(\d+)$")
TOPK_RUN = "salt-topk"  # the demo's --topk run (demo.TOPK_RUN)


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


def tail_gain(evals: list[dict], fraction: float = 0.1) -> dict | None:
    """How much a run's validation loss still fell over its last `fraction` of steps: from the
    last evaluation at or before (1 - fraction) of the final step to the final one. A baseline
    whose tail gain is small has flattened, so a SALT run matching it saves steps the baseline
    would not have turned into quality anyway; a large one means the baseline was still
    improving when it stopped."""
    if len(evals) < 2:
        return None
    last = evals[-1]
    start = [r for r in evals if r["step"] <= (1 - fraction) * last["step"]]
    if not start:
        return None
    first = start[-1]
    gain = first["val_loss"] - last["val_loss"]
    return {"from_step": first["step"], "to_step": last["step"], "gain": gain,
            "relative": gain / last["val_loss"]}


def run_section(run_dir: Path) -> dict:
    """A run's results from its summary.json (and its seed from config.json)."""
    s = json.loads((run_dir / "summary.json").read_text())
    keys = ("final_val_loss", "final_val_ppl", "final_val_acc", "steps", "wall_time_s",
            "tokens_per_s", "step_time_s", "parameters", "model", "loss_path", "processes", "n_kd",
            "kd_weight", "temperature", "transition", "select_data", "stage1_step_time_s",
            "stage2_step_time_s", "device", "threads", "cpu_count", "load_avg_1m_start",
            "load_avg_1m_end")
    out = {k: s[k] for k in keys if k in s}
    config = run_dir / "config.json"
    if config.exists():
        out["seed"] = json.loads(config.read_text())["run"]["seed"]
    return out


def seed_dirs(seed: int, first: bool) -> tuple[str, str]:
    """The (baseline, salt) folder names of a seed: baseline/ and salt/ for the first seed,
    baseline-seedN/ and salt-seedN/ for the others."""
    return ("baseline", "salt") if first else (f"baseline-seed{seed}", f"salt-seed{seed}")


def discover_runs(root: Path) -> list[dict]:
    """The demo's (seed, baseline, salt) folders, when the caller does not list them."""
    runs = [{"seed": run_section(root / "baseline").get("seed"), "baseline": "baseline", "salt": "salt"}]
    extra = sorted(int(m.group(2)) for p in root.iterdir()
                   if (m := SEED_DIR.match(p.name)) and m.group(1) == "salt")
    for seed in extra:
        b, s = seed_dirs(seed, first=False)
        if (root / b / "summary.json").exists() and (root / s / "summary.json").exists():
            runs.append({"seed": seed, "baseline": b, "salt": s})
    return runs


def spread(values: list[float]) -> dict | None:
    """n, mean, sample standard deviation (None for one value), min and max."""
    if not values:
        return None
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def topk_section(root: Path, name: str, baseline: dict, salt_dir: str) -> dict:
    """The --topk run against the first seed's baseline and SALT run: final validation loss,
    steps and train time to the baseline's final validation loss, and the cache's build time
    (its manifest), which the top-k run's wall-clock includes."""
    from .teacher_cache import Manifest, bytes_per_token

    run = run_section(root / name)
    config = json.loads((root / name / "config.json").read_text())
    cache_dir = Path(config["salt"]["teacher_cache"])
    m = Manifest.load(cache_dir)
    target = baseline["final_val_loss"]
    match = steps_to_match(eval_rows(root / name), target)
    salt_match = steps_to_match(eval_rows(root / salt_dir), target)
    salt = run_section(root / salt_dir)
    build = m.build_time_s
    return {
        "run": name, "cache": str(cache_dir), "k": m.k, "dtype": m.dtype, "tail": config["salt"].get("topk_tail"),
        "bytes_per_token": bytes_per_token(m.k), "cache_bytes": bytes_per_token(m.k) * m.tokens,
        "cache_tokens": m.tokens, "cache_build_time_s": build,
        "final_val_loss": run["final_val_loss"],
        "val_loss_gain": target - run["final_val_loss"],
        "minus_salt": run["final_val_loss"] - salt["final_val_loss"],
        "steps_to_match": match["step"] if match else None,
        "steps_to_match_fraction": match["step"] / baseline["steps"] if match else None,
        "train_time_s": run["wall_time_s"], "total_time_s": run["wall_time_s"] + build,
        "time_to_match_s": match["train_time_s"] + build if match else None,
        "salt_steps_to_match": salt_match["step"] if salt_match else None,
        "salt_time_to_match_s": salt_match["train_time_s"] if salt_match else None,
        "salt_train_time_s": salt["wall_time_s"], "baseline_train_time_s": baseline["wall_time_s"],
        "stage1_step_time_s": run.get("stage1_step_time_s"), "salt_stage1_step_time_s": salt.get("stage1_step_time_s"),
        "load_avg_1m_start": run.get("load_avg_1m_start"), "load_avg_1m_end": run.get("load_avg_1m_end"),
    }


def build_summary(root: Path, runs: list[dict] | None = None, step_times: dict | None = None,
                  topk: str | None = None) -> dict:
    """summary.json of a demo. runs: [{"seed", "baseline": folder, "salt": folder}], the first
    seed's folders first; step_times: the demo's interleaved measurement (or None); topk: the
    folder of the --topk run (found by itself when runs are not given)."""
    from ..benchmarking.accounting import demo_accounting

    if runs is None and topk is None and (root / TOPK_RUN / "summary.json").exists():
        topk = TOPK_RUN
    runs = runs or discover_runs(root)
    teacher = run_section(root / "teacher")
    per_seed, sections = [], {}
    for r in runs:
        b, s = run_section(root / r["baseline"]), run_section(root / r["salt"])
        sections[r["baseline"]], sections[r["salt"]] = b, s
        match = steps_to_match(eval_rows(root / r["salt"]), b["final_val_loss"])
        per_seed.append({
            "baseline_tail_gain": tail_gain(eval_rows(root / r["baseline"])),
            "seed": r["seed"], "baseline": r["baseline"], "salt": r["salt"],
            "baseline_final_val_loss": b["final_val_loss"], "salt_final_val_loss": s["final_val_loss"],
            "val_loss_gain": b["final_val_loss"] - s["final_val_loss"],
            "steps_to_match": match["step"] if match else None,
            "steps_to_match_fraction": match["step"] / b["steps"] if match else None,
        })
    first = per_seed[0]
    matched = [p["steps_to_match"] for p in per_seed if p["steps_to_match"] is not None]
    summary = {
        "teacher": teacher,
        "baseline": sections[first["baseline"]],
        "salt": sections[first["salt"]],
        # the first seed's; per_seed and across_seeds hold every seed's
        "steps_to_match": first["steps_to_match"],
        "steps_to_match_fraction": first["steps_to_match_fraction"],
        "val_loss_gain": first["val_loss_gain"],
        "baseline_tail_gain": first["baseline_tail_gain"],
        "seeds": [p["seed"] for p in per_seed],
        "per_seed": per_seed,
        "across_seeds": {
            "baseline_final_val_loss": spread([p["baseline_final_val_loss"] for p in per_seed]),
            "salt_final_val_loss": spread([p["salt_final_val_loss"] for p in per_seed]),
            "val_loss_gain": spread([p["val_loss_gain"] for p in per_seed]),
            "steps_to_match": spread([float(k) for k in matched]),
            "seeds_matched": len(matched),
        },
        "runs": {"teacher": teacher, **sections},
        "step_times": step_times,
    }
    if topk is not None:
        summary["topk"] = topk_section(root, topk, summary["baseline"], first["salt"])
        summary["runs"][topk] = run_section(root / topk)
    summary["accounting"] = demo_accounting(summary)
    return summary


def _stat(st: dict | None, spec: str = ".4f") -> str:
    """mean ± std (min to max) of a spread(), or the value alone for one seed."""
    if st is None:
        return "n/a"
    if st["n"] == 1:
        return format(st["mean"], spec)
    return (f"{format(st['mean'], spec)} ± {format(st['std'], spec.lstrip('+'))} "
            f"({format(st['min'], spec)} to {format(st['max'], spec)})")


def plot_curves(root: Path, summary: dict, path: Path) -> None:
    """Validation loss against steps; with several seeds the mean with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    per_seed = summary["per_seed"]
    n = len(per_seed)
    ys_all = []
    for kind, color, label in (("baseline", "tab:blue", "baseline (CE)"),
                               ("salt", "tab:orange", "SALT (KD then CE)")):
        curves = [{r["step"]: r["val_loss"] for r in eval_rows(root / p[kind]) if r["step"] > 0}
                  for p in per_seed]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        values = [[c[s] for c in curves] for s in steps]
        ys_all += [v for vs in values for v in vs]
        mean = [statistics.fmean(vs) for vs in values]
        if n > 1:
            label += f", mean of {n} seeds"
            ax.fill_between(steps, [min(vs) for vs in values], [max(vs) for vs in values],
                            color=color, alpha=0.2, lw=0, label=f"{label.split(' (')[0]}: min-max over seeds")
        ax.plot(steps, mean, "-", color=color, label=label)
    topk = summary.get("topk")
    if topk:
        rows = [r for r in eval_rows(root / topk["run"]) if r["step"] > 0]
        ax.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], "--", color="tab:red",
                label=f"SALT from a top-{topk['k']} teacher cache" + (f" (seed {per_seed[0]['seed']})" if n > 1 else ""))
        ys_all += [r["val_loss"] for r in rows]
    n_kd = summary["salt"].get("n_kd")
    if n_kd:
        ax.axvline(n_kd, color="gray", ls=":", label=f"n_KD = {n_kd}")
    target = summary["across_seeds"]["baseline_final_val_loss"]["mean"]
    ax.axhline(target, color="tab:blue", ls="--", lw=0.8, alpha=0.6,
               label=f"baseline final ({target:.3f}{', mean' if n > 1 else ''})")
    teacher = summary["teacher"]["final_val_loss"]
    ax.axhline(teacher, color="tab:green", ls="-.", lw=0.8, alpha=0.7, label=f"teacher final ({teacher:.3f})")
    if n == 1 and summary["steps_to_match"] is not None:
        ax.plot([summary["steps_to_match"]], [target], "o", color="tab:orange",
                label=f"SALT matches at step {summary['steps_to_match']}")
    # zoom on the interesting part: from a bit above the teacher's loss down
    lo, hi = min(ys_all + [teacher]), max(ys_all)
    top = min(hi, max(teacher, target) + 3 * (max(teacher, target) - lo) + 0.05)
    ax.set_ylim(lo - 0.05 * (top - lo) - 1e-3, top)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("SALT vs baseline: validation loss" + (f" ({n} seeds)" if n > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _load(r: dict) -> str:
    a, b = r.get("load_avg_1m_start"), r.get("load_avg_1m_end")
    if a is None and b is None:
        return "n/a"
    return f"{_fmt(a, '.1f')} to {_fmt(b, '.1f')}"


def _machine_line(runs: list[dict]) -> str:
    r = runs[-1]
    loads = [x.get(k) for x in runs for k in ("load_avg_1m_start", "load_avg_1m_end")]
    loads = [x for x in loads if x is not None]
    line = (f"Trained on {r.get('device', '?')} with {r.get('threads', '?')} torch thread(s), "
            f"{r.get('processes', 1)} process(es), {r.get('cpu_count', '?')} CPU cores")
    if loads:
        line += (f"; 1-minute load average {min(loads):.1f} to {max(loads):.1f} during the runs "
                 "(their own threads count in it)")
        threads = r.get("threads") if isinstance(r.get("threads"), int) else 1
        if r.get("device") == "cpu" and max(loads) - threads >= 0.5:
            line += (": other processes shared the CPU, so the runs' times are slower and noisier "
                     "than the machine alone would give")
    return line + "."


def _fmt(x, spec=".4f"):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _flatness(summary: dict) -> str:
    t = summary.get("baseline_tail_gain")
    if not t:
        return ""
    return (f"Has the baseline flattened? Over its last {t['to_step'] - t['from_step']} steps (step "
            f"{t['from_step']} to {t['to_step']}) its validation loss fell by {t['gain']:.4f} "
            f"({t['relative']:.1%}); the smaller this is, the less the baseline would have gained from "
            "the steps SALT saves.")


def _quality(summary: dict) -> list[str]:
    b, s = summary["baseline"], summary["salt"]
    per_seed, across = summary["per_seed"], summary["across_seeds"]
    n = len(per_seed)
    if n == 1:
        stm = summary["steps_to_match"]
        if stm is not None:
            match = (f"SALT reaches the baseline's final validation loss ({b['final_val_loss']:.4f}) at "
                     f"step **{stm}** of {b['steps']} (**{summary['steps_to_match_fraction']:.0%}** of "
                     f"the baseline's steps; evaluations every few steps, so k is a multiple of the "
                     f"evaluation interval).")
        else:
            match = (f"SALT does **not** reach the baseline's final validation loss "
                     f"({b['final_val_loss']:.4f}) within its {s['steps']} steps.")
        return [match, "",
                f"Final validation loss: baseline {b['final_val_loss']:.4f}, SALT {s['final_val_loss']:.4f} "
                f"(difference {summary['val_loss_gain']:+.4f}, in SALT's favour when positive). "
                "One seed: the seed-to-seed spread is not measured (`--seeds N` measures it)."]
    k = across["steps_to_match"]
    lines = [f"Over {n} seeds ({', '.join(str(p['seed']) for p in per_seed)}; each SALT run against "
             "the baseline with the same seed, initialization and data order), as mean ± sample "
             "standard deviation (min to max):", "",
             f"- final validation loss: baseline {_stat(across['baseline_final_val_loss'])}, "
             f"SALT {_stat(across['salt_final_val_loss'])}",
             f"- baseline minus SALT, per seed: {_stat(across['val_loss_gain'], '+.4f')} "
             f"(positive: SALT better; SALT better in "
             f"{sum(p['val_loss_gain'] > 0 for p in per_seed)} of {n} seeds)"]
    if k is None:
        lines.append(f"- steps to match the baseline's final validation loss: SALT matched in none "
                     f"of the {n} seeds within its {s['steps']} steps")
    else:
        lines.append(f"- steps to match the baseline's final validation loss: {_stat(k, '.0f')} of "
                     f"{b['steps']} (mean {k['mean'] / b['steps']:.0%} of the steps), SALT matched in "
                     f"{across['seeds_matched']} of {n} seeds")
    lines += ["", "| seed | baseline final val loss | SALT final val loss | difference | steps to match |",
              "|---|---|---|---|---|"]
    for p in per_seed:
        stm = p["steps_to_match"]
        lines.append(f"| {p['seed']} | {p['baseline_final_val_loss']:.4f} | {p['salt_final_val_loss']:.4f} "
                     f"| {p['val_loss_gain']:+.4f} | {stm if stm is not None else 'never'} |")
    return lines


def _wall_clock(summary: dict) -> list[str]:
    acc = summary.get("accounting")
    head = "## Wall-clock (interleaved step-time measurement)"
    if acc is None:
        return [head, "", "Not measured (the demo ran with `--measure-steps 0`): no wall-clock figure."]
    st = summary["step_times"]
    if acc["seeds_matched"] == 0:
        claim = "SALT did not reach the baseline's final validation loss, so it saves no wall-clock."
    elif acc["seeds"] == 1:
        p = acc["per_seed"][0]
        claim = (f"SALT reaches the baseline's quality in **{p['time_fraction']:.0%}** of the "
                 f"baseline's wall-clock time (**{_verdict(p['saving'])}** wall-clock).")
    else:
        claim = (f"over the {acc['seeds_matched']} of {acc['seeds']} seeds where SALT matched the "
                 f"baseline: **{_verdict(acc['saving_mean'])}** wall-clock on average (from "
                 f"{_verdict(acc['saving_min'])} to {_verdict(acc['saving_max'])}).")
    return [
        head, "",
        f"A SALT stage-1 step costs {acc['kd_step_overhead']:+.0%} over a CE-only step "
        f"({acc['t_kd_s'] * 1000:.1f} ms against {acc['t_ce_s'] * 1000:.1f} ms), measured at the end of "
        f"the demo in one process, one step of each after the other for {st.get('rounds')} rounds "
        f"(same student, same batch shape), so a change in the machine's load hits both alike. "
        f"Multiplied by the step counts of the runs: {claim}", "",
        "```", acc["text"], "```", "",
        f"`salt-kernels profile --accounting DIR` prints these same lines from `summary.json`; "
        f"a fresh measurement: `{st.get('command', 'salt-kernels profile')}`.",
    ]


def _topk(summary: dict) -> list[str]:
    """The --topk section: SALT from the teacher cache against SALT and the baseline."""
    t = summary.get("topk")
    if not t:
        return []

    def time(x):
        return "n/a" if x is None else f"{x:.1f}"

    def step(x):
        return "never" if x is None else str(x)

    b, s = summary["baseline"], summary["salt"]
    seed = summary["per_seed"][0]
    return [
        "## SALT from a top-k teacher cache (`--topk`)", "",
        f"`{t['run']}/` is the SALT run (seed {seed['seed']}) again, with the teacher's top {t['k']} "
        f"next tokens per position read from `{t['cache']}` (written by `salt-kernels teacher-cache`; "
        f"{t['bytes_per_token']} bytes per token, {t['cache_bytes'] / 1e6:.1f} MB for {t['cache_tokens']:,} "
        f"tokens, log-probs in {t['dtype']}) instead of running the teacher at every stage-1 step; the "
        f"top-k loss keeps the rest of the teacher's mass as one outcome (tail `{t['tail']}`, "
        "docs/design.md, 'Top-k teacher').", "",
        "| run | final val loss | steps to the baseline's final val loss | train time to it (s) | "
        "cache build (s) | train time (s) | total (s) |",
        "|---|---|---|---|---|---|---|",
        f"| baseline (CE only) | {b['final_val_loss']:.4f} | | | | {b['wall_time_s']:.1f} | {b['wall_time_s']:.1f} |",
        f"| SALT, teacher model | {s['final_val_loss']:.4f} | {step(t['salt_steps_to_match'])} | "
        f"{time(t['salt_time_to_match_s'])} | | {s['wall_time_s']:.1f} | {s['wall_time_s']:.1f} |",
        f"| SALT, top-{t['k']} cache | {t['final_val_loss']:.4f} | {step(t['steps_to_match'])} | "
        f"{time(t['time_to_match_s'])} (cache included) | {t['cache_build_time_s']:.1f} | "
        f"{t['train_time_s']:.1f} | {t['total_time_s']:.1f} |", "",
        f"Final validation loss of the cached-teacher run minus the teacher-model run: "
        f"{t['minus_salt']:+.4f} (negative: the cache did better); against the baseline "
        f"{t['val_loss_gain']:+.4f} in its favour when positive. Stage-1 step: "
        f"{_ms(t['stage1_step_time_s'])} from the cache, {_ms(t['salt_stage1_step_time_s'])} with the teacher model.",
        "",
        "These times are the runs' own recorded train times (steps only; evaluations excluded) and "
        "the cache's recorded build time (the teacher's passes over every training sequence and the "
        "writes), measured one run after the other, each under the load in the table below, not "
        "interleaved: read them as what these runs took here. The cache is built once per teacher, "
        "data and k; further runs or seeds reuse it.",
    ]


def _ms(x) -> str:
    return "n/a" if x is None else f"{x * 1000:.1f} ms"


def _verdict(saving: float) -> str:
    return f"{-saving:.0%} more" if saving < 0 else f"{saving:.0%} less"


def render_markdown(summary: dict, command: str) -> str:
    t, s = summary["teacher"], summary["salt"]

    def row(name, r):
        return (f"| {name} | {r['model']} | {r['parameters'] / 1e6:.2f}M | {r['steps']} | "
                f"{r['final_val_loss']:.4f} | {_fmt(r.get('final_val_ppl'), '.1f')} | "
                f"{_fmt(r.get('final_val_acc'), '.3f')} | {r['wall_time_s']:.1f} | "
                f"{r['step_time_s'] * 1000:.1f} | {_load(r)} |")

    rows = [row("teacher", t)]
    for p in summary["per_seed"]:
        suffix = f", seed {p['seed']}" if len(summary["per_seed"]) > 1 else ""
        rows.append(row(f"baseline (CE only){suffix}", summary["runs"][p["baseline"]]))
        rows.append(row(f"SALT{suffix}", summary["runs"][p["salt"]]))
    if summary.get("topk"):
        rows.append(row(f"SALT, top-{summary['topk']['k']} cache", summary["runs"][summary["topk"]["run"]]))
    lines = [
        "# SALT demo report",
        "",
        f"Command: `{command}`",
        "",
        *_quality(summary),
        "",
        *([_flatness(summary), ""] if summary.get("baseline_tail_gain") else []),
        f"SALT: distillation for the first n_KD = {s.get('n_kd')} of {s['steps']} steps "
        f"({s.get('n_kd', 0) / s['steps']:.0%}) with w = {s.get('kd_weight')}, temperature "
        f"{s.get('temperature')}, transition `{s.get('transition')}`"
        f"{', with data selection' if s.get('select_data') else ''}; cross-entropy only after that. "
        f"Teacher: {t['parameters'] / 1e6:.2f}M parameters, {t['parameters'] / s['parameters']:.0%} of "
        "the student's.",
        "",
        "![validation loss](curves.png)",
        "",
        *_wall_clock(summary),
        "",
        *([*_topk(summary), ""] if summary.get("topk") else []),
        "## The runs",
        "",
        "| run | model | params | steps | final val loss | val ppl | val acc | train time (s) | ms/step | load avg (1 min, start to end) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Train time counts forward, backward and optimizer steps (evaluations and checkpoints "
        "excluded); the teacher's own training is not charged to SALT, as in the paper, where the "
        "small model already exists. The runs were trained one after the other, each under the "
        "load shown: their times describe each run, not SALT's cost, and are not compared across "
        "runs (the wall-clock section above uses the interleaved measurement)"
        + ("; the top-k section compares them because the cache's build time has no interleaved "
           "counterpart." if summary.get("topk") else "."),
        "",
        _machine_line(list(summary["runs"].values())),
        "",
        "Files: `teacher/`, `baseline/`, `salt/` (and `baseline-seedN/`, `salt-seedN/` for further "
        "seeds) each hold `metrics.jsonl` (train and validation rows), `checkpoint.pt`, `final/` (a "
        "Hugging Face model directory) and `summary.json`; "
        + ("`salt-topk/` the same for the top-k run, `teacher-cache/` its cache (manifest.json, "
           "shards, tokenizer); " if summary.get("topk") else "")
        + "`summary.json` here holds the numbers above.",
        "",
    ]
    return "\n".join(lines)


def write_report(root: str | Path, command: str = "salt-kernels demo", runs: list[dict] | None = None,
                 step_times: dict | None = None, topk: str | None = None) -> dict:
    """summary.json, curves.png and report.md of the demo in `root`. Without `step_times`, the
    measurement already in root/summary.json (if any) is kept. topk: the --topk run's folder."""
    root = Path(root)
    if step_times is None and (root / "summary.json").exists():
        step_times = json.loads((root / "summary.json").read_text()).get("step_times")
    summary = build_summary(root, runs, step_times, topk)
    atomic_write_text(json.dumps(summary, indent=2) + "\n", root / "summary.json")
    plot_curves(root, summary, root / "curves.png")
    atomic_write_text(render_markdown(summary, command), root / "report.md")
    return summary
