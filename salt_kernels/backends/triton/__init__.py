"""The Triton backend: launcher.py (plans and launches, the row contract) and kernels.py (the
@triton.jit kernels, imported lazily so that a missing triton never breaks the package)."""
