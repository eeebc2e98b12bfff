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


# ---- slow tests: skipped unless --runslow ---------------------------------------------------------
# A test marked @pytest.mark.slow takes more than about 5 s and is not essential coverage (its
# subject is also covered by faster tests); the default run skips it, saying so.


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip_slow)


# ---- the CUDA kernel on the CPU (tests/cuda_emulator) -------------------------------------------


@pytest.fixture(scope="session")
def emulator():
    """The CUDA row kernel compiled for the host by tests/cuda_emulator (built once per run, and
    cached between runs under build/cuda_emulator/)."""
    import cuda_emulator

    try:
        return cuda_emulator.build()
    except cuda_emulator.EmulatorUnavailable as exc:
        pytest.skip(str(exc))
