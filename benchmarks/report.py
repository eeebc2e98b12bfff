#!/usr/bin/env python
"""Render the JSON results of `salt-kernels bench` and `salt-kernels profile` into
benchmarks/RESULTS.md (between the markers <!-- bench:start --> and <!-- bench:end -->; the rest
of the file is left as it is) and the bench results into PNG plots (time and peak memory against
V, one line per backend).

    python benchmarks/report.py          # every benchmarks/results/bench_*.json and profile_*.json
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
                        help="JSON files written by `salt-kernels bench` or `salt-kernels profile` "
                             "(default: benchmarks/results/bench_*.json and profile_*.json)")
    parser.add_argument("--markdown", default=os.path.join(HERE, "RESULTS.md"),
                        help="Markdown file whose bench section is replaced (default: benchmarks/RESULTS.md)")
    parser.add_argument("--plots", default=os.path.join(HERE, "plots"),
                        help="folder for the PNG plots (default: benchmarks/plots)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    parser.add_argument("--print", action="store_true", help="also print the tables")
    args = parser.parse_args(argv)

    from salt_kernels.benchmarking import render

    paths = args.results or sorted(
        glob.glob(os.path.join(HERE, "results", "bench_*.json")) + glob.glob(os.path.join(HERE, "results", "profile_*.json"))
    )
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
    print(f"wrote the bench section of {args.markdown} from {len(paths)} result file(s)")
    for p in done["pngs"]:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
