"""`salt-kernels demo`: teacher, baseline and SALT runs sized for a CPU, plus a report."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers) -> None:
    from salt_kernels.train.config import add_dataclass_arguments
    from salt_kernels.train.demo import DemoConfig

    parser = subparsers.add_parser(
        "demo",
        help="the SALT recipe end to end: teacher, baseline and SALT student, comparison report",
        description="Train a small teacher, then a 3x larger student twice per seed from the same "
        "initialization and data order (baseline: cross-entropy; SALT: KD from the teacher for "
        "the first n_KD steps, then cross-entropy), time a CE-only and a SALT step alternately in "
        "one process for the wall-clock accounting, and write RUNS_DIR/NAME/report.md, curves.png "
        "and summary.json. The defaults are sized for a CPU. A run stopped by SIGTERM saves a "
        "checkpoint and the demo exits with status 143; rerun with --resume.",
    )
    add_dataclass_arguments(parser, DemoConfig)
    parser.set_defaults(func=run)


def command_line(dc) -> str:
    """The demo command with the flags that differ from the defaults (for the report)."""
    from dataclasses import fields

    from salt_kernels.train.demo import DemoConfig

    default = DemoConfig()
    parts = ["salt-kernels", "demo"]
    for f in fields(dc):
        value = getattr(dc, f.name)
        if value == getattr(default, f.name) or f.name in ("resume", "overwrite", "progress"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            parts += [flag] + [shlex.quote(v) for v in value]
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from salt_kernels.train.config import ConfigError, dataclass_from_args
    from salt_kernels.train.demo import DemoConfig, run_demo
    from salt_kernels.train.runtime import exit_status

    dc = dataclass_from_args(DemoConfig, args)
    try:
        result = run_demo(dc, command=command_line(dc))
    except ConfigError as exc:
        print(f"salt-kernels demo: error: {exc}", file=sys.stderr)
        return 2
    if result.status == "interrupted":  # the run saved a checkpoint (logged); not a success
        return exit_status(result.signal)
    return 0
