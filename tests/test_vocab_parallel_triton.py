"""The vocab-parallel loss with its per-element work in the Triton slice kernels
(salt_kernels/backends/triton/slice_kernels.py; docs/design.md, "Vocab-parallel"), without
torch.distributed: the vocabulary is cut into uneven slices, every slice's chunk loop
(vocab_parallel.shard_rows_steps, a generator that yields its all-reduces) runs in this one
process, and each all-reduce is done over the list of slices. Per-row loss, ce, kd, accuracy and
the joined gradient must match the PyTorch path (the same generator with kernels="torch") and
salt_loss(backend="reference") on the joined logits, to 1e-5 relative in fp32 (accuracy exactly),
and both paths must ask for the same all-reduces.

Without a CUDA device the kernels run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1): rows are few, slices at most 130 columns, blocks forced to 32 columns so a
slice spans several blocks and kd_vocab falls inside one, and chunks of 2 rows so that a call
runs several chunks.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import salt_kernels as sk
from salt_kernels.backends.base import LossOptions
from salt_kernels.distributed import vocab_parallel as vp
from triton_setup import DEVICE, INTERPRETER_WARNINGS, ON_GPU, tb, tsl

from aot import compile_check
from oracle import make_logits

pytestmark = [
    INTERPRETER_WARNINGS,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this torch build "
                                                      "(vocab_parallel needs its ReduceOp)"),
]

N = 6
SPLITS = {"3": [70, 130, 97], "2": [150, 147]}  # 297 columns
VOCAB = 297
BLOCK = 32

# (options, temperature, kd_weight); kd_vocab 115 cuts slice 1 of the 3-way split (its 45th
# column, inside its second block) and slice 0 of the 2-way split; 60 cuts slice 0 of both.
CASES = {
    "plain": ({}, 1.0, 0.5),
    "tau2": ({}, 2.0, 0.5),
    "tau0.7": ({}, 0.7, 0.5),
    "ce_only": ({}, 1.0, 0.0),
    "kd_only": ({}, 2.0, 1.0),
    "softcap": ({"softcap": 4.0}, 2.0, 0.5),
    "teacher_softcap": ({"teacher_softcap": 3.0}, 1.0, 0.5),
    "kd_vocab": ({"kd_vocab": 115}, 2.0, 0.5),
    "label_smoothing": ({"label_smoothing": 0.1}, 1.0, 0.5),
    "z_loss": ({"z_loss": 1e-3}, 1.0, 0.5),
    "forward_kl_tau2": ({"divergence": "forward_kl"}, 2.0, 0.7),
    "reverse_kl": ({"divergence": "reverse_kl"}, 2.0, 0.5),
    "reverse_kl_tau1": ({"divergence": "reverse_kl"}, 1.0, 0.5),
    "jsd": ({"divergence": "jsd", "beta": 0.3}, 1.0, 0.5),
    "jsd_tau2": ({"divergence": "jsd", "beta": 0.3}, 2.0, 0.5),
    "combo_reverse": ({"softcap": 6.0, "kd_vocab": 115, "divergence": "reverse_kl", "label_smoothing": 0.2,
                       "z_loss": 1e-3}, 1.0, 0.5),
    "combo_jsd": ({"softcap": 8.0, "teacher_softcap": 5.0, "kd_vocab": 60, "divergence": "jsd", "beta": 0.3,
                   "z_loss": 1e-4, "label_smoothing": 0.1}, 2.0, 0.5),
}
BF16_CASES = ["plain", "softcap", "kd_vocab", "reverse_kl", "jsd", "combo_jsd"]
TWO_WAY_CASES = ["plain", "kd_vocab", "jsd", "combo_reverse"]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """32-column blocks under the interpreter (the kernels' own on a GPU) and chunks of 2 rows."""
    monkeypatch.setattr(tb, "BLOCK_V", None if ON_GPU else BLOCK)
    monkeypatch.setattr(vp, "CHUNK_ELEMENTS", 2 * max(max(s) for s in SPLITS.values()))


def _inputs(gen, dtype):
    """Logits and labels where every slice of both splits owns a label, and the accuracy is 1
    on some rows: row 0 its label at its argmax, row 1 ignored, row 2 a clear maximum in slice 1
    at its label, rows 3 and 4 a tie for the maximum between columns 10 (slice 0) and 200 (the
    last slice), labelled 200 (accuracy 0, torch.argmax takes the lower index) and 10 (1; row 4
    ties also at 12, in the same block, and 40, in the next one), row 5 labelled with the last
    column."""
    z = make_logits((N, VOCAB), torch.float32, generator=gen)
    u = make_logits((N, VOCAB), torch.float32, generator=gen)
    top = z.abs().max() + 3.0
    z[2, 100] = top
    z[3, 10] = z[3, 200] = top
    z[4, 10] = z[4, 12] = z[4, 40] = z[4, 200] = top
    z = z.to(dtype)
    y = torch.tensor([int(z[0].float().argmax()), -100, 100, 200, 10, VOCAB - 1])
    return z.to(DEVICE), u.to(dtype).to(DEVICE), y.to(DEVICE)


def _reduce(xs: list[torch.Tensor], op) -> torch.Tensor:
    stacked = torch.stack(xs)
    if op == dist.ReduceOp.MAX:
        return stacked.amax(0)
    if op == dist.ReduceOp.MIN:
        return stacked.amin(0)
    assert op == dist.ReduceOp.SUM, op
    return stacked.sum(0)


def run_slices(z, u, y, sizes, *, kernels, opts, tau, w, want_grad=True):
    """Every slice's shard_rows_steps side by side, each all-reduce done over the slices:
    (outputs of slice 0, the joined gradient or None, the all-reduces asked for as (op, shape))."""
    options = LossOptions(**opts)
    bounds = [sum(sizes[:r]) for r in range(len(sizes) + 1)]
    steps = [vp.shard_rows_steps(z[:, lo:hi], None if u is None else u[:, lo:hi], y, vp.Shard.from_sizes(sizes, r),
                                 kd_weight=w, temperature=tau, ignore_index=-100, options=options,
                                 want_grad=want_grad, kernels=kernels)
             for r, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
    requests = [next(s) for s in steps]
    pattern = []
    while True:
        ops = {str(op) for _, op in requests}
        shapes = {tuple(x.shape) for x, _ in requests}
        assert len(ops) == 1 and len(shapes) == 1, (ops, shapes)  # every rank asks for the same all-reduce
        op = requests[0][1]
        pattern.append((str(op), shapes.pop(), requests[0][0].dtype))
        reduced = _reduce([x for x, _ in requests], op)
        nxt, done = [], []
        for s in steps:
            try:
                nxt.append(s.send(reduced.clone()))
            except StopIteration as stop:
                done.append(stop.value)
        assert not (nxt and done), "the slices ended after different numbers of all-reduces"
        if done:
            break
        requests = nxt
    outs = [o for o, _ in done]
    for other in outs[1:]:  # the per-row results are the group's: the same on every rank
        for key in outs[0]:
            torch.testing.assert_close(other[key], outs[0][key], rtol=0, atol=0, equal_nan=True, msg=key)
    grad = torch.cat([g for _, g in done], 1) if want_grad else None
    return outs[0], grad, pattern


def _reference(z, u, y, *, opts, tau, w):
    """salt_loss(backend="reference") on the joined logits, per row, and its gradient."""
    zg = z.detach().clone().requires_grad_()
    loss, parts = sk.salt_loss(zg, u, y, kd_weight=w, temperature=tau, reduction="none", return_parts=True,
                               backend="reference", **opts)
    loss.backward(torch.ones_like(loss))
    return dict(loss=loss.detach(), ce=parts.ce, kd=parts.kd, accuracy=parts.accuracy), zg.grad


def _assert_rows(got: dict, want: dict, tol: float = 1e-5):
    """Loss and parts within tol of max(|value|, |loss|) per row (docs/design.md, "Distillation
    options": a part is measured against the loss), accuracy exactly."""
    for key in ("loss", "ce", "kd"):
        scale = torch.maximum(want[key].abs(), want["loss"].abs()).double()
        err = (got[key].double() - want[key].double()).abs()
        assert bool((err <= tol * scale).all()), (key, got[key], want[key])
    assert torch.equal(got["accuracy"].float(), want["accuracy"].float()), (got["accuracy"], want["accuracy"])


def _assert_grad(got, want, tol):
    """||g - g_ref|| / ||g_ref|| <= tol (docs/design.md, "Numerical acceptance")."""
    assert got.dtype == want.dtype and got.shape == want.shape
    err = float((got.double() - want.double()).norm() / want.double().norm().clamp(min=1e-30))
    assert err <= tol, err


def _check(gen, case, split, dtype):
    opts, tau, w = CASES[case]
    z, u, y = _inputs(gen, dtype)
    teacher = u if w > 0 else None
    sizes = SPLITS[split]
    got, g_got, pat_got = run_slices(z, teacher, y, sizes, kernels="triton", opts=opts, tau=tau, w=w)
    ref, g_ref, pat_ref = run_slices(z, teacher, y, sizes, kernels="torch", opts=opts, tau=tau, w=w)
    assert pat_got == pat_ref
    assert len(pat_got) == 3 * (3 + (teacher is not None))  # 3 chunks of 2 rows
    one, g_one = _reference(z, teacher, y, opts=opts, tau=tau, w=w)
    _assert_rows(got, ref)
    _assert_rows(got, one)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: one rounding of the written gradient
    _assert_grad(g_got, g_ref, tol)
    _assert_grad(g_got, g_one, tol)
    assert bool((g_got[1] == 0).all()) and got["loss"][1] == 0  # the ignored row
    return got


@pytest.mark.parametrize("case", list(CASES))
def test_slices_match_torch_path_and_one_process(case, gen):
    got = _check(gen, case, "3", torch.float32)
    assert got["accuracy"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # the inputs' design
    if CASES[case][2] > 0:
        assert bool((got["kd"][[0, 2, 3, 4, 5]] > 0).all())


@pytest.mark.parametrize("case", BF16_CASES)
def test_slices_bf16(case, gen):
    _check(gen, case, "3", torch.bfloat16)


@pytest.mark.parametrize("case", TWO_WAY_CASES)
def test_slices_two_way(case, gen):
    _check(gen, case, "2", torch.float32)


@pytest.mark.parametrize("case", ["plain", "jsd"])
def test_no_gradient_same_rows(case, gen):
    """want_grad=False runs no gradient launch and gives the same rows as with it."""
    opts, tau, w = CASES[case]
    z, u, y = _inputs(gen, torch.float32)
    with_grad, _, _ = run_slices(z, u, y, SPLITS["3"], kernels="triton", opts=opts, tau=tau, w=w)
    rows, grad, _ = run_slices(z, u, y, SPLITS["3"], kernels="triton", opts=opts, tau=tau, w=w, want_grad=False)
    assert grad is None
    for key in rows:
        assert torch.equal(rows[key], with_grad[key]), key


@pytest.mark.parametrize("case", ["plain", "reverse_kl", "jsd", "softcap"])
def test_infinities_and_nan(case, gen):
    """docs/design.md, "Infinities and NaN", across slices: a teacher -inf run over two slices
    (adds nothing), a slice of -inf student logits under teacher mass and a lone student -inf
    (KD +inf), a NaN in a used row (NaN loss): the Triton path gives what the PyTorch path gives,
    infinities and NaN included."""
    opts, tau, w = CASES[case]
    z, u, y = _inputs(gen, torch.float32)
    u[0, 50:120] = float("-inf")
    z[2, 0:70] = float("-inf")
    z[3, 150] = float("-inf")
    z[5, 30] = float("nan")
    got, g_got, _ = run_slices(z, u, y, SPLITS["3"], kernels="triton", opts=opts, tau=tau, w=w)
    ref, g_ref, _ = run_slices(z, u, y, SPLITS["3"], kernels="torch", opts=opts, tau=tau, w=w)
    for key in got:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, equal_nan=True, msg=key)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-6, equal_nan=True)
    assert bool(got["loss"][5].isnan()) and bool(got["loss"][[0, 2, 3, 4]].isfinite().any())
    if case == "plain":
        assert got["kd"][2] == float("inf") and got["kd"][3] == float("inf")


def test_every_row_ignored(gen):
    z, u, y = _inputs(gen, torch.float32)
    y = torch.full_like(y, -100)
    rows, grad, _ = run_slices(z, u, y, SPLITS["3"], kernels="triton", opts={}, tau=2.0, w=0.5)
    for key in rows:
        assert bool((rows[key] == 0).all()), key
    assert bool((grad == 0).all())


def test_slice_stats_kernel(gen):
    """The stats kernel alone on the middle slice: maxima and sums of exps against them, z[y],
    sum z and the first maximum's global index (a tie inside the slice: the lower column)."""
    z, u, y = _inputs(gen, torch.float32)
    z[0, 90] = z[0, 150] = z[0].abs().max() + 1.0  # a tie inside slice 1 of the 3-way split
    start, local = 70, 130
    options = LossOptions(kd_vocab=115, label_smoothing=0.1)
    st = tsl.slice_stats(z[:, start:start + local], u[:, start:start + local], y, start=start, vocab=VOCAB,
                         temperature=2.0, ignore_index=-100, options=options)
    zs, kd = z[:, start:start + local], z[:, start:115] / 2.0
    ut = u[:, start:115] / 2.0
    for i, x in enumerate((zs, kd, ut)):
        m = x.max(1).values
        assert torch.equal(st.maxima[:, i], m)
        torch.testing.assert_close(st.sumexp[:, i], (x - m[:, None]).exp().sum(1), rtol=1e-5, atol=0)
    mine = (y >= start) & (y < start + local)
    want_zy = torch.where(mine, zs.gather(1, (y - start).clamp(0, local - 1)[:, None])[:, 0], 0.0)
    assert torch.equal(st.z_y, want_zy)
    torch.testing.assert_close(st.sum_z, zs.sum(1), rtol=1e-5, atol=1e-4)
    assert torch.equal(st.first, zs.argmax(1) + start)
    assert int(st.first[0]) == 90


class _OneRank(vp.Shard):
    """A group of one rank: every all-reduce is the identity."""

    def all_reduce(self, x, op):
        return x


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_shard_rows_runs_the_kernels(how, gen, monkeypatch):
    """shard_rows itself (run_steps over a one-rank group) takes the Triton kernels when told to by
    its argument or SALT_VP_KERNELS, and matches salt_loss on the same logits."""
    calls = []
    stats = tsl.slice_stats
    monkeypatch.setattr(tsl, "slice_stats", lambda *a, **k: calls.append(1) or stats(*a, **k))
    monkeypatch.delenv(vp.KERNELS_ENV, raising=False)
    if how == "environment":
        monkeypatch.setenv(vp.KERNELS_ENV, "triton")
    opts, tau, w = CASES["combo_reverse"]
    z, u, y = _inputs(gen, torch.float32)
    shard = _OneRank.from_sizes([VOCAB], 0)
    outs, grad = vp.shard_rows(z, u, y, shard, kd_weight=w, temperature=tau,
                               ignore_index=-100, options=LossOptions(**opts), want_grad=True,
                               kernels="triton" if how == "argument" else None)
    assert len(calls) == -(-N // shard.chunk_rows()) > 1  # one per chunk
    one, g_one = _reference(z, u, y, opts=opts, tau=tau, w=w)
    _assert_rows(outs, one)
    _assert_grad(grad, g_one, 1e-5)


def test_kernel_choice(monkeypatch):
    """slice_kernels(): CPU tensors take the PyTorch path unless the Triton kernels are forced
    (here possible under the interpreter), float64 never takes them, and a bad name is refused."""
    monkeypatch.delenv(vp.KERNELS_ENV, raising=False)
    x = torch.zeros(2, 3, device=DEVICE)
    assert vp.slice_kernels(x) == ("triton" if ON_GPU else "torch")
    assert vp.slice_kernels(x, "torch") == "torch"
    assert vp.slice_kernels(x, "triton") == "triton"
    monkeypatch.setenv(vp.KERNELS_ENV, "triton")
    assert vp.slice_kernels(x) == "triton"
    assert vp.slice_kernels(x, "torch") == "torch"  # the argument wins over the environment
    assert vp.slice_kernels(x.double(), "auto") == "torch"
    with pytest.raises(ValueError, match="fp32"):
        vp.slice_kernels(x.double())
    with pytest.raises(ValueError, match="must be one of"):
        vp.slice_kernels(x, "cuda")


@pytest.mark.skipif(ON_GPU, reason="the compile check runs where there is no GPU to run the kernels")
def test_compiles_for_sm90(tmp_path):
    """compile_check.py --slice-only compiles the statistics kernel and the given-stats kernel's
    forward_kl launch ahead of time for sm_90 (bf16, 2048-column blocks), which the interpreter
    cannot check: no spills, vector loads in their hot loops."""
    records, _ = compile_check(tmp_path, "--quick", "--slice-only")
    assert sorted(r["plan"] for r in records) == ["vp-given-forward-kl", "vp-stats"], records
    for r in records:
        assert r["spill_bytes"] == 0, r
        assert 0 < r["instructions_per_element"] < 200, r
