"""What every Triton test file needs first: the interpreter on a machine without a CUDA device
(conftest.py sets TRITON_INTERPRET before any test imports triton; a kernel module imported
before that is built again here), a module-level skip without triton, the device the tests run
on, and the filter for the warnings the interpreter raises on masked-off lanes (e.g. -inf - -inf
in padding, which the kernels discard)."""

import importlib
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before the first @triton.jit of the kernels runs

try:
    import triton  # noqa: F401
except Exception as exc:  # pragma: no cover - the test extra installs triton
    pytest.skip(f"triton is not importable ({exc}); the triton backend is not tested", allow_module_level=True)

from salt_kernels.backends.triton import kernels as tk  # noqa: E402
from salt_kernels.backends.triton import launcher as tb  # noqa: E402
from salt_kernels.backends.triton import slice_kernels as tsk  # noqa: E402
from salt_kernels.backends.triton import slice_launcher as tsl  # noqa: E402
from salt_kernels.backends.triton import topk_kernels as tkk  # noqa: E402

if not ON_GPU:
    # kernels.py first: the other two import its helpers.
    for _module, _kernel in ((tk, "salt_rows_kernel"), (tkk, "topk_rows_kernel"), (tsk, "slice_stats_kernel")):
        if type(getattr(_module, _kernel)).__name__ != "InterpretedFunction":
            importlib.reload(_module)  # imported before TRITON_INTERPRET was set: build it again
    tb._extra_kernels.update(topk_kernels=tkk, slice_kernels=tsk)  # the launchers' handles on the rebuilt modules

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
INTERPRETER_WARNINGS = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

__all__ = ["DEVICE", "INTERPRETER_WARNINGS", "ON_GPU", "tb", "tk", "tkk", "tsk", "tsl"]
