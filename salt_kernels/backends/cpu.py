"""Launcher of the compiled CPU kernel (csrc/cpu, bound in python/bind_cpu.cpp as
salt_kernels._salt_cpu). It only turns tensors into addresses, strides and dtype codes; the
caller (functional.salt_loss) has validated the inputs."""

from __future__ import annotations

import torch

from .base import LossOptions, RowArgs, RowOutputs

NAME = "cpu"

try:
    from .. import _salt_cpu  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except ImportError as exc:  # not built: `pip install -e .` compiles it
    _salt_cpu = None
    _IMPORT_ERROR = f"compiled module salt_kernels._salt_cpu is missing ({exc}); run `pip install -e .` to build it"



def is_available() -> tuple[bool, str]:
    return (_salt_cpu is not None), _IMPORT_ERROR


def supports_options(options: LossOptions) -> tuple[bool, str]:
    """The kernel computes every distillation option (docs/design.md, "Distillation options")."""
    return True, ""


def supports_device(device: torch.device) -> tuple[bool, str]:
    ok, why = is_available()
    if not ok:
        return ok, why
    if device.type != "cpu":
        return False, f"backend cpu runs on CPU tensors, got a {device.type} tensor"
    return True, ""


def isa() -> str:
    """Instruction set the kernel uses on this machine (avx512, avx2 or generic)."""
    return _salt_cpu.isa() if _salt_cpu is not None else "not built"


def rows(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, **keywords) -> RowOutputs:
    """The row contract of backends/base.py (keywords: those of RowArgs) on CPU tensors."""
    a = RowArgs(student, teacher, labels, **keywords)
    out = RowOutputs.empty(student.shape[0], student.device)
    out.accuracy = torch.empty_like(out.loss)  # the kernel computes it with the statistics
    _salt_cpu.rows(**a.kernel_args(out), num_threads=torch.get_num_threads())
    return out
