import os
import sys

# Triton decides at import whether its kernels run in the interpreter, so the choice is made here,
# before any test imports triton: on a machine without a CUDA device every Triton kernel of the
# suite runs on CPU tensors under the interpreter.
try:
    import torch as _torch

    _has_cuda = _torch.cuda.is_available()
except Exception:  # pragma: no cover - torch is a hard dependency
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: random inputs differ between tests, runs repeat."""
    seed = int.from_bytes(os.urandom(4), "little") if os.environ.get("SALT_TEST_RANDOM_SEED") else 1234
    return torch.Generator().manual_seed(seed)
