"""Float64 evaluation of docs/design.md, "The loss", written independently of the package: the
oracle every backend is compared with, and the generator of realistic random logits."""

from __future__ import annotations

import torch

F64 = torch.float64


def make_logits(shape, dtype=torch.float32, *, std=None, generator=None, outliers=True):
    """Logits with realistic spread: std between 2 and 5, plus a few large outliers; never zeros."""
    g = generator
    if std is None:
        std = 2.0 + 3.0 * torch.rand((), generator=g).item()
    x = torch.randn(shape, generator=g, dtype=torch.float32) * std
    x = x + torch.randn(shape[:-1] + (1,), generator=g) * 2.0  # per-row offsets
    if outliers and x.numel() > 0:
        n_out = max(1, x.numel() // 500)
        idx = torch.randint(0, x.numel(), (n_out,), generator=g)
        x.view(-1)[idx] += 25.0 * torch.sign(torch.randn(n_out, generator=g))
    return x.to(dtype)


def oracle_rows(student, teacher, labels, kd_weight, temperature, ignore_index=-100):
    """Per-row (loss, ce, kd) in float64 of the given (possibly low-precision) inputs."""
    z = student.to(F64).reshape(-1, student.shape[-1])
    y = labels.reshape(-1).long()
    valid = y != ignore_index
    ysafe = torch.where(valid, y, torch.zeros_like(y))
    logq1 = torch.log_softmax(z, dim=-1)
    ce = -logq1.gather(1, ysafe[:, None])[:, 0]
    if teacher is not None and kd_weight > 0:
        tau = temperature
        u = teacher.to(F64).reshape(-1, teacher.shape[-1])
        logp = torch.log_softmax(u / tau, dim=-1)
        logq = torch.log_softmax(z / tau, dim=-1)
        p = logp.exp()
        terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
        terms = torch.where(torch.isnan(u) | torch.isnan(z), torch.full_like(p, float("nan")), terms)
        kd = tau * tau * terms.sum(-1)
    else:
        kd = torch.zeros_like(ce)
    loss = torch.zeros_like(ce)
    if kd_weight < 1:
        loss = loss + (1 - kd_weight) * ce
    if kd_weight > 0:
        loss = loss + kd_weight * kd
    zero = torch.zeros_like(ce)
    return torch.where(valid, loss, zero), torch.where(valid, ce, zero), torch.where(valid, kd, zero)


def oracle_reduce(rows, labels, reduction, ignore_index=-100):
    if reduction == "none":
        return rows.reshape(labels.shape)
    if reduction == "sum":
        return rows.sum()
    n = (labels.reshape(-1) != ignore_index).sum().clamp(min=1)
    return rows.sum() / n


def oracle_grad(student, teacher, labels, kd_weight, temperature, ignore_index=-100, row_weights=None, reduction="mean"):
    """d(reduced loss)/d student in float64, by the closed form of docs/design.md, "Gradient"."""
    z = student.to(F64).reshape(-1, student.shape[-1])
    y = labels.reshape(-1).long()
    valid = y != ignore_index
    ysafe = torch.where(valid, y, torch.zeros_like(y))
    w = kd_weight
    g = (1 - w) * (torch.softmax(z, -1) - torch.nn.functional.one_hot(ysafe, z.shape[-1]).to(F64))
    if teacher is not None and w > 0:
        tau = temperature
        u = teacher.to(F64).reshape(-1, teacher.shape[-1])
        g = g + w * tau * (torch.softmax(z / tau, -1) - torch.softmax(u / tau, -1))
    if reduction == "none":
        scale = row_weights.to(F64).reshape(-1)
    elif reduction == "mean":
        scale = torch.full((z.shape[0],), 1.0 / max(1, int(valid.sum())), dtype=F64)
    else:
        scale = torch.ones(z.shape[0], dtype=F64)
    if reduction != "none" and row_weights is not None:  # a scalar grad_output
        scale = scale * float(row_weights)
    g = torch.where(valid[:, None], g * scale[:, None], torch.zeros_like(g))
    return g.reshape(student.shape)


# ---- comparing a backend's rows() (backends/base.py) with the oracle -------------------------------


def grad_tolerance(dtype):
    """Relative (norm) gradient tolerance of docs/design.md, "Numerical acceptance"."""
    return 1e-5 if dtype == torch.float32 else 1e-2


def assert_grad_close(got, want, dtype):
    """Relative error of the whole gradient in norm; an identically ~zero gradient (V == 1) has no
    relative measure and may differ by a few ulp of a probability."""
    got, want = got.detach().cpu().double(), want.double()
    assert got.shape == want.shape, (tuple(got.shape), tuple(want.shape))
    if want.numel() == 0:
        return
    if float(want.abs().max()) < 1e-6:
        err = float((got - want).abs().max())
        assert err <= 1e-6, f"gradient error {err:.3e} on a zero gradient"
        return
    rel = float((got - want).norm()) / float(want.norm())
    assert rel <= grad_tolerance(dtype), f"relative gradient error {rel:.3e} > {grad_tolerance(dtype):g}"


def _assert_close(name, got, want, bound):
    """|got - want| <= bound elementwise; equal infinities match, a NaN wants a NaN."""
    same = (got == want) | (torch.isnan(got) & torch.isnan(want))
    err = torch.where(same, torch.zeros_like(got), (got - want).abs())
    bad = ~(err <= bound)  # NaN errors count as bad
    assert not bool(bad.any()), (
        f"{name}: rows {bad.nonzero().flatten().tolist()[:8]} off, got {got[bad][:4].tolist()}, "
        f"want {want[bad][:4].tolist()}"
    )


def assert_rows_match(out, grad, student, teacher, labels, *, kd_weight, temperature, grad_scale=None,
                      ignore_index=-100):
    """A RowOutputs (and the gradient buffer it wrote, when given) against float64: per-row loss,
    CE and KD at 1e-5 of the row's scale, the three log-sum-exps (the teacher's two only when the
    teacher is used), zeros on ignored rows, and d loss_i / d student_i * grad_scale_i."""
    w, tau = kd_weight, temperature
    z, u, y = student.cpu(), None if teacher is None else teacher.cpu(), labels.cpu()
    rl, rc, rk = oracle_rows(z, u, y, w, tau, ignore_index)
    finite = [r.abs().nan_to_num(nan=0.0, posinf=0.0) for r in (rl, rc, rk)]
    bound = 1e-5 * sum(finite) + 1e-5  # the scale of the row's finite terms
    for name, got, want in (("loss", out.loss, rl), ("ce", out.ce, rc), ("kd", out.kd, rk)):
        assert got.dtype == torch.float32 and got.shape == want.shape, (name, got.dtype, tuple(got.shape))
        _assert_close(name, got.detach().cpu().double(), want, bound)
    valid = y.long() != ignore_index
    z64 = z.to(F64)
    zero = torch.zeros((), dtype=F64)
    lse = out.lse.detach().cpu().double()
    assert lse.shape == (z.shape[0], 3)
    _assert_close("lse_z", lse[:, 0], torch.where(valid, torch.logsumexp(z64, -1), zero), 1e-5)
    if u is not None and w > 0:
        _assert_close("lse_zt", lse[:, 1], torch.where(valid, torch.logsumexp(z64 / tau, -1), zero), 1e-5)
        _assert_close("lse_u", lse[:, 2], torch.where(valid, torch.logsumexp(u.to(F64) / tau, -1), zero), 1e-5)
    else:
        assert bool((lse[~valid] == 0).all())
    if grad is None:
        return
    got = grad.detach().cpu()
    assert got.dtype == student.dtype
    assert bool(torch.isfinite(got).all()), "gradient not fully written (or not finite)"
    assert bool((got[~valid] == 0).all()), "ignored rows must get a zero gradient"
    weights = grad_scale.detach().cpu().double().reshape(-1).expand(z.shape[0])
    want = oracle_grad(z, u, y, w, tau, ignore_index, row_weights=weights, reduction="none")
    assert_grad_close(got, want, student.dtype)


def same_bits_over_threads(run, fields=("loss", "ce", "kd", "lse", "accuracy"), threads=(1, 2, 3)):
    """run() -> (RowOutputs, gradient) under each torch thread count in turn; asserts that every
    run gives the first run's bits in `fields` and the gradient; returns the first run's pair."""
    import torch

    before = torch.get_num_threads()
    results = []
    try:
        for t in threads:
            torch.set_num_threads(t)
            results.append(run())
    finally:
        torch.set_num_threads(before)
    first_out, first_grad = results[0]
    for out, grad in results[1:]:
        for name in fields:
            assert torch.equal(getattr(out, name), getattr(first_out, name)), name
        assert torch.equal(grad, first_grad)
    return first_out, first_grad
