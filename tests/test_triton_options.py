"""The distillation options (docs/design.md, "Distillation options") in every launch plan of the
triton backend (fused, split, sync; see salt_kernels/backends/triton/launcher.py), with bf16
inputs, against float64 autograd of the formulas (tests/options_oracle.py) and the acceptance
of docs/design.md, "Numerical acceptance" (accuracy exactly).

Without a CUDA device the kernels run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), which costs milliseconds per program and block: the shapes are small and the
blocks forced small, so that a row spans several blocks, the split plans cut it into several
slices, and kd_vocab falls inside a block (the kernels' edge blocks). The one-launch "sync" plan
spins on a counter, so under the interpreter the launcher runs it as "split"; its cases run on a
GPU only, where they exercise the real one-launch kernel.
"""

from __future__ import annotations

import pytest
import torch

import salt_kernels as sk  # noqa: E402
from salt_kernels.backends.base import LossOptions  # noqa: E402
from triton_setup import DEVICE, INTERPRETER_WARNINGS, ON_GPU, tb  # noqa: E402

from oracle import make_logits  # noqa: E402
from options_oracle import near, option_reference  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

# Interpreter shapes: 32-entry blocks and 64-entry slices, so a row of 130 spans 5 blocks (the
# last ragged) and 3 slices; kd_vocab 75 is inside block 2 and slice 1; the padded teacher row
# is longer than kd_vocab. On a GPU the same layout at the kernels' own block size.
N = 5
VOCAB = 130 if not ON_GPU else 9000
TEACHER_VOCAB = 140 if not ON_GPU else 9100
KD_VOCAB = 75 if not ON_GPU else 4999
BLOCK = 32
SLICE = 64 if not ON_GPU else 2048

# One case per option (with the temperatures that pick each exp path of the kernel: tau 1, an
# integer tau, any other tau), then combinations (the first one: kd_vocab at tau 1).
OPTION_CASES = [
    ({"softcap": 4.0}, 2.0),
    ({"teacher_softcap": 3.0}, 0.7),
    ({"kd_vocab": KD_VOCAB}, 2.0),
    ({"divergence": "reverse_kl"}, 3.0),
    ({"divergence": "jsd", "beta": 0.3}, 2.0),
    ({"label_smoothing": 0.1}, 1.0),
    ({"z_loss": 1e-3}, 0.7),
    ({"softcap": 6.0, "kd_vocab": KD_VOCAB, "divergence": "reverse_kl", "label_smoothing": 0.2, "z_loss": 1e-3}, 1.0),
    ({"softcap": 8.0, "teacher_softcap": 5.0, "kd_vocab": KD_VOCAB, "divergence": "jsd", "beta": 0.7,
      "z_loss": 1e-4}, 4.0),
]
PLANS = ["fused", "split", "sync"]
needs_gpu = pytest.mark.skip(reason="sync runs as split under the interpreter (the split cases cover it); GPU only")


def _case_id(case) -> str:
    opts, tau = case
    return "-".join(f"{k}={v}" for k, v in opts.items()) + f"-tau={tau}"


def _plan_params():
    return [pytest.param(p, marks=needs_gpu if (p == "sync" and not ON_GPU) else ()) for p in PLANS]


@pytest.fixture
def plan(request, monkeypatch):
    """Forces the launch plan (and, under the interpreter, small blocks) for one test."""
    name = request.param
    monkeypatch.setattr(tb, "MODE", name)
    monkeypatch.setattr(tb, "SLICE_V", SLICE)
    monkeypatch.setattr(tb, "BLOCK_V", None if ON_GPU else BLOCK)
    p = tb.plan(N, VOCAB, DEVICE)
    want = "split" if (name == "sync" and not ON_GPU) else name
    assert p["mode"] == want and (p["split"] > 1) == (want != "fused"), p
    return name


def _inputs(gen, opts, *, dtype=torch.bfloat16, n=N):
    z = make_logits((n, VOCAB), dtype, generator=gen)
    u = make_logits((n, TEACHER_VOCAB if opts.get("kd_vocab") else VOCAB), dtype, generator=gen)
    y = torch.randint(0, VOCAB, (n,), generator=gen)
    y[1] = -100
    return z, u, y


def _oracle_kw(opts: dict) -> dict:
    kw = dict(opts)
    if "divergence" in kw:
        kw["divergence_kind"] = kw.pop("divergence")
    return kw


def _check(z, u, y, opts, *, kd_weight, tau, reduction="mean", grad_out=None):
    """salt_loss(backend="triton") with `opts`: loss, parts, accuracy and gradient against the
    float64 oracle (docs/design.md, "Numerical acceptance")."""
    zg = z.to(DEVICE).clone().requires_grad_()
    go = grad_out.to(DEVICE) if grad_out is not None else None
    loss, parts = sk.salt_loss(zg, u.to(DEVICE) if u is not None else None, y.to(DEVICE), kd_weight=kd_weight,
                               temperature=tau, reduction=reduction, backend="triton", return_parts=True, **opts)
    loss.backward(go)
    (l64, ce64, kd64, zl64, acc64), g64 = option_reference(
        z, u, y, reduction=reduction, grad_out=grad_out, kd_weight=kd_weight, temperature=tau, **_oracle_kw(opts))
    assert loss.dtype == torch.float32
    assert near(loss.cpu(), l64, 1e-5), (loss, l64)
    scale = torch.maximum(l64.abs(), torch.ones_like(l64))
    for name, got, want in (("ce", parts.ce, ce64), ("kd", parts.kd, kd64), ("z_loss", parts.z_loss, zl64)):
        err = (got.detach().cpu().double() - want).abs()
        assert bool((err <= 1e-5 * torch.maximum(want.abs(), scale)).all()), (name, got, want)
    assert torch.equal(parts.accuracy.detach().cpu().double(), acc64), (parts.accuracy, acc64)
    tol = 1e-5 if z.dtype == torch.float32 else 1e-2
    err = float((zg.grad.cpu().double() - g64).norm() / g64.norm().clamp(min=1e-30))
    assert zg.grad.dtype == z.dtype and err <= tol, err


@pytest.mark.parametrize("plan", _plan_params(), indirect=True)
@pytest.mark.parametrize("case", OPTION_CASES, ids=_case_id)
def test_option_in_plan(case, plan, gen):
    opts, tau = case
    z, u, y = _inputs(gen, opts)
    _check(z, u, y, opts, kd_weight=0.5, tau=tau)


@pytest.mark.parametrize("plan", _plan_params(), indirect=True)
def test_options_per_row_and_weights(plan, gen):
    """reduction="none" (the gradient is recomputed in backward with per-row scales),
    kd_weight 1 (no CE term) and kd_weight 0 without a teacher (the student-side options alone)."""
    opts = {"softcap": 5.0, "kd_vocab": KD_VOCAB, "divergence": "jsd", "beta": 0.5, "label_smoothing": 0.1,
            "z_loss": 1e-3}
    z, u, y = _inputs(gen, opts)
    grad_out = torch.rand(N, generator=gen) + 0.5
    _check(z, u, y, opts, kd_weight=0.3, tau=2.0, reduction="none", grad_out=grad_out)
    _check(z, u, y, dict(opts, divergence="reverse_kl"), kd_weight=1.0, tau=1.5, reduction="sum")
    student_only = {"softcap": 5.0, "label_smoothing": 0.1, "z_loss": 1e-3}
    _check(z, None, y, student_only, kd_weight=0.0, tau=1.0)


@pytest.mark.parametrize("plan", _plan_params(), indirect=True)
def test_accuracy_ties_and_nan(plan):
    """argmax with ties across blocks and slices (the lowest index wins) and NaN (the first NaN
    wins, as torch.argmax), per row against torch.argmax of the same logits."""
    z = torch.zeros(N, VOCAB)
    y = torch.zeros(N, dtype=torch.long)
    top = VOCAB - 1  # beyond kd_vocab, in the last block and the last slice
    z[0, 5] = z[0, top] = 9.0  # a tie across slices: index 5 wins
    y[0] = top
    z[1, 5] = z[1, top] = 9.0
    y[1] = 5
    z[2, 40] = float("nan")  # NaN at the label: it is the argmax
    z[2, 90] = float("nan")
    y[2] = 40
    z[3, 90] = float("nan")  # a NaN after a larger finite value still wins
    z[3, 3] = 50.0
    y[3] = 3
    z[4, top] = 1.0
    y[4] = top
    z = z.to(torch.bfloat16)
    u = make_logits((N, TEACHER_VOCAB), torch.bfloat16, generator=torch.Generator().manual_seed(0))
    # kd_vocab: the row is read in two regions (below k with the teacher, then the rest).
    parts = sk.salt_loss(z.to(DEVICE), u.to(DEVICE), y.to(DEVICE), temperature=2.0, reduction="none",
                         backend="triton", return_parts=True, kd_vocab=KD_VOCAB)[1]
    want = (z.float().argmax(-1) == y).float()
    assert want.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]
    assert torch.equal(parts.accuracy.cpu(), want), parts.accuracy


@pytest.mark.parametrize("plan", _plan_params(), indirect=True)
def test_infinities_with_options(plan, gen):
    """docs/design.md, "Infinities and NaN" under the options: a teacher -inf where the student
    has mass makes the reverse KL +inf and leaves JSD finite; a student -inf becomes -cap under
    a soft cap; a NaN reaches the row's loss."""
    z, u, y = _inputs(gen, {}, dtype=torch.float32)
    u[0, 7] = float("-inf")
    u[2, :20] = float("-inf")
    for opts, tau in (({"divergence": "reverse_kl"}, 2.0), ({"divergence": "jsd", "beta": 0.4}, 1.0)):
        loss, parts = sk.salt_loss(z.to(DEVICE), u.to(DEVICE), y.to(DEVICE), temperature=tau, reduction="none",
                                   backend="triton", return_parts=True, **opts)
        (l64, _, kd64, _, _), _ = option_reference(z, u, y, reduction="none", kd_weight=0.5, temperature=tau,
                                                   **_oracle_kw(opts))
        assert near(loss.cpu(), l64, 1e-5) and near(parts.kd.cpu(), kd64, 1e-5), (opts, parts.kd, kd64)
        assert bool(torch.isinf(kd64[0])) == (opts["divergence"] == "reverse_kl")
    zs = z.clone()
    zs[0, 11] = float("-inf")
    zs[3, 2] = float("nan")
    _check(zs[[0, 1, 2, 4]], u[[0, 1, 2, 4]], y[[0, 1, 2, 4]], {"softcap": 3.0}, kd_weight=0.5, tau=2.0)
    loss = sk.salt_loss(zs.to(DEVICE), u.to(DEVICE), y.to(DEVICE), temperature=2.0, reduction="none",
                        backend="triton", softcap=3.0, z_loss=1e-3)
    assert torch.isnan(loss[3]) and bool(torch.isfinite(loss[[0, 1, 2, 4]]).all()), loss


def test_plain_kernel_when_options_change_nothing(monkeypatch, gen):
    """Options that do not change this call's result run the plain kernel (no accuracy from the
    backend then): kd_vocab equal to the student's vocabulary with a longer teacher row, and
    teacher-side options without a teacher."""
    monkeypatch.setattr(tb, "BLOCK_V", None if ON_GPU else BLOCK)
    z, u, y = _inputs(gen, {"kd_vocab": VOCAB}, dtype=torch.float32)
    assert tb._option_flags(LossOptions(kd_vocab=VOCAB), VOCAB, True) is None
    assert tb._option_flags(LossOptions(divergence="jsd", teacher_softcap=2.0, kd_vocab=3), VOCAB, False) is None
    assert tb._option_flags(LossOptions(kd_vocab=KD_VOCAB), VOCAB, True)["KD_VOCAB"]
    out = tb.rows(z.to(DEVICE), u.to(DEVICE), y.to(DEVICE), kd_weight=0.5, temperature=2.0, ignore_index=-100,
                  options=LossOptions(kd_vocab=VOCAB))
    assert out.accuracy is None
    _check(z, u, y, {"kd_vocab": VOCAB}, kd_weight=0.5, tau=2.0)
    for opts in (LossOptions(), LossOptions(divergence="jsd", beta=0.2), LossOptions(softcap=1.0, z_loss=0.5)):
        assert tb.supports_options(opts) == (True, "")
