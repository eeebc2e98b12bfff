"""`salt-kernels bench`: runs every case of the grid in its own process and writes the JSON.

Result file (schema 1):
    {"kind": "salt-kernels-bench", "schema": 1, "machine": {...}, "command": "...",
     "config": {"kd_weight", "temperature", "repeats", "warmup", "min_time", "passes", ...},
     "copy_bandwidth": {"start_bytes_per_s", "end_bytes_per_s", "bytes_per_s"},
     "left_out": [{"variant", "reason"}],
     "results": [{"variant", "n", "v", "dtype", "pass", "status": "ok"|"skipped"|"failed",
                  "reason", "median_s", "min_s", "max_s", "repeats", "times_s", "first_call_s",
                  "bytes", "gb_per_s", "copy_fraction", "peak_bytes", "peak_logits",
                  "logits_bytes", "estimated_bytes", "loss_value", "note"}]}

"bytes" is the minimal traffic of the pass (cases.Case.min_bytes), "gb_per_s" = bytes / median,
"copy_fraction" = that over the copy bandwidth measured in the same run (the better of the
measurements at the start and the end), "peak_bytes" the process's peak above its inputs and
"peak_logits" the same in units of one logits tensor of the input dtype, "loss_value" the
variant's loss on the case's inputs (the same inputs for every variant: the report flags a
variant that disagrees). A salt_kernels backend's "bwd" gets no GB/s: its gradient was written
in the forward ("note").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict

import torch

from . import cases as C
from .machine import available_bytes, busy_warning, describe, load_average
from .progress import bar
from .timing import copy_bandwidth

SCHEMA = 1


def _gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"


def run_worker(spec: dict, timeout: float | None) -> dict:
    """Run one spec in a fresh Python process; never raises for a failing case."""
    with tempfile.TemporaryDirectory(prefix="salt-bench-") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        result_path = os.path.join(tmp, "result.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        cmd = [sys.executable, "-m", "salt_kernels.benchmarking.worker", spec_path, result_path]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"took longer than --case-timeout {timeout:.0f} s; raise it or shrink the case"}
        if os.path.exists(result_path):
            with open(result_path) as f:
                return json.load(f)
        tail = (proc.stderr or "").strip().splitlines()[-8:]
        if proc.returncode in (-9, 137):
            why = "killed (SIGKILL, most likely out of memory)"
        else:
            why = f"worker exited with status {proc.returncode}"
        return {"error": why, "traceback": tail}


def _record(case: C.Case, pass_: str, **fields) -> dict:
    rec = asdict(case)
    rec.update(
        {
            "pass": pass_,
            "bytes": case.min_bytes(pass_),
            "logits_bytes": case.logits_bytes,
            "estimated_bytes": case.estimated_bytes(),
        }
    )
    rec.update(fields)
    return rec


def fill_derived(results: list[dict], copy_bps: float | None) -> None:
    for r in results:
        if r.get("status") != "ok":
            continue
        r["peak_logits"] = r["peak_bytes"] / r["logits_bytes"] if r.get("peak_bytes") is not None else None
        if r["pass"] == "bwd" and r["variant"] in C.SALT_BACKENDS:
            # The gradient was written during the forward: the backward moves no logits-sized
            # data, and a bandwidth over the minimal bytes would mean nothing.
            r["gb_per_s"] = r["copy_fraction"] = None
            r["note"] = "gradient computed in the forward"
            continue
        r["gb_per_s"] = r["bytes"] / r["median_s"] / 1e9 if r["median_s"] > 0 else None
        r["copy_fraction"] = (r["bytes"] / r["median_s"]) / copy_bps if copy_bps and r["median_s"] > 0 else None


def run_bench(
    *,
    device: torch.device,
    variants: list[str],
    left_out: list[tuple[str, str]],
    ns: list[int],
    vs: list[int],
    dtypes: list[str],
    passes: list[str],
    out_path: str,
    repeats: int,
    warmup: int,
    min_time: float,
    kd_weight: float = C.KD_WEIGHT,
    temperature: float = C.TEMPERATURE,
    memory_fraction: float = 0.85,
    case_timeout: float | None = None,
    command: str = "",
    progress: bool = True,
    threads: int | None = None,
    log=print,
) -> dict:
    for p in passes:
        if p not in C.PASSES:
            raise ValueError(f"unknown pass {p!r}; choose from {', '.join(C.PASSES)}")
    case_list = C.make_cases(variants, ns, vs, dtypes)
    doc = {
        "kind": "salt-kernels-bench",
        "schema": SCHEMA,
        "machine": describe(device),
        "command": command,
        "config": {
            "kd_weight": kd_weight,
            "temperature": temperature,
            "repeats": repeats,
            "warmup": warmup,
            "min_time": min_time,
            "passes": passes,
            "n": ns,
            "v": vs,
            "dtypes": dtypes,
            "variants": variants,
            "threads": threads,
        },
        "copy_bandwidth": {},
        "left_out": [{"variant": v, "reason": why} for v, why in left_out],
        "results": [],
    }
    for v, why in left_out:
        log(f"not run: {v}: {why}")

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        tmp = out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, out_path)

    def copy_bw(label: str) -> float | None:
        # In this process: the yardstick needs no memory isolation, and the cases run in between.
        try:
            return copy_bandwidth(device)
        except RuntimeError as exc:  # e.g. out of memory on a crowded GPU
            log(f"copy bandwidth ({label}) could not be measured: {exc}")
            return None

    doc["copy_bandwidth"]["start_bytes_per_s"] = copy_bw("start")
    save()
    with bar(len(case_list), "bench", enabled=progress) as pbar:
        for case in case_list:
            label = f"{case.variant} N={case.n} V={case.v} {case.dtype}"
            pbar.set_postfix_str(label)
            need = case.estimated_bytes()
            avail = available_bytes(device)
            if need > memory_fraction * avail:
                why = (
                    f"needs ~{_gib(need)} ({_gib(case.input_bytes())} inputs + gradient + "
                    f"{case.variant}'s temporaries), {_gib(avail)} free on {device.type} "
                    f"(limit {memory_fraction:.0%} of it)"
                )
                pbar.write(f"skip {label}: {why}")
                for p in passes:
                    doc["results"].append(_record(case, p, status="skipped", reason=why))
                pbar.update(1)
                save()
                continue
            spec = {
                **asdict(case),
                "passes": passes,
                "device": str(device),
                "repeats": repeats,
                "warmup": warmup,
                "min_time": min_time,
                "kd_weight": kd_weight,
                "temperature": temperature,
                "threads": threads,
            }
            res = run_worker(spec, timeout=case_timeout)
            if "error" in res:
                why = res["error"]
                pbar.write(f"FAILED {label}: {why}")
                for line in res.get("traceback", [])[-4:]:
                    pbar.write(f"    {line}")
                for p in passes:
                    doc["results"].append(_record(case, p, status="failed", reason=why))
            else:
                for p in passes:
                    doc["results"].append(_record(case, p, status="ok", reason="", loss_value=res["loss_value"],
                                                  **res["passes"][p]))
            pbar.update(1)
            save()
    doc["machine"]["load_average_end"] = load_average()
    doc["copy_bandwidth"]["end_bytes_per_s"] = copy_bw("end")
    measured = [x for x in (doc["copy_bandwidth"]["start_bytes_per_s"], doc["copy_bandwidth"]["end_bytes_per_s"]) if x]
    doc["copy_bandwidth"]["bytes_per_s"] = max(measured) if measured else None
    fill_derived(doc["results"], doc["copy_bandwidth"]["bytes_per_s"])
    save()
    warning = busy_warning(doc["machine"])
    if warning:
        log(warning)
    return doc
