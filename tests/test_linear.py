"""linear_salt_loss against float64 evaluation (docs/design.md, "Fused linear form" and
"Numerical acceptance"): logits built in float64 from the same (possibly low-precision) hidden
states, weights and biases, the loss from tests/oracle.py, and the gradients of hidden, weight
and bias from the oracle's logits gradient by the chain rule (g @ W, g.T @ h, sum_rows g)."""

import math

import pytest
import torch

import salt_kernels as sk
from oracle import oracle_grad, oracle_reduce, oracle_rows

BACKENDS = ["reference", "cpu"]
F64 = torch.float64


def make_side(n, d, vocab, dtype, gen, *, lead=None, bias=True):
    """(hidden, weight, bias) whose logits have std 2-5, per-row offsets and a few large outliers."""
    std = 2.0 + 3.0 * torch.rand((), generator=gen).item()
    h = torch.randn(n, d, generator=gen)
    w = torch.randn(vocab, d, generator=gen) * (std / math.sqrt(d))
    hot = torch.randint(0, vocab, (max(1, vocab // 100),), generator=gen)
    w[hot] *= 4.0  # outlier columns of the logits
    b = torch.randn(vocab, generator=gen) * 2.0 if bias else None
    if lead is not None:
        h = h.reshape(*lead, d)
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(h), cast(w), cast(b)


def logits64(h, w, b):
    """Float64 logits of the inputs. For bf16/fp16 inputs they are rounded once to that dtype,
    as the projection's output is (F.linear in plain PyTorch does the same): those logits are
    the loss's inputs, and their rounding is no error of the loss."""
    z = h.to(F64).reshape(-1, h.shape[-1]) @ w.to(F64).T
    z = z if b is None else z + b.to(F64)
    return z if h.dtype == torch.float32 else z.to(h.dtype).to(F64)


def oracle(hs, ws, bs, ht, wt, bt, labels, *, w, tau, reduction, grad_out=None, ignore_index=-100):
    """Float64 (loss, ce, kd, grad_h, grad_w, grad_b)."""
    z = logits64(hs, ws, bs)
    u = logits64(ht, wt, bt) if ht is not None else None
    y = labels.reshape(-1)
    rl, rc, rk = oracle_rows(z, u, y, w, tau, ignore_index)
    red = [oracle_reduce(r, labels, reduction, ignore_index) for r in (rl, rc, rk)]
    row_weights = None if grad_out is None else grad_out.reshape(-1)
    g = oracle_grad(z, u, y, w, tau, ignore_index, row_weights=row_weights, reduction=reduction)
    h64 = hs.to(F64).reshape(-1, hs.shape[-1])
    return (*red, (g @ ws.to(F64)).reshape(hs.shape), g.T @ h64, g.sum(0))


def rel_err(got, want):
    got, want = got.double(), want.double()
    return float((got - want).norm()) / max(float(want.norm()), 1e-30)


def loss_tol(dtype):
    # fp32: docs/design.md, "Numerical acceptance". bf16/fp16: a GEMM and the oracle may round a
    # logit to neighbouring values (accumulation order), which moves the loss by far less than 1e-3.
    return 1e-5 if dtype == torch.float32 else 1e-3


def grad_tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-2


def assert_close(got, want, rel, what, abs_floor=1e-6):
    got, want = got.double(), want.double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs()
    bound = rel * want.abs() + abs_floor
    assert bool((err <= bound).all()), f"{what}: max error {float(err.max()):.3e}, bound {float(bound.flatten()[err.argmax()]):.3e}"


def run(hs, ws, bs, ht, wt, bt, labels, *, grad_out=None, **kw):
    """Fused loss and gradients of (hidden, weight, bias) from fresh leaves."""
    hs = hs.clone().requires_grad_()
    ws = ws.clone().requires_grad_()
    bs = None if bs is None else bs.clone().requires_grad_()
    loss, parts = sk.linear_salt_loss(hs, ws, ht, wt, labels, student_bias=bs, teacher_bias=bt, return_parts=True, **kw)
    assert loss.dtype == torch.float32
    assert not parts.ce.requires_grad and not parts.kd.requires_grad
    loss.backward(grad_out)
    return loss.detach(), parts, hs.grad, ws.grad, None if bs is None else bs.grad


def check(hs, ws, bs, ht, wt, bt, labels, *, w, tau, reduction="mean", grad_out=None, **kw):
    loss, parts, gh, gw, gb = run(
        hs, ws, bs, ht, wt, bt, labels, kd_weight=w, temperature=tau, reduction=reduction, grad_out=grad_out, **kw
    )
    l64, c64, k64, gh64, gw64, gb64 = oracle(
        hs, ws, bs, ht, wt, bt, labels, w=w, tau=tau, reduction=reduction, grad_out=grad_out,
        ignore_index=kw.get("ignore_index", -100),
    )
    dtype = hs.dtype
    assert_close(loss, l64, loss_tol(dtype), "loss")
    scale = float((c64.abs() + k64.abs()).max()) + 0.1
    assert_close(parts.ce, c64, 0, "ce", abs_floor=loss_tol(dtype) * scale)
    assert_close(parts.kd, k64, 0, "kd", abs_floor=loss_tol(dtype) * scale)
    assert gh.dtype == hs.dtype and gh.shape == hs.shape
    assert gw.dtype == ws.dtype and gw.shape == ws.shape
    for name, got, want in (("grad_hidden", gh, gh64), ("grad_weight", gw, gw64), ("grad_bias", gb, gb64)):
        if got is None:
            continue
        if float(want.norm()) == 0:
            assert float(got.abs().max()) == 0, f"{name} must be zero"
        else:
            err = rel_err(got, want)
            assert err <= grad_tol(dtype), f"{name}: relative error {err:.3e} > {grad_tol(dtype):g}"
    return loss, parts, gh, gw, gb


N, DS, DT, V = 37, 24, 16, 301


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7, N], ids=lambda c: f"chunk{c}")
def test_matches_float64(backend, reduction, bias, chunk_size, gen):
    """Chunks of one row, of 7 rows (37 is no multiple of 7), one chunk, the default; d_s != d_t."""
    hs, ws, bs = make_side(N, DS, V, torch.float32, gen, bias=bias)
    ht, wt, bt = make_side(N, DT, V, torch.float32, gen, bias=bias)
    y = torch.randint(0, V, (N,), generator=gen)
    y[[3, 10, 11, 36]] = -100
    grad_out = torch.rand(N, generator=gen) + 0.5 if reduction == "none" else None
    check(hs, ws, bs, ht, wt, bt, y, w=0.4, tau=2.0, reduction=reduction, grad_out=grad_out, backend=backend, chunk_size=chunk_size)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tau,w", [(1.0, 0.3), (0.5, 1.0), (4.0, 0.0), (1.0, 0.0), (3.0, 0.7)])
def test_weights_and_temperatures(backend, tau, w, gen):
    """d_t > d_s here; the teacher has a bias, the student none."""
    hs, ws, _ = make_side(N, 16, V, torch.float32, gen)
    ht, wt, bt = make_side(N, 40, V, torch.float32, gen)
    y = torch.randint(0, V, (N,), generator=gen)
    y[0] = -100
    check(hs, ws, None, ht, wt, bt, y, w=w, tau=tau, backend=backend, chunk_size=8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_low_precision(backend, dtype, reduction, gen):
    hs, ws, bs = make_side(N, DS, V, dtype, gen)
    ht, wt, bt = make_side(N, DT, V, dtype, gen)
    y = torch.randint(0, V, (N,), generator=gen, dtype=torch.int32)
    y[5] = -100
    grad_out = torch.rand(N, generator=gen) + 0.5 if reduction == "none" else None
    _, _, gh, gw, gb = check(hs, ws, bs, ht, wt, bt, y, w=0.5, tau=2.0, reduction=reduction, grad_out=grad_out, backend=backend, chunk_size=10)
    assert gb.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_as_salt_loss_on_materialized_logits(backend, gen):
    """The fused loss equals salt_loss of the logits computed the same way (bf16: the same bits)."""
    for dtype in (torch.float32, torch.bfloat16):
        hs, ws, bs = make_side(N, DS, V, dtype, gen)
        ht, wt, bt = make_side(N, DT, V, dtype, gen)
        y = torch.randint(0, V, (N,), generator=gen)
        y[7] = -100
        kw = dict(kd_weight=0.5, temperature=2.0, backend=backend)
        loss, parts, gh, gw, gb = run(hs, ws, bs, ht, wt, bt, y, chunk_size=9, **kw)
        h2, w2, b2 = (t.clone().requires_grad_() for t in (hs, ws, bs))
        ref, ref_parts = sk.salt_loss(torch.nn.functional.linear(h2, w2, b2), torch.nn.functional.linear(ht, wt, bt), y, return_parts=True, **kw)
        ref.backward()
        tol = 1e-6 if dtype == torch.float32 else 1e-3
        assert_close(loss, ref.detach(), tol, "loss")
        assert_close(parts.ce, ref_parts.ce, tol, "ce")
        assert_close(parts.kd, ref_parts.kd, tol, "kd")
        for name, got, want in (("hidden", gh, h2.grad), ("weight", gw, w2.grad), ("bias", gb, b2.grad)):
            err = rel_err(got, want)
            assert err <= 10 * tol, f"grad {name}: {err:.3e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dimensions_and_custom_ignore_index(backend, gen):
    hs, ws, bs = make_side(6, DS, V, torch.float32, gen, lead=(2, 3))
    ht, wt, bt = make_side(6, DT, V, torch.float32, gen, lead=(2, 3))
    y = torch.randint(0, V, (2, 3), generator=gen)
    y[1, 2] = 7
    y[0, 0] = 7
    loss = sk.linear_salt_loss(hs, ws, ht, wt, y, kd_weight=0.5, reduction="none", ignore_index=7, backend=backend)
    assert loss.shape == (2, 3)
    assert float(loss[1, 2]) == 0 and float(loss[0, 0]) == 0
    grad_out = torch.rand(2, 3, generator=gen) + 0.5
    check(hs, ws, bs, ht, wt, bt, y, w=0.5, tau=1.5, reduction="none", grad_out=grad_out, backend=backend, ignore_index=7, chunk_size=2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored_and_no_rows(backend, reduction, gen):
    for n in (5, 0):
        hs, ws, bs = make_side(n, DS, V, torch.float32, gen)
        ht, wt, bt = make_side(n, DT, V, torch.float32, gen)
        y = torch.full((n,), -100, dtype=torch.long)
        loss, parts, gh, gw, gb = run(hs, ws, bs, ht, wt, bt, y, kd_weight=0.5, reduction=reduction, backend=backend,
                                      grad_out=torch.ones(n) if reduction == "none" else None)
        assert float(loss.abs().sum()) == 0 and float(parts.ce.abs().sum()) == 0
        assert loss.shape == ((n,) if reduction == "none" else ())
        for g in (gh, gw, gb):
            assert g is not None and float(g.abs().sum()) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_teacher(backend, gen):
    """kd_weight == 0: teacher None works, and a given teacher is never projected (NaN teacher
    weights, or a teacher on the meta device, change nothing); the result is cross-entropy."""
    hs, ws, bs = make_side(N, DS, V, torch.float32, gen)
    y = torch.randint(0, V, (N,), generator=gen)
    y[2] = -100
    loss, _, gh, gw, gb = check(hs, ws, bs, None, None, None, y, w=0.0, tau=1.0, backend=backend, chunk_size=5)
    ce = torch.nn.functional.cross_entropy(logits64(hs, ws, bs), y)
    assert abs(float(loss) - float(ce)) <= 1e-5 * float(ce)
    nan_t = torch.full((N, DT), float("nan"))
    loss2 = sk.linear_salt_loss(hs, ws, nan_t, torch.full((V, DT), float("nan")), y, student_bias=bs, kd_weight=0.0, backend=backend, chunk_size=5)
    assert float(loss2) == float(loss)
    meta = torch.empty(N, DT, device="meta")
    loss3 = sk.linear_salt_loss(hs, ws, meta, torch.empty(V, DT, device="meta"), y, student_bias=bs, kd_weight=0.0, backend=backend, chunk_size=5)
    assert float(loss3) == float(loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend, gen):
    hs, ws, bs = make_side(8, DS, V, torch.float32, gen)
    ht, wt, bt = make_side(8, DT, V, torch.float32, gen)
    ht[3, 0] = float("nan")
    y = torch.randint(0, V, (8,), generator=gen)
    loss = sk.linear_salt_loss(hs, ws, ht, wt, y, kd_weight=0.5, reduction="none", backend=backend)
    assert math.isnan(float(loss[3])) and bool(torch.isfinite(loss[[0, 1, 2, 4, 5, 6, 7]]).all())


class RecordingBackend:
    """Wraps a backend and records the logits each rows() call sees."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def rows(self, student, teacher, labels, **kw):
        self.calls.append((tuple(student.shape), None if teacher is None else tuple(teacher.shape), labels.clone()))
        return self.inner.rows(student, teacher, labels, **kw)


@pytest.mark.parametrize("kd_weight", [0.5, 0.0])
def test_chunks_and_dropped_rows(monkeypatch, gen, kd_weight):
    """rows() sees only non-ignored rows, in chunks of at most chunk_size, never the whole
    [tokens x vocab]; without a teacher it is given none."""
    from salt_kernels.backends import registry as dispatch

    rec = RecordingBackend(dispatch.resolve("reference", torch.device("cpu")))
    monkeypatch.setattr(dispatch, "get", lambda name: rec)
    hs, ws, bs = make_side(50, DS, V, torch.float32, gen)
    ht, wt, bt = make_side(50, DT, V, torch.float32, gen)
    y = torch.randint(0, V, (50,), generator=gen)
    y[::4] = -100  # 13 ignored, 37 left
    check(hs, ws, bs, ht, wt, bt, y, w=kd_weight, tau=2.0, chunk_size=8)
    sizes = [c[0][0] for c in rec.calls]
    assert sizes == [8, 8, 8, 8, 5]
    assert all(c[0][1] == V for c in rec.calls)
    assert all((c[1] == c[0]) if kd_weight > 0 else c[1] is None for c in rec.calls)
    seen = torch.cat([c[2] for c in rec.calls])
    assert torch.equal(seen, y[y != -100])


def test_default_chunk_size_follows_budget():
    from salt_kernels.ops.linear_salt_loss import DEFAULT_CHUNK_BYTES, MIN_CHUNK_ROWS, default_chunk_size

    rows = default_chunk_size(100000, 32000, 12)
    assert MIN_CHUNK_ROWS <= rows and rows * 32000 * 12 <= max(DEFAULT_CHUNK_BYTES, MIN_CHUNK_ROWS * 32000 * 12)
    assert rows % 8 == 0
    assert default_chunk_size(5, 32000, 12) == 5
    assert default_chunk_size(100000, 256000, 6) == MIN_CHUNK_ROWS
    assert default_chunk_size(100000, 10, 12) > 1000


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output_scaling_and_retained_graph(backend, gen):
    """backward(3.0) scales the gradient; a second backward through a retained graph (after the
    forward-pass gradient was handed out) recomputes the same gradient."""
    hs, ws, bs = make_side(N, DS, V, torch.float32, gen)
    ht, wt, bt = make_side(N, DT, V, torch.float32, gen)
    y = torch.randint(0, V, (N,), generator=gen)
    check(hs, ws, bs, ht, wt, bt, y, w=0.5, tau=2.0, grad_out=torch.tensor(3.0), backend=backend, chunk_size=6)
    h = hs.clone().requires_grad_()
    w = ws.clone().requires_grad_()
    loss = sk.linear_salt_loss(h, w, ht, wt, y, kd_weight=0.5, temperature=2.0, backend=backend, chunk_size=6)
    loss.backward(retain_graph=True)
    g1h, g1w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    (2 * loss).backward()
    assert rel_err(h.grad, 2 * g1h) <= 1e-6 and rel_err(w.grad, 2 * g1w) <= 1e-6


@pytest.mark.parametrize("which", ["hidden", "weight", "bias"])
def test_partial_requires_grad(which, gen):
    hs, ws, bs = make_side(N, DS, V, torch.float32, gen)
    ht, wt, bt = make_side(N, DT, V, torch.float32, gen)
    y = torch.randint(0, V, (N,), generator=gen)
    leaves = {"hidden": hs.clone(), "weight": ws.clone(), "bias": bs.clone()}
    leaves[which].requires_grad_()
    loss = sk.linear_salt_loss(leaves["hidden"], leaves["weight"], ht, wt, y, student_bias=leaves["bias"], teacher_bias=bt, chunk_size=9)
    loss.backward()
    *_, gh64, gw64, gb64 = oracle(hs, ws, bs, ht, wt, bt, y, w=0.5, tau=1.0, reduction="mean")
    want = {"hidden": gh64, "weight": gw64, "bias": gb64}[which]
    assert rel_err(leaves[which].grad, want) <= 1e-5
    for other in set(leaves) - {which}:
        assert leaves[other].grad is None


def test_no_grad_to_teacher_and_eval_without_grad(gen):
    hs, ws, bs = make_side(N, DS, V, torch.float32, gen)
    ht, wt, bt = make_side(N, DT, V, torch.float32, gen)
    y = torch.randint(0, V, (N,), generator=gen)
    ht.requires_grad_()
    wt.requires_grad_()
    h = hs.clone().requires_grad_()
    loss = sk.linear_salt_loss(h, ws, ht, wt, y)
    loss.backward()
    assert ht.grad is None and wt.grad is None and h.grad is not None
    with torch.no_grad():
        l2 = sk.linear_salt_loss(h, ws, ht, wt, y)
    assert not l2.requires_grad and float(l2) == pytest.approx(float(loss.detach()), rel=1e-6)


def test_autocast_runs_projection_in_autocast_dtype(gen):
    """Under torch.autocast (fp32 weights, as in mixed-precision training) the projections run in
    bf16 like F.linear would; the weight gradient comes back in fp32."""
    hs, ws, bs = make_side(N, DS, V, torch.float32, gen)
    ht, wt, bt = make_side(N, DT, V, torch.float32, gen)
    y = torch.randint(0, V, (N,), generator=gen)
    h, w = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sk.linear_salt_loss(h, w, ht, wt, y, kd_weight=0.5, chunk_size=8)
    loss.backward()
    assert w.grad.dtype == torch.float32 and h.grad.dtype == torch.float32
    hb, wb = hs.bfloat16(), ws.bfloat16()
    l64, *_, gh64, gw64, _ = oracle(hb, wb, None, ht.bfloat16(), wt.bfloat16(), None, y, w=0.5, tau=1.0, reduction="mean")
    assert abs(float(loss.detach()) - float(l64)) <= 1e-3 * float(l64)
    assert rel_err(w.grad, gw64) <= 1e-2 and rel_err(h.grad, gh64) <= 1e-2


def test_module_matches_functional(gen):
    hs, ws, bs = make_side(N, DS, V, torch.float32, gen)
    ht, wt, bt = make_side(N, DT, V, torch.float32, gen)
    y = torch.randint(0, V, (N,), generator=gen)
    crit = sk.LinearSaltLoss(kd_weight=0.3, temperature=2.0, reduction="sum", chunk_size=4)
    assert "chunk_size=4" in repr(crit)
    a = crit(hs, ws, ht, wt, y, student_bias=bs, teacher_bias=bt)
    b = sk.linear_salt_loss(hs, ws, ht, wt, y, student_bias=bs, teacher_bias=bt, kd_weight=0.3, temperature=2.0, reduction="sum", chunk_size=4)
    assert float(a) == float(b)


def _inputs():
    g = torch.Generator().manual_seed(0)
    hs, ws, bs = make_side(4, 8, 20, torch.float32, g)
    ht, wt, bt = make_side(4, 6, 20, torch.float32, g)
    y = torch.randint(0, 20, (4,), generator=g)
    return dict(student_hidden=hs, student_weight=ws, teacher_hidden=ht, teacher_weight=wt, labels=y,
                student_bias=bs, teacher_bias=bt)


BAD = [
    ("student_hidden", lambda a: a.update(student_hidden=a["student_hidden"].int()), TypeError, "student_hidden must have dtype"),
    ("student_hidden", lambda a: a.update(student_hidden=[1.0]), TypeError, "student_hidden must be a torch.Tensor"),
    ("student_weight", lambda a: a.update(student_weight=a["student_weight"][:, :5]), ValueError, "student_weight must have shape (vocab, 8)"),
    ("student_weight", lambda a: a.update(student_weight=a["student_weight"].bfloat16()), TypeError, "student_weight must have the dtype of student_hidden"),
    ("student_weight", lambda a: a.update(student_weight=a["student_weight"][None]), ValueError, "student_weight must be 2-d"),
    ("student_bias", lambda a: a.update(student_bias=a["student_bias"][:5]), ValueError, "student_bias must have shape (20,)"),
    ("teacher_weight", lambda a: a.update(teacher_weight=a["teacher_weight"][:19], teacher_bias=None), ValueError, "teacher_weight has vocabulary size 19 but student_weight has 20; when the two models pad their vocabularies differently pass kd_vocab="),
    ("teacher_weight", lambda a: a.update(teacher_weight=a["teacher_weight"][:, :5]), ValueError, "teacher_weight must have shape (vocab, 6)"),
    ("teacher_hidden", lambda a: a.update(teacher_hidden=a["teacher_hidden"][:3]), ValueError, "teacher_hidden must have the leading shape"),
    ("teacher_hidden", lambda a: a.update(teacher_hidden=None), ValueError, "teacher_hidden is None but kd_weight is 0.5"),
    ("teacher_weight", lambda a: a.update(teacher_weight=None), ValueError, "teacher_weight is None but kd_weight is 0.5"),
    ("teacher_bias", lambda a: a.update(teacher_bias=a["teacher_bias"].half()), TypeError, "teacher_bias must have the dtype of teacher_hidden"),
    ("teacher_weight", lambda a: a.update(teacher_weight=a["teacher_weight"].to("meta")), ValueError, "teacher_weight must be on the device"),
    ("labels", lambda a: a.update(labels=a["labels"][:3]), ValueError, "labels must have shape student_hidden.shape[:-1] = (4,)"),
    ("labels", lambda a: a.update(labels=a["labels"].float()), TypeError, "labels must have dtype int64, int32"),
    ("labels", lambda a: a["labels"].__setitem__(1, 20), ValueError, "labels must be in [0, 20) or equal ignore_index (-100); got 20"),
    ("kd_weight", lambda a: a.update(kd_weight=1.5), ValueError, "kd_weight must be finite and in [0, 1]"),
    ("temperature", lambda a: a.update(temperature=0.0), ValueError, "temperature must be finite and in (0, inf)"),
    ("reduction", lambda a: a.update(reduction="avg"), ValueError, "reduction must be one of mean, sum, none"),
    ("chunk_size", lambda a: a.update(chunk_size=0), ValueError, "chunk_size must be a positive int or None, got 0"),
    ("chunk_size", lambda a: a.update(chunk_size=2.5), TypeError, "chunk_size must be a positive int or None"),
    ("backend", lambda a: a.update(backend="nope"), ValueError, "backend must be 'auto' or one of"),
]


@pytest.mark.parametrize("arg,mutate,exc,message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input(arg, mutate, exc, message):
    a = _inputs()
    a["kd_weight"] = 0.5
    mutate(a)
    pos = [a.pop(k) for k in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight", "labels")]
    with pytest.raises(exc) as info:
        sk.linear_salt_loss(*pos, **a)
    assert message in str(info.value), str(info.value)


def test_gemm_fallback_warns_once(monkeypatch):
    """Where addmm(out_dtype=) is missing, the fp32 fallback is announced once, not silently."""
    import warnings as _w

    from salt_kernels.ops import linear_salt_loss as ls

    calls = []

    def no_out_dtype(*args, **kwargs):
        if "out_dtype" in kwargs:
            calls.append(1)
            raise TypeError("addmm() got an unexpected keyword argument 'out_dtype'")
        return torch.addmm.__wrapped__(*args, **kwargs) if hasattr(torch.addmm, "__wrapped__") else None

    class FakeAcc:
        """An fp32 accumulator that claims to live on a GPU (the fallback path only exists there)."""

        def __init__(self):
            self.t = torch.zeros(3, 2)
            self.dtype = torch.float32
            self.device = torch.device("cuda")

        def addmm_(self, a, b):
            self.t.addmm_(a, b)

    monkeypatch.setattr(ls, "_ADDMM_OUT_DTYPE_OK", {})
    monkeypatch.setattr(torch, "addmm", no_out_dtype)
    acc = FakeAcc()
    a, b = torch.randn(3, 4).bfloat16(), torch.randn(4, 2).bfloat16()
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        ls._accumulate_mm(acc, a, b)
        ls._accumulate_mm(acc, a, b)
    assert len(calls) == 1
    assert sum("out_dtype" in str(w.message) for w in caught) == 1
    torch.testing.assert_close(acc.t, 2 * (a.float() @ b.float()))
