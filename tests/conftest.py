import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: random inputs differ between tests, runs repeat."""
    seed = int.from_bytes(os.urandom(4), "little") if os.environ.get("SALT_TEST_RANDOM_SEED") else 1234
    return torch.Generator().manual_seed(seed)
