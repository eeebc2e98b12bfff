"""The short table that benchmarks/gpu/check.sh prints last, from the files it left in OUT:
steps.tsv, tests.xml and the bench_*.json result files (the `salt-kernels bench` format, see
salt_kernels/benchmarking/results.py).

    python benchmarks/gpu/summarize.py OUT_DIR
"""

from __future__ import annotations

import pathlib
import sys
import xml.etree.ElementTree as ET

TITLES = {"bench_loss_gpu": "salt loss (bench_loss_gpu.py)",
          "bench_loss_gpu_plans": "triton launch plans (bench_loss_gpu.py --sweep)",
          "bench_linear_gpu": "fused linear loss (bench_linear_gpu.py)"}


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


def records(doc: dict) -> list[str]:
    """One line per measured (case, pass), then triton's speed-ups and the fastest launch plan."""
    m, bw = doc["machine"], (doc.get("copy_bandwidth") or {}).get("bytes_per_s")
    lines = [f"  {m['name']}  copy {bw / 1e9 if bw else 0:.0f} GB/s  torch {m['torch']}  triton {m.get('triton')}  "
             f"{m['date']}",
             f"  {'V':>7} {'dtype':>5} {'pass':>7} {'variant':<24} {'ms':>9} {'GB/s':>6} {'%copy':>6} {'peak MiB':>9}"]
    ok = {}
    for r in doc["results"]:
        head = f"  {r['v']:>7} {r['dtype']:>5} {r['pass']:>7} {r['variant']:<24}"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r.get('reason', '')[:60]}")
            continue
        ok[(r["v"], r["dtype"], r["pass"], r["variant"])] = r
        gbs = f"{r['gb_per_s']:.0f}" if r.get("gb_per_s") else "-"
        frac = f"{100 * r['copy_fraction']:.0f}%" if r.get("copy_fraction") else "-"
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") is not None else "-"
        lines.append(f"{head} {1000 * r['median_s']:>9.3f} {gbs:>6} {frac:>6} {peak:>9}")
    for (v, d, p, var), r in sorted(ok.items()):
        for base in ("liger", "eager", "compile") if var == "triton" else ():
            if (v, d, p, base) in ok:
                lines.append(f"  V={v} {d} {p}: triton is {ok[(v, d, p, base)]['median_s'] / r['median_s']:.2f}x "
                             f"as fast as {base}")
    plans = {}
    for (v, d, p, var), r in ok.items():
        if var.startswith("triton") and p == "fwdbwd":
            plans.setdefault((v, d), []).append(r)
    for (v, d), rs in sorted(plans.items()):
        if len(rs) > 1:
            r = min(rs, key=lambda r: r["median_s"])
            lines.append(f"  fastest triton plan at V={v} {d}: {r['variant']} {1000 * r['median_s']:.3f} ms")
    return lines


def report(path: pathlib.Path) -> list[str]:
    from salt_kernels.benchmarking import render, results

    try:
        doc = results.load(str(path))
    except Exception as exc:  # a benchmark killed by its timeout leaves no or half a file
        return [f"  {path.name}: {exc}"]
    if doc.get("section"):
        return ["  " + line for line in render.fixed_report(doc).splitlines()]
    return records(doc)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = pathlib.Path(argv[0] if argv else "benchmarks/gpu/out")
    lines = ["=" * 30 + " salt_kernels GPU check " + "=" * 30]
    env = out / "env.txt"
    if env.exists():
        lines += ["  " + s for s in env.read_text().splitlines()[:6]]
    lines += ["steps:"] + steps(out) + [tests(out)]
    order = list(TITLES)
    for f in sorted(out.glob("bench_*.json"), key=lambda f: (order.index(f.stem) if f.stem in order else 9, f.name)):
        lines += ["", f"{TITLES.get(f.stem, f.stem)}:"] + report(f)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
