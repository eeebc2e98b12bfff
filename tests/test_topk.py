"""topk_salt_loss (docs/design.md, "Top-k teacher") against float64 of the formulas, row by row;
its relation to salt_loss; and its input checks."""

from __future__ import annotations

import functools

import pytest
import torch

import salt_kernels as sk
from oracle import make_logits
from options_oracle import topk_rows_oracle
from salt_kernels.backends import registry

CPU = torch.device("cpu")
BACKENDS = [
    pytest.param(name, marks=() if ok else pytest.mark.skip(reason=f"{name}: {why}"))
    for name in registry.BACKEND_NAMES
    for ok, why in [registry.backend_status(name, CPU, kind="topk_rows")]
]


def _teacher(gen, n, v, k, dtype=torch.bfloat16, index_dtype=torch.int64, empty=0, near_student=None):
    u = make_logits((n, v), generator=gen) if near_student is None else near_student + 0.01 * torch.randn(n, v, generator=gen)
    lp = torch.log_softmax(u.double(), -1)
    top = torch.topk(lp, k, dim=-1)
    idx, vals = top.indices.clone(), top.values.clone()
    if empty:
        idx[:, -empty:] = -1
        vals[:, -empty:] = 0.0
    return idx.to(index_dtype), vals.to(dtype)


def _check(backend, gen, *, n=10, v=300, k=16, tau=2.0, tail="bucket", reduction="mean", dtype=torch.float32, **kw):
    student_dtype = kw.pop("student_dtype", torch.float32)
    z = make_logits((n, v), student_dtype, generator=gen)
    idx, lp = _teacher(gen, n, v, k, dtype=dtype, empty=kw.pop("empty", 0), index_dtype=kw.pop("index_dtype", torch.int64),
                       near_student=z.float() if kw.pop("near", False) else None)
    y = torch.randint(0, v, (n,), generator=gen)
    y[::4] = -100
    zg = z.clone().requires_grad_()
    loss = sk.topk_salt_loss(zg, idx, lp, y, temperature=tau, tail=tail, reduction=reduction, backend=backend, **kw)
    g_out = torch.rand(n, generator=gen) + 0.5 if reduction == "none" else None
    loss.backward(g_out)
    z64 = z.double().requires_grad_()
    rows = topk_rows_oracle(z64, idx, lp, y, kd_weight=kw.get("kd_weight", 0.5), temperature=tau, tail=tail,
                            **{a: b for a, b in kw.items() if a != "kd_weight"})
    n_valid = max(1, int((y != -100).sum()))
    want = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / n_valid}[reduction]
    (g64,) = torch.autograd.grad((want * (g_out.double() if g_out is not None else 1)).sum(), z64)
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    tol = 1e-5 if student_dtype == torch.float32 else 1e-2
    assert float((zg.grad.double() - g64).norm() / g64.norm()) <= tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("k", [1, 8, 64, 256])
def test_matches_float64(backend, tail, tau, k, gen):
    _check(backend, gen, k=k, tau=tau, tail=tail)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case",
    [
        dict(empty=5),
        dict(near=True),
        dict(dtype=torch.float16),
        dict(dtype=torch.float32, index_dtype=torch.int32),
        dict(reduction="none"),
        dict(reduction="sum", softcap=5.0, label_smoothing=0.1, z_loss=1e-3),
        dict(student_dtype=torch.bfloat16),
        dict(k=300, tail="bucket"),  # K covers the vocabulary: no tail outcome
        # rows of several 512-entry chunks (the compiled kernels work chunk by chunk), integer and
        # fractional temperatures, low-precision students, every option at once
        dict(v=3000, k=64, tau=1.0),
        dict(v=3000, k=64, tau=3.0, student_dtype=torch.float16, dtype=torch.float16),
        dict(v=3000, k=64, tau=4.0, index_dtype=torch.int32),
        dict(v=3000, k=64, tau=1.5, tail="renormalize", empty=10),
        dict(v=3000, k=256, tau=0.7, reduction="none", softcap=20.0, label_smoothing=0.2, z_loss=1e-2),
        dict(v=1100, k=32, tau=2.0, student_dtype=torch.bfloat16, reduction="sum", kd_weight=1.0),
    ],
    ids=lambda c: "-".join(f"{a}={b}" for a, b in c.items()),
)
def test_cases(backend, case, gen):
    _check(backend, gen, **dict(case))


def test_full_topk_of_an_exact_teacher_equals_salt_loss(gen):
    """k = V with the teacher's exact log-probabilities: topk_salt_loss == salt_loss."""
    z = make_logits((6, 40), generator=gen).double()
    u = make_logits((6, 40), generator=gen).double()
    y = torch.randint(0, 40, (6,), generator=gen)
    lp = torch.log_softmax(u, -1)
    idx = torch.randperm(40, generator=gen).repeat(6, 1)
    for tail in ("bucket", "renormalize"):
        for tau in (1.0, 2.0):
            a = sk.topk_salt_loss(z, idx, lp.gather(1, idx), y, temperature=tau, tail=tail)
            b = sk.salt_loss(z, u, y, temperature=tau)
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bucket_at_tau_1_is_the_coarsened_kl(gen):
    z = make_logits((5, 60), generator=gen).double()
    idx, lp = _teacher(gen, 5, 60, 7, dtype=torch.float64)
    y = torch.randint(0, 60, (5,), generator=gen)
    kd = sk.topk_salt_loss(z, idx, lp, y, kd_weight=1.0, reduction="none")
    q = torch.softmax(z, -1)
    pk, qk = lp.exp(), q.gather(1, idx)
    pr, qr = 1 - pk.sum(-1), 1 - qk.sum(-1)
    want = (pk * (pk / qk).log()).sum(-1) + pr * (pr / qr).log()
    torch.testing.assert_close(kd, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "mutate, exc, words",
    [
        (lambda i, l: (torch.cat([i[:, :1], i[:, :-1]], 1), l), ValueError, "repeat"),
        (lambda i, l: (i.masked_fill(i == i[0, 0], 500), l), ValueError, "teacher_indices must be in"),
        (lambda i, l: (i, l[:, :-1]), ValueError, "teacher_logprobs must have the shape"),
        (lambda i, l: (i, l + 1.0), ValueError, "log-probabilities"),
        (lambda i, l: (i.float(), l), TypeError, "teacher_indices must have dtype"),
        (lambda i, l: (i[:3], l[:3]), ValueError, "teacher_indices must have shape"),
    ],
)
def test_bad_teacher_inputs(mutate, exc, words, gen):
    z = make_logits((6, 50), generator=gen)
    idx, lp = _teacher(gen, 6, 50, 4)
    idx, lp = mutate(idx, lp)
    with pytest.raises(exc, match=words):
        sk.topk_salt_loss(z, idx, lp, torch.zeros(6, dtype=torch.long))


def test_tail_and_missing_teacher_errors(gen):
    z = make_logits((6, 50), generator=gen)
    idx, lp = _teacher(gen, 6, 50, 4)
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="tail"):
        sk.topk_salt_loss(z, idx, lp, y, tail="drop")
    with pytest.raises(ValueError, match="teacher_indices is None"):
        sk.topk_salt_loss(z, None, None, y)
    ce = sk.topk_salt_loss(z, None, None, y, kd_weight=0.0)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(z, y))


def test_opcheck_topk(gen):
    z = make_logits((6, 30), generator=gen).requires_grad_()
    idx, lp = _teacher(gen, 6, 30, 5)
    y = torch.randint(0, 30, (6,), generator=gen)
    for reduction in ("mean", "none"):
        args = (z, idx, lp, y, 0.5, 2.0, -100, reduction, "reference", "bucket", None, 0.0, 0.0, True, True)
        result = torch.library.opcheck(torch.ops.salt_kernels.topk_salt_loss, args)
        assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_topk_matches_logits(tail, reduction, gen):
    """linear_topk_salt_loss == topk_salt_loss of the projected logits, in value and gradients."""
    n, d, v, k = 18, 10, 70, 6
    h = torch.randn(n, d, generator=gen, requires_grad=True)
    w = (torch.randn(v, d, generator=gen) * 0.5).requires_grad_()
    b = (torch.randn(v, generator=gen) * 0.1).requires_grad_()
    idx, lp = _teacher(gen, n, v, k, empty=1)
    y = torch.randint(0, v, (n,), generator=gen)
    y[::5] = -100
    kw = dict(temperature=2.0, tail=tail, reduction=reduction, z_loss=1e-3, label_smoothing=0.1)
    g_out = torch.rand(n, generator=gen) + 0.5 if reduction == "none" else torch.tensor(1.0)
    loss, parts = sk.linear_topk_salt_loss(h, w, idx, lp, y, student_bias=b, chunk_size=4, return_parts=True, **kw)
    grads = torch.autograd.grad(loss, (h, w, b), g_out)
    h2, w2, b2 = (t.detach().clone().requires_grad_() for t in (h, w, b))
    loss2, parts2 = sk.topk_salt_loss(h2 @ w2.t() + b2, idx, lp, y, return_parts=True, **kw)
    grads2 = torch.autograd.grad(loss2, (h2, w2, b2), g_out)
    torch.testing.assert_close(loss, loss2, rtol=1e-5, atol=1e-6)
    for a, c in zip(parts, parts2):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    for a, c in zip(grads, grads2):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)
    ce_only = sk.linear_topk_salt_loss(h, w, None, None, y, kd_weight=0.0)
    torch.testing.assert_close(ce_only, sk.linear_salt_loss(h, w, None, None, y, kd_weight=0.0))


def test_opcheck_linear_topk(gen):
    h = torch.randn(8, 5, generator=gen, requires_grad=True)
    w = torch.randn(30, 5, generator=gen, requires_grad=True)
    idx, lp = _teacher(gen, 8, 30, 4)
    y = torch.randint(0, 30, (8,), generator=gen)
    for reduction in ("mean", "none"):
        args = (h, w, None, idx, lp, y, 0.5, 2.0, -100, reduction, "reference", 3, torch.float32, "bucket", None, 0.0,
                0.0, True, True, False, True)
        result = torch.library.opcheck(torch.ops.salt_kernels.linear_topk_salt_loss, args)
        assert all(v == "SUCCESS" for v in result.values()), result


# ---- the compiled row kernels against the reference rows: every output of the row contract --

# The CUDA top-k kernel's source run on the CPU by tests/cuda_emulator (a fiber per CUDA thread,
# every global access checked against the tensors it may touch), as a row backend.
EMULATED = "cuda-emulated"
ROW_BACKENDS = [b for b in BACKENDS if b.values[0] != "reference"] + [pytest.param(EMULATED)]


@functools.cache
def _emulator():
    """The emulator library (built or loaded once per run), or the reason it is unavailable."""
    import cuda_emulator

    try:
        return cuda_emulator.build()
    except cuda_emulator.EmulatorUnavailable as exc:
        return str(exc)


def _topk_rows_of(name):
    if name != EMULATED:
        return registry.get(name).topk_rows
    import cuda_emulator

    lib = _emulator()
    if isinstance(lib, str):
        pytest.skip(lib)
    return lambda *args, **kw: cuda_emulator.topk_rows(lib, *args, **kw)


def _rows_pair(backend, z, idx, lp, y, *, tail, grad_scale=None, **kw):
    """(outputs, grad) of `backend` and of the reference, the same arguments."""
    results = []
    for name in (backend, "reference"):
        grad = torch.empty_like(z)
        scale = grad_scale if grad_scale is not None else torch.ones(1)
        out = _topk_rows_of(name)(z, idx, lp, y, tail=tail, grad=grad, grad_scale=scale, ignore_index=-100, **kw)
        results.append((out, grad))
    return results


@pytest.mark.parametrize("backend", ROW_BACKENDS)
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("tau", [1.0, 2.0, 2.5])
def test_rows_match_reference_rows(backend, tail, tau, gen):
    """loss, ce, kd, lse = (lse_z, lse_zt, lse_rest), accuracy and the scaled gradient."""
    from salt_kernels.backends.base import LossOptions

    n, v, k = 9, 2100, 40
    z = make_logits((n, v), generator=gen)
    idx, lp = _teacher(gen, n, v, k, empty=3)
    y = torch.randint(0, v, (n,), generator=gen)
    y[2] = -100
    y[4] = int(z[4].argmax())  # one row the student gets right
    scale = torch.rand(n, generator=gen) + 0.5
    options = LossOptions(softcap=30.0, label_smoothing=0.1, z_loss=1e-3) if tau == 2.5 else LossOptions()
    (out, grad), (ref, ref_grad) = _rows_pair(backend, z, idx, lp, y, tail=tail, grad_scale=scale, kd_weight=0.5,
                                              temperature=tau, options=options)
    for name in ("loss", "ce", "kd", "lse", "accuracy"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=2e-5, atol=2e-5, msg=name)
    assert float(out.accuracy[4]) == 1.0
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_rest_without_cancellation_next_to_a_huge_top_entry(backend, gen):
    """The teacher's top entries are the student's too, hundreds above the rest: lse_rest is the
    log-sum-exp of the rest itself (no exp of the rest underflows against the row maximum, and
    nothing is subtracted), as float64 gives it."""
    n, v, k = 4, 1500, 8
    z = make_logits((n, v), generator=gen, outliers=False)
    idx, lp = _teacher(gen, n, v, k)
    z.scatter_(1, idx[:, :2], 400.0)  # exp(-400 / tau) is 0 in fp32
    y = torch.randint(0, v, (n,), generator=gen)
    (out, grad), _ = _rows_pair(backend, z, idx, lp, y, tail="bucket", kd_weight=0.5, temperature=2.0)
    in_k = torch.zeros(n, v, dtype=torch.bool).scatter_(1, idx, True)
    want = torch.logsumexp(torch.where(in_k, float("-inf"), z.double() / 2.0), dim=-1)
    torch.testing.assert_close(out.lse[:, 2].double(), want, rtol=1e-6, atol=1e-5)
    assert torch.isfinite(out.kd).all() and torch.isfinite(grad).all()
    want_rows = topk_rows_oracle(z.double(), idx, lp, y, kd_weight=0.5, temperature=2.0)
    torch.testing.assert_close(out.loss.double(), want_rows, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_rows_nan_and_no_teacher(backend, gen):
    """A NaN logit makes its row NaN (and only it); kd_weight == 0 never reads the slots."""
    n, v, k = 5, 700, 6
    z = make_logits((n, v), generator=gen)
    z[1, 600] = float("nan")
    idx, lp = _teacher(gen, n, v, k)
    y = torch.randint(0, v, (n,), generator=gen)
    (out, grad), (ref, _) = _rows_pair(backend, z, idx, lp, y, tail="bucket", kd_weight=0.5, temperature=2.0)
    assert torch.isnan(out.loss[1]) and torch.isnan(grad[1]).all()
    keep = torch.arange(n) != 1
    torch.testing.assert_close(out.loss[keep], ref.loss[keep], rtol=1e-5, atol=1e-5)
    bad = torch.full((n, k), 10**9, dtype=torch.int64)  # never read
    (out, grad), (ref, ref_grad) = _rows_pair(backend, z[keep], bad[keep], lp[keep], y[keep], tail="bucket",
                                              kd_weight=0.0, temperature=2.0)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(z[keep], y[keep], reduction="none"))
    torch.testing.assert_close(out.lse[:, 1], out.lse[:, 0])
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", [
    dict(student_dtype=torch.bfloat16, dtype=torch.bfloat16, index_dtype=torch.int32, tau=2.0),
    dict(student_dtype=torch.float16, dtype=torch.float16, tau=1.0, tail="renormalize"),
    dict(student_dtype=torch.float32, dtype=torch.float32, tau=1.5, empty=4, k=300, v=300),  # K is the vocabulary
    dict(student_dtype=torch.float32, dtype=torch.bfloat16, tau=3.0, k=1, label_in_k=True),
])
def test_emulated_cuda_kernel_against_float64(case, gen):
    """The CUDA top-k kernel (emulated) against float64 of the formulas directly, per row: loss and
    gradient, for each student and log-prob dtype, int32 and int64 indices, a label among the
    teacher's slots, empty slots and a K that covers the whole vocabulary."""
    n, v, k, tau = 6, case.get("v", 1100), case.get("k", 24), case["tau"]
    tail = case.get("tail", "bucket")
    z = make_logits((n, v), case["student_dtype"], generator=gen)
    idx, lp = _teacher(gen, n, v, k, dtype=case["dtype"], index_dtype=case.get("index_dtype", torch.int64),
                       empty=case.get("empty", 0))
    y = torch.randint(0, v, (n,), generator=gen)
    y[3] = -100
    if case.get("label_in_k"):
        y[0] = int(idx[0, 0])
    scale = torch.rand(n, generator=gen) + 0.5
    grad = torch.empty_like(z)
    out = _topk_rows_of(EMULATED)(z, idx, lp, y, tail=tail, grad=grad, grad_scale=scale, ignore_index=-100,
                                  kd_weight=0.5, temperature=tau)
    z64 = z.double().requires_grad_()
    rows = topk_rows_oracle(z64, idx, lp, y, kd_weight=0.5, temperature=tau, tail=tail)
    (g64,) = torch.autograd.grad((rows * scale.double()).sum(), z64)
    torch.testing.assert_close(out.loss.double(), rows.detach(), rtol=1e-5, atol=1e-5)
    tol = 1e-5 if case["student_dtype"] == torch.float32 else 1e-2
    assert float((grad.double() - g64).norm() / g64.norm()) <= tol
    assert torch.equal(grad[3], torch.zeros_like(grad[3]))  # an ignored row: zeros
