"""Backend selection (docs/design.md, "Dispatch"): auto, explicit names, SALT_BACKEND, reasons,
and an import that survives a missing compiled module."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import salt_kernels as sk
from salt_kernels.backends import registry as dispatch


def test_available_backends_lists_every_backend_with_reasons():
    status = sk.available_backends()
    assert set(status) == {"reference", "cpu", "triton", "cuda"}
    assert status["reference"] == (True, "")
    assert status["cpu"] == (True, ""), status["cpu"]  # built by `pip install -e .`
    for name, (ok, why) in status.items():
        assert isinstance(ok, bool) and isinstance(why, str)
        assert ok or why, f"{name} is unusable without a reason"
    if not torch.cuda.is_available():
        assert status["cuda"][0] is False and status["cuda"][1]


def test_auto_picks_the_cpu_kernel_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("SALT_BACKEND", raising=False)
    assert dispatch.resolve("auto", torch.device("cpu")).NAME == "cpu"


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("SALT_BACKEND", "reference")
    assert dispatch.resolve("auto", torch.device("cpu")).NAME == "reference"
    assert dispatch.resolve("cpu", torch.device("cpu")).NAME == "cpu"  # explicit wins
    monkeypatch.setenv("SALT_BACKEND", "bogus")
    with pytest.raises(ValueError, match="SALT_BACKEND.*bogus"):
        dispatch.resolve("auto", torch.device("cpu"))


def test_unusable_backend_error_lists_each_reason(monkeypatch):
    monkeypatch.delenv("SALT_BACKEND", raising=False)
    with pytest.raises(ValueError) as info:
        sk.salt_loss(torch.randn(2, 5), None, torch.zeros(2, dtype=torch.long), kd_weight=0.0, backend="cuda")
    message = str(info.value)
    for name in ("reference", "cpu", "triton", "cuda"):
        assert f"  {name}:" in message


def test_import_survives_missing_compiled_module():
    """With salt_kernels._salt_cpu unimportable, the package imports, says why once, and falls
    back to the reference backend with the same numbers."""
    script = textwrap.dedent(
        """
        import sys, warnings, importlib.abc

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "salt_kernels._salt_cpu":
                    raise ImportError("blocked for the test")
                return None

        sys.meta_path.insert(0, Block())
        import torch
        import salt_kernels as sk
        ok, why = sk.available_backends()["cpu"]
        assert not ok and "_salt_cpu" in why, why
        z = torch.randn(3, 11); y = torch.tensor([1, 2, 3])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = sk.salt_loss(z, None, y, kd_weight=0.0)
            b = sk.salt_loss(z, None, y, kd_weight=0.0)
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and "falling back to 'reference'" in messages[0], messages
        ref = torch.nn.functional.cross_entropy(z, y)
        assert abs(float(a) - float(ref)) < 1e-5 and float(a) == float(b)
        print("OK")
        """
    )
    env = dict(os.environ)
    env.pop("SALT_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout
