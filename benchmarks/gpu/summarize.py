"""The short table that benchmarks/gpu/check.sh prints last, from the files it left in OUT:
steps.tsv, kernels.json (kernel_check.py records), ncu.csv, tests.xml and the bench_*.json
result files (the `salt-kernels bench` format, see salt_kernels/benchmarking/results.py).

    python benchmarks/gpu/summarize.py OUT_DIR
"""

from __future__ import annotations

import csv
import json
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


def kernels(out: pathlib.Path) -> list[str]:
    """kernel_check.py's records: the roofline, one line per timing (ms, GB/s, share of the
    roofline), the crosscheck errors, and the fastest configuration of each backend."""
    f = out / "kernels.json"
    if not f.exists():
        return ["kernels: no kernels.json"]
    try:
        recs = json.loads(f.read_text())
    except ValueError as exc:
        return [f"kernels: kernels.json unreadable ({exc})"]
    lines = ["kernels (kernel_check.py; floor = the roofline's bandwidth moving 2 reads + 1 write, "
             "or 2 reads for fwd):",
             f"  {'part':<10} {'variant':<24} {'V':>7} {'tau':>4} {'pass':>6} {'ms':>8} {'floor':>7} "
             f"{'GB/s':>6} {'peak GiB':>8} {'loss':>10}"]
    seen_roof = set()
    best: dict[str, dict] = {}
    for r in recs:
        if r.get("part") == "roofline":
            if r["variant"] in seen_roof:
                continue
            seen_roof.add(r["variant"])
            lines.append(f"  roofline   {r['variant']:<24} {r['v']:>7} {'':>4} {'':>6} {r['median_ms']:>8.3f} "
                         f"{'':>7} {r['gbps']:>6.0f}")
            continue
        if r.get("part") == "crosscheck":
            if r.get("error"):
                lines.append(f"  crosscheck {r['variant']}: {r['error'][:90]}")
            else:
                lines.append(f"  crosscheck {r['variant']}: {r['rows_checked']} rows, loss max rel "
                             f"{r['loss_max_rel']:.2e}, grad rel {r['grad_rel']:.2e} (worst row "
                             f"{r['grad_row_max_rel']:.2e}), finite {r['finite']}: {'OK' if r['ok'] else 'FAIL'}")
            continue
        head = f"  {r['part']:<10} {r['variant']:<24} {r['v']:>7} {r['tau']:>4} {r['pass']:>6}"
        if r.get("error"):
            lines.append(f"{head} {r['error'][:70]}")
            continue
        floor = f"{r['floor_ms']:.3f}" if r.get("floor_ms") else "-"
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "-"
        lines.append(f"{head} {r['median_ms']:>8.3f} {floor:>7} {r['gbps']:>6.0f} {peak:>8} {r['loss']:>10.5f}")
        if r["pass"] == "fwdbwd" and r["tau"] == 2.0 and r["part"] in ("triton", "cuda"):
            base = r["variant"].split("-")[0]
            if base in ("triton", "cuda") and (base not in best or r["median_ms"] < best[base]["median_ms"]):
                best[base] = r
    for base, r in best.items():
        lines.append(f"  fastest {base} configuration: {r['variant']} {r['median_ms']:.3f} ms "
                     f"({r['floor_ms'] / r['median_ms'] * 100:.0f}% of the floor's speed)" if r.get("floor_ms")
                     else f"  fastest {base} configuration: {r['variant']} {r['median_ms']:.3f} ms")
    return lines


def ncu(out: pathlib.Path) -> list[str]:
    """ncu.csv: per profiled kernel launch, grid, DRAM GB read / written, L2 hit rate, time."""
    f = out / "ncu.csv"
    if not f.exists():
        return []
    text = f.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(text) if line.startswith('"ID"')), None)
    if start is None:
        return ["ncu: no metric table in ncu.csv (see ncu.log)"]
    launches: dict[str, dict] = {}
    for row in csv.DictReader(text[start:]):
        k = launches.setdefault(row["ID"], {"name": row.get("Kernel Name", "")[:28], "grid": row.get("Grid Size", "")})
        value = row.get("Metric Value", "").replace(",", "")
        try:
            v = float(value)
        except ValueError:
            continue
        unit = row.get("Metric Unit", "")
        scale = {"byte": 1e-9, "Kbyte": 1e-6, "Mbyte": 1e-3, "Gbyte": 1.0, "KB": 1e-6, "MB": 1e-3, "GB": 1.0,
                 "nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "ns": 1e-6, "us": 1e-3, "ms": 1.0}.get(unit, 1.0)
        k[row["Metric Name"]] = v * scale
    lines = ["ncu (per launch, in kernel_check.py --part ncu order: triton fused, split (2 launches), sync, "
             "cuda auto, cuda-b512-c1, cuda-b512-c4):",
             f"  {'id':>3} {'kernel':<28} {'grid':<18} {'DRAM rd GB':>10} {'wr GB':>7} {'L2 hit%':>7} {'ms':>7}"]
    for i, k in launches.items():
        lines.append(f"  {i:>3} {k['name']:<28} {k['grid'][:18]:<18} {k.get('dram__bytes_read.sum', 0):>10.2f} "
                     f"{k.get('dram__bytes_write.sum', 0):>7.2f} {k.get('lts__t_sector_hit_rate.pct', 0):>7.1f} "
                     f"{k.get('gpu__time_duration.sum', 0):>7.3f}")
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
    lines += ["steps:"] + steps(out) + [tests(out), ""] + kernels(out) + [""] + ncu(out)
    order = list(TITLES)
    for f in sorted(out.glob("bench_*.json"), key=lambda f: (order.index(f.stem) if f.stem in order else 9, f.name)):
        lines += ["", f"{TITLES.get(f.stem, f.stem)}:"] + report(f)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
