"""Backends: the row contract (base.py), the registry that picks one (registry.py) and the four
implementations: reference (plain PyTorch), cpu (C++), cuda (CUDA C++) and triton/ (launcher and
kernels). Nothing here knows about autograd; see docs/design.md, "Backends"."""

from .registry import BACKEND_NAMES, available_backends, backend_status, resolve

__all__ = ["BACKEND_NAMES", "available_backends", "backend_status", "resolve"]
