"""The short table that benchmarks/gpu/check.sh prints last, from the files it left in OUT:
steps.tsv, tests.xml, bench_loss_gpu.json, bench_loss_gpu_plans.json and any other
bench_*.json.

    python benchmarks/gpu/summarize.py OUT_DIR
"""

from __future__ import annotations

import json
import pathlib
import sys
import xml.etree.ElementTree as ET


def _load(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except Exception as exc:  # a benchmark killed by its timeout leaves no or half a file
        return {"error": f"{path.name}: {exc}"}


def steps(out: pathlib.Path) -> list[str]:
    f = out / "steps.tsv"
    if not f.exists():
        return ["(no steps.tsv)"]
    return [f"  {name:<24} {status} ({secs}s)" for name, status, secs in
            (line.split("\t") for line in f.read_text().splitlines() if line.count("\t") == 2)]


def tests(out: pathlib.Path) -> str:
    f = out / "tests.xml"
    if not f.exists():
        return "tests: no tests.xml (not run, or killed by its timeout)"
    root = ET.parse(f).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    line = (f"tests: {passed} passed, {total['failures']} failed, {total['errors']} errors, "
            f"{total['skipped']} skipped")
    bad = [c.get("classname", "") + "::" + c.get("name", "") for c in root.iter("testcase")
           if c.find("failure") is not None or c.find("error") is not None]
    return "\n".join([line] + [f"  FAILED {b}" for b in bad[:10]])


def loss_table(doc, passes=("fwd+bwd",), only_plans=False) -> list[str]:
    if "error" in doc:
        return [doc["error"]]
    lines = [f"{doc.get('device')}  copy {doc.get('copy_gbps', 0):.0f} GB/s  torch {doc.get('torch')}  "
             f"triton {doc.get('triton')}  {doc.get('date')}"]
    lines.append(f"  {'V':>7} {'dtype':>5} {'pass':>7} {'variant':<24} {'ms':>8} {'GB/s':>6} {'%copy':>6} {'peak+MiB':>9}")
    for r in doc.get("results", []):
        if r["pass_"] not in passes or (r.get("note") == "sweep") != only_plans:
            continue
        head = f"  {r['vocab']:>7} {r['dtype']:>5} {r['pass_']:>7} {r['variant']:<24}"
        if r["status"] == "ok":
            peak = "-" if r.get("peak_extra_mib") is None else f"{r['peak_extra_mib']:.0f}"
            lines.append(f"{head} {r['ms']:>8.3f} {r['gbps']:>6.0f} {100 * r['frac_copy']:>5.0f}% {peak:>9}")
        else:
            lines.append(f"{head} {r['status']} {r.get('reason', '')[:60]}")
    lines += ["  " + s for s in doc.get("summary", []) if "speed-up" in s or s.startswith("best plan")]
    return lines


def other(doc) -> list[str]:
    if "error" in doc:
        return [doc["error"]]
    if isinstance(doc.get("summary"), list):
        return ["  " + str(s) for s in doc["summary"]]
    return ["  " + json.dumps(doc, default=str)[:2000]]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = pathlib.Path(argv[0] if argv else "benchmarks/gpu/out")
    lines = ["=" * 30 + " salt_kernels GPU check " + "=" * 30]
    env = out / "env.txt"
    if env.exists():
        lines += ["  " + s for s in env.read_text().splitlines()[:6]]
    lines += ["steps:"] + steps(out) + [tests(out)]
    main_json = out / "bench_loss_gpu.json"
    if main_json.exists():
        lines += ["", "salt loss, forward+backward (bench_loss_gpu.py):"] + loss_table(_load(main_json))
    plans = out / "bench_loss_gpu_plans.json"
    if plans.exists():
        doc = _load(plans)
        lines += ["", "triton launch plans (fwd+bwd):"] + loss_table(doc)
    for f in sorted(out.glob("bench_*.json")):
        if f.name not in ("bench_loss_gpu.json", "bench_loss_gpu_plans.json"):
            lines += ["", f"{f.stem}:"] + other(_load(f))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
