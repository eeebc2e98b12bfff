"""A progress bar for long work: tqdm when installed (the `bench` extra), else one line per step
on stderr, so that a run never looks hung."""

from __future__ import annotations

import sys
import time


class _Lines:
    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n = total, desc, 0
        self.t0 = time.perf_counter()
        self.postfix = ""

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        print(f"{self.desc} [{self.n}/{self.total}] {text}", file=sys.stderr, flush=True)

    def update(self, k: int = 1) -> None:
        self.n += k

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        print(f"{self.desc}: {self.n}/{self.total} done in {time.perf_counter() - self.t0:.1f} s",
              file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bar(total: int, desc: str, enabled: bool = True):
    """A context-manager progress bar with update(), set_postfix_str() and write()."""
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            pass
        return _Lines(total, desc)
    quiet = _Lines(total, desc)
    quiet.set_postfix_str = lambda text: None
    quiet.close = lambda: None
    return quiet
