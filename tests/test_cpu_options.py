"""The distillation options (docs/design.md, "Distillation options") in the C++ CPU kernel, at
the row contract (docs/design.md, "Row contract"), on what is particular to that kernel: rows of
several 512-entry chunks with kd_vocab inside a chunk, V not a multiple of the SIMD width, V = 1
and kd_vocab = 1, strided rows, labels and gradients, every dtype pair, rows split over threads,
the accuracy output (ties, softcap saturation, NaN), and -inf / NaN entries under every option
(docs/design.md, "Infinities and NaN"). Values are compared with float64 autograd of the formulas
(tests/options_oracle.py), special values with the reference backend."""

from __future__ import annotations

import pytest
import torch

from oracle import make_logits, same_bits_over_threads
from options_oracle import near, option_rows
from salt_kernels.backends import cpu as cpu_backend
from salt_kernels.backends import reference
from salt_kernels.backends.base import LossOptions

pytestmark = pytest.mark.skipif(not cpu_backend.is_available()[0],
                                reason=f"backend cpu is not built: {cpu_backend.is_available()[1]}")

F64 = torch.float64

# Each option alone, then mixtures; "kd_vocab" is filled in per vocabulary size (see _options).
CASES = [
    {},
    {"softcap": 5.0},
    {"softcap": 30.0, "teacher_softcap": 4.0},
    {"kd_vocab": "inside"},
    {"divergence": "reverse_kl"},
    {"divergence": "jsd"},
    {"divergence": "jsd", "beta": 0.2},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-3},
    {"softcap": 6.0, "kd_vocab": "inside", "divergence": "reverse_kl", "label_smoothing": 0.2, "z_loss": 1e-3},
    {"teacher_softcap": 5.0, "kd_vocab": "inside", "divergence": "jsd", "beta": 0.7, "softcap": 8.0,
     "label_smoothing": 0.05},
]


def _case_id(case: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items()) or "default"


def _options(case: dict, vocab: int) -> LossOptions:
    """kd_vocab "inside": a K that ends inside a chunk (and is 1 for V = 1)."""
    kw = dict(case)
    if kw.get("kd_vocab") == "inside":
        kw["kd_vocab"] = max(1, vocab - 517) if vocab > 600 else max(1, vocab - 3)
    return LossOptions(**kw)


def _oracle_kw(options: LossOptions) -> dict:
    return dict(softcap=options.softcap, teacher_softcap=options.teacher_softcap, kd_vocab=options.kd_vocab,
                divergence_kind=options.divergence, beta=options.beta, label_smoothing=options.label_smoothing,
                z_loss=options.z_loss)


def _strided(x: torch.Tensor, pad: int) -> torch.Tensor:
    """x as rows of a wider buffer (row stride > vocabulary)."""
    wide = torch.full((x.shape[0], x.shape[1] + pad), float("nan"), dtype=x.dtype)
    wide[:, : x.shape[1]] = x
    return wide[:, : x.shape[1]]


def _run(z, u, y, options, *, kd_weight, tau, scale, grad_pad=0, with_grad=True):
    grad = None
    if with_grad:
        grad = _strided(torch.zeros(z.shape, dtype=z.dtype), grad_pad) if grad_pad else torch.empty_like(z)
    out = cpu_backend.rows(z, u, y, kd_weight=kd_weight, temperature=tau, ignore_index=-100, grad=grad,
                           grad_scale=scale, options=options)
    return out, grad


def _check_against_float64(z, u, y, options, out, grad, *, kd_weight, tau, scale, grad_tol):
    """Row values against float64 autograd of the formulas; the gradient as a whole, relative."""
    z64 = z.detach().to(F64).requires_grad_()
    loss, ce, kd, zl, acc = option_rows(z64, u, y, kd_weight=kd_weight, temperature=tau, **_oracle_kw(options))
    (g64,) = torch.autograd.grad((loss * scale.to(F64)).sum(), z64)
    rows_scale = torch.maximum(loss.detach().abs(), torch.ones_like(loss))
    assert near(out.loss, loss.detach(), 1e-5), (out.loss, loss)
    for name, got, want in (("ce", out.ce, ce), ("kd", out.kd, kd)):
        err = (got.double() - want.detach()).abs()
        assert bool((err <= 1e-5 * torch.maximum(want.detach().abs(), rows_scale)).all()), name
    assert torch.equal(out.accuracy.double(), acc), (out.accuracy, acc)
    # lse: lse_z over the whole (capped) student row, lse_zt and lse_u over the KD vocabulary
    valid = y != -100
    zc = z.to(F64) if options.softcap is None else options.softcap * torch.tanh(z.to(F64) / options.softcap)
    lse_z = torch.logsumexp(zc, -1)
    assert near(out.lse[valid, 0], lse_z[valid], 1e-5)
    if u is not None and kd_weight > 0:
        k = options.kd_vocab or z.shape[1]
        uc = u[:, :k].to(F64)
        if options.teacher_softcap is not None:
            uc = options.teacher_softcap * torch.tanh(uc / options.teacher_softcap)
        assert near(out.lse[valid, 1], torch.logsumexp(zc[:, :k] / tau, -1)[valid], 1e-5)
        assert near(out.lse[valid, 2], torch.logsumexp(uc / tau, -1)[valid], 1e-5)
    assert bool((out.lse[~valid] == 0).all())
    if grad is not None:
        assert grad.dtype == z.dtype
        assert bool((grad[~valid] == 0).all())
        diff = grad.double() - g64
        if float(g64.norm()) > 1e-3:
            assert float(diff.norm() / g64.norm()) <= grad_tol, float(diff.norm() / g64.norm())
        else:  # V = 1: the gradient is 0 up to rounding
            assert float(diff.abs().max()) <= 1e-6, float(diff.abs().max())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("vocab", [1, 37, 1500])
def test_rows_match_float64(case, vocab, gen):
    """Rows of one entry, of a few SIMD vectors plus a remainder, and of three chunks with
    kd_vocab ending inside the second; a teacher row longer than kd_vocab; strided student,
    teacher, labels and gradient; per-row gradient scales."""
    n = 12
    options = _options(case, vocab)
    v_t = vocab + 9 if options.kd_vocab else vocab
    z = _strided(make_logits((n, vocab), generator=gen), 5)
    u = _strided(make_logits((n, v_t), generator=gen), 3)
    y = torch.randint(0, vocab, (2 * n,), generator=gen)[::2]
    y[::5] = -100
    scale = torch.rand(n, generator=gen) + 0.5
    out, grad = _run(z, u, y, options, kd_weight=0.6, tau=2.0, scale=scale, grad_pad=7)
    _check_against_float64(z, u, y, options, out, grad, kd_weight=0.6, tau=2.0, scale=scale, grad_tol=1e-5)


@pytest.mark.parametrize("case", [CASES[9], CASES[10]], ids=_case_id)
@pytest.mark.parametrize("dz, du", [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16),
                                    (torch.float32, torch.float16)])
@pytest.mark.parametrize("kd_weight, tau", [(0.0, 1.0), (1.0, 1.0), (0.3, 3.0)])
def test_dtypes_and_weights(case, dz, du, kd_weight, tau, gen):
    """Every student/teacher dtype pair, the weights 0 and 1, tau 1 (z/tau state kept apart from
    z's when kd_vocab < V), on rows of several chunks."""
    n, vocab = 6, 1100
    options = _options(case, vocab)
    z = make_logits((n, vocab), dz, generator=gen)
    u = make_logits((n, vocab + 20), du, generator=gen)
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[2] = -100
    scale = torch.ones(1)
    out, grad = _run(z, u, y, options, kd_weight=kd_weight, tau=tau, scale=scale)
    _check_against_float64(z, u, y, options, out, grad, kd_weight=kd_weight, tau=tau,
                           scale=scale.expand(n), grad_tol=1e-5 if dz == torch.float32 else 1e-2)


@pytest.mark.parametrize("case", [CASES[1], CASES[7], CASES[8], {"softcap": 3.0, "label_smoothing": 0.3, "z_loss": 1e-2}],
                         ids=_case_id)
def test_options_without_teacher(case, gen):
    n, vocab = 10, 700
    options = _options(case, vocab)
    z = make_logits((n, vocab), generator=gen)
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[0] = -100
    scale = torch.rand(n, generator=gen) + 0.5
    out, grad = _run(z, None, y, options, kd_weight=0.0, tau=2.0, scale=scale)
    _check_against_float64(z, None, y, options, out, grad, kd_weight=0.0, tau=2.0, scale=scale, grad_tol=1e-5)
    assert bool((out.kd == 0).all()) and bool((out.lse[:, 2] == 0).all())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_only_gives_the_same_values(case, gen):
    """Without a gradient buffer the kernel keeps fewer exps; the row values are the same bits."""
    n, vocab = 5, 1300
    options = _options(case, vocab)
    z = make_logits((n, vocab), generator=gen)
    u = make_logits((n, vocab + 4), generator=gen)
    y = torch.randint(0, vocab, (n,), generator=gen)
    with_grad, _ = _run(z, u, y, options, kd_weight=0.5, tau=2.0, scale=torch.ones(1))
    without, _ = _run(z, u, y, options, kd_weight=0.5, tau=2.0, scale=torch.ones(1), with_grad=False)
    for name in ("loss", "ce", "kd", "lse", "accuracy"):
        assert torch.equal(getattr(with_grad, name), getattr(without, name)), name


def test_threads_give_the_same_bits(gen):
    """Rows split over 1, 2 or 3 threads (each thread has its own option buffers)."""
    n, vocab = 23, 3000
    options = LossOptions(softcap=20.0, kd_vocab=2900, divergence="jsd", label_smoothing=0.1, z_loss=1e-4)
    z = make_logits((n, vocab), torch.bfloat16, generator=gen)
    u = make_logits((n, vocab + 100), generator=gen)
    y = torch.randint(0, vocab, (n,), generator=gen)
    same_bits_over_threads(lambda: _run(z, u, y, options, kd_weight=0.5, tau=2.0, scale=torch.ones(1)))


@pytest.mark.parametrize("divergence, beta", [("jsd", 0.5), ("jsd", 0.1), ("reverse_kl", 0.5)])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_close_distributions_keep_their_precision(divergence, beta, tau, gen):
    """A student close to its teacher (u = z + 0.1 noise, kd_weight 1: the gradient is the KD
    part alone, and small): each entry's terms come from differences of logits, so D and its
    gradient keep the precision of fp32 PyTorch (an evaluation through entropies, sum p log p +
    ... - sum m log m, cancels: 1e-5 absolute on D, 1e-4 on the gradient at this size)."""
    n, vocab = 4, 32000
    options = LossOptions(divergence=divergence, beta=beta)
    z = make_logits((n, vocab), generator=gen)
    u = z + 0.1 * torch.randn(n, vocab, generator=gen)
    y = torch.randint(0, vocab, (n,), generator=gen)
    out, grad = _run(z, u, y, options, kd_weight=1.0, tau=tau, scale=torch.ones(1))
    z64 = z.to(F64).requires_grad_()
    loss, _, kd, _, _ = option_rows(z64, u, y, kd_weight=1.0, temperature=tau, **_oracle_kw(options))
    (g64,) = torch.autograd.grad(loss.sum(), z64)
    # Reverse KL's D = b / (tau s_zt) - lse_zt + lse_u takes the difference of two log-sum-exps,
    # as the forward KL's does (and fp32 PyTorch's): about 1e-6 absolute.
    kd_floor = 1e-5 if divergence == "reverse_kl" else 3e-7
    assert float((out.kd.double() - kd.detach()).abs().max()) <= 1e-5 * float(kd.detach().abs().max()) + kd_floor
    assert float((grad.double() - g64).norm() / g64.norm()) <= 3e-5


def test_accuracy_ties_chunks_and_softcap_saturation():
    """argmax with the lowest index among equal maxima, maxima in different chunks, and softcapped
    logits that are equal in fp32 but not in float64 (the raw logits decide, as the float64
    capped argmax does); ignored rows give 0."""
    vocab = 1500
    z = torch.zeros(7, vocab)
    y = torch.zeros(7, dtype=torch.int64)
    z[0, [100, 1200]] = 5.0; y[0] = 100     # tie across chunks, label first: hit
    z[1, [100, 1200]] = 5.0; y[1] = 1200    # label second: miss
    z[2, [600, 601]] = 5.0; y[2] = 601      # tie inside a chunk, label second: miss
    z[3, 1499] = 7.0; y[3] = 1499           # last entry of a partial chunk: hit
    z[4, [10, 20]] = torch.tensor([40.0, 44.0]); y[4] = 20  # softcap 4: both 4.0 in fp32
    z[5, :] = float("-inf"); y[5] = 0       # all -inf: argmax is 0
    z[6, 3] = 9.0; y[6] = -100              # ignored
    options = LossOptions(softcap=4.0)
    assert float(4.0 * torch.tanh(torch.tensor(10.0))) == float(4.0 * torch.tanh(torch.tensor(11.0)))
    out, _ = _run(z, None, y, options, kd_weight=0.0, tau=1.0, scale=torch.ones(1), with_grad=False)
    assert out.accuracy.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    plain, _ = _run(z, None, y, LossOptions(), kd_weight=0.0, tau=1.0, scale=torch.ones(1), with_grad=False)
    assert plain.accuracy.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]


def _special_rows(gen, vocab: int, v_t: int):
    """Rows with -inf and NaN entries (docs/design.md, "Infinities and NaN"), one kind per row."""
    n = 10
    z = make_logits((n, vocab), generator=gen)
    u = make_logits((n, v_t), generator=gen)
    y = torch.randint(0, vocab, (n,), generator=gen)
    ninf, nan = float("-inf"), float("nan")
    u[1, [3, 700, 1001]] = ninf             # teacher -inf: p = 0 there
    u[2, 512:1024] = ninf                   # a whole teacher chunk at -inf
    z[3, [5, 900]] = ninf                   # student -inf where the teacher has mass
    z[4, 512:1024] = ninf                   # a whole student chunk at -inf
    z[5, y[5]] = ninf                       # the label's logit is -inf
    z[6, [7, 8]] = ninf; u[6, [7, 8]] = ninf  # both -inf at the same entries
    z[7, 600] = nan                         # NaN in the student
    u[8, 10] = nan                          # NaN in the teacher
    z[9, 11] = nan; y[9] = -100             # NaN in an ignored row: all 0
    return z, u, y


def _assert_same_specials(got: torch.Tensor, want: torch.Tensor, name: str):
    got, want = got.double(), want.double()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), name
    inf = torch.isinf(want)
    assert torch.equal(torch.isinf(got), inf) and torch.equal(got[inf], want[inf]), name
    fin = torch.isfinite(want)
    assert bool(((got[fin] - want[fin]).abs() <= 1e-4 * torch.clamp(want[fin].abs(), min=1.0)).all()), name


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_infinities_and_nan_as_the_reference(case, gen):
    """-inf and NaN under each option: the same NaN / inf pattern in loss, parts, accuracy and
    gradient as the reference backend, close values elsewhere; never a masked NaN."""
    vocab = 1300
    options = _options(case, vocab)
    v_t = vocab + 11 if options.kd_vocab else vocab
    z, u, y = _special_rows(gen, vocab, v_t)
    scale = torch.ones(1)
    out, grad = _run(z, u, y, options, kd_weight=0.5, tau=2.0, scale=scale)
    want_grad = torch.empty_like(z)
    want = reference.rows(z, u, y, kd_weight=0.5, temperature=2.0, ignore_index=-100, grad=want_grad,
                          grad_scale=scale, options=options)
    nan_rows = [7, 8]
    # The kernel reports every statistic and gradient entry of a row holding a NaN as NaN (as its
    # plain path does), where the reference keeps the CE, lse and (past kd_vocab) gradient of the
    # NaN-free side finite: compared on the other rows.
    keep = [i for i in range(z.shape[0]) if i not in nan_rows]
    for name in ("loss", "kd", "accuracy"):
        _assert_same_specials(getattr(out, name), getattr(want, name), name)
    _assert_same_specials(out.ce[keep], want.ce[keep], "ce")
    _assert_same_specials(out.lse[keep], want.lse[keep], "lse")
    assert bool(torch.isnan(out.loss[nan_rows]).all()) and bool(torch.isnan(grad[nan_rows]).all())
    assert out.loss[9] == 0 and bool((grad[9] == 0).all())
    _assert_same_specials(grad[keep], want_grad[keep], "grad")
