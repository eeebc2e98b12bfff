"""The backend contract, once, for every backend usable here, against the float64 oracle
(tests/oracle.py; docs/design.md, "The loss" and "Numerical acceptance").

Two layers:
  * rows(): the row contract of salt_kernels/backends/base.py, called directly: per-row loss, CE,
    KD, the three log-sum-exps and the scaled gradient; strided rows, no rows, ignored rows,
    -inf and NaN logits, and a teacher never read at kd_weight 0. Backends: reference, cpu,
    triton (under the Triton interpreter on CPU tensors without a GPU, with 128-entry blocks so
    that rows span several blocks), cuda-emulated (the CUDA kernel source run on the CPU by
    tests/cuda_emulator, with the launch the real backend would choose; its access checks turn
    a read of an undeclared teacher into a failure) and, on a GPU, cuda.
  * salt_loss(backend=...): reductions, autograd and input errors on the registered backends
    (reference, cpu, triton and, on a GPU, cuda).

What only one backend has (launch plans, block sizes, launch configurations, the ISA, the
module build) is tested in that backend's own file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import salt_kernels as sk
from oracle import assert_grad_close, assert_rows_match, make_logits, oracle_grad, oracle_reduce, oracle_rows
from salt_kernels.backends import registry

HAS_GPU = torch.cuda.is_available()
CPU = torch.device("cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NEG_INF = float("-inf")
NAN = float("nan")

# The interpreter evaluates masked-off lanes too (e.g. -inf - -inf in padding), which numpy
# reports; the kernels discard those lanes.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


@dataclass
class Backend:
    name: str
    rows: Callable  # the rows() contract of backends/base.py
    device: torch.device
    long_vocab: int  # the longest rows worth their cost on this backend

    def put(self, *tensors):
        out = tuple(None if t is None else t.to(self.device) for t in tensors)
        return out if len(out) > 1 else out[0]


def _usable(name: str, device: torch.device) -> None:
    ok, why = registry.backend_status(name, device)
    if not ok:
        pytest.skip(f"backend {name} is not usable on {device}: {why}")


def _registered(name: str, request) -> Backend:
    if name == "reference":
        return Backend(name, registry.get(name).rows, CPU, 70001)
    if name == "cpu":
        _usable(name, CPU)
        return Backend(name, registry.get(name).rows, CPU, 70001)
    if name == "triton":
        device = torch.device("cuda" if HAS_GPU else "cpu")
        _usable(name, device)
        from salt_kernels.backends.triton import launcher as tb

        mp = request.getfixturevalue("monkeypatch")
        mp.setattr(tb, "MODE", "auto")
        mp.setattr(tb, "SLICE_V", None)
        # Under the interpreter: 128-entry blocks, so that V = 1000 spans 8 blocks, the last ragged
        # (the interpreter costs about 1 ms per program and block). On a GPU: the kernel's choice.
        mp.setattr(tb, "BLOCK_V", None if HAS_GPU else 128)
        return Backend(name, tb.rows, device, 128256 if HAS_GPU else 4099)
    if name == "cuda":
        device = torch.device("cuda")
        if not HAS_GPU:
            pytest.skip("backend cuda needs a CUDA device (its kernel source runs as cuda-emulated here)")
        _usable(name, device)
        module = registry.get(name)

        def rows(*args, **kwargs):
            out = module.rows(*args, **kwargs)
            torch.cuda.synchronize()
            return out

        return Backend(name, rows, device, 128256)
    raise AssertionError(name)


@pytest.fixture(params=["reference", "cpu", "triton", "cuda-emulated", "cuda"])
def backend(request) -> Backend:
    """A backend's rows() and the device its tensors live on."""
    if request.param == "cuda-emulated":
        import cuda_emulator

        lib = request.getfixturevalue("emulator")
        return Backend("cuda-emulated", lambda *a, **k: cuda_emulator.rows(lib, *a, **k), CPU, 4099)
    return _registered(request.param, request)


@pytest.fixture(params=["reference", "cpu", "triton", "cuda"])
def op_backend(request) -> Backend:
    """A backend that salt_loss(backend=name) runs."""
    return _registered(request.param, request)


def labels_for(n, vocab, gen, ignored=(), dtype=torch.int64):
    y = torch.randint(0, vocab, (n,), generator=gen).to(dtype)
    for i in ignored:
        y[i] = -100
    return y


def call_rows(be, z, u, y, *, w, tau, grad_scale=None, ignore_index=-100, grad_fill=NAN):
    """be.rows with a gradient buffer prefilled with grad_fill (every entry must be written) when
    grad_scale is given; returns (RowOutputs, grad or None)."""
    grad = None
    if grad_scale is not None:
        grad = torch.full(z.shape, grad_fill, dtype=z.dtype, device=z.device)
        grad_scale = grad_scale.to(z.device)
    out = be.rows(z, u, y, kd_weight=w, temperature=tau, ignore_index=ignore_index, grad=grad, grad_scale=grad_scale)
    return out, grad


# ==== rows(): the row contract =====================================================================

# Every dtype meets every temperature; the KD weight rotates through 0.3, 1 and 0.
CASES = [(dt, tau, [0.3, 1.0, 0.0][(i + j) % 3]) for i, dt in enumerate(DTYPES) for j, tau in enumerate([0.5, 1.0, 2.0, 4.0])]


@pytest.mark.parametrize("dtype,tau,w", CASES, ids=[f"{str(d)[6:]}-tau{t}-w{w}" for d, t, w in CASES])
def test_rows_match_float64(backend, dtype, tau, w, gen):
    """Loss, parts, log-sum-exps and a gradient scaled per row (as for reduction "none", with
    negative scales), then the same rows without a gradient; the inputs are left unchanged."""
    n, vocab = 6, 1000
    z, u = make_logits((n, vocab), dtype, generator=gen), make_logits((n, vocab), dtype, generator=gen)
    y = labels_for(n, vocab, gen, ignored=(2,))
    scale = torch.rand(n, generator=gen) * 3 - 1
    z, u, y = backend.put(z, u, y)
    before = [t.clone() for t in (z, u, y)]
    out, grad = call_rows(backend, z, u, y, w=w, tau=tau, grad_scale=scale)
    assert_rows_match(out, grad, z, u, y, kd_weight=w, temperature=tau, grad_scale=scale)
    out2, _ = call_rows(backend, z, u, y, w=w, tau=tau)
    assert_rows_match(out2, None, z, u, y, kd_weight=w, temperature=tau)
    for t, b in zip((z, u, y), before):
        assert torch.equal(t, b), "rows() wrote into an input"


VOCABS = ["1", "7", "33", "long"]
TAU_W = [(1.0, 0.3), (0.5, 1.0), (4.0, 0.0), (2.0, 0.5)]


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_vocabulary_sizes(backend, vocab, dtype, gen):
    """From one logit per row to the longest rows the backend is tested with here (70,001 on the
    CPU backends, 4,099 under an interpreter or emulator, 128,256 on a GPU), with one scalar
    gradient scale for all rows (as for reduction "mean")."""
    v = backend.long_vocab if vocab == "long" else int(vocab)
    tau, w = TAU_W[(VOCABS.index(vocab) + DTYPES.index(dtype)) % len(TAU_W)]
    n = 3 if vocab == "long" else 5
    z, u = make_logits((n, v), dtype, generator=gen), make_logits((n, v), dtype, generator=gen)
    y = labels_for(n, v, gen, ignored=(1,))
    y[0] = v - 1
    scale = torch.tensor([0.37])
    z, u, y = backend.put(z, u, y)
    out, grad = call_rows(backend, z, u, y, w=w, tau=tau, grad_scale=scale)
    assert_rows_match(out, grad, z, u, y, kd_weight=w, temperature=tau, grad_scale=scale)


@pytest.mark.parametrize("zdt,udt", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16),
                                     (torch.float16, torch.bfloat16)], ids=str)
def test_rows_mixed_dtypes_and_int32_labels(backend, zdt, udt, gen):
    n, vocab = 4, 700
    z, u = make_logits((n, vocab), zdt, generator=gen), make_logits((n, vocab), udt, generator=gen)
    y = labels_for(n, vocab, gen, ignored=(3,), dtype=torch.int32)
    scale = torch.rand(n, generator=gen) + 0.5
    z, u, y = backend.put(z, u, y)
    out, grad = call_rows(backend, z, u, y, w=0.5, tau=2.0, grad_scale=scale)
    assert_rows_match(out, grad, z, u, y, kd_weight=0.5, temperature=2.0, grad_scale=scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_strided_rows_and_labels(backend, dtype, gen):
    """Rows inside wider buffers at different offsets (so the student and the teacher rows are
    misaligned, differently), labels every other element, a gradient with its own row stride:
    nothing outside the rows is read (the padding would show) or written."""
    n, vocab = 4, 777
    udt = torch.float32 if dtype != torch.float32 else torch.bfloat16

    def embed(x, pad, off, fill):
        big = torch.full((n, vocab + pad), fill, dtype=x.dtype)
        big[:, off:off + vocab] = x
        return big, big[:, off:off + vocab]

    _, z = embed(make_logits((n, vocab), dtype, generator=gen), 5, 1, 1e4)
    _, u = embed(make_logits((n, vocab), udt, generator=gen), 3, 3, 1e4)
    y2 = torch.full((2 * n,), 7, dtype=torch.int32)
    y2[::2] = labels_for(n, vocab, gen, ignored=(2,))
    gbuf = torch.full((n, vocab + 6), 777.0, dtype=dtype)
    z, u, y2, gbuf = backend.put(z, u, y2, gbuf)
    y, grad = y2[::2], gbuf[:, 2:2 + vocab]
    assert z.stride(0) == vocab + 5 and y.stride(0) == 2 and grad.stride(0) == vocab + 6
    scale = torch.rand(n, generator=gen) + 0.5
    out = backend.rows(z, u, y, kd_weight=0.6, temperature=2.0, ignore_index=-100, grad=grad,
                       grad_scale=scale.to(backend.device))
    assert_rows_match(out, grad, z, u, y, kd_weight=0.6, temperature=2.0, grad_scale=scale)
    outside = torch.ones(gbuf.shape, dtype=torch.bool, device=gbuf.device)
    outside[:, 2:2 + vocab] = False
    assert bool((gbuf[outside] == 777.0).all()), "the gradient was written outside its rows"


def test_rows_no_rows(backend):
    vocab = 50
    z, u, y = backend.put(torch.empty(0, vocab), torch.empty(0, vocab), torch.empty(0, dtype=torch.int64))
    out, grad = call_rows(backend, z, u, y, w=0.5, tau=2.0, grad_scale=torch.ones(1))
    assert out.loss.shape == out.ce.shape == out.kd.shape == (0,) and out.lse.shape == (0, 3)
    assert out.loss.dtype == torch.float32 and grad.shape == (0, vocab)


def test_rows_all_ignored(backend, gen):
    """Every row ignored (a custom ignore_index): zeros everywhere, the gradient included."""
    z, u = make_logits((4, 300), generator=gen), make_logits((4, 300), generator=gen)
    y = torch.full((4,), -7)
    z, u, y = backend.put(z, u, y)
    out, grad = call_rows(backend, z, u, y, w=0.5, tau=1.0, grad_scale=torch.ones(1), ignore_index=-7)
    for t in (out.loss, out.ce, out.kd, out.lse, grad):
        assert bool((t == 0).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_teacher_neg_inf(backend, dtype, gen):
    """A masked teacher vocabulary (p_j == 0): those terms add nothing and the rows stay finite;
    a single allowed token, long -inf stretches across blocks, scattered -inf."""
    n, vocab = 4, 1000
    z, u = make_logits((n, vocab), dtype, generator=gen), make_logits((n, vocab), dtype, generator=gen)
    mask = torch.rand(n, vocab, generator=gen) < 0.3
    mask[0] = True
    mask[0, 5] = False  # row 0: one allowed token
    mask[1, : vocab // 2 + 300] = True  # row 1: whole blocks without teacher mass
    u = u.masked_fill(mask, NEG_INF)
    y = labels_for(n, vocab, gen, ignored=(3,))
    z, u, y = backend.put(z, u, y)
    for tau, w in [(1.0, 0.5), (2.0, 0.7), (0.5, 1.0)]:
        out, grad = call_rows(backend, z, u, y, w=w, tau=tau, grad_scale=torch.ones(1))
        assert bool(torch.isfinite(out.loss).all())
        assert_rows_match(out, grad, z, u, y, kd_weight=w, temperature=tau, grad_scale=torch.ones(1))


def test_rows_student_neg_inf(backend, gen):
    """Student -inf where the teacher is -inf too: finite. Under teacher mass: KD = +inf. At the
    label: CE = +inf, so the loss is +inf unless kd_weight is 1 (then it is the finite KD)."""
    n, vocab = 6, 1000
    z, u = make_logits((n, vocab), generator=gen), make_logits((n, vocab), generator=gen)
    y = labels_for(n, vocab, gen) % (vocab - 40) + 40
    z[:, 10:40] = NEG_INF
    u[:, 10:40] = NEG_INF  # every row: both -inf there
    z[3, 100] = NEG_INF  # the teacher has mass there
    z[4, y[4]] = NEG_INF  # the label; the teacher is -inf there too
    u[4, y[4]] = NEG_INF
    z, u, y = backend.put(z, u, y)
    fine = [0, 1, 2, 5]
    out, grad = call_rows(backend, z, u, y, w=0.5, tau=2.0, grad_scale=torch.ones(1))
    assert_rows_match(type(out)(out.loss[fine], out.ce[fine], out.kd[fine], out.lse[fine]), grad[fine],
                      z[fine], u[fine], y[fine], kd_weight=0.5, temperature=2.0, grad_scale=torch.ones(1))
    assert float(out.kd[3]) == math.inf and float(out.loss[3]) == math.inf and math.isfinite(float(out.ce[3]))
    assert float(out.ce[4]) == math.inf and float(out.loss[4]) == math.inf and math.isfinite(float(out.kd[4]))
    kd_only, _ = call_rows(backend, z, u, y, w=1.0, tau=2.0)
    assert bool(torch.isfinite(kd_only.loss[[0, 1, 2, 4, 5]]).all()) and float(kd_only.loss[3]) == math.inf
    assert_rows_match(type(out)(*(t[[4]] for t in (kd_only.loss, kd_only.ce, kd_only.kd, kd_only.lse))), None,
                      z[[4]], u[[4]], y[[4]], kd_weight=1.0, temperature=2.0)
    ce_only, _ = call_rows(backend, z, None, y, w=0.0, tau=1.0)
    assert float(ce_only.loss[4]) == math.inf and bool(torch.isfinite(ce_only.loss[[0, 1, 2, 3, 5]]).all())


@pytest.mark.parametrize("where", ["student", "teacher"])
def test_rows_nan_propagates(backend, where, gen):
    """A NaN in a used row makes its loss and its whole gradient row NaN, and nothing else; in an
    ignored row it reaches nothing."""
    n, vocab = 3, 400
    z, u = make_logits((n, vocab), generator=gen), make_logits((n, vocab), generator=gen)
    (z if where == "student" else u)[1, 333] = NAN
    y = labels_for(n, vocab, gen)
    z, u, y = backend.put(z, u, y)
    out, grad = call_rows(backend, z, u, y, w=0.5, tau=2.0, grad_scale=torch.ones(1), grad_fill=0.0)
    assert math.isnan(float(out.loss[1])) and bool(torch.isnan(grad[1]).all())
    if where == "teacher":
        assert math.isnan(float(out.kd[1]))
    keep = [0, 2]
    assert bool(torch.isfinite(out.loss[keep]).all()) and bool(torch.isfinite(grad[keep]).all())
    y[1] = -100
    out, grad = call_rows(backend, z, u, y, w=0.5, tau=2.0, grad_scale=torch.ones(1))
    assert float(out.loss[1]) == 0 and bool((grad[1] == 0).all()) and bool(torch.isfinite(out.loss).all())


def test_rows_zero_kd_weight_never_reads_the_teacher(backend, gen):
    """kd_weight 0: a NaN teacher changes nothing (the emulated kernel would also report any
    access to it), the result is the cross-entropy, KD is 0."""
    n, vocab = 5, 900
    z = make_logits((n, vocab), generator=gen)
    y = labels_for(n, vocab, gen, ignored=(3,))
    poison = torch.full((n, vocab), NAN)
    z, y, poison = backend.put(z, y, poison)
    scale = torch.rand(n, generator=gen) + 0.5
    a, ga = call_rows(backend, z, poison, y, w=0.0, tau=3.0, grad_scale=scale)
    b, gb = call_rows(backend, z, None, y, w=0.0, tau=3.0, grad_scale=scale)
    assert_rows_match(a, ga, z, None, y, kd_weight=0.0, temperature=3.0, grad_scale=scale)
    assert bool((a.kd == 0).all())
    assert torch.equal(a.loss, b.loss) and torch.equal(a.ce, b.ce) and torch.equal(ga, gb)


# ==== salt_loss(backend=...): reductions, autograd, errors ========================================


def assert_loss_close(got, want, rel=1e-5, floor=1e-6, what="loss"):
    got, want = got.detach().cpu().double(), want.double()
    assert got.shape == want.shape, (what, tuple(got.shape), tuple(want.shape))
    err = (got - want).abs()
    assert bool((err <= rel * want.abs() + floor).all()), f"{what}: max error {float(err.max()):.3e}"


def check_op(be, student, teacher, labels, *, w, tau, reduction="mean", grad_out=None):
    """salt_loss forward and backward on CPU inputs moved to the backend's device, against the
    oracle: the loss, its parts (at the scale of the whole loss) and the student's gradient."""
    s, t, y = be.put(student, teacher, labels)
    z = s.clone().requires_grad_()
    loss, parts = sk.salt_loss(z, t, y, kd_weight=w, temperature=tau, reduction=reduction, backend=be.name,
                               return_parts=True)
    assert loss.dtype == torch.float32 and not parts.ce.requires_grad and not parts.kd.requires_grad
    loss.backward(None if grad_out is None else grad_out.to(be.device))
    rl, rc, rk = oracle_rows(student, teacher, labels, w, tau)
    assert_loss_close(loss, oracle_reduce(rl, labels, reduction))
    scale = float(oracle_reduce(rl.abs() + rc.abs() + rk.abs(), labels, reduction).abs().max()) + 0.1
    assert_loss_close(parts.ce, oracle_reduce(rc, labels, reduction), rel=0, floor=1e-5 * scale, what="ce")
    assert_loss_close(parts.kd, oracle_reduce(rk, labels, reduction), rel=0, floor=1e-5 * scale, what="kd")
    assert z.grad.dtype == student.dtype and z.grad.shape == student.shape
    assert_grad_close(z.grad, oracle_grad(student, teacher, labels, w, tau, row_weights=grad_out,
                                          reduction=reduction), student.dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_op_reductions_of_batched_rows(op_backend, reduction, dtype, gen):
    b, t, v = 2, 4, 300
    z, u = make_logits((b, t, v), dtype, generator=gen), make_logits((b, t, v), dtype, generator=gen)
    y = torch.randint(0, v, (b, t), generator=gen)
    y[0, 1] = y[1, 3] = -100
    grad_out = torch.rand(b, t, generator=gen) * 3 - 1 if reduction == "none" else None
    check_op(op_backend, z, u, y, w=0.4, tau=2.0, reduction=reduction, grad_out=grad_out)


def test_op_scalar_grad_output(op_backend, gen):
    z, u = make_logits((6, 301), generator=gen), make_logits((6, 301), generator=gen)
    y = torch.randint(0, 301, (6,), generator=gen)
    check_op(op_backend, z, u, y, w=0.5, tau=2.0, grad_out=torch.tensor(2.5))


def test_op_non_contiguous_inputs(op_backend, gen):
    """Shifted causal-LM logits (a strided 3-D view of a leaf) and a teacher laid out
    vocab-major; the leaf gets the gradient of its view."""
    be = op_backend
    b, t, v = 2, 5, 301
    full = make_logits((b, t + 1, v), generator=gen)
    z = full[:, :-1, :]
    u = make_logits((v, b, t), generator=gen).permute(1, 2, 0)
    assert not z.is_contiguous() and u.stride(-1) != 1
    y = torch.randint(0, v, (b, t), generator=gen)
    check_op(be, z, u, y, w=0.5, tau=2.0)
    leaf = be.put(full).clone().requires_grad_()
    sk.salt_loss(leaf[:, :-1, :], be.put(u), be.put(y), kd_weight=0.5, temperature=2.0, backend=be.name).backward()
    assert_grad_close(leaf.grad[:, :-1, :], oracle_grad(z, u, y, 0.5, 2.0), torch.float32)
    assert float(leaf.grad[:, -1, :].abs().max()) == 0.0


@pytest.mark.parametrize("shape", [(0, 50), (2, 0, 50)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_op_no_rows(op_backend, shape, reduction):
    z = op_backend.put(torch.randn(shape)).requires_grad_()
    u, y = op_backend.put(torch.randn(shape), torch.zeros(shape[:-1], dtype=torch.long))
    loss = sk.salt_loss(z, u, y, reduction=reduction, backend=op_backend.name)
    assert loss.shape == (y.shape if reduction == "none" else ())
    loss.sum().backward()
    assert z.grad.shape == z.shape
    if reduction != "none":
        assert float(loss.detach()) == 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_op_all_rows_ignored(op_backend, reduction, gen):
    z = op_backend.put(make_logits((6, 300), generator=gen)).requires_grad_()
    u = op_backend.put(make_logits((6, 300), generator=gen))
    y = op_backend.put(torch.full((6,), -100))
    loss, parts = sk.salt_loss(z, u, y, reduction=reduction, backend=op_backend.name, return_parts=True)
    assert float(loss.detach().abs().sum()) == 0.0 and float(parts.ce.abs().sum()) == 0.0
    assert float(parts.kd.abs().sum()) == 0.0
    loss.sum().backward()
    assert float(z.grad.abs().max()) == 0.0


def test_op_zero_kd_weight_never_reads_the_teacher(op_backend, gen):
    n, v = 6, 300
    z = make_logits((n, v), generator=gen)
    y = torch.randint(0, v, (n,), generator=gen)
    zd, yd, poison = op_backend.put(z, y, torch.full((n, v), NAN))
    za, zb = zd.clone().requires_grad_(), zd.clone().requires_grad_()
    a = sk.salt_loss(za, poison, yd, kd_weight=0.0, temperature=2.0, backend=op_backend.name)
    b = sk.salt_loss(zb, None, yd, kd_weight=0.0, temperature=2.0, backend=op_backend.name)
    a.backward()
    b.backward()
    assert math.isfinite(float(a.detach())) and float(a.detach()) == float(b.detach())
    assert torch.equal(za.grad, zb.grad)
    assert_loss_close(a, oracle_reduce(oracle_rows(z, None, y, 0.0, 1.0)[0], y, "mean"))


@pytest.mark.parametrize("where", ["student", "teacher"])
def test_op_nan_reaches_the_reduced_loss(op_backend, where, gen):
    n, v = 4, 300
    z, u = make_logits((n, v), generator=gen), make_logits((n, v), generator=gen)
    (z if where == "student" else u)[1, 277] = NAN
    y = torch.randint(0, v, (n,), generator=gen)
    z, u, y = op_backend.put(z, u, y)
    zz = z.clone().requires_grad_()
    rows = sk.salt_loss(zz, u, y, kd_weight=0.5, backend=op_backend.name, reduction="none")
    assert math.isnan(float(rows[1].detach())) and bool(torch.isfinite(rows[[0, 2, 3]]).all())
    assert math.isnan(float(sk.salt_loss(z, u, y, kd_weight=0.5, backend=op_backend.name)))
    rows.sum().backward()
    assert bool(torch.isnan(zz.grad[1]).any()) and bool(torch.isfinite(zz.grad[[0, 2, 3]]).all())


def test_op_teacher_is_not_written_and_gets_no_grad(op_backend, gen):
    z = op_backend.put(make_logits((4, 300), generator=gen)).requires_grad_()
    u = op_backend.put(make_logits((4, 300), generator=gen)).requires_grad_()
    before = u.detach().clone()
    y = op_backend.put(torch.randint(0, 300, (4,), generator=gen))
    sk.salt_loss(z, u, y, kd_weight=0.5, temperature=2.0, backend=op_backend.name).backward()
    assert torch.equal(u.detach(), before) and u.grad is None and z.grad is not None


def test_op_backward_twice_with_retained_graph(op_backend, gen):
    z0, u0 = make_logits((6, 300), generator=gen), make_logits((6, 300), generator=gen)
    y0 = torch.randint(0, 300, (6,), generator=gen)
    z, u, y = op_backend.put(z0, u0, y0)
    z = z.requires_grad_()
    loss = sk.salt_loss(z, u, y, kd_weight=0.5, temperature=2.0, backend=op_backend.name)
    loss.backward(retain_graph=True)
    first = z.grad.clone()
    loss.backward(retain_graph=True)
    loss.backward()
    assert_grad_close(z.grad, 3 * first.cpu().double(), torch.float32)
    assert_grad_close(first, oracle_grad(z0, u0, y0, 0.5, 2.0), torch.float32)


def test_op_module_and_no_grad(op_backend, gen):
    z, u = make_logits((2, 3, 333), generator=gen), make_logits((2, 3, 333), generator=gen)
    y = torch.randint(0, 333, (2, 3), generator=gen)
    z, u, y = op_backend.put(z, u, y)
    crit = sk.SaltLoss(kd_weight=0.25, temperature=3.0, backend=op_backend.name)
    with torch.no_grad():
        got = crit(z, u, y)
    assert not got.requires_grad
    assert float(got) == float(sk.salt_loss(z, u, y, kd_weight=0.25, temperature=3.0, backend=op_backend.name))
    assert "kd_weight=0.25" in repr(crit)


def _good_inputs():
    return dict(student_logits=torch.randn(4, 10), teacher_logits=torch.randn(4, 10), labels=torch.randint(0, 10, (4,)))


BAD = [
    # (overrides, exception, words the message must contain)
    (dict(teacher_logits=torch.randn(4, 11)), ValueError, ["teacher_logits", "11", "10", "kd_vocab="]),
    (dict(teacher_logits=torch.randn(3, 10)), ValueError, ["teacher_logits", "(4, 10)", "(3, 10)"]),
    (dict(labels=torch.randint(0, 10, (5,))), ValueError, ["labels", "(4,)", "(5,)"]),
    (dict(labels=torch.randint(0, 10, (4, 1))), ValueError, ["labels", "(4, 1)"]),
    (dict(student_logits=torch.randint(0, 3, (4, 10))), TypeError, ["student_logits", "int64"]),
    (dict(labels=torch.randint(0, 10, (4,)).float()), TypeError, ["labels", "float32"]),
    (dict(labels=torch.randint(0, 10, (4,)).to(torch.int16)), TypeError, ["labels", "int16"]),
    (dict(student_logits=torch.tensor(1.0)), ValueError, ["student_logits", "0-d"]),
    (dict(kd_weight=1.5), ValueError, ["kd_weight", "1.5"]),
    (dict(kd_weight=float("nan")), ValueError, ["kd_weight", "nan"]),
    (dict(temperature=0.0), ValueError, ["temperature", "0.0"]),
    (dict(temperature=math.inf), ValueError, ["temperature", "inf"]),
    (dict(reduction="avg"), ValueError, ["reduction", "avg"]),
    (dict(teacher_logits=None), ValueError, ["teacher_logits", "kd_weight"]),
    (dict(labels=torch.tensor([0, 1, 10, 2])), ValueError, ["labels", "10", "[0, 10)"]),
    (dict(labels=torch.tensor([0, -1, 3, 2])), ValueError, ["labels", "-1"]),
]


@pytest.mark.parametrize("overrides,exc,words", BAD, ids=[f"{next(iter(o))}-{i}" for i, (o, _, _) in enumerate(BAD)])
def test_op_bad_input_raises_a_clear_error(op_backend, overrides, exc, words):
    """An explicit backend never skips a check: each bad input raises, naming the argument, what
    was expected and what came (tests/test_errors.py has every case, with backend "auto")."""
    labels = overrides.get("labels")
    out_of_range = labels is not None and labels.shape == (4,) and labels.dtype == torch.int64
    if out_of_range and op_backend.device.type == "cuda":
        pytest.skip("on a GPU a label out of range is a device-side assert, which ends the process's CUDA context")
    args = _good_inputs()
    options = {}
    for key, value in overrides.items():
        (args if key in args else options)[key] = value
    args = {k: op_backend.put(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(exc) as info:
        sk.salt_loss(args["student_logits"], args["teacher_logits"], args["labels"], backend=op_backend.name, **options)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"
