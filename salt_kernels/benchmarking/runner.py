"""The harness: runs benchmark cases (each in its own process by default, see worker) and writes
the results document (results). `salt-kernels bench` runs a grid of cases with it; the
fixed-size scripts in benchmarks/ run one shape with run_fixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict

import torch

from . import cases as C
from . import results
from .machine import available_bytes, busy_warning, load_average
from .timing import copy_bandwidth


class _NoBar:
    """The part of a tqdm bar the runs use, showing nothing but what is written."""

    def update(self, k: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A tqdm progress bar on stderr (tqdm comes with the `bench` extra); without tqdm, one line
    saying so and no bar."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            print(f"{desc}: {total} steps (no progress bar: pip install tqdm)", file=sys.stderr, flush=True)
        else:
            return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
    return _NoBar()


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


def run_in_process(spec: dict) -> dict:
    """Run one spec in this process (faster: no interpreter, CUDA or compiler start per case; the
    peak memory of a case may then include what earlier cases left in the allocators)."""
    from .worker import run_case_safely

    try:
        return run_case_safely(spec)
    finally:
        if spec["variant"] == "compile":
            torch._dynamo.reset()  # a fresh compile per case, as in its own process
        if torch.device(spec["device"]).type == "cuda":
            torch.cuda.empty_cache()


def run_bench(
    *,
    device: torch.device,
    cases: list[C.Case],
    passes: list[str],
    out_path: str | None,
    repeats: int,
    warmup: int,
    min_time: float,
    left_out: list[tuple[str, str]] = (),
    kd_weight: float = C.KD_WEIGHT,
    temperature: float = C.TEMPERATURE,
    options: dict | None = None,
    memory_fraction: float = 0.85,
    case_timeout: float | None = None,
    command: str = "",
    progress: bool = True,
    threads: int | None = None,
    isolate: bool = True,
    section: str | None = None,
    log=print,
) -> dict:
    """Run the cases and return the results document, written to out_path (when given) after
    every case."""
    for p in passes:
        if p not in C.ALL_PASSES:
            raise ValueError(f"unknown pass {p!r}; choose from {', '.join(C.ALL_PASSES)}")

    def distinct(key):
        return sorted({getattr(c, key) for c in cases}, key=str)

    config = {
        "kd_weight": kd_weight, "temperature": temperature, "repeats": repeats, "warmup": warmup,
        "min_time": min_time, "passes": passes, "op": cases[0].op if cases else "loss", "n": distinct("n"),
        "v": distinct("v"), "dtypes": list(dict.fromkeys(c.dtype for c in cases)),
        "variants": list(dict.fromkeys(c.variant for c in cases)), "d_s": cases[0].d_s if cases else None,
        "d_t": cases[0].d_t if cases else None, "options": options, "threads": threads, "isolated": isolate,
        "loss_options": list(dict.fromkeys(c.option for c in cases)),
        "topk_k": next((c.k for c in cases if c.variant == C.TOPK), None),
    }
    doc = results.new_document("salt-kernels-bench", device, command, config, copy_bandwidth={},
                               **({"section": section} if section else {}))
    doc["left_out"] = [{"variant": v, "reason": why} for v, why in left_out]
    for v, why in left_out:
        log(f"not run: {v}: {why}")

    def save():
        if out_path:
            results.save(doc, out_path)

    def copy_bw(label: str) -> float | None:
        # In this process: the yardstick needs no memory isolation, and the cases run in between.
        try:
            return copy_bandwidth(device)
        except RuntimeError as exc:  # e.g. out of memory on a crowded GPU
            log(f"copy bandwidth ({label}) could not be measured: {exc}")
            return None

    doc["copy_bandwidth"]["start_bytes_per_s"] = copy_bw("start")
    save()
    with progress_bar(len(cases), "bench", enabled=progress) as pbar:
        for case in cases:
            label = case.label()
            pbar.set_postfix_str(label)
            ok, why = C.case_status(case, device)
            if not ok:  # e.g. a backend that does not compute the case's option: its reason
                pbar.write(f"skip {label}: {why}")
                doc["results"] += [results.record(case, p, status="skipped", reason=why) for p in passes]
                pbar.update(1)
                save()
                continue
            need = case.estimated_bytes()
            avail = available_bytes(device)
            if need > memory_fraction * avail:
                why = (
                    f"needs ~{_gib(need)} ({_gib(case.input_bytes())} inputs + gradient + "
                    f"{case.variant}'s temporaries), {_gib(avail)} free on {device.type} "
                    f"(limit {memory_fraction:.0%} of it)"
                )
                pbar.write(f"skip {label}: {why}")
                doc["results"] += [results.record(case, p, status="skipped", reason=why) for p in passes]
                pbar.update(1)
                save()
                continue
            spec = {**asdict(case), "passes": passes, "device": str(device), "repeats": repeats, "warmup": warmup,
                    "min_time": min_time, "kd_weight": kd_weight, "temperature": temperature, "threads": threads,
                    "options": options}
            res = run_worker(spec, timeout=case_timeout) if isolate else run_in_process(spec)
            if "error" in res:
                why = res["error"]
                pbar.write(f"FAILED {label}: {why}")
                for line in res.get("traceback", [])[-4:]:
                    pbar.write(f"    {line}")
                doc["results"] += [results.record(case, p, status="failed", reason=why) for p in passes]
            else:
                doc["results"] += [results.record(case, p, status="ok", reason="", loss_value=res["loss_value"],
                                                  backend=res.get("backend"), **res["passes"][p]) for p in passes]
            pbar.update(1)
            save()
    doc["machine"]["load_average_end"] = load_average()
    bw = doc["copy_bandwidth"]
    bw["end_bytes_per_s"] = copy_bw("end")
    measured = [x for x in (bw["start_bytes_per_s"], bw["end_bytes_per_s"]) if x]
    bw["bytes_per_s"] = max(measured) if measured else None
    results.fill_derived(doc["results"], bw["bytes_per_s"])
    save()
    warning = busy_warning(doc["machine"])
    if warning:
        log(warning)
    return doc


def run_fixed(
    *,
    op: str,
    device: str,
    variants: list[str],
    n: int,
    v: int,
    dtype: str,
    passes: list[str],
    repeats: int,
    base: str,
    command: str,
    section: str,
    json_path: str | None,
    md_path: str | None,
    d_s: int | None = None,
    d_t: int | None = None,
    warmup: int = 1,
    min_time: float = 0.0,
    kd_weight: float = C.KD_WEIGHT,
    temperature: float = C.TEMPERATURE,
    options: dict | None = None,
    isolate: bool = True,
    check_usable: bool = True,
) -> int:
    """One shape, several variants (the fixed-size scripts in benchmarks/): runs them, prints the
    comparison table (times and memory against `base`), writes the JSON and, with md_path, the
    table into that file between the `section` markers. Returns the exit status: 1 when a case
    failed or the variants' loss values disagree."""
    from . import render

    dev = torch.device(device)
    if dtype in ("float32", "bfloat16"):
        dtype = {"float32": "fp32", "bfloat16": "bf16"}[dtype]
    left_out = []
    if check_usable:
        usable = []
        for name in variants:
            ok, why = C.variant_status(name, dev, op, (options or {}).get("backend", "auto"))
            (usable.append(name) if ok else left_out.append((name, why)))
        variants = usable
    cases = C.make_cases(variants, [n], [v], [dtype], op, d_s, d_t)
    doc = run_bench(device=dev, cases=cases, passes=passes, out_path=json_path, repeats=repeats, warmup=warmup,
                    min_time=min_time, left_out=left_out, kd_weight=kd_weight, temperature=temperature,
                    options=options, command=command, isolate=isolate, section=section)
    print()
    print(render.fixed_report(doc, base))
    if json_path:
        print(f"\nresults: {json_path}")
    if md_path:
        render.write_results_md(md_path, render.fixed_report(doc, base), section)
        print(f"updated {md_path} (between the {section} markers)")
    disagree = render.value_disagreements(doc)
    for line in disagree:
        print(f"WARNING: {line}")
    failed = any(r["status"] == "failed" for r in doc["results"])
    return 1 if failed or disagree else 0
