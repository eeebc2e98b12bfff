"""The distillation options (docs/design.md, "Distillation options") on every backend that
computes them, against float64 autograd of the formulas (tests/options_oracle.py); their
validation; and "auto" routing around a backend that does not compute an option."""

from __future__ import annotations

import pytest
import torch

import salt_kernels as sk
from oracle import make_logits
from options_oracle import near, option_reference
from salt_kernels.backends import registry
from salt_kernels.backends.base import LossOptions

CPU = torch.device("cpu")

# One case per option, then combinations (the padded-vocabulary teacher is the typical SALT pair).
OPTION_CASES = [
    {},
    {"softcap": 30.0},
    {"softcap": 4.0, "teacher_softcap": 3.0},
    {"kd_vocab": 41},
    {"divergence": "reverse_kl"},
    {"divergence": "jsd"},
    {"divergence": "jsd", "beta": 0.1},
    {"divergence": "jsd", "beta": 0.9},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-4},
    {"softcap": 6.0, "kd_vocab": 41, "divergence": "reverse_kl", "label_smoothing": 0.2, "z_loss": 1e-3},
    {"teacher_softcap": 5.0, "kd_vocab": 41, "divergence": "jsd", "beta": 0.3, "z_loss": 1e-4},
]
VOCAB = 53
TEACHER_VOCAB = 60  # padded teacher: used whenever kd_vocab is set


def _case_id(opts: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in opts.items()) or "default"


def _backends_for(opts: dict) -> list:
    out = []
    options = LossOptions(**opts)
    for name in registry.BACKEND_NAMES:
        usable, why = registry.backend_status(name, CPU, options=options)
        out.append(pytest.param(name, marks=() if usable else pytest.mark.skip(reason=f"{name}: {why}")))
    return out


def _inputs(gen, opts, n=24, dtype=torch.float32):
    z = make_logits((n, VOCAB), dtype, generator=gen)
    v_t = TEACHER_VOCAB if opts.get("kd_vocab") else VOCAB
    u = make_logits((n, v_t), dtype, generator=gen)
    y = torch.randint(0, VOCAB, (n,), generator=gen)
    y[::7] = -100
    return z, u, y


def _oracle_kw(opts: dict) -> dict:
    kw = dict(opts)
    if "divergence" in kw:
        kw["divergence_kind"] = kw.pop("divergence")
    return kw


def _check(backend, opts, gen, *, dtype=torch.float32, reduction="mean", kd_weight=0.5, tau=2.0):
    z, u, y = _inputs(gen, opts, dtype=dtype)
    zg = z.clone().requires_grad_()
    grad_out = torch.rand(y.shape, generator=gen) + 0.5 if reduction == "none" else None
    loss, parts = sk.salt_loss(zg, u, y, kd_weight=kd_weight, temperature=tau, reduction=reduction, backend=backend,
                               return_parts=True, **opts)
    loss.backward(grad_out)
    (l64, ce64, kd64, zl64, acc64), g64 = option_reference(
        z, u, y, reduction=reduction, grad_out=grad_out, kd_weight=kd_weight, temperature=tau, **_oracle_kw(opts)
    )
    assert loss.dtype == torch.float32
    assert near(loss, l64, 1e-5), (loss, l64)
    scale = torch.maximum(l64.abs(), torch.ones_like(l64))
    for name, got, want in (("ce", parts.ce, ce64), ("kd", parts.kd, kd64), ("z_loss", parts.z_loss, zl64)):
        assert bool(((got.double() - want).abs() <= 1e-5 * torch.maximum(want.abs(), scale)).all()), name
    torch.testing.assert_close(parts.accuracy.double(), acc64, rtol=0, atol=1e-7)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    err = (zg.grad.double() - g64).norm() / g64.norm().clamp(min=1e-30)
    assert zg.grad.dtype == dtype and float(err) <= tol, float(err)


@pytest.mark.parametrize("opts", OPTION_CASES, ids=_case_id)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_options_match_float64(opts, reduction, gen):
    for backend in [p.values[0] for p in _backends_for(opts) if not p.marks]:
        if backend == "triton" and reduction == "none":
            continue  # the interpreter is slow: triton covers "mean"
        _check(backend, opts, gen, reduction=reduction)


@pytest.mark.parametrize("opts", [OPTION_CASES[10], OPTION_CASES[11]], ids=_case_id)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kd_weight", [0.0, 0.5, 1.0])
def test_options_low_precision_and_weights(opts, dtype, kd_weight, gen):
    for backend in [p.values[0] for p in _backends_for(opts) if not p.marks]:
        if backend == "triton":
            continue  # covered in fp32 above; the interpreter is slow
        _check(backend, opts, gen, dtype=dtype, kd_weight=kd_weight, reduction="sum", tau=1.0)


# Parameter lists of the usual CE/JSD test suites, mapped onto these keywords.
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
def test_cross_entropy_options_without_teacher(label_smoothing, softcap, z_loss, gen):
    z, _, y = _inputs(gen, {})
    zg = z.clone().requires_grad_()
    loss, parts = sk.salt_loss(zg, None, y, kd_weight=0.0, label_smoothing=label_smoothing, softcap=softcap,
                               z_loss=z_loss, return_parts=True)
    loss.backward()
    zc = z.double() if softcap is None else softcap * torch.tanh(z.double() / softcap)
    ce = torch.nn.functional.cross_entropy(zc, y, label_smoothing=label_smoothing, ignore_index=-100)
    assert near(parts.ce, ce, 1e-5)
    (l64, *_), g64 = option_reference(z, None, y, kd_weight=0.0, temperature=1.0, softcap=softcap,
                                      label_smoothing=label_smoothing, z_loss=z_loss)
    assert near(loss, l64, 1e-5)
    assert float((zg.grad.double() - g64).norm() / g64.norm()) <= 1e-5


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_jsd_matches_its_definition(beta, tau, gen):
    """kd = tau^2 * (beta KL(p||m) + (1 - beta) KL(q||m)), m = beta p + (1 - beta) q: the
    generalized JSD of the common distillation libraries, with kd_weight=1."""
    z, u, y = _inputs(gen, {})
    kd = sk.salt_loss(z, u, y, kd_weight=1.0, temperature=tau, divergence="jsd", beta=beta, reduction="none",
                      return_parts=True)[1].kd
    p = torch.softmax(u.double() / tau, -1)
    q = torch.softmax(z.double() / tau, -1)
    m = beta * p + (1 - beta) * q
    jsd = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    want = torch.where(y != -100, tau * tau * jsd, torch.zeros_like(jsd))
    assert near(kd, want, 1e-5)


def test_linear_options_match_logits(gen):
    """linear_salt_loss with options equals salt_loss of the projected logits (a padded teacher
    head with kd_vocab included)."""
    n, d_s, d_t = 20, 12, 8
    h = torch.randn(n, d_s, generator=gen, requires_grad=True)
    w = (torch.randn(VOCAB, d_s, generator=gen) * 0.5).requires_grad_()
    ht = torch.randn(n, d_t, generator=gen)
    wt = torch.randn(TEACHER_VOCAB, d_t, generator=gen) * 0.5
    y = torch.randint(0, VOCAB, (n,), generator=gen)
    y[::5] = -100
    opts = OPTION_CASES[10]
    loss, parts = sk.linear_salt_loss(h, w, ht, wt, y, temperature=2.0, chunk_size=6, return_parts=True, **opts)
    gh, gw = torch.autograd.grad(loss, (h, w))
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss2, parts2 = sk.salt_loss(h2 @ w2.t(), ht @ wt.t(), y, temperature=2.0, return_parts=True, **opts)
    gh2, gw2 = torch.autograd.grad(loss2, (h2, w2))
    torch.testing.assert_close(loss, loss2, rtol=1e-5, atol=1e-6)
    for a, b in zip(parts, parts2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, gh2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, gw2, rtol=1e-4, atol=1e-6)


def test_defaults_give_the_plain_loss(gen):
    z, u, y = _inputs(gen, {})
    plain = sk.salt_loss(z, u, y, temperature=2.0)
    explicit = sk.salt_loss(z, u, y, temperature=2.0, softcap=None, kd_vocab=None, divergence="forward_kl",
                            label_smoothing=0.0, z_loss=0.0)
    assert torch.equal(plain, explicit)
    assert sk.salt_loss(z, u, y, temperature=2.0, kd_vocab=VOCAB).item() == pytest.approx(plain.item(), rel=1e-6)


def test_auto_routes_around_a_backend_without_the_option():
    options = LossOptions(divergence="jsd")
    for name in registry.BACKEND_NAMES:
        ok, why = registry.backend_status(name, CPU, options=options)
        if not ok and registry.backend_status(name, CPU)[0]:
            assert "jsd" in why or "divergence" in why
            with pytest.raises(ValueError, match=name):
                registry.resolve_name(name, CPU, torch.float32, options)
    chosen = registry.resolve_name("auto", CPU, torch.float32, options)
    assert registry.backend_status(chosen, CPU, options=options)[0]


@pytest.mark.parametrize(
    "kw, exc, words",
    [
        (dict(softcap=0.0), ValueError, "softcap"),
        (dict(softcap=float("inf")), ValueError, "softcap"),
        (dict(teacher_softcap=-1.0), ValueError, "teacher_softcap"),
        (dict(kd_vocab=0), ValueError, "kd_vocab"),
        (dict(kd_vocab=1.5), TypeError, "kd_vocab"),
        (dict(kd_vocab=VOCAB + 1), ValueError, "kd_vocab must be at most"),
        (dict(divergence="kl"), ValueError, "divergence"),
        (dict(divergence="jsd", beta=0.0), ValueError, "beta"),
        (dict(divergence="jsd", beta=1.0), ValueError, "beta"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
        (dict(z_loss=-1e-4), ValueError, "z_loss"),
        (dict(z_loss="big"), TypeError, "z_loss"),
    ],
)
def test_option_validation(kw, exc, words, gen):
    z, u, y = _inputs(gen, {})
    with pytest.raises(exc, match=words):
        sk.salt_loss(z, u, y, **kw)
    h, w = torch.randn(24, 4), torch.randn(VOCAB, 4)
    with pytest.raises(exc, match=words):
        sk.linear_salt_loss(h, w, h, w, y, **kw)


def test_padded_teacher_without_kd_vocab_suggests_it(gen):
    z, u, y = _inputs(gen, {"kd_vocab": 41})
    with pytest.raises(ValueError, match=r"kd_vocab=.*tokenizer"):
        sk.salt_loss(z, u, y)
    h, w, wt = torch.randn(24, 4), torch.randn(VOCAB, 4), torch.randn(TEACHER_VOCAB, 3)
    with pytest.raises(ValueError, match=r"teacher_weight.*kd_vocab="):
        sk.linear_salt_loss(h, w, torch.randn(24, 3), wt, y)


def test_accuracy_is_a_share_for_mean_and_sum(gen):
    z, u, y = _inputs(gen, {})
    y = z.argmax(-1)
    y[::3] = -100  # the rest match the argmax: accuracy 1 over non-ignored rows
    for reduction in ("mean", "sum"):
        _, parts = sk.salt_loss(z, u, y, reduction=reduction, return_parts=True)
        assert float(parts.accuracy) == 1.0
    _, parts = sk.salt_loss(z, u, y, reduction="none", return_parts=True)
    assert torch.equal(parts.accuracy, (y != -100).float())
