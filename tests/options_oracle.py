"""Float64 autograd of docs/design.md, "Distillation options", written from the formulas and
independently of the package: per-row loss and parts, and the gradient by autograd."""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """sum_j a_j (log a_j - log b_j), a term with a_j == 0 counting 0."""
    a = log_a.exp()
    terms = a * (log_a - log_b)
    return torch.where(a == 0, torch.zeros_like(terms), terms).sum(-1)


def divergence(log_p: torch.Tensor, log_q: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    if kind == "forward_kl":
        return _kl(log_p, log_q)
    if kind == "reverse_kl":
        return _kl(log_q, log_p)
    m = beta * log_p.exp() + (1 - beta) * log_q.exp()
    log_m = m.log()
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


def option_rows(student, teacher, labels, *, kd_weight, temperature, ignore_index=-100, softcap=None,
                teacher_softcap=None, kd_vocab=None, divergence_kind="forward_kl", beta=0.5, label_smoothing=0.0,
                z_loss=0.0):
    """Per-row (loss, ce, kd, z_loss, accuracy) in float64, as autograd functions of the student."""
    z = student.to(F64).reshape(-1, student.shape[-1])
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    v = z.shape[-1]
    y = labels.reshape(-1).long()
    valid = y != ignore_index
    ysafe = torch.where(valid, y, torch.zeros_like(y))
    lse = torch.logsumexp(z, -1)
    nll = lse - z.gather(1, ysafe[:, None])[:, 0]
    smooth = lse - z.mean(-1)
    ce = (1 - label_smoothing) * nll + label_smoothing * smooth if label_smoothing else nll
    zl = z_loss * lse * lse
    acc = (z.detach().argmax(-1) == y).to(F64)
    if teacher is not None and kd_weight > 0:
        k = kd_vocab or v
        u = teacher.to(F64).reshape(-1, teacher.shape[-1])[:, :k]
        if teacher_softcap is not None:
            u = teacher_softcap * torch.tanh(u / teacher_softcap)
        tau = temperature
        log_p = torch.log_softmax(u / tau, -1)
        log_q = torch.log_softmax(z[:, :k] / tau, -1)
        kd = tau * tau * divergence(log_p, log_q, divergence_kind, beta)
    else:
        kd = torch.zeros_like(ce)
    loss = zl.clone()
    if kd_weight < 1:
        loss = loss + (1 - kd_weight) * ce
    if kd_weight > 0:
        loss = loss + kd_weight * kd
    zero = torch.zeros_like(loss)
    return tuple(torch.where(valid, x, zero) for x in (loss, ce, kd, zl, acc))


def option_reference(student, teacher, labels, *, reduction="mean", grad_out=None, ignore_index=-100, **kw):
    """Reduced (loss, parts) and d loss / d student in float64 (autograd of option_rows)."""
    z = student.detach().to(F64).requires_grad_()
    rows = option_rows(z, teacher, labels, ignore_index=ignore_index, **kw)
    n_valid = max(1, int((labels.reshape(-1) != ignore_index).sum()))
    if reduction == "none":
        reduced = [r.reshape(labels.shape) for r in rows]
        g_out = torch.ones_like(reduced[0]) if grad_out is None else grad_out.to(F64)
        target = (reduced[0] * g_out).sum()
    else:
        div = n_valid if reduction == "mean" else 1
        reduced = [r.sum() / div for r in rows[:4]] + [rows[4].sum() / n_valid]  # accuracy: a share
        target = reduced[0] * (1.0 if grad_out is None else float(grad_out))
    (grad,) = torch.autograd.grad(target, z, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(z)
    return [r.detach() for r in reduced], grad.reshape(student.shape)


def near(got: torch.Tensor, want: torch.Tensor, rel: float) -> bool:
    """|got - want| <= rel * max(1, |want|) elementwise, infinities and NaN matching."""
    got, want = got.to(F64), want.to(F64)
    same_special = (torch.isnan(got) & torch.isnan(want)) | ((got == want) & torch.isinf(want))
    finite = torch.isfinite(want)
    err = (got - want).abs() <= rel * torch.clamp(want.abs(), min=1.0)
    return bool(torch.where(finite, err, same_special).all())


__all__ = ["option_rows", "option_reference", "near", "math"]


def topk_rows_oracle(student, indices, logprobs, labels, *, kd_weight, temperature, tail="bucket", ignore_index=-100,
                     softcap=None, label_smoothing=0.0, z_loss=0.0):
    """Per-row loss of docs/design.md, "Top-k teacher", in float64, row by row (slow, plain)."""
    z = student.to(F64).reshape(-1, student.shape[-1])
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    n, v = z.shape
    idx = indices.reshape(n, -1).long()
    lp = logprobs.reshape(n, -1).to(F64)
    y = labels.reshape(-1).long()
    tau = temperature
    out = []
    for i in range(n):
        if int(y[i]) == ignore_index:
            out.append(z[i].sum() * 0)
            continue
        lse = torch.logsumexp(z[i], 0)
        ce = lse - z[i, y[i]]
        if label_smoothing:
            ce = (1 - label_smoothing) * ce + label_smoothing * (lse - z[i].mean())
        loss = z_loss * lse * lse
        if kd_weight < 1:
            loss = loss + (1 - kd_weight) * ce
        if kd_weight > 0:
            keep = idx[i] >= 0
            ks, ls = idx[i][keep], lp[i][keep].clamp(max=0)
            r = max(0.0, 1.0 - float(ls.exp().sum()))
            use_rest = len(ks) == 0 or (tail == "bucket" and r > 0 and len(ks) < v)
            logq = torch.log_softmax(z[i] / tau, 0)
            a = ls / tau
            log_q = logq[ks]
            if use_rest:
                a = torch.cat([a, torch.tensor([math.log(r) / tau if r > 0 else -math.inf], dtype=F64)])
                mask = torch.ones(v, dtype=torch.bool)
                mask[ks] = False
                log_q = torch.cat([log_q, torch.logsumexp(logq[mask], 0)[None]])
            log_p = torch.log_softmax(a, 0)
            p = log_p.exp()
            terms = torch.where(p == 0, torch.zeros_like(p), p * (log_p - log_q))
            loss = loss + kd_weight * tau * tau * terms.sum()
        out.append(loss)
    return torch.stack(out)
