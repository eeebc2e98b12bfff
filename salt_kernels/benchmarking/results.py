"""The one results format of the benchmarks. `salt-kernels bench`, `salt-kernels profile`, the
fixed-size scripts in benchmarks/ (and so benchmarks/gpu/check.sh) and the pytest-benchmark
suite (with SALT_BENCH_OUT) write it; benchmarks/report.py renders it.

Document (schema 2):
    {"kind": "salt-kernels-bench" | "salt-kernels-profile", "schema": 2,
     "machine": {...} (machine.describe), "command": "the command line that reproduces the run",
     "config": {...} (the run's settings), "left_out": [{"variant" | "loss", "reason"}],
     "results": [record, ...],
     bench only: "copy_bandwidth": {"start_bytes_per_s", "end_bytes_per_s", "bytes_per_s"},
                 "section": the RESULTS.md markers of a fixed-size run (e.g. "cpu-loss"), or absent}

Bench record, one per (case, pass):
    {"variant", "n", "v", "dtype", "op": "loss" | "linear", "d_s", "d_t" (linear's hidden sizes),
     "option" (the distillation option of the grid, cases.OPTIONS; "default" is the plain SALT
     loss; absent in older files, meaning "default"), "k" (topk: the teacher's top k, else None),
     "backend" (the salt_kernels backend that ran it, topk's as "auto" picked it; None for the
     baselines), "pass": "fwd" | "fwd_nograd" | "bwd" | "fwdbwd",
     "status": "ok" | "skipped" | "failed", "reason",
     "median_s", "min_s", "max_s", "times_s" (per-call seconds, one per timed block), "repeats"
     (calls timed), "first_call_s", "peak_bytes" (the peak above the inputs, the gradient
     included), "output_bytes" (the gradients the pass returns), "logits_bytes" (one [N x V]
     tensor in the input dtype), "peak_logits" (peak_bytes in those), "estimated_bytes",
     "bytes" (the least traffic of the pass; None for linear), "gb_per_s" (bytes / median),
     "copy_fraction" (that over the copy bandwidth of the same run), "loss_value" (the variant's
     loss on the case's inputs, the same inputs for every variant; topk: with the top k of the
     same teacher), "note"}
The bench config holds the run's settings, among them "passes", "loss_options" (the option grid)
and "topk_k".
A salt_kernels backend's "bwd" gets no GB/s: its gradient was written in the forward ("note").

Profile document: also "student_parameters", "teacher_parameters", "tokens_per_step",
"interleaved" and, with --accounting, "accounting"; one record per (step kind, loss):
    {"kind": "ce" | "salt", "loss": "torch" | "fused" | "linear", "status", "step_s",
     "step_times_s", "phases_s": {phase: median seconds}, "tokens_per_s", "state_bytes",
     "step_peak_bytes", "model_flops_per_token", "achieved_flops", "peak_flops", "mfu", "trace",
     SALT steps: "overhead_vs_ce_same_loss", "overhead_vs_ce_torch"}
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from .cases import Case, fused_backward
from .machine import describe

SCHEMA = 2
KINDS = ("salt-kernels-bench", "salt-kernels-profile")


def new_document(kind: str, device, command: str, config: dict, **fields) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown result kind {kind!r}")
    doc = {"kind": kind, "schema": SCHEMA, "machine": describe(device), "command": command, "config": config,
           "left_out": [], "results": []}
    doc.update(fields)
    return doc


def record(case: Case, pass_: str, **fields) -> dict:
    rec = asdict(case)
    rec.update(
        {
            "pass": pass_,
            "bytes": case.min_bytes(pass_),
            "logits_bytes": case.logits_bytes,
            "output_bytes": case.output_bytes(pass_),
            "estimated_bytes": case.estimated_bytes(),
        }
    )
    rec.update(fields)
    return rec


def fill_derived(results: list[dict], copy_bps: float | None) -> None:
    """peak_logits, gb_per_s and copy_fraction of the records that ran."""
    for r in results:
        if r.get("status") != "ok":
            continue
        r["peak_logits"] = r["peak_bytes"] / r["logits_bytes"] if r.get("peak_bytes") is not None else None
        r["gb_per_s"] = r["copy_fraction"] = None
        if r["pass"] == "bwd" and fused_backward(r["variant"]):
            # The gradient was written during the forward: the backward moves no logits-sized
            # data, and a bandwidth over the minimal bytes would mean nothing.
            r["note"] = "gradient computed in the forward"
            continue
        if r.get("bytes") and r["median_s"] > 0:
            r["gb_per_s"] = r["bytes"] / r["median_s"] / 1e9
            r["copy_fraction"] = (r["bytes"] / r["median_s"]) / copy_bps if copy_bps else None


def save(doc: dict, path: str) -> None:
    """Write the document (atomically: a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def load(path: str) -> dict:
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("kind") not in KINDS:
        raise ValueError(f"{path} is not a result file of `salt-kernels bench` or `salt-kernels profile`")
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path} has results schema {doc.get('schema')}, this version reads schema {SCHEMA}: "
                         "run the benchmark again")
    return doc
