"""The baselines users compare salt_loss with, computing the same value (docs/design.md,
"The loss"): plain PyTorch eager (F.cross_entropy + tau^2 * F.kl_div on log_softmax,
log_target=True), the same function under torch.compile, and Liger-Kernel's CE + KL losses when
installed.

Each factory returns fn(student, teacher, labels) -> scalar loss (mean over non-ignored rows),
so the benchmarks and the tests can run every variant through one call site; liger_linear,
Liger's fused linear JSD loss for the linear op, takes hidden states and weights instead.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def torch_salt_loss(student, teacher, labels, kd_weight=0.5, temperature=1.0, ignore_index=-100):
    """Plain PyTorch SALT loss, "mean" reduction: what a user writes without this package."""
    v = student.shape[-1]
    z = student.reshape(-1, v).float()
    y = labels.reshape(-1)
    ce = F.cross_entropy(z, y, ignore_index=ignore_index)
    if teacher is None or kd_weight == 0:
        return ce
    tau = temperature
    valid = (y != ignore_index).unsqueeze(-1)
    log_q = F.log_softmax(z / tau, dim=-1)
    log_p = F.log_softmax(teacher.reshape(-1, v).float() / tau, dim=-1)
    kl_rows = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    kl = (kl_rows * valid).sum() / valid.sum().clamp(min=1)
    return (1 - kd_weight) * ce + kd_weight * tau * tau * kl


def eager(kd_weight: float, temperature: float, ignore_index: int = -100):
    return functools.partial(
        torch_salt_loss, kd_weight=kd_weight, temperature=temperature, ignore_index=ignore_index
    )


def compiled(kd_weight: float, temperature: float, ignore_index: int = -100):
    return torch.compile(eager(kd_weight, temperature, ignore_index), dynamic=False)


def liger_available(linear: bool = False) -> tuple[bool, str]:
    try:
        if linear:
            import liger_kernel.chunked_loss  # noqa: F401
        else:
            import liger_kernel.transformers  # noqa: F401
    except Exception as exc:  # ImportError, or a triton mismatch inside liger
        return False, f"liger-kernel not usable: {exc}"
    return True, ""


def liger(kd_weight: float, temperature: float, ignore_index: int = -100):
    """Liger-Kernel's LigerCrossEntropyLoss + LigerKLDIVLoss (two kernels, GPU only)."""
    from liger_kernel.transformers import LigerCrossEntropyLoss, LigerKLDIVLoss

    ce_fn = LigerCrossEntropyLoss(ignore_index=ignore_index)
    kl_fn = LigerKLDIVLoss(reduction="batchmean", log_target=True)
    tau = temperature

    def fn(student, teacher, labels):
        v = student.shape[-1]
        z = student.reshape(-1, v)
        y = labels.reshape(-1)
        # The KL inputs first: LigerCrossEntropyLoss overwrites its input logits with their
        # gradient during its forward (its memory saving), so z is not z after ce_fn.
        log_q = torch.log_softmax(z.float() / tau, dim=-1)
        log_p = torch.log_softmax(teacher.reshape(-1, v).float() / tau, dim=-1)
        kl = kl_fn(log_q, log_p)
        ce = ce_fn(z, y)
        return (1 - kd_weight) * ce + kd_weight * tau * tau * kl

    return fn


def liger_linear(kd_weight: float, temperature: float, device: torch.device):
    """Liger-Kernel's LigerFusedLinearJSDLoss set up to compute the SALT loss of the linear op:
    fn(h_s, w_s, h_t, w_t, labels). Its soft loss has no tau^2 factor, so it matches
    linear_salt_loss at temperature 1 only; which beta makes its divergence KL(teacher ||
    student) differs between Liger releases, so it is found by comparing with salt_kernels on a
    small problem."""
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    from ..functional import linear_salt_loss

    if temperature != 1.0:
        raise ValueError("LigerFusedLinearJSDLoss has no tau^2 factor: compare it at temperature 1")
    g = torch.Generator(device=device).manual_seed(1)
    h_s, h_t = (torch.randn(64, d, generator=g, device=device) for d in (64, 32))
    w_s, w_t = (torch.randn(1000, d, generator=g, device=device) / d**0.5 for d in (64, 32))
    y = torch.randint(0, 1000, (64,), generator=g, device=device)
    want = float(linear_salt_loss(h_s, w_s, h_t, w_t, y, kd_weight=1.0))
    found = {}
    for beta in (0.0, 1.0):
        crit = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=1.0)
        found[beta] = float(crit(h_s, w_s, h_t, w_t, y, None, None))
    beta = min(found, key=lambda b: abs(found[b] - want))
    if abs(found[beta] - want) > 1e-3 * abs(want):
        raise RuntimeError(f"no beta of LigerFusedLinearJSDLoss gives KL(teacher || student): {found} vs {want}")
    crit = LigerFusedLinearJSDLoss(weight_hard_loss=1 - kd_weight, weight_soft_loss=kd_weight, beta=beta,
                                   temperature=1.0)
    return lambda h_s, w_s, h_t, w_t, y: crit(h_s, w_s, h_t, w_t, y, None, None)
