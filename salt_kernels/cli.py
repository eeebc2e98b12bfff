"""The `salt-kernels` command line (also `python -m salt_kernels`).

Each subcommand lives in its own module under salt_kernels/commands/ and exposes
register(subparsers), which adds its parser (with --help for every flag) and sets `func`.
Heavy imports (transformers, matplotlib) happen inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys

# (subcommand, module) in the order --help lists them.
COMMANDS = (
    ("demo", "salt_kernels.commands.demo"),
    ("train", "salt_kernels.commands.train"),
    ("teacher-cache", "salt_kernels.commands.teacher_cache"),
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
    parser.set_defaults(_commands=sub.choices)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """argparse's message for flags it does not know, with the closest known flag of each."""
    known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    hints = []
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag.startswith("-"):
            close = difflib.get_close_matches(flag, known, n=1)
            if close:
                hints.append(f"{flag}: did you mean {close[0]}?")
    return f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # a subcommand's unknown flag gets that subcommand's usage and error, not the top level's
        sub = args._commands.get(getattr(args, "command", None) or "", parser)
        sub.error(_unrecognized(sub, extra))
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
