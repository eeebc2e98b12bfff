"""The triton backend's top-k teacher kernel (salt_kernels/backends/triton/topk_kernels.py, launcher
topk_rows) against the float64 oracle of docs/design.md, "Top-k teacher" (tests/options_oracle.py)
through sk.topk_salt_loss, and row by row against reference.topk_rows (every RowOutputs field:
loss, parts, the three log-sum-exps, accuracy, the scaled gradient); and its ahead-of-time
compile for sm_90.

Without a CUDA device the kernel runs on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1
set before the kernels are imported), with 128-entry blocks so that a row of a few hundred entries
spans several blocks, the last one ragged, and its K bitmap several words per tile. Shapes are
small: the interpreter costs about a millisecond per program and block.
"""

import pytest
import torch

import salt_kernels as sk  # noqa: E402
from salt_kernels.backends import reference  # noqa: E402
from salt_kernels.backends.base import LossOptions  # noqa: E402
from triton_setup import DEVICE, INTERPRETER_WARNINGS, ON_GPU, tb  # noqa: E402

from aot import compile_check  # noqa: E402
from oracle import make_logits  # noqa: E402
from options_oracle import topk_rows_oracle  # noqa: E402

pytestmark = INTERPRETER_WARNINGS


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(tb, "BLOCK_V", None if ON_GPU else 128)


def _teacher(gen, n, v, k, dtype=torch.float32, index_dtype=torch.int64, empty=0, near_student=None):
    """The top k of a random teacher (or of one near the student), the last `empty` slots empty
    (id -1, a log-prob that must not be looked at), row 1 without any teacher entry."""
    if near_student is None:
        u = make_logits((n, v), generator=gen).double()
    else:
        u = near_student.double() + 0.01 * torch.randn(n, v, generator=gen, dtype=torch.float64)
    top = torch.topk(torch.log_softmax(u, -1), k, dim=-1)
    idx, vals = top.indices.clone(), top.values.clone()
    if empty:
        idx[:, -empty:] = -1
        vals[:, -empty:] = 5.0  # not a log-prob: an empty slot's value is never read
    if n > 1:
        idx[1] = -1
    # shuffle the slots: neither the ids nor the empty slots come sorted
    perm = torch.randperm(k, generator=gen)
    return idx[:, perm].to(index_dtype), vals[:, perm].to(dtype)


def _labels(gen, n, v):
    y = torch.randint(0, v, (n,), generator=gen)
    y[::3] = -100
    return y


def _check(gen, *, n=5, v=300, k=8, tau=2.0, tail="bucket", reduction="mean", dtype=torch.float32,
           student_dtype=torch.float32, index_dtype=torch.int64, empty=0, near=False, **kw):
    z = make_logits((n, v), student_dtype, generator=gen)
    idx, lp = _teacher(gen, n, v, k, dtype=dtype, index_dtype=index_dtype, empty=empty,
                       near_student=z.float() if near else None)
    y = _labels(gen, n, v)
    zg = z.clone().to(DEVICE).requires_grad_()
    loss = sk.topk_salt_loss(zg, idx.to(DEVICE), lp.to(DEVICE), y.to(DEVICE), temperature=tau, tail=tail,
                             reduction=reduction, backend="triton", **kw)
    g_out = torch.rand(n, generator=gen) + 0.5 if reduction == "none" else None
    loss.backward(g_out.to(DEVICE) if g_out is not None else None)
    z64 = z.double().requires_grad_()
    rows = topk_rows_oracle(z64, idx, lp, y, kd_weight=kw.get("kd_weight", 0.5), temperature=tau, tail=tail,
                            **{a: b for a, b in kw.items() if a != "kd_weight"})
    n_valid = max(1, int((y != -100).sum()))
    want = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / n_valid}[reduction]
    (g64,) = torch.autograd.grad((want * (g_out.double() if g_out is not None else 1)).sum(), z64)
    torch.testing.assert_close(loss.detach().double().cpu(), want.detach(), rtol=1e-5, atol=1e-6)
    tol = 1e-5 if student_dtype == torch.float32 else 1e-2
    assert zg.grad.dtype == student_dtype
    assert float((zg.grad.double().cpu() - g64).norm() / g64.norm()) <= tol


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("tau", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("k", [1, 8, 64, 300])
def test_matches_float64(tail, tau, k, gen):
    _check(gen, k=k, tau=tau, tail=tail)


@pytest.mark.parametrize(
    "case",
    [
        dict(empty=3, k=16),
        dict(near=True, k=32, tau=1.0),
        dict(dtype=torch.bfloat16, student_dtype=torch.bfloat16),
        dict(dtype=torch.float16, student_dtype=torch.float16, tau=3.0),
        dict(index_dtype=torch.int32, tau=4.0),
        dict(reduction="none", tau=1.5, empty=2),
        dict(reduction="sum", softcap=5.0, label_smoothing=0.1, z_loss=1e-3),
        dict(tau=1.0, softcap=20.0, tail="renormalize"),
        dict(tau=0.7, label_smoothing=0.2, reduction="none"),
        dict(z_loss=1e-2, kd_weight=1.0),
        dict(kd_weight=0.0, label_smoothing=0.1),
        dict(v=1000, k=64, tau=2.0, student_dtype=torch.bfloat16, dtype=torch.bfloat16, empty=10),
    ],
    ids=lambda c: "-".join(f"{a}={b}".replace("torch.", "") for a, b in c.items()),
)
def test_cases(case, gen):
    _check(gen, **case)


def _rows_pair(gen, *, n=6, v=333, k=12, tau=2.0, tail="bucket", student_dtype=torch.float32,
               dtype=torch.float32, empty=3, options=LossOptions(), kd_weight=0.5, scale_per_row=True):
    """reference.topk_rows and the triton backend's on the same rows: (reference, triton) pairs of
    RowOutputs and gradients. Student rows with a row stride larger than V; row 1 without teacher
    entries, row 0 and 3 ignored, row 4 with -inf entries (in K and outside it)."""
    z = make_logits((n, v + 7), student_dtype, generator=gen)[:, :v]
    z[4, :5] = float("-inf")
    idx, lp = _teacher(gen, n, v, k, dtype=dtype, empty=empty)
    idx[4, 0] = 2  # a -inf entry in K (the teacher gives it mass: KD is +inf there)
    idx[4, 1] = -1
    y = _labels(gen, n, v)
    y[3] = -100
    scale = torch.rand(n if scale_per_row else 1, generator=gen) + 0.5
    out = []
    for impl in (reference, tb):
        dev = torch.device("cpu") if impl is reference else DEVICE
        grad = torch.full((n, v), 7.0, dtype=student_dtype, device=dev)
        r = impl.topk_rows(z.to(dev), idx.to(dev), lp.to(dev), y.to(dev), tail=tail, kd_weight=kd_weight,
                           temperature=tau, ignore_index=-100, grad=grad, grad_scale=scale.to(dev), options=options)
        out.append((r, grad.cpu()))
    return out


@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(tau=1.0, tail="renormalize"),
        dict(tau=1.5, options=LossOptions(softcap=8.0, label_smoothing=0.1, z_loss=1e-3), scale_per_row=False),
        dict(tau=3.0, student_dtype=torch.bfloat16, dtype=torch.bfloat16, k=40, empty=0),
        dict(kd_weight=0.0),
    ],
    ids=["bucket-tau2", "renormalize-tau1", "options-tau1.5", "bf16-tau3", "no-teacher"],
)
def test_rows_match_reference(case, gen):
    """Every output of the row contract, -inf entries, ignored rows and a row without teacher
    entries included (zeros in every output and gradient of an ignored row)."""
    (ref, g_ref), (tri, g_tri) = _rows_pair(gen, **case)
    low = case.get("student_dtype", torch.float32) != torch.float32
    for name in ("loss", "ce", "kd", "lse", "accuracy"):
        a, b = getattr(ref, name).double(), getattr(tri, name).double().cpu()
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert bool((tri.loss[[0, 3]] == 0).all()) and bool((tri.lse[[0, 3]] == 0).all())
    assert bool((g_tri[[0, 3]] == 0).all())
    torch.testing.assert_close(g_tri.double(), g_ref.double(), rtol=1e-2 if low else 1e-5,
                               atol=1e-2 if low else 1e-6, equal_nan=True)


def test_accuracy_ties_and_no_cancellation(gen):
    """Accuracy with torch.argmax's tie rule (a tie at a lower index than the label is a miss, at a
    higher index a hit); and lse_rest computed over the entries outside K: a teacher that covers
    all but 1e-9 of the student's mass still gets the rest's log-sum-exp to fp32 precision."""
    n, v = 4, 200
    z = torch.zeros(n, v)
    z[0, [10, 50]] = 3.0  # label 50, tie at 10 (lower): miss
    z[1, [10, 50]] = 3.0  # label 10, tie at 50 (higher): hit
    z[2, 60] = 40.0  # label 60 holds all but ~1e-15 of the mass, K = {60}
    z[3, :] = torch.linspace(-3, 3, v)
    y = torch.tensor([50, 10, 60, 199])
    idx = torch.tensor([[10, 50], [10, 50], [60, -1], [199, 198]])
    lp = torch.tensor([[-0.7, -0.9], [-0.7, -0.9], [-1e-6, 0.0], [-2.0, -2.1]])
    ref = reference.topk_rows(z.double(), idx, lp, y, kd_weight=0.5, temperature=1.0, ignore_index=-100)
    tri = tb.topk_rows(z.to(DEVICE), idx.to(DEVICE), lp.to(DEVICE), y.to(DEVICE), kd_weight=0.5, temperature=1.0,
                       ignore_index=-100)
    assert tri.accuracy.cpu().tolist() == [0.0, 1.0, 1.0, 1.0] == ref.accuracy.tolist()
    torch.testing.assert_close(tri.lse.double().cpu(), ref.lse, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(tri.kd.double().cpu(), ref.kd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0, 1.5])
def test_rest_far_below_the_top_entries(tau, gen):
    """K's entries hundreds above the rest (exp of the rest relative to the row maximum is 0 in
    fp32): lse_rest is still the rest's own log-sum-exp, KD and the gradient finite and equal to
    the reference's in float64."""
    n, v, k = 4, 400, 6
    z = make_logits((n, v), generator=gen, outliers=False)
    idx, lp = _teacher(gen, n, v, k)
    idx[1] = torch.arange(k)  # (row 1 has teacher entries here)
    lp[1] = torch.log_softmax(torch.randn(k, generator=gen), 0) - 1e-3
    z.scatter_(1, idx[:, :2], 400.0)
    y = torch.randint(0, v, (n,), generator=gen)
    scale = torch.rand(n, generator=gen) + 0.5
    grad = torch.empty(n, v, device=DEVICE)
    tri = tb.topk_rows(z.to(DEVICE), idx.to(DEVICE), lp.to(DEVICE), y.to(DEVICE), kd_weight=0.5, temperature=tau,
                       ignore_index=-100, grad=grad, grad_scale=scale.to(DEVICE))
    g64 = torch.empty(n, v, dtype=torch.float64)
    ref = reference.topk_rows(z.double(), idx, lp, y, kd_weight=0.5, temperature=tau, ignore_index=-100, grad=g64,
                              grad_scale=scale)
    assert bool(torch.isfinite(tri.kd).all()) and bool(torch.isfinite(grad).all())
    torch.testing.assert_close(tri.lse.double().cpu(), ref.lse, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(tri.loss.double().cpu(), ref.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double().cpu(), g64, rtol=1e-5, atol=1e-6)


def test_many_rows_split_over_bitmap_chunks(monkeypatch, gen):
    """Rows beyond one launch's bitmap workspace run in further launches, same results."""
    (ref, g_ref), _ = _rows_pair(gen, n=7, empty=0)
    monkeypatch.setattr(tb, "TOPK_BITMAP_BYTES", 3 * 4 * 3 * 4)  # 3 rows of 3 blocks' words
    gen.manual_seed(1234)
    (ref, g_ref), (tri, g_tri) = _rows_pair(gen, n=7, empty=0)
    torch.testing.assert_close(tri.loss.double().cpu(), ref.loss.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_tri.double(), g_ref.double(), rtol=1e-5, atol=1e-6, equal_nan=True)


def test_registry_discovers_topk():
    from salt_kernels.backends import registry

    assert hasattr(tb, "topk_rows")
    ok, why = registry.backend_status("triton", DEVICE, kind="topk_rows")
    assert ok, why


@pytest.mark.skipif(ON_GPU, reason="the compile check runs where there is no GPU to run the kernel")
def test_compiles_for_sm90(tmp_path):
    """compile_check.py --topk compiles topk_rows_kernel ahead of time for sm_90 (bf16, fused plan,
    tau 2): no spills, vector loads in its hot loops."""
    records, _ = compile_check(tmp_path, "--quick", "--topk-only")
    assert records and all(r["plan"].startswith("topk") for r in records), records
    for r in records:
        assert r["spill_bytes"] == 0, r
        assert 0 < r["instructions_per_element"] < 100, r
