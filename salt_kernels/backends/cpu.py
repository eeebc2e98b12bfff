"""Launcher of the compiled CPU kernel (csrc/cpu, bound in python/bind_cpu.cpp as
salt_kernels._salt_cpu). It only turns tensors into addresses, strides and dtype codes; the
caller (functional.salt_loss) has validated the inputs."""

from __future__ import annotations

import torch

from .base import LossOptions, RowArgs, RowOutputs, topk_kernel_args

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


def _topk_rows(student: torch.Tensor, indices: torch.Tensor, logprobs: torch.Tensor, labels: torch.Tensor, *,
               tail: str = "bucket", **keywords) -> RowOutputs:
    """The row contract with an offline top-k teacher (see reference.topk_rows; keywords: those of
    RowArgs) on CPU tensors: indices [N, k] int32/int64 (negative: empty slot), logprobs [N, k]
    fp32/bf16/fp16. lse holds (lse_z, lse_zt, lse_rest)."""
    a = RowArgs(student, None, labels, **keywords)
    out = RowOutputs.empty(student.shape[0], student.device)
    out.accuracy = torch.empty_like(out.loss)
    slots, _keep = topk_kernel_args(a, indices, logprobs, tail)
    _salt_cpu.topk_rows(**{**a.kernel_args(out), **slots}, num_threads=torch.get_num_threads())
    return out


# Advertised (registry.backend_status looks for the attribute) only when the built extension
# has the top-k kernel, so an older build routes "auto" to the reference backend.
if _salt_cpu is not None and hasattr(_salt_cpu, "topk_rows"):
    topk_rows = _topk_rows
