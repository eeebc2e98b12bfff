"""Plain-PyTorch evaluation of the SALT loss (docs/design.md, "The loss"): the fallback backend
on any device and the readable statement of the math that the kernels implement.

Rows are processed in chunks of about CHUNK_ELEMENTS logits, so the extra memory stays bounded
(a few fp32 copies of one chunk) whatever the number of rows.
"""

from __future__ import annotations

import math

import torch

from .base import LossOptions, RowArgs, RowOutputs, result_dtype

NAME = "reference"
CHUNK_ELEMENTS = 1 << 21


def is_available() -> tuple[bool, str]:
    return True, ""


def supports_device(device: torch.device) -> tuple[bool, str]:
    return True, ""


def supports_options(options: LossOptions) -> tuple[bool, str]:
    return True, ""


def combine_loss(ce: torch.Tensor, kd: torch.Tensor, kd_weight: float) -> torch.Tensor:
    """(1 - w) * CE + w * KD, dropping a term whose weight is 0 (so inf * 0 never makes NaN)."""
    loss = torch.zeros_like(ce)
    if kd_weight < 1:
        loss = loss + (1 - kd_weight) * ce
    if kd_weight > 0:
        loss = loss + kd_weight * kd
    return loss


def _cap(x: torch.Tensor, c: float | None) -> torch.Tensor:
    return x if c is None else c * torch.tanh(x / c)


def _xlogy_terms(weight: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    """weight * log_ratio with 0 where weight == 0 (a term of zero mass is 0, not 0 * inf);
    NaN stays NaN."""
    return torch.where(weight == 0, torch.zeros_like(weight), weight * log_ratio)


def _divergence(log_p: torch.Tensor, log_q: torch.Tensor, options: LossOptions):
    """D per row and dD/d(z/tau) ([rows, k]) for p = teacher, q = student (docs/design.md,
    "Distillation options")."""
    p, q = log_p.exp(), log_q.exp()
    if options.divergence == "forward_kl":
        d = _xlogy_terms(p, log_p - log_q).sum(-1)
        return d, q - p
    if options.divergence == "reverse_kl":
        s = log_q - log_p
        d = _xlogy_terms(q, s).sum(-1)
        # q_j (s_j - D), with 0 where q_j == 0
        return d, torch.where(q == 0, torch.zeros_like(q), q * (s - d[:, None]))
    beta = options.beta
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    kl_pm = _xlogy_terms(p, log_p - log_m).sum(-1)
    kl_qm = _xlogy_terms(q, log_q - log_m).sum(-1)
    d = beta * kl_pm + (1 - beta) * kl_qm
    g = (1 - beta) * (log_q - log_m)
    # q_j (g_j - sum_i q_i g_i) with sum_i q_i g_i = (1 - beta) KL(q || m)
    return d, torch.where(q == 0, torch.zeros_like(q), q * (g - (1 - beta) * kl_qm[:, None]))


def _student_terms(z: torch.Tensor, y: torch.Tensor, ignore_index: int, eps: float):
    """valid rows, safe labels, lse_z, CE (with label smoothing) and the accuracy of capped z."""
    valid = y != ignore_index
    y_safe = torch.where(valid, y, torch.zeros_like(y))
    lse_z = torch.logsumexp(z, dim=-1)
    ce = lse_z - z.gather(1, y_safe[:, None])[:, 0]
    if eps > 0:
        ce = (1 - eps) * ce + eps * (lse_z - z.mean(dim=-1))
    return valid, y_safe, lse_z, ce, (z.argmax(dim=-1) == y_safe).to(z.dtype)


def _store(out: RowOutputs, r0: int, r1: int, valid, ce, kd, accuracy, lse3, kd_weight: float, lam: float) -> None:
    """One chunk's rows into the outputs, the loss (1 - w) * CE + w * KD + lam * lse_z^2 with
    them, zeros on ignored rows."""
    lse_z = lse3[0]
    loss = combine_loss(ce, kd, kd_weight)
    if lam > 0:  # never 0 * inf
        loss = loss + lam * lse_z * lse_z
    zero = torch.zeros_like(loss)
    out.loss[r0:r1] = torch.where(valid, loss, zero)
    out.ce[r0:r1] = torch.where(valid, ce, zero)
    out.kd[r0:r1] = torch.where(valid, kd, zero)
    out.accuracy[r0:r1] = torch.where(valid, accuracy, zero)
    out.lse[r0:r1] = torch.where(valid[:, None], torch.stack(lse3, dim=1), zero[:, None])


def _student_grad(z, y_safe, lse_z, kd_weight: float, options: LossOptions) -> torch.Tensor:
    """d loss / d z of the CE (label smoothing) and z-loss terms, before the softcap chain factor."""
    eps, lam = options.label_smoothing, options.z_loss
    softmax = (z - lse_z[:, None]).exp()
    g = (1 - kd_weight) * softmax
    g.scatter_add_(1, y_safe[:, None], torch.full_like(z[:, :1], -(1 - kd_weight) * (1 - eps)))
    if eps > 0:
        g -= (1 - kd_weight) * eps / z.shape[1]
    if lam > 0:
        g += (2 * lam) * lse_z[:, None] * softmax
    return g


def _finish_grad(g, z, valid, options: LossOptions, grad_scale, n: int, r0: int, r1: int, grad) -> None:
    if options.softcap is not None:
        g *= 1 - (z / options.softcap) ** 2  # d(c tanh(x / c)) / dx at the capped value
    scale = grad_scale.to(z.dtype).expand(n)[r0:r1]
    grad[r0:r1].copy_(torch.where(valid[:, None], g * scale[:, None], torch.zeros_like(g)))


def _outputs(a: RowArgs):
    """The outputs of one call (accuracy included), the dtype of its math and the rows per chunk."""
    n, vocab = a.student.shape
    math_dtype = result_dtype(a.student.dtype)
    out = RowOutputs.empty(n, a.student.device, math_dtype)
    out.accuracy = torch.empty(n, dtype=math_dtype, device=a.student.device)
    return out, math_dtype, max(1, CHUNK_ELEMENTS // max(vocab, 1))


def _student_chunk(a: RowArgs, r0: int, r1: int, math_dtype):
    """The capped student logits of rows r0:r1 and their _student_terms."""
    z = _cap(a.student[r0:r1].to(math_dtype), a.options.softcap)
    return z, _student_terms(z, a.labels[r0:r1].long(), a.ignore_index, a.options.label_smoothing)


def rows(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, **keywords) -> RowOutputs:
    """The row contract of backends/base.py (keywords: those of RowArgs)."""
    call = RowArgs(student, teacher, labels, **keywords)
    kd_weight, tau, options, grad = call.kd_weight, call.temperature, call.options, call.grad
    n, vocab = student.shape
    out, math_dtype, step = _outputs(call)
    use_teacher = call.use_teacher
    k = options.kd_vocab or vocab
    lam = options.z_loss
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        z, (valid, y_safe, lse_z, ce, accuracy) = _student_chunk(call, r0, r1, math_dtype)
        if use_teacher:
            zt = z[:, :k] / tau if tau != 1 else z[:, :k]
            ut = _cap(teacher[r0:r1, :k].to(math_dtype), options.teacher_softcap) / tau
            lse_zt = torch.logsumexp(zt, dim=-1) if (tau != 1 or k != vocab) else lse_z
            lse_u = torch.logsumexp(ut, dim=-1)
            d, d_grad = _divergence(ut - lse_u[:, None], zt - lse_zt[:, None], options)
            kd = tau * tau * d
        else:
            lse_zt = lse_z
            lse_u = torch.zeros_like(lse_z)
            kd = torch.zeros_like(ce)
        _store(out, r0, r1, valid, ce, kd, accuracy, [lse_z, lse_zt, lse_u], kd_weight, lam)
        if grad is not None:
            g = _student_grad(z, y_safe, lse_z, kd_weight, options)
            if use_teacher:
                g[:, :k] += kd_weight * tau * d_grad
            _finish_grad(g, z, valid, options, call.grad_scale, n, r0, r1, grad)
    return out


def topk_rows(student: torch.Tensor, indices: torch.Tensor, logprobs: torch.Tensor, labels: torch.Tensor, *,
              tail: str = "bucket", **keywords) -> RowOutputs:
    """The row contract with an offline top-k teacher (docs/design.md, "Top-k teacher"; keywords:
    those of RowArgs): per row, indices [N, k] (negative: empty slot) and the teacher's
    log-probabilities at temperature 1 [N, k]. KD is the forward KL of the teacher over its
    filled slots K plus, with tail "bucket", one outcome for the rest of the vocabulary (log-prob
    log r, r = 1 - sum_K p in float64); "renormalize" drops the rest. lse holds (lse_z, lse_zt,
    lse_rest): lse_rest is the log-sum-exp of z/tau outside K, computed over those entries (no
    cancellation)."""
    call = RowArgs(student, None, labels, **keywords)
    kd_weight, tau, options, grad = call.kd_weight, call.temperature, call.options, call.grad
    n, vocab = student.shape
    device = student.device
    out, math_dtype, step = _outputs(call)
    use_teacher = kd_weight > 0
    lam = options.z_loss
    neg_inf = float("-inf")
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        z, (valid, y_safe, lse_z, ce, accuracy) = _student_chunk(call, r0, r1, math_dtype)
        lse_zt = lse_z
        lse_rest = torch.zeros_like(lse_z)
        kd = torch.zeros_like(ce)
        if use_teacher:
            idx = indices[r0:r1].long()
            filled = idx >= 0
            idx_safe = torch.where(filled, idx, torch.zeros_like(idx))
            in_k = torch.zeros(z.shape, dtype=torch.int32, device=device)
            in_k = in_k.scatter_add_(1, idx_safe, filled.to(torch.int32)) > 0
            n_filled = filled.sum(dim=-1)
            l64 = torch.where(filled, logprobs[r0:r1].to(torch.float64).clamp(max=0.0), neg_inf)
            rest = torch.clamp(1.0 - l64.exp().sum(dim=-1), min=0.0)  # float64: no loss of the tail
            bucket = (rest > 0) & (n_filled < vocab)
            if tail == "renormalize":
                bucket = bucket & (n_filled == 0)  # an empty row keeps one outcome: D = 0
            bucket = bucket | (n_filled == 0)
            zt = z / tau if tau != 1 else z
            lse_zt = torch.logsumexp(zt, dim=-1)
            lse_rest = torch.logsumexp(torch.where(in_k, neg_inf, zt), dim=-1)  # no cancellation
            log_rest = torch.where(bucket, rest.log(), torch.full_like(rest, neg_inf)).to(math_dtype)
            a = torch.cat([l64.to(math_dtype), log_rest[:, None]], dim=1) / tau
            log_p = a - torch.logsumexp(a, dim=-1, keepdim=True)
            log_q = torch.cat([zt.gather(1, idx_safe), lse_rest[:, None]], dim=1) - lse_zt[:, None]
            p = log_p.exp()
            terms = torch.where(p == 0, torch.zeros_like(p), p * (log_p - log_q))
            kd = tau * tau * terms.sum(dim=-1)
        _store(out, r0, r1, valid, ce, kd, accuracy, [lse_z, lse_zt, lse_rest], kd_weight, lam)
        if grad is not None:
            g = _student_grad(z, y_safe, lse_z, kd_weight, options)
            if use_teacher:
                # d D / d(z/tau): q_i - p_i on K, q_i - p_rest * q_i / Q_rest elsewhere
                q = (zt - lse_zt[:, None]).exp()
                d = q - p[:, -1:] * torch.where(in_k, torch.zeros_like(q), (zt - lse_rest[:, None]).exp())
                p_k = torch.where(filled, p[:, :-1], torch.zeros_like(p[:, :-1]))
                d = d.scatter_add(1, idx_safe, -p_k)
                g += kd_weight * tau * d
            _finish_grad(g, z, valid, options, call.grad_scale, n, r0, r1, grad)
    return out
