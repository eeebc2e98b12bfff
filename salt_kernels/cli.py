"""The `salt-kernels` command line (also `python -m salt_kernels`).

Each subcommand lives in its own module under salt_kernels/commands/ and exposes
register(subparsers), which adds its parser (with --help for every flag) and sets `func`.
Heavy imports (transformers, matplotlib) happen inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module) in the order --help lists them.
COMMANDS = (
    ("demo", "salt_kernels.commands.demo"),
    ("train", "salt_kernels.commands.train"),
    ("bench", "salt_kernels.commands.bench"),
    ("profile", "salt_kernels.commands.profile"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salt-kernels",
        description=(
            "SALT (small-model-aided large-model training) with fused CE + KD loss kernels. "
            "Run `salt-kernels COMMAND --help` for the flags of each command."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not part of this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
