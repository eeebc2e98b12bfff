#!/usr/bin/env python
"""Render result files (the one format of `salt-kernels bench`, `salt-kernels profile` and the
fixed-size scripts benchmarks/bench_*.py, see salt_kernels/benchmarking/results.py) into
benchmarks/RESULTS.md and the bench grids into PNG plots (time and peak memory against V, one
line per backend). Grids and profiles go between <!-- bench:start --> and <!-- bench:end -->, a
fixed-size run between its own markers (loss_cpu.json: <!-- cpu-loss:start -->, linear_cpu.json:
<!-- cpu-linear:start -->); the rest of the file is left as it is. A grid run with the
fwd_nograd pass, an option grid (`salt-kernels bench --options ...`) or the topk variant gets its
option table (time per option and the ratio to the default option) and its top-k table
(topk_salt_loss against salt_loss with the full teacher); plots need two V at least.

    python benchmarks/report.py          # every benchmarks/results/*.json: all tables of RESULTS.md
    python benchmarks/report.py results/bench_cuda.json --markdown RESULTS.md --plots plots/
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*",
                        help="JSON result files of `salt-kernels bench`, `salt-kernels profile` or "
                             "benchmarks/bench_*.py (default: benchmarks/results/*.json)")
    parser.add_argument("--markdown", default=os.path.join(HERE, "RESULTS.md"),
                        help="Markdown file whose sections are replaced (default: benchmarks/RESULTS.md)")
    parser.add_argument("--plots", default=os.path.join(HERE, "plots"),
                        help="folder for the PNG plots (default: benchmarks/plots)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    parser.add_argument("--print", action="store_true", help="also print the tables")
    args = parser.parse_args(argv)

    from salt_kernels.benchmarking import render

    paths = args.results or sorted(glob.glob(os.path.join(HERE, "results", "*.json")))
    if not paths:
        print("report.py: no results to render; run `salt-kernels bench` first "
              "(it writes benchmarks/results/bench_<device>.json; `salt-kernels profile` writes "
              "profile_<device>.json) or name the JSON files", file=sys.stderr)
        return 2
    plots = None if args.no_plots else args.plots
    if plots:
        try:
            import matplotlib  # noqa: F401  (only checking that it is installed)
        except ImportError:
            print("report.py: the plots need matplotlib (pip install 'salt-kernels[bench]'), "
                  "or pass --no-plots", file=sys.stderr)
            return 2
    try:
        done = render.render(paths, args.markdown, plots)
    except (OSError, ValueError, KeyError) as exc:
        print(f"report.py: cannot render {', '.join(paths)}: {exc}", file=sys.stderr)
        return 2
    if args.print:
        print("\n\n".join(done["sections"]))
    print(f"wrote the tables of {args.markdown} from {len(paths)} result file(s)")
    for p in done["pngs"]:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
