"""Backend registry and selection (docs/design.md, "Dispatch").

Each backend is a module exposing NAME, is_available() -> (bool, reason),
supports_device(device) -> (bool, reason) and rows(...) (the contract in base.py). Backends are
imported lazily, so importing salt_kernels never fails because triton, a GPU or a compiled
module is missing.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch

# name -> module, in the order "auto" prefers them for each device type.
_MODULES = {
    "reference": "salt_kernels.backends.reference",
    "cpu": "salt_kernels.backends.cpu",
    "triton": "salt_kernels.backends.triton.launcher",
    "cuda": "salt_kernels.backends.cuda",
}
AUTO_ORDER = {
    "cpu": ("cpu", "reference"),
    "cuda": ("triton", "cuda", "reference"),
}
BACKEND_NAMES = tuple(_MODULES)
ENV_VAR = "SALT_BACKEND"

_loaded: dict[str, ModuleType | None] = {}
_load_errors: dict[str, str] = {}
_warned_fallback: set[str] = set()


def _load(name: str) -> ModuleType | None:
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except Exception as exc:  # a broken optional backend must not break the package
            _loaded[name] = None
            _load_errors[name] = f"could not import {_MODULES[name]}: {exc}"
    return _loaded[name]


# Backends that compute float64 inputs in float64 (for gradcheck); the others run fp32 math.
FLOAT64_BACKENDS = ("reference",)


def get(name: str) -> ModuleType:
    """The loaded module of a backend by its concrete name (what the ops receive)."""
    module = _load(name) if name in _MODULES else None
    if module is None:
        raise ValueError(f"salt_kernels backend {name!r} is not usable: {_load_errors.get(name, 'unknown backend')}")
    return module


def backend_status(
    name: str, device: torch.device | None = None, dtype: torch.dtype | None = None, options=None, kind: str = "rows"
) -> tuple[bool, str]:
    """(usable, reason) of a backend for `device`, `dtype`, LossOptions `options` and entry point
    `kind` ("rows": full teacher logits, "topk_rows": an offline top-k teacher)."""
    module = _load(name)
    if module is None:
        return False, _load_errors[name]
    if not hasattr(module, kind):
        return False, f"backend {name} has no {kind} kernel yet"
    if options is not None:
        ok, why = module.supports_options(options)
        if not ok:
            return ok, why
    if dtype == torch.float64 and name not in FLOAT64_BACKENDS:
        return False, f"backend {name} computes in float32; float64 inputs run on {', '.join(FLOAT64_BACKENDS)}"
    if device is None:
        return module.is_available()
    return module.supports_device(device)


def available_backends() -> dict[str, tuple[bool, str]]:
    """Each backend's (usable, reason-if-not) on this machine, e.g.
    {"reference": (True, ""), "cpu": (True, ""), "triton": (False, "no CUDA device ..."), ...}."""
    return {name: backend_status(name) for name in BACKEND_NAMES}


def _reasons(device: torch.device, dtype: torch.dtype | None = None, options=None, kind: str = "rows") -> str:
    lines = []
    for name in BACKEND_NAMES:
        ok, why = backend_status(name, device, dtype, options, kind)
        lines.append(f"  {name}: {'usable' if ok else why}")
    return "\n".join(lines)


def resolve(backend: str, device: torch.device, dtype: torch.dtype | None = None, options=None) -> ModuleType:
    """The backend module to run on `device` (and inputs of `dtype`, with LossOptions `options`)."""
    return _loaded[resolve_name(backend, device, dtype, options)]


def resolve_name(
    backend: str, device: torch.device, dtype: torch.dtype | None = None, options=None, kind: str = "rows"
) -> str:
    """The name of the backend to run on `device`. "auto" takes SALT_BACKEND when set, else the
    fastest usable backend for the device type (and dtype and options); an explicit name must be
    usable."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    requested = backend
    source = "backend"
    if backend == "auto" and os.environ.get(ENV_VAR):
        requested = os.environ[ENV_VAR]
        source = f"the environment variable {ENV_VAR}"
    if requested == "auto":
        order = AUTO_ORDER.get(device.type, ("reference",))
        if dtype == torch.float64:
            order = FLOAT64_BACKENDS
        for name in order:
            ok, why = backend_status(name, device, dtype, options, kind)
            if ok:
                # Routing float64 or an option around a backend is by design; only a backend
                # missing on this machine is worth a warning.
                if name != order[0] and device.type not in _warned_fallback and backend_status(order[0], device)[0] is False:
                    _warned_fallback.add(device.type)
                    first_ok, first_why = backend_status(order[0], device)
                    warnings.warn(
                        f"salt_kernels: backend {order[0]!r} is not usable on {device.type} "
                        f"({first_why}); falling back to {name!r}",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return name
        raise RuntimeError(f"no salt_kernels backend is usable on {device}:\n{_reasons(device, dtype, options, kind)}")
    if requested not in _MODULES:
        raise ValueError(
            f"{source} must be 'auto' or one of {', '.join(BACKEND_NAMES)}, got {requested!r}"
        )
    ok, why = backend_status(requested, device, dtype, options, kind)
    if not ok:
        raise ValueError(
            f"{source} asks for {requested!r}, which is not usable on {device}: {why}\n"
            f"Backends on this device:\n{_reasons(device, dtype, options, kind)}"
        )
    return requested
