"""`salt-kernels train`: one training run (teacher, baseline or salt) from flags or a config file."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  salt-kernels train --role teacher --model teacher-s --steps 1500 --out-dir runs/t
  salt-kernels train --role baseline --model student-s --steps 1000 --tokenizer runs/t/final --out-dir runs/b
  salt-kernels train --role salt --teacher runs/t/final --n-kd 300 --steps 1000 --out-dir runs/s
  salt-kernels train --role salt --teacher runs/t/final --divergence jsd --beta 0.3 --z-loss 1e-4 --out-dir runs/j
  salt-kernels train --role salt --teacher gemma-small/ --model gemma-big/ --kd-vocab 256000 ...
  salt-kernels train --config my_run.toml --resume
  torchrun --nproc_per_node=2 -m salt_kernels train --role salt --teacher runs/t/final ...
"""


def register(subparsers) -> None:
    from salt_kernels.train.config import add_train_arguments

    parser = subparsers.add_parser(
        "train",
        help="train one model: teacher, baseline (CE only) or salt (KD then CE)",
        description="Train one model. Every setting has a default; a --config TOML/YAML file "
        "sets any of them and flags override the file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from salt_kernels.train.config import ConfigError, config_from_args
    from salt_kernels.train.runtime import exit_status

    try:
        cfg = config_from_args(args)
        from salt_kernels.train.trainer import train

        result = train(cfg)
    except ConfigError as exc:
        print(f"salt-kernels train: error: {exc}", file=sys.stderr)
        return 2
    if result.status == "interrupted":  # checkpoint saved (the log says where): not a success
        return exit_status(result.signal)
    return 0 if result.status == "finished" else 1
