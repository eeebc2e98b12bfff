"""What only the triton backend has, against the float64 oracle (docs/design.md, "The loss" and
"Numerical acceptance"): its launch plans (fused, split, sync), its block sizes up to the longest
vocabulary, its interpreter switch, the GPU sizes, and the GPU scripts. The backend contract
itself is tested for every backend, triton included, in tests/test_contract.py.

Without a CUDA device the kernels run on CPU tensors under the Triton interpreter: this module
sets TRITON_INTERPRET=1 before salt_kernels.backends.triton.kernels is imported, and keeps shapes small
(the interpreter costs about 1 ms per program per loop iteration) while forcing small blocks so
that rows span several blocks with a ragged last one, and several slices per row for the split
launch plan. With a CUDA device the same cases run on the GPU (the real kernels), plus the GPU
sizes at the end of the module.
"""

import json
import os
import re
import sys

import pytest
import torch

import salt_kernels as sk  # noqa: E402
from triton_setup import DEVICE, INTERPRETER_WARNINGS, ON_GPU, tb  # noqa: E402

from oracle import make_logits, oracle_grad, oracle_reduce, oracle_rows  # noqa: E402

pytestmark = INTERPRETER_WARNINGS


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Interpreter shapes: 128-entry blocks, so V=1000 spans 8 blocks, the last one ragged.
    On a GPU the same small shapes run with the kernel's own block choice."""
    monkeypatch.setattr(tb, "MODE", "auto")
    monkeypatch.setattr(tb, "SLICE_V", None)
    monkeypatch.setattr(tb, "BLOCK_V", None if ON_GPU else 128)


def logits(shape, gen, dtype=torch.float32):
    return make_logits(shape, dtype, generator=gen).to(DEVICE)


def labels_for(n, vocab, gen, ignored=(), dtype=torch.int64):
    y = torch.randint(0, vocab, (n,), generator=gen, dtype=dtype)
    for i in ignored:
        y[i] = -100
    return y.to(DEVICE)


def grad_tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-2


def assert_close_rel(got, want, rel=1e-5, floor=1e-6, what="loss"):
    got, want = got.detach().double().cpu(), want.double().cpu()
    assert got.shape == want.shape, (got.shape, want.shape)
    same_inf = torch.isinf(want) & (got == want)
    err = torch.where(same_inf, torch.zeros_like(got), (got - want).abs())
    bound = rel * want.abs().nan_to_num(posinf=0.0) + floor
    assert bool((err <= bound).all()), f"{what}: max error {float(err.max()):.3e}, got {got}, want {want}"


def assert_grad_close(got, want, dtype):
    got, want = got.double().cpu(), want.double().cpu()
    rel = float((got - want).norm()) / max(float(want.norm()), 1e-12)
    assert rel <= grad_tol(dtype), f"relative gradient error {rel:.3e} > {grad_tol(dtype):g}"


def check_against_oracle(student, teacher, labels, *, w, tau, reduction="mean", grad_out=None):
    """salt_loss(backend="triton") forward and backward against the oracle: loss, parts, grad."""
    z = student.clone().requires_grad_()
    loss, parts = sk.salt_loss(
        z, teacher, labels, kd_weight=w, temperature=tau, reduction=reduction, backend="triton", return_parts=True
    )
    assert loss.dtype == torch.float32
    loss.backward(grad_out)
    s, t, y = student.cpu(), teacher.cpu() if teacher is not None else None, labels.cpu()
    rl, rc, rk = oracle_rows(s, t, y, w, tau)
    assert_close_rel(loss, oracle_reduce(rl, y, reduction))
    # The parts are checked at the scale of the whole loss (KD can be small next to CE).
    scale = float(oracle_reduce(rl.abs() + rc.abs() + rk.abs(), y, reduction).abs().max()) + 0.1
    assert_close_rel(parts.ce, oracle_reduce(rc, y, reduction), rel=0, floor=1e-5 * scale, what="ce")
    assert_close_rel(parts.kd, oracle_reduce(rk, y, reduction), rel=0, floor=1e-5 * scale, what="kd")
    go = grad_out.cpu() if grad_out is not None else None
    want = oracle_grad(s, t, y, w, tau, row_weights=go, reduction=reduction)
    assert z.grad.dtype == student.dtype and z.grad.shape == student.shape
    assert_grad_close(z.grad, want, student.dtype)
    return loss


SPLIT_TAU_W = [(1.0, 0.3), (2.0, 0.7), (0.5, 1.0), (3.0, 0.0)]
# "sync" falls back to the two-launch plan under the interpreter: one case checks that fallback.
SPLIT_CASES = [("split", t, w) for t, w in SPLIT_TAU_W] + [("sync", t, w) for t, w in SPLIT_TAU_W[: 4 if ON_GPU else 1]]


@pytest.mark.parametrize("mode,tau,w", SPLIT_CASES)
def test_split_rows_match_oracle(gen, monkeypatch, mode, tau, w):
    """Rows cut into several slices (partials merged per row); "sync" is the one-launch GPU
    plan, which falls back to two launches under the interpreter."""
    monkeypatch.setattr(tb, "MODE", mode)
    monkeypatch.setattr(tb, "SLICE_V", 256 if not ON_GPU else 2048)
    n, vocab = 5, 1000 if not ON_GPU else 9000
    student, teacher = logits((n, vocab), gen), logits((n, vocab), gen)
    labels = labels_for(n, vocab, gen, ignored=(1,))
    plan = tb.plan(n, vocab, DEVICE)
    assert plan["split"] == -(-vocab // tb.SLICE_V) and plan["mode"] == (mode if ON_GPU else "split"), plan
    grad_out = (torch.rand(n, generator=gen) + 0.5).to(DEVICE)
    check_against_oracle(student, teacher, labels, w=w, tau=tau, reduction="none", grad_out=grad_out)
    check_against_oracle(student, teacher, labels, w=w, tau=tau, reduction="mean")


@pytest.mark.parametrize("vocab,block", [(70001, 8192), (262144, 32768)])
def test_long_vocabularies(gen, monkeypatch, vocab, block):
    """V beyond 65,536 (ragged) and the largest supported V, bf16, through both launch plans."""
    if not ON_GPU:
        monkeypatch.setattr(tb, "BLOCK_V", block)
    student, teacher = logits((2, vocab), gen, torch.bfloat16), logits((2, vocab), gen, torch.bfloat16)
    labels = torch.tensor([vocab - 1, 12345], device=DEVICE)
    check_against_oracle(student, teacher, labels, w=0.5, tau=2.0)
    monkeypatch.setattr(tb, "MODE", "split")
    check_against_oracle(student, teacher, labels, w=0.5, tau=2.0, reduction="sum")


def test_backend_reports_itself():
    ok, why = tb.supports_device(DEVICE)
    assert ok, why
    assert sk.available_backends()["triton"] == (True, "")
    if not ON_GPU:
        os.environ["TRITON_INTERPRET"] = "0"
        try:
            ok, why = tb.supports_device(torch.device("cpu"))
        finally:
            os.environ["TRITON_INTERPRET"] = "1"
        assert not ok and "TRITON_INTERPRET" in why


# ---- GPU only: the real kernels at real sizes -------------------------------------------------

gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (the interpreter cases above cover the math)")


@gpu_only
@pytest.mark.parametrize("mode", ["auto", "fused", "split", "sync"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_real_vocabulary(mode, dtype, monkeypatch):
    monkeypatch.setattr(tb, "MODE", mode)
    gen = torch.Generator().manual_seed(7)
    n, vocab = 64, 128256
    student, teacher = logits((n, vocab), gen, dtype), logits((n, vocab), gen, dtype)
    labels = labels_for(n, vocab, gen, ignored=(0, 17))
    check_against_oracle(student, teacher, labels, w=0.5, tau=2.0)
    grad_out = (torch.rand(n, generator=gen) + 0.5).to(DEVICE)
    check_against_oracle(student, teacher, labels, w=0.3, tau=1.5, reduction="none", grad_out=grad_out)


@gpu_only
def test_gpu_offsets_beyond_2_pow_31():
    """N * V > 2^31 elements: the last rows sit past every 32-bit offset."""
    vocab, n = 262144, 8200
    free, _ = torch.cuda.mem_get_info()
    need = 3 * n * vocab * 2 + (1 << 30)
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free on the GPU, has {free / 2**30:.1f}")
    torch.manual_seed(3)
    student = torch.randn(n, vocab, device="cuda", dtype=torch.bfloat16).mul_(3)
    teacher = torch.randn(n, vocab, device="cuda", dtype=torch.bfloat16).mul_(3)
    labels = torch.randint(0, vocab, (n,), device="cuda")
    assert n * vocab > 2**31
    grad = torch.empty_like(student)
    scale = torch.ones(1, device="cuda")
    out = tb.rows(student, teacher, labels, kd_weight=0.5, temperature=2.0, ignore_index=-100, grad=grad, grad_scale=scale)
    tail = slice(n - 3, n)
    s, t, y = student[tail].cpu(), teacher[tail].cpu(), labels[tail].cpu()
    rl, _, _ = oracle_rows(s, t, y, 0.5, 2.0)
    assert_close_rel(out.loss[tail], rl)
    want = oracle_grad(s, t, y, 0.5, 2.0, row_weights=torch.ones(3), reduction="none")
    assert_grad_close(grad[tail], want, torch.bfloat16)


# ---- the GPU scripts, checked on any machine ---------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK_SH = os.path.join(ROOT, "benchmarks", "gpu", "check.sh")
BENCH = os.path.join(ROOT, "benchmarks", "bench_loss_gpu.py")


def _run(cmd, **kw):
    import subprocess

    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, **kw)


def test_check_script_is_valid_bash():
    res = _run(["bash", "-n", CHECK_SH])
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(ON_GPU, reason="on a GPU machine check.sh would run for minutes; this checks its no-GPU exit")
def test_check_script_without_gpu_says_so(tmp_path):
    res = _run(["bash", CHECK_SH], env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable})
    assert res.returncode == 2 and "no CUDA device" in res.stderr, (res.returncode, res.stdout, res.stderr)
    assert not (tmp_path / "out").exists()


def test_bench_help_and_no_gpu_exit():
    res = _run([sys.executable, BENCH, "--help"])
    assert res.returncode == 0 and "--json" in res.stdout and "do_bench" in res.stdout, res.stderr
    if not ON_GPU:
        res = _run([sys.executable, BENCH, "--vocab", "1000"])
        assert res.returncode == 2 and "no CUDA device" in res.stderr


def test_kernels_compile_for_the_gpu_without_one():
    """The interpreter cannot tell whether the kernels compile for a GPU: compile two
    specializations for sm_90 ahead of time (triton's bundled ptxas), in a process without
    TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = _run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "compile_check.py"), "--quick"], env=env)
    if res.returncode == 2:
        pytest.skip(f"this triton cannot compile ahead of time here: {res.stderr.strip()[-300:]}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("ok   sm_90") == 2, res.stdout


def test_check_script_plan_fits_seven_minutes():
    """check.sh's steps, with their caps, fit its budget, and the budget fits 7 minutes; a budget
    too small for the plan is refused before anything runs."""
    res = _run(["bash", CHECK_SH], env={**os.environ, "CHECK_DRY_RUN": "1"})
    assert res.returncode == 0, res.stderr
    head = res.stdout.splitlines()[0]
    budget, caps = (int(x) for x in re.search(r"budget (\d+)s, caps (\d+)s", head).groups())
    steps = [line.split() for line in res.stdout.splitlines()[1:]]
    assert [s[0] for s in steps][:3] == ["env", "triton", "cuda"] and steps[-1][0] == "linear"
    assert sum(int(s[1].rstrip("s")) for s in steps) == caps and caps < budget <= 420
    res = _run(["bash", CHECK_SH], env={**os.environ, "CHECK_DRY_RUN": "1", "CHECK_BUDGET_S": "100"})
    assert res.returncode == 1 and "CHECK_BUDGET_S=100" in res.stderr


def test_kernel_check_dry_run_and_summary(tmp_path):
    """kernel_check.py's parts run end to end on tiny CPU shapes (interpreter) and write records
    that summarize.py renders; the crosscheck against float64 passes there too."""
    out = tmp_path / "out"
    out.mkdir()
    script = os.path.join(ROOT, "benchmarks", "gpu", "kernel_check.py")
    res = _run([sys.executable, script, "--dry-run", "--part", "roofline", "crosscheck", "ncu",
                "--json", str(out / "kernels.json")])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    recs = json.loads((out / "kernels.json").read_text())
    cross = [r for r in recs if r["part"] == "crosscheck" and r["variant"] == "triton"]
    assert cross and cross[0]["ok"] and cross[0]["loss_max_rel"] < 1e-5, cross
    assert "triton-sync: ran" in res.stdout
    res = _run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "summarize.py"), str(out)])
    assert res.returncode == 0 and "crosscheck triton" in res.stdout and "OK" in res.stdout, res.stdout


def test_auto_plan_reads_each_row_from_hbm_once(monkeypatch):
    """plan()'s automatic choice on a GPU (132 SMs, 60 MB of L2, as an H200): sync when the rows
    the fused plan keeps in flight overflow the L2 and the gradient pass re-reads them, with the
    slices in flight inside half the L2; fused when they fit or nothing is re-read; split for few
    long rows; a forced mode wins."""
    monkeypatch.setattr(tb, "_sm_count", lambda device: 132)
    monkeypatch.setattr(tb, "_l2_bytes", lambda device: 60 << 20)
    monkeypatch.setattr(tb, "MODE", "auto")
    monkeypatch.setattr(tb, "SLICE_V", None)
    monkeypatch.setattr(tb, "BLOCK_V", None)
    gpu = torch.device("cuda")
    p = tb.plan(16384, 128256, gpu, entry_bytes=4, reread=True)
    assert p["mode"] == "sync" and 1 < p["split"] <= tb.MAX_SPLIT, p
    in_flight = tb.PROGRAMS_PER_SM * 132 * p["slice_v"] * 4
    assert in_flight <= (60 << 20) // 2 or p["slice_v"] == tb.SYNC_SLICE_BLOCKS * p["block_v"], p
    assert tb.plan(16384, 128256, gpu, entry_bytes=4, reread=False)["mode"] == "fused"
    assert tb.plan(16384, 4096, gpu, entry_bytes=4, reread=True)["mode"] == "fused"
    assert tb.plan(64, 128256, gpu, entry_bytes=4, reread=True)["mode"] == "split"
    assert tb.plan(16384, 128256, torch.device("cpu"), entry_bytes=4, reread=True)["mode"] == "fused"
    monkeypatch.setattr(tb, "MODE", "fused")
    assert tb.plan(16384, 128256, gpu, entry_bytes=4, reread=True)["mode"] == "fused"
