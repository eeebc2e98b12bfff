"""`salt-kernels teacher-cache`: a teacher's top-k predictions over a run's training data, on
disk, for `salt-kernels train --teacher-cache` (salt_kernels/train/teacher_cache.py)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """The cache covers exactly the training sequences `salt-kernels train` makes from the same
--data, --tokenizer, --seq-len and --val-fraction (its own dataset code, in its order), so pass
the run the same values. Size on disk: k x 6 bytes per token (k int32 ids + k 16-bit
log-probabilities), printed before anything is written. An interrupted write (Ctrl-C, SIGTERM,
a crash) keeps its finished shards: rerun the same command to continue; the finished cache has
the same bytes as one written in one go.

examples:
  salt-kernels teacher-cache --teacher runs/demo/teacher/final --out-dir runs/cache-k64
  salt-kernels train --role salt --teacher-cache runs/cache-k64 --n-kd 300 --steps 600 --out-dir runs/s
  salt-kernels teacher-cache --teacher my-llm/ --data corpus/ --seq-len 1024 --k 128 --out-dir cache/
"""


def register(subparsers) -> None:
    from salt_kernels.train.config import add_dataclass_arguments
    from salt_kernels.train.teacher_cache import CacheConfig

    parser = subparsers.add_parser(
        "teacher-cache",
        help="write a teacher's top-k next-token predictions over the training data to disk",
        description="Run a teacher over the training data of a SALT run and store, for every "
        "position, its k most likely next tokens and their log-probabilities, in shards, with a "
        "manifest (teacher, tokenizer hash, k, dtype, sequence length, data hash). `salt-kernels "
        "train --role salt --teacher-cache DIR` then distills from the cache without loading the "
        "teacher (docs/design.md, \"Top-k teacher\").",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataclass_arguments(parser, CacheConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from salt_kernels.train.config import ConfigError, dataclass_from_args
    from salt_kernels.train.teacher_cache import CacheConfig, build_teacher_cache

    cc = dataclass_from_args(CacheConfig, args)
    try:
        build_teacher_cache(cc)
    except ConfigError as exc:
        print(f"salt-kernels teacher-cache: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"salt-kernels teacher-cache: interrupted; the finished shards are kept, rerun the same "
              f"command to continue in {cc.out_dir}", file=sys.stderr)
        return 130
    return 0
