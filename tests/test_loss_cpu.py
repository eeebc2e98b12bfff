"""salt_loss on the CPU backends (reference and the C++ kernel) against float64 evaluation of
docs/design.md, "The loss", with the tolerances of its "Numerical acceptance"."""

import pytest
import torch

import salt_kernels as sk
from oracle import make_logits, oracle_grad, oracle_reduce, oracle_rows

BACKENDS = ["reference", "cpu"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
F64 = torch.float64


def grad_tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-2


def assert_loss_close(got, want, rel=1e-5, abs_floor=1e-6):
    got, want = got.double(), want.double()
    assert got.shape == want.shape
    err = (got - want).abs()
    bound = rel * want.abs() + abs_floor
    assert bool((err <= bound).all()), f"max error {err.max():.3e} vs bound {bound[err.argmax()] if err.dim() else bound:.3e}"


def assert_grad_close(got, want, dtype):
    got, want = got.double(), want.double()
    err = float((got - want).norm())
    if want.numel() == 0 or float(want.abs().max()) < 1e-6:
        # An identically ~zero gradient (V == 1): no relative measure exists; allow fp32 rounding.
        assert want.numel() == 0 or float((got - want).abs().max()) <= 1e-7, f"gradient error {err:.3e} on a zero gradient"
        return
    rel = err / float(want.norm())
    assert rel <= grad_tol(dtype), f"relative gradient error {rel:.3e} > {grad_tol(dtype):g}"


def run_case(backend, student, teacher, labels, *, w, tau, reduction="mean", grad_out=None):
    z = student.clone().requires_grad_()
    loss, parts = sk.salt_loss(
        z, teacher, labels, kd_weight=w, temperature=tau, reduction=reduction, backend=backend, return_parts=True
    )
    assert loss.dtype == torch.float32
    if grad_out is None:
        loss.backward()
    else:
        loss.backward(grad_out)
    return loss.detach(), parts, z.grad


def check_against_oracle(backend, student, teacher, labels, *, w, tau, reduction="mean", grad_out=None):
    loss, parts, grad = run_case(backend, student, teacher, labels, w=w, tau=tau, reduction=reduction, grad_out=grad_out)
    rl, rc, rk = oracle_rows(student, teacher, labels, w, tau)
    assert_loss_close(loss, oracle_reduce(rl, labels, reduction))
    # Parts: each is checked at the scale of the total loss (KD may be tiny next to CE).
    scale = float(oracle_reduce(rl.abs() + rc.abs() + rk.abs(), labels, reduction).abs().max()) + 0.1
    assert_loss_close(parts.ce, oracle_reduce(rc, labels, reduction), rel=0, abs_floor=1e-5 * scale)
    assert_loss_close(parts.kd, oracle_reduce(rk, labels, reduction), rel=0, abs_floor=1e-5 * scale)
    assert not parts.ce.requires_grad and not parts.kd.requires_grad
    want_grad = oracle_grad(student, teacher, labels, w, tau, row_weights=grad_out, reduction=reduction)
    assert grad.dtype == student.dtype and grad.shape == student.shape
    assert_grad_close(grad, want_grad, student.dtype)


# (V, N): rows sized so each case is a few hundred thousand logits at most.
SHAPES = [(1, 16), (7, 128), (1000, 48), (32000, 6), (70001, 3)]
TAU_W = [(1.0, 0.3), (2.0, 0.5), (0.5, 1.0), (4.0, 0.0), (2.0, 1.0), (1.0, 0.0)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab,n", SHAPES)
@pytest.mark.parametrize("tau,w", TAU_W)
def test_matches_float64(backend, dtype, vocab, n, tau, w, gen):
    z = make_logits((n, vocab), dtype, generator=gen)
    u = make_logits((n, vocab), dtype, generator=gen)
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[n // 2] = -100
    check_against_oracle(backend, z, u, y, w=w, tau=tau)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reductions_3d(backend, reduction, dtype, gen):
    b, t, v = 3, 5, 1000
    z = make_logits((b, t, v), dtype, generator=gen)
    u = make_logits((b, t, v), dtype, generator=gen)
    y = torch.randint(0, v, (b, t), generator=gen)
    y[0, 1] = y[2, 4] = -100
    grad_out = torch.rand(b, t, generator=gen) * 3 - 1 if reduction == "none" else None
    check_against_oracle(backend, z, u, y, w=0.4, tau=2.0, reduction=reduction, grad_out=grad_out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output_scalar_not_one(backend, gen):
    z = make_logits((16, 777), generator=gen)
    u = make_logits((16, 777), generator=gen)
    y = torch.randint(0, 777, (16,), generator=gen)
    check_against_oracle(backend, z, u, y, w=0.5, tau=2.0, grad_out=torch.tensor(2.5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend, gen):
    # Shifted causal-LM logits (a strided 3-D view) and a teacher laid out vocab-major.
    b, t, v = 2, 9, 513
    full = make_logits((b, t + 1, v), generator=gen)
    z = full[:, :-1, :]
    u = make_logits((v, b, t), generator=gen).permute(1, 2, 0)
    assert not z.is_contiguous() and u.stride(-1) != 1
    y = torch.randint(0, v, (b, t), generator=gen)
    zz = z.detach().clone().requires_grad_()
    check_against_oracle(backend, z, u, y, w=0.5, tau=2.0)
    # The strided view of a leaf gets its gradient too.
    leaf = full.clone().requires_grad_()
    sk.salt_loss(leaf[:, :-1, :], u, y, kd_weight=0.5, temperature=2.0, backend=backend).backward()
    want = oracle_grad(z, u, y, 0.5, 2.0)
    assert_grad_close(leaf.grad[:, :-1, :], want, torch.float32)
    assert float(leaf.grad[:, -1, :].abs().max()) == 0.0
    del zz


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 50), (2, 0, 50)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_rows(backend, shape, reduction):
    z = torch.randn(shape).requires_grad_()
    u = torch.randn(shape)
    y = torch.zeros(shape[:-1], dtype=torch.long)
    loss = sk.salt_loss(z, u, y, reduction=reduction, backend=backend)
    assert loss.shape == (y.shape if reduction == "none" else ())
    loss.sum().backward()
    assert z.grad.shape == z.shape
    if reduction != "none":
        assert float(loss.detach()) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored(backend, reduction, gen):
    z = make_logits((6, 300), generator=gen).requires_grad_()
    u = make_logits((6, 300), generator=gen)
    y = torch.full((6,), -100)
    loss, parts = sk.salt_loss(z, u, y, reduction=reduction, backend=backend, return_parts=True)
    assert float(loss.detach().abs().sum()) == 0.0 and float(parts.ce.abs().sum()) == 0.0
    loss.sum().backward()
    assert float(z.grad.abs().max()) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_teacher_neg_inf_entries(backend, dtype, gen):
    # Masked teacher vocabulary (p_j == 0): those terms contribute 0, the loss stays finite.
    n, v = 12, 3000
    z = make_logits((n, v), dtype, generator=gen)
    u = make_logits((n, v), dtype, generator=gen)
    mask = torch.rand(n, v, generator=gen) < 0.3
    mask[0] = True
    mask[0, 5] = False  # row 0: a single allowed token
    mask[1, : v // 2 + 700] = True  # whole chunks of -inf
    u = u.masked_fill(mask, float("-inf"))
    y = torch.randint(0, v, (n,), generator=gen)
    for tau, w in [(1.0, 0.5), (2.0, 0.7), (0.5, 1.0)]:
        check_against_oracle(backend, z, u, y, w=w, tau=tau)


@pytest.mark.parametrize("backend", BACKENDS)
def test_student_neg_inf_entries(backend, gen):
    n, v = 8, 2000
    z = make_logits((n, v), generator=gen)
    u = make_logits((n, v), generator=gen)
    # Student -inf where the teacher is -inf too: finite; where the teacher has mass: +inf.
    both = torch.zeros(n, v, dtype=torch.bool)
    both[:, 10:40] = True
    z = z.masked_fill(both, float("-inf"))
    u = u.masked_fill(both, float("-inf"))
    y = torch.randint(40, v, (n,), generator=gen)
    check_against_oracle(backend, z, u, y, w=0.5, tau=2.0)
    z2 = z.clone()
    z2[3, 100] = float("-inf")  # teacher has mass there
    loss = sk.salt_loss(z2, u, y, kd_weight=0.5, temperature=2.0, backend=backend, reduction="none")
    assert torch.isinf(loss[3]) and loss[3] > 0
    assert torch.isfinite(loss[torch.arange(n) != 3]).all()
    # Student -inf at the label: CE is +inf; with kd_weight 1 the loss is the (finite) KD.
    z3 = z.clone()
    z3[2, y[2]] = float("-inf")
    u3 = u.clone()
    u3[2, y[2]] = float("-inf")
    ce_only = sk.salt_loss(z3, None, y, kd_weight=0.0, backend=backend, reduction="none")
    assert torch.isinf(ce_only[2])
    kd_only = sk.salt_loss(z3, u3, y, kd_weight=1.0, backend=backend, reduction="none")
    assert torch.isfinite(kd_only[2])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["student", "teacher"])
def test_nan_propagates(backend, where, gen):
    n, v = 4, 1500
    z = make_logits((n, v), generator=gen)
    u = make_logits((n, v), generator=gen)
    (z if where == "student" else u)[1, 777] = float("nan")
    y = torch.randint(0, v, (n,), generator=gen)
    zz = z.clone().requires_grad_()
    rows = sk.salt_loss(zz, u, y, kd_weight=0.5, backend=backend, reduction="none")
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2, 3]]).all()
    assert torch.isnan(sk.salt_loss(z, u, y, kd_weight=0.5, backend=backend))
    rows.sum().backward()
    assert torch.isnan(zz.grad[1]).any() and torch.isfinite(zz.grad[[0, 2, 3]]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_kd_weight_never_reads_teacher(backend, gen):
    n, v = 10, 800
    z = make_logits((n, v), generator=gen)
    y = torch.randint(0, v, (n,), generator=gen)
    poisoned = torch.full((n, v), float("nan"))  # any read would make the loss NaN
    a = sk.salt_loss(z, poisoned, y, kd_weight=0.0, backend=backend)
    b = sk.salt_loss(z, None, y, kd_weight=0.0, backend=backend)
    assert torch.isfinite(a) and float(a) == float(b)
    rl, _, _ = oracle_rows(z, None, y, 0.0, 1.0)
    assert_loss_close(a, oracle_reduce(rl, y, "mean"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_is_not_written_and_gets_no_grad(backend, gen):
    z = make_logits((8, 600), generator=gen).requires_grad_()
    u = make_logits((8, 600), generator=gen).requires_grad_()
    before = u.detach().clone()
    y = torch.randint(0, 600, (8,), generator=gen)
    sk.salt_loss(z, u, y, kd_weight=0.5, temperature=2.0, backend=backend).backward()
    assert torch.equal(u.detach(), before) and u.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_and_int32_labels(backend, gen):
    n, v = 16, 2048
    z = make_logits((n, v), torch.float32, generator=gen)
    u = make_logits((n, v), torch.bfloat16, generator=gen)
    y = torch.randint(0, v, (n,), generator=gen, dtype=torch.int32)
    y[0] = -100
    check_against_oracle(backend, z, u, y, w=0.5, tau=2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_twice_with_retained_graph(backend, gen):
    z = make_logits((8, 900), generator=gen).requires_grad_()
    u = make_logits((8, 900), generator=gen)
    y = torch.randint(0, 900, (8,), generator=gen)
    loss = sk.salt_loss(z, u, y, kd_weight=0.5, temperature=2.0, backend=backend)
    loss.backward(retain_graph=True)
    first = z.grad.clone()
    loss.backward(retain_graph=True)
    loss.backward()
    assert_grad_close(z.grad, 3 * first, torch.float32)
    assert_grad_close(first, oracle_grad(z.detach(), u, y, 0.5, 2.0), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_and_no_grad(backend, gen):
    z = make_logits((4, 7, 333), generator=gen)
    u = make_logits((4, 7, 333), generator=gen)
    y = torch.randint(0, 333, (4, 7), generator=gen)
    crit = sk.SaltLoss(kd_weight=0.25, temperature=3.0, backend=backend)
    with torch.no_grad():
        got = crit(z, u, y)
    assert float(got) == float(sk.salt_loss(z, u, y, kd_weight=0.25, temperature=3.0, backend=backend))
    assert "kd_weight=0.25" in repr(crit)


def test_cpu_kernel_matches_plain_pytorch_baseline(gen):
    from salt_kernels.benchmarking.baselines import eager

    z = make_logits((32, 5000), generator=gen).requires_grad_()
    u = make_logits((32, 5000), generator=gen)
    y = torch.randint(0, 5000, (32,), generator=gen)
    y[3] = -100
    zb = z.detach().clone().requires_grad_()
    ours = sk.salt_loss(z, u, y, kd_weight=0.5, temperature=2.0, backend="cpu")
    theirs = eager(0.5, 2.0)(zb, u, y)
    ours.backward()
    theirs.backward()
    assert_loss_close(ours, theirs.detach(), rel=1e-5)
    assert_grad_close(z.grad, zb.grad, torch.float32)
