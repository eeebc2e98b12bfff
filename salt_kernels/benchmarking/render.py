"""Rendering of results documents (results.py): aligned Markdown tables (readable in a terminal
as well), the sections of benchmarks/RESULTS.md between their markers (<!-- bench:start --> for
the grids and profiles, <!-- <section>:start --> for each fixed-size run), and PNG plots (time
and memory against V, one line per variant).

The main tables of a grid show the default option; a run with an option grid adds a table of
each salt_kernels variant's time per option and its ratio to the default option, a run with the
topk variant a table of topk_salt_loss against salt_loss with the full teacher."""

from __future__ import annotations

import os

from .cases import (OPTION_TITLES, OPTIONS, PASS_TITLES, TOPK, TOPK_OPTIONS, fused_backward, option_kwargs,
                    salt_variant, title)
from .machine import busy_warning
from .results import load

PASS_SHORT = {"fwd": "forward", "fwd_nograd": "forward under no_grad", "bwd": "backward alone",
              "fwdbwd": "forward + backward"}
PASS_COLUMNS = {"fwd": "fwd", "fwd_nograd": "fwd no_grad", "bwd": "bwd", "fwdbwd": "fwd+bwd"}
PASS_ORDER = ("fwdbwd", "fwd", "fwd_nograd", "bwd")  # the order of the tables
START_MARKER = "<!-- bench:start -->"
END_MARKER = "<!-- bench:end -->"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 10:
        return f"{s:.1f} s"
    if s >= 1:
        return f"{s:.2f} s"
    ms = s * 1000
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    if ms >= 0.1:
        return f"{ms:.2f} ms"
    return f"{ms * 1000:.0f} µs"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "n/a"
    if b >= 2**30:
        return f"{b / 2**30:.2f} GiB"
    return f"{b / 2**20:.0f} MiB"


def fmt_count(x: float) -> str:
    """12345678 -> '12.3M', 29800 -> '29.8k'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """An aligned Markdown table; align items are 'l' or 'r'."""
    align = align or ["l"] * len(header)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        out = []
        for c, w, a in zip(cells, widths, align):
            out.append(str(c).rjust(w) if a == "r" else str(c).ljust(w))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def _ordered(values, key=None):
    seen = []
    for x in values:
        if x not in seen:
            seen.append(x)
    return seen


def option_of(r: dict) -> str:
    """A record's option of the grid ("default" in files written before the grid existed)."""
    return r.get("option") or "default"


def _index(doc: dict):
    """Variants, shapes, dtypes, passes and the records by (variant, n, v, dtype, pass), of the
    default option (the other options have their own table)."""
    res = [r for r in doc["results"] if option_of(r) == "default"]
    variants = _ordered(r["variant"] for r in res)
    shapes = sorted(_ordered((r["n"], r["v"]) for r in res))
    dtypes = _ordered(r["dtype"] for r in res)
    passes = [p for p in PASS_ORDER if any(r["pass"] == p for r in res)]
    by = {(r["variant"], r["n"], r["v"], r["dtype"], r["pass"]): r for r in res}
    return variants, shapes, dtypes, passes, by


def _cell_time(r: dict | None, notes: dict) -> str:
    """Median time · GB/s (% of copy); † marks a salt_kernels backward (gradient made in forward)."""
    if r is None:
        return "—"
    if r["status"] != "ok":
        key = r["reason"]
        if key not in notes:
            notes[key] = len(notes) + 1
        word = "skipped" if r["status"] == "skipped" else "failed"
        return f"{word} [{notes[key]}]"
    gbs = r.get("gb_per_s")
    frac = r.get("copy_fraction")
    extra = ""
    if gbs is not None:
        extra = f" · {gbs:.1f} GB/s"
        if frac is not None:
            extra += f" ({100 * frac:.0f}%)"
    dagger = " †" if r["pass"] == "bwd" and fused_backward(r["variant"]) else ""
    return fmt_time(r["median_s"]) + extra + dagger


def _cell_ratio(r: dict | None, base: dict | None, notes: dict) -> str:
    """r's median time and, when base ran too, the ratio r / base in parentheses."""
    if not _ok(r):
        return _cell_time(r, notes)
    ratio = f" ({r['median_s'] / base['median_s']:.2f}×)" if _ok(base) else ""
    return fmt_time(r["median_s"]) + ratio


def _cell_mem(r: dict | None, notes: dict) -> str:
    if r is None:
        return "—"
    if r["status"] != "ok":
        return _cell_time(r, notes)
    if r.get("peak_bytes") is None:
        return "n/a"
    return f"{fmt_bytes(r['peak_bytes'])} ({r['peak_logits']:.1f}×)"


def _speedup_rows(doc, variants, shapes, dtype, by):
    """fwd+bwd time of each variant divided into eager's: how many times faster than eager."""
    rows = []
    for n, v in shapes:
        base = by.get(("eager", n, v, dtype, "fwdbwd"))
        if not base or base["status"] != "ok":
            continue
        row = [str(n), str(v)]
        for var in variants:
            r = by.get((var, n, v, dtype, "fwdbwd"))
            row.append(f"{base['median_s'] / r['median_s']:.1f}×" if r and r["status"] == "ok" and r["median_s"] > 0 else "—")
        rows.append(row)
    return rows


REFERENCE_ORDER = ("reference", "cpu", "triton", "eager", "torch")


def value_disagreements(doc: dict, rtol: float = 1e-3) -> list[str]:
    """Cases where the variants' loss values on the same inputs (and option) differ by more than
    rtol (10 rtol in bf16): one of them computes something else, and its time is not comparable.
    topk is left out: with only the teacher's top k it computes another loss by design."""
    values: dict = {}
    for r in doc["results"]:
        if r.get("status") == "ok" and r.get("loss_value") is not None and r["variant"] != TOPK:
            values.setdefault((r["n"], r["v"], r["dtype"], option_of(r)), {})[r["variant"]] = r["loss_value"]
    out = []
    for (n, v, dtype, option), vals in sorted(values.items()):
        ref = next((vals[k] for k in REFERENCE_ORDER if k in vals), next(iter(vals.values())))
        tol = rtol * (10 if dtype == "bf16" else 1)
        bad = {k: x for k, x in vals.items() if not abs(x - ref) <= tol * abs(ref) + 1e-6}
        if bad:
            listed = ", ".join(f"{k} {x:.6g}" for k, x in vals.items())
            where = f"N={n} V={v} {dtype}" + (f" option {option}" if option != "default" else "")
            out.append(f"{where}: the loss values disagree ({listed}); "
                       f"{', '.join(bad)} computes a different loss, so its time is not comparable")
    return out


def tables(doc: dict) -> str:
    """All result tables of one run, as Markdown."""
    variants, shapes, dtypes, passes, by = _index(doc)
    names = [title(v, doc["config"].get("op", "loss")) for v in variants]
    align = ["r", "r"] + ["r"] * len(variants)
    parts = []
    for line in value_disagreements(doc):
        parts.append(f"**WARNING: {line}.**  ")
    if parts:
        parts.append("")
    notes: dict[str, int] = {}
    for dtype in dtypes if variants else ():
        for p in passes:
            rows = [[str(n), str(v)] + [_cell_time(by.get((var, n, v, dtype, p)), notes) for var in variants] for n, v in shapes]
            parts.append(f"**{dtype}, {PASS_TITLES[p]}**: median time · GB/s over the minimal bytes (% of copy bandwidth)\n")
            parts.append(table(["N", "V"] + names, rows, align))
            parts.append("")
        if "eager" in variants and "fwdbwd" in passes:
            rows = _speedup_rows(doc, variants, shapes, dtype, by)
            if rows:
                parts.append(f"**{dtype}, forward + backward: speed-up over PyTorch eager** (eager's time / the variant's)\n")
                parts.append(table(["N", "V"] + names, rows, align))
                parts.append("")
        for p in passes:
            rows = [[str(n), str(v)] + [_cell_mem(by.get((var, n, v, dtype, p)), notes) for var in variants] for n, v in shapes]
            parts.append(f"**{dtype}, {PASS_TITLES[p]}**: peak memory above the inputs (in logits tensors of the input dtype)\n")
            parts.append(table(["N", "V"] + names, rows, align))
            parts.append("")
    parts += option_tables(doc, notes)
    parts += topk_tables(doc, notes)
    if notes:
        parts.append("Notes:\n")
        for text, k in notes.items():
            parts.append(f"[{k}] {text}  ")
        parts.append("")
    return "\n".join(parts)


def _by_option(doc: dict) -> dict:
    return {(r["variant"], r["n"], r["v"], r["dtype"], r["pass"], option_of(r)): r for r in doc["results"]}


def _loss_passes(doc: dict, records: list[dict]) -> list[str]:
    return [p for p in PASS_ORDER if any(r["pass"] == p for r in records)]


def has_options(doc: dict) -> bool:
    return any(option_of(r) != "default" for r in doc["results"])


def _ok(r: dict | None) -> bool:
    return bool(r) and r["status"] == "ok" and r["median_s"] > 0


def option_tables(doc: dict, notes: dict) -> list[str]:
    """Markdown lines: per dtype and pass, each salt_kernels variant's median time per option and
    its ratio to the default option (same variant, N, V, dtype and pass, measured in the same
    run); a variant whose backend does not compute an option shows it skipped, with the reason
    in the notes. Nothing for a run without options."""
    if not has_options(doc):
        return []
    res = [r for r in doc["results"] if salt_variant(r["variant"])]
    options = [o for o in OPTIONS if any(option_of(r) == o for r in res)]
    keys = _ordered((r["variant"], r["n"], r["v"]) for r in res)
    by = _by_option(doc)
    parts = []
    for dtype in _ordered(r["dtype"] for r in res):
        for p in _loss_passes(doc, res):
            rows = []
            for var, n, v in keys:
                base = by.get((var, n, v, dtype, p, "default"))
                cells = [title(var), str(n), str(v)]
                cells += [_cell_ratio(by.get((var, n, v, dtype, p, o)), base, notes) for o in options]
                rows.append(cells)
            parts.append(f"**{dtype}, {PASS_TITLES[p]}: distillation options**: median time (the option's time ÷ "
                         "the default option's, same variant, N, V, dtype and pass)\n")
            parts.append(table(["variant", "N", "V"] + [OPTION_TITLES[o] for o in options], rows,
                               ["l", "r", "r"] + ["r"] * len(options)))
            parts.append("")
    return parts


def topk_tables(doc: dict, notes: dict) -> list[str]:
    """Markdown lines: per dtype and pass, topk_salt_loss (the teacher's top k) against each
    salt_kernels variant with the full teacher on the same inputs and option: times, the ratio
    top-k ÷ full teacher, and both loss values. Nothing for a run without the topk variant."""
    res = doc["results"]
    tops = [r for r in res if r["variant"] == TOPK]
    if not tops:
        return []
    fulls = _ordered(r["variant"] for r in res if salt_variant(r["variant"]) and r["variant"] != TOPK)
    by = _by_option(doc)
    ks = _ordered(r.get("k") for r in tops)
    parts = []
    for dtype in _ordered(r["dtype"] for r in tops):
        for p in _loss_passes(doc, tops):
            rows = []
            for n, v, o in _ordered((r["n"], r["v"], option_of(r)) for r in tops
                                    if r["dtype"] == dtype and option_of(r) in TOPK_OPTIONS):
                t = by.get((TOPK, n, v, dtype, p, o))
                cells = [str(n), str(v), OPTION_TITLES.get(o, o), str(t.get("k")) if t else "—"]
                cells.append(fmt_time(t["median_s"]) + f" ({t.get('backend')})" if _ok(t) else _cell_time(t, notes))
                full_value = None
                for fv in fulls:
                    f = by.get((fv, n, v, dtype, p, o))
                    if _ok(f):
                        ratio = f" ({t['median_s'] / f['median_s']:.2f}×)" if _ok(t) else ""
                        cells.append(fmt_time(f["median_s"]) + ratio)
                    else:
                        cells.append(_cell_time(f, notes))
                    if full_value is None and _ok(f) and f.get("loss_value") is not None:
                        full_value = f["loss_value"]
                top_value = t.get("loss_value") if _ok(t) else None
                cells.append(" vs ".join("—" if x is None else f"{x:.5g}" for x in (top_value, full_value)))
                rows.append(cells)
            parts.append(f"**{dtype}, {PASS_TITLES[p]}: top-k teacher (k = {', '.join(map(str, ks))}) against "
                         "the full teacher**: median time (in brackets: topk_salt_loss's backend; for salt_loss, "
                         "top-k time ÷ its time)\n")
            head = (["N", "V", "option", "k", "topk_salt_loss"] + [f"salt_loss {fv}, full teacher" for fv in fulls]
                    + ["loss: top-k vs full teacher"])
            parts.append(table(head, rows, ["r", "r", "l", "r", "r"] + ["r"] * len(fulls) + ["r"]))
            parts.append("")
    return parts


def header(doc: dict) -> str:
    m = doc["machine"]
    cfg = doc["config"]
    bw = doc.get("copy_bandwidth", {})

    def gbs(x):
        return f"{x / 1e9:.1f} GB/s" if x else "not measured"

    device = m["name"] if m["device"] == "cuda" else f"{m['name']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
    lines = [
        f"Machine: {device}; torch {m['torch']}, triton {m.get('triton') or 'n/a'}. Date: {m['date']}.  ",
        f"Command: `{doc.get('command') or 'salt-kernels bench'}`  ",
        f"Loss: kd_weight {cfg['kd_weight']}, temperature {cfg['temperature']}, mean over rows; "
        f"median of >= {cfg['repeats']} calls after {cfg['warmup']} warm-up call(s).  ",
        f"Copy bandwidth (torch copy_, read + write, same run): {gbs(bw.get('bytes_per_s'))} "
        f"(start {gbs(bw.get('start_bytes_per_s'))}, end {gbs(bw.get('end_bytes_per_s'))}).",
    ]
    options = [o for o in OPTIONS if any(option_of(r) == o for r in doc["results"])]
    if options != ["default"] and options:
        v = max(r["v"] for r in doc["results"])
        kws = "; ".join(f"{o}: {', '.join(f'{k}={x!r}' for k, x in option_kwargs(o, v).items())}"
                        for o in options if o != "default")
        lines[-1] += "  "
        lines.append(f"Options (salt_loss keywords; kd_vocab = V - 128, at V = {v}): {kws}.")
        if any(not salt_variant(r["variant"]) for r in doc["results"]):
            lines[-1] += "  "
            lines.append("The baselines compute the plain SALT loss and run the default option only.")
    if any(r["variant"] == TOPK for r in doc["results"]):
        lines[-1] += "  " if not lines[-1].endswith("  ") else ""
        lines.append(
            f"Top-k teacher: topk_salt_loss(student, teacher_indices, teacher_logprobs, labels, kd_weight, temperature) "
            f"with k = {cfg.get('topk_k')}, tail \"bucket\"; indices and log-probs are torch.topk of log_softmax of "
            "the same teacher logits the full-teacher variants get (then freed); its minimal bytes read the "
            "student's logits and that [N x k] teacher.")
    warning = busy_warning(m)
    if warning:
        lines.append("")
        lines.append(f"**{warning}**")
    if doc.get("left_out"):
        lines.append("")
        lines.append("Not run: " + "; ".join(f"{x['variant']} ({x['reason']})" for x in doc["left_out"]) + ".")
    lines.append("")
    lines.append(
        "Minimal bytes: forward reads student and teacher logits once; backward and forward + backward "
        "also write the gradient once. The fused salt_kernels backends compute the gradient while each "
        "row is in cache during a training forward, so their backward alone (marked †) is near zero: "
        "compare forward + backward. Peak memory is the process's peak above its inputs "
        + ("(torch.cuda.max_memory_allocated)." if m["device"] == "cuda" else "(resident set, Linux VmHWM).")
    )
    return "\n".join(lines)


def text_report(doc: dict) -> str:
    return header(doc) + "\n\n" + tables(doc)


# ---------------------------------------------------------------- plots


def plot(doc: dict, out_dir: str, prefix: str) -> list[str]:
    """PNG plots: for each dtype, time and peak memory against V (one line per variant), one
    panel per pass (rows) and N (columns). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants, shapes, dtypes, passes, by = _index(doc)
    ns = _ordered(n for n, _ in shapes)
    vs = sorted(_ordered(v for _, v in shapes))
    if len(vs) < 2:  # a line against V needs two V at least; the tables hold the rest
        return []
    os.makedirs(out_dir, exist_ok=True)
    written = []
    m = doc["machine"]
    for dtype in dtypes:
        for metric in ("time", "memory"):
            fig, axes = plt.subplots(
                len(ns), len(passes), figsize=(max(7.0, 4.2 * len(passes)), 3.3 * len(ns) + 0.9), squeeze=False
            )
            for i, n in enumerate(ns):
                for j, p in enumerate(passes):
                    ax = axes[i][j]
                    for var in variants:
                        xs, ys = [], []
                        for v in vs:
                            r = by.get((var, n, v, dtype, p))
                            if not r or r["status"] != "ok":
                                continue
                            y = r["median_s"] * 1000 if metric == "time" else r.get("peak_bytes")
                            if y is None:
                                continue
                            xs.append(v)
                            ys.append(y if metric == "time" else y / 2**30)
                        if xs:
                            ax.plot(xs, ys, marker="o", label=title(var, doc["config"].get("op", "loss")))
                    ax.set_title(f"{PASS_SHORT[p]}, N={n}", fontsize=9)
                    ax.set_xlabel("V (vocabulary)")
                    ax.set_ylabel("median time (ms)" if metric == "time" else "peak above inputs (GiB)")
                    if metric == "time":
                        ax.set_yscale("log")
                    ax.set_xticks(vs)
                    ax.set_xticklabels([f"{v / 1000:.0f}k" if v >= 1000 else str(v) for v in vs])
                    ax.grid(True, alpha=0.3)
            handles, labels = [], []
            for row in axes:
                for ax in row:
                    for h, l in zip(*ax.get_legend_handles_labels()):
                        if l not in labels:
                            handles.append(h)
                            labels.append(l)
            if handles:
                fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
            what = "median time" if metric == "time" else "peak memory above the inputs"
            fig.suptitle(f"SALT loss, {dtype}: {what}\n{m['name']} ({m['device']}), {m['date']}", fontsize=10)
            fig.tight_layout(rect=(0, 0.07, 1, 0.93))
            path = os.path.join(out_dir, f"{prefix}_{metric}_{dtype}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


# ---------------------------------------------------------------- RESULTS.md


def section(doc: dict, pngs: list[str], md_path: str, heading: str) -> str:
    md_dir = os.path.dirname(os.path.abspath(md_path))
    lines = [f"### {heading}", "", header(doc), ""]
    if pngs:
        lines.append(" ".join(f"![{os.path.basename(p)}]({os.path.relpath(os.path.abspath(p), md_dir)})" for p in pngs))
        lines.append("")
    lines.append(tables(doc))
    return "\n".join(lines)


def write_results_md(md_path: str, body: str, marker: str = "bench") -> None:
    """Put `body` between the <!-- marker:start --> and <!-- marker:end --> lines of md_path,
    leaving the rest of the file as it is (the markers are appended when absent; the file is
    created when missing)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = ""
    if os.path.exists(md_path):
        with open(md_path) as f:
            text = f.read()
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text and text.index(start) < text.index(end):
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        if text and not text.endswith("\n"):
            text += "\n"
        text += ("\n" if text else "") + block + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
    with open(md_path, "w") as f:
        f.write(text)


def _heading_topics(doc: dict) -> str:
    """What a grid adds to the plain loss tables, for its heading (", option grid, ...")."""
    topics = []
    if any(r["pass"] == "fwd_nograd" for r in doc["results"]):
        topics.append("forward under no_grad")
    if has_options(doc):
        topics.append("distillation options")
    if any(r["variant"] == TOPK for r in doc["results"]):
        topics.append("top-k teacher")
    return "".join(f", {t}" for t in topics)


def render(json_paths: list[str], md_path: str | None, plots_dir: str | None) -> dict:
    """Render result files into md_path and PNGs in plots_dir: a fixed-size run (a document with
    a "section") between its own markers, the grids and profiles together between the bench
    markers. Returns {"sections": [...], "pngs": [...]}."""
    sections, grid_sections, all_pngs = [], [], []
    docs = [(path, load(path)) for path in json_paths]
    # Loss microbenchmarks first, then the end-to-end profiles.
    docs.sort(key=lambda pd: pd[1]["kind"] != "salt-kernels-bench")
    for path, doc in docs:
        m = doc["machine"]
        if doc.get("section"):
            text = fixed_report(doc)
            sections.append(text)
            if md_path:
                write_results_md(md_path, text, doc["section"])
            continue
        if doc["kind"] == "salt-kernels-profile":
            heading = f"End-to-end training step: {m['name']} ({m['device']}), {m['date']}"
            grid_sections.append(f"### {heading}\n\n" + profile_tables(doc))
            continue
        prefix = os.path.splitext(os.path.basename(path))[0]
        pngs = plot(doc, plots_dir, prefix) if plots_dir else []
        all_pngs += pngs
        heading = f"Loss microbenchmarks{_heading_topics(doc)}: {m['name']} ({m['device']}), {m['date']}"
        grid_sections.append(section(doc, pngs, md_path or "RESULTS.md", heading))
    if md_path and grid_sections:
        intro = (
            "## Benchmarks: the loss and the training step\n\n"
            "Rendered by `python benchmarks/report.py` from the JSON files of `salt-kernels bench` and "
            "`salt-kernels profile` (do not edit between the bench markers by hand).\n"
        )
        write_results_md(md_path, intro + "\n" + "\n\n".join(grid_sections))
    return {"sections": sections + grid_sections, "pngs": all_pngs}


# ---------------------------------------------------------------- fixed-size runs


def _caveats(doc: dict, name) -> list[str]:
    """The busy-machine warning and what was left out (name(entry) says what), as lines."""
    warning = busy_warning(doc["machine"])
    lines = ["", f"**{warning}**"] if warning else []
    return lines + [f"Not run: {name(x)} ({x['reason']})." for x in doc.get("left_out", [])]


def _machine_line(doc: dict) -> str:
    m = doc["machine"]
    if m["device"] == "cuda":
        where = f"{m['name']}, torch {m['torch']}, triton {m.get('triton') or 'n/a'}"
    else:
        isa = f", kernel ISA {m['cpu_isa']}" if m.get("cpu_isa") else ""
        where = f"{m['name']}, {m['cpu_cores']} cores, torch {m['torch']}, {m['torch_threads']} threads{isa}"
    return f"Machine: {where}. Date: {m['date']}. Command: `{doc['command']}`."


def fixed_report(doc: dict, base: str | None = None) -> str:
    """The table of a fixed-size run (one shape, several variants): median time per pass, the
    last pass's time and peak memory against `base` (default: the first variant)."""
    cfg, m = doc["config"], doc["machine"]
    op = cfg.get("op", "loss")
    by = {(r["variant"], r["pass"]): r for r in doc["results"] if option_of(r) == "default"}
    passes = [p for p in ("fwd", "fwd_nograd", "bwd", "fwdbwd") if p in cfg["passes"]]
    last = passes[-1]
    base = base if base in cfg["variants"] else cfg["variants"][0]
    any_rec = doc["results"][0] if doc["results"] else {}
    shape = f"N={cfg['n'][0]}, V={cfg['v'][0]}" if cfg["n"] and cfg["v"] else ""
    if op == "linear":
        shape = f"N={cfg['n'][0]}, d_s={cfg['d_s']}, d_t={cfg['d_t']}, V={cfg['v'][0]}"
    probe = ("torch.cuda.max_memory_allocated in one call" if m["device"] == "cuda"
             else "resident set during the timed calls")
    process = "each variant in its own process" if cfg.get("isolated", True) else "all variants in one process"
    if op == "linear":
        memory = f"memory: the peak above the inputs and the gradients returned ({probe}), {process}."
    else:
        logits = any_rec.get("logits_bytes")
        memory = (f"memory: the peak above the inputs ({probe}), {process}"
                  + (f"\n(one logits tensor is {logits / 2**20:.0f} MiB)." if logits else "."))
    lines = [
        _machine_line(doc),
        f"Shape {shape}, {', '.join(cfg['dtypes'])}, tau={cfg['temperature']}, kd_weight={cfg['kd_weight']}; "
        f"median of >= {cfg['repeats']} calls after {cfg['warmup']} warm-up call(s);",
        memory,
    ]
    lines += _caveats(doc, lambda x: title(x["variant"], op)) + [""]
    mem_head = "peak above inputs + gradients (MiB)" if op == "linear" else f"peak mem {PASS_COLUMNS[last]} (MiB)"
    head = (["variant"] + [f"{PASS_COLUMNS[p]} (s)" for p in passes]
            + [f"{PASS_COLUMNS[last]} vs {base}", mem_head, f"vs {base}" if op == "linear" else "× one logits tensor"])
    ref = by.get((base, last))
    rows = []
    for var in cfg["variants"]:
        cells = [title(var, op)]
        for p in passes:
            r = by.get((var, p))
            cells.append(f"{r['median_s']:.3f}" if r and r["status"] == "ok" else (r["status"] if r else "—"))
        r = by.get((var, last))
        if not (r and r["status"] == "ok"):
            rows.append(cells + ["—"] * 3)
            continue
        ok_ref = ref and ref["status"] == "ok"
        cells.append(f"{r['median_s'] / ref['median_s']:.2f}x" if ok_ref else "—")
        peak = r.get("peak_bytes")
        if peak is None:
            cells += ["n/a", "n/a"]
        elif op == "linear":
            above = peak - r["output_bytes"]
            ref_above = ref["peak_bytes"] - ref["output_bytes"] if ok_ref and ref.get("peak_bytes") is not None else None
            cells += [f"{above / 2**20:.0f}", f"{100 * above / max(1, ref_above):.1f}%" if ref_above is not None else "—"]
        else:
            cells += [f"{peak / 2**20:.0f}", f"{peak / r['logits_bytes']:.2f}"]
        rows.append(cells)
    lines.append(table(head, rows, ["l"] + ["r"] * (len(head) - 1)))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- profile


def profile_tables(doc: dict, with_accounting: bool = True) -> str:
    """Throughput and phase-split tables of a `salt-kernels profile` result, as Markdown."""
    from .profiling import KIND_TITLES, LOSS_TITLES, PHASE_TITLES, PHASES

    cfg = doc["config"]
    m = doc["machine"]
    dev = m["name"] if m["device"] == "cuda" else f"{m['name']} ({m['cpu_cores']} cores)"
    lines = [
        f"Machine: {dev}; torch {m['torch']}. Date: {m['date']}.  ",
        f"Command: `{doc.get('command') or 'salt-kernels profile'}`  ",
        f"Student {cfg['student']} ({fmt_count(doc['student_parameters'])} parameters), teacher {cfg['teacher']} "
        f"({fmt_count(doc['teacher_parameters'])}), vocabulary {cfg['vocab_size']}, "
        f"{cfg['batch_size']} x {cfg['seq_len']} = {doc['tokens_per_step']} tokens per step, "
        f"{'bf16 autocast' if cfg['amp'] == 'bf16' else 'fp32'}, AdamW; kd_weight {cfg['kd_weight']}, "
        f"temperature {cfg['temperature']}, backend {cfg['backend']}; median of {cfg['steps']} steps after "
        f"{cfg['warmup']} warm-up steps.",
    ]
    lines += _caveats(doc, lambda x: f"loss {x['loss']}") + [""]
    rows = []
    for r in doc["results"]:
        ov_same = r.get("overhead_vs_ce_same_loss")
        ov_torch = r.get("overhead_vs_ce_torch")
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        rows.append([
            KIND_TITLES[r["kind"]], LOSS_TITLES[r["loss"]], fmt_time(r["step_s"]), f"{r['tokens_per_s']:,.0f}",
            fmt_bytes(r.get("step_peak_bytes")), fmt_bytes(r.get("state_bytes")), mfu,
            f"{100 * ov_same:+.0f}%" if ov_same is not None else "",
            f"{100 * ov_torch:+.0f}%" if ov_torch is not None else "",
        ])
    lines.append("**Training step throughput** (overhead: the SALT step's time over a CE-only step)\n")
    lines.append(table(
        ["step", "loss", "step time", "tokens/s", "step peak memory", "student + AdamW state", "MFU",
         "overhead vs CE, same loss", "overhead vs plain-PyTorch CE"],
        rows, ["l", "l", "r", "r", "r", "r", "r", "r", "r"]))
    lines.append("")
    rows = []
    for r in doc["results"]:
        total = r["step_s"]
        cells = []
        for ph in PHASES:
            t = r["phases_s"][ph]
            cells.append("—" if r["kind"] == "ce" and ph == "teacher_forward" else f"{fmt_time(t)} ({100 * t / total:.0f}%)")
        rows.append([KIND_TITLES[r["kind"]], LOSS_TITLES[r["loss"]]] + cells)
    lines.append("**Step time by phase** (median per phase; share of the median step)\n")
    lines.append(table(["step", "loss"] + [PHASE_TITLES[p] for p in PHASES], rows, ["l", "l"] + ["r"] * len(PHASES)))
    lines.append("")
    lines.append(
        "Step peak memory: the most a step held above what was held before it (activations, logits, loss "
        "temporaries, gradients; "
        + ("torch.cuda.max_memory_allocated" if m["device"] == "cuda" else "the process's resident set, VmHWM")
        + "); student + AdamW state: its weights and optimizer moments; the teacher's weights and the batch "
        "come on top of both. "
        + ("Variants were measured interleaved (one step of each per round, the order rotating), so a change "
           "in the machine's load hits all alike. " if doc.get("interleaved") else
           "Variants were measured one after the other (all students at once would not fit in memory). ")
        + "MFU counts the student's 6P + 12LdT FLOPs per token and, in SALT steps, the teacher's forward "
        "2P + 4LdT; n/a where the device's peak is unknown (CPUs; pass --peak-tflops). With the fused linear "
        "loss the output projections run inside the loss phase."
    )
    if with_accounting and doc.get("accounting", {}).get("text"):
        lines += ["", "```", doc["accounting"]["text"], "```"]
    return "\n".join(lines)
