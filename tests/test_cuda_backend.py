"""The hand-written CUDA backend (csrc/cuda, salt_kernels.backends.cuda).

Without a GPU (CI):
  * the module was built by nvcc and its machine code holds sm_90 SASS and compute_90 PTX;
  * available_backends()["cuda"] says why it is unusable;
  * the kernel source itself runs in a CPU emulator (tests/cuda_emulator: one fiber per CUDA
    thread, real barriers for __syncthreads / shuffles / the cluster, every global access checked
    for bounds and alignment), built with g++, on every launch mode (warp per row, block per row,
    clusters of 2 to 8 blocks) with every dtype pair, strided and misaligned layouts and the
    special values, against the float64 oracle.
With a GPU: the same launch configurations on the real kernel, streams and devices.

The backend contract itself (through the launch the backend chooses) is tested for the emulated
kernel and, on a GPU, for backend "cuda" in tests/test_contract.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import salt_kernels as sk
import cuda_emulator
from oracle import assert_rows_match, make_logits, oracle_reduce, oracle_rows
from salt_kernels.backends import cuda as cuda_backend
from salt_kernels.backends import reference
from salt_kernels.backends.base import DEFAULT_OPTIONS, LossOptions, RowOutputs, compiled_rows_args

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HAS_GPU = torch.cuda.is_available()


def _nvcc():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.isfile("/usr/local/cuda/bin/nvcc") else None)


def _need_module():
    if cuda_backend._salt_cuda is None:
        if _nvcc() is None:
            pytest.skip("nvcc is not installed here, so setup.py skipped the cuda backend")
        pytest.fail(f"nvcc exists but the cuda backend is not built: {cuda_backend._IMPORT_ERROR}")
    return cuda_backend._salt_cuda


def _cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    nvcc = _nvcc()
    if nvcc:
        # nvcc may be a wrapper script; the toolkit's bin is where `nvcc --dryrun` says TOP is.
        for cand in (os.path.join(os.path.dirname(nvcc), "cuobjdump"), "/usr/local/cuda/bin/cuobjdump"):
            if os.path.isfile(cand):
                return cand
    try:
        import triton

        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.isfile(cand):
            return cand
    except ImportError:
        pass
    return None


# ---- build and packaging (no GPU needed) ---------------------------------------------------------


def test_module_is_built_where_nvcc_exists():
    mod = _need_module()
    assert callable(mod.rows) and callable(mod.launch_config)


def test_module_holds_sm90_sass_and_ptx():
    mod = _need_module()
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or the triton wheel) to inspect the module with")
    elves = subprocess.run([tool, "--list-elf", mod.__file__], capture_output=True, text=True, check=True).stdout
    assert "sm_90" in elves, elves
    ptx = subprocess.run([tool, "--list-ptx", mod.__file__], capture_output=True, text=True, check=True).stdout
    assert ".ptx" in ptx, ptx  # the compute_90 fallback for newer GPUs
    # SASS of one kernel (bf16 student, bf16 teacher, 512-thread blocks, aligned rows, tau 2): Hopper code whose exps
    # are the hardware's ex2 (MUFU.EX2), not a software expf.
    kernel = "_ZN4salt4cuda11rows_kernelILi1ELi1ELb1ELi512ELb0ELb1ELi2EEEvNS_8RowsArgsEi"
    sass = subprocess.run([tool, "--dump-sass", "--function", kernel, mod.__file__], capture_output=True,
                          text=True, check=True).stdout
    assert "arch = sm_90" in sass and kernel in sass and "MUFU.EX2" in sass, sass[:2000]
    # The static CUDA runtime stays private: the module exports only its init function.
    nm = shutil.which("nm")
    if nm:
        exported = subprocess.run([nm, "-D", "--defined-only", mod.__file__], capture_output=True, text=True).stdout
        assert "cudaLaunchKernel" not in exported and "PyInit__salt_cuda" in exported


def test_available_backends_gives_a_reason_without_gpu():
    ok, why = sk.available_backends()["cuda"]
    if HAS_GPU and cuda_backend._salt_cuda is not None:
        assert ok and why == ""
        return
    assert ok is False and why
    if cuda_backend._salt_cuda is not None:
        assert "no CUDA device" in why
    else:
        assert "_salt_cuda" in why


def test_cpu_tensors_are_refused():
    ok, why = cuda_backend.supports_device(torch.device("cpu"))
    assert not ok and why


def test_module_imports_and_reports_without_a_driver():
    mod = _need_module()
    if HAS_GPU:
        assert mod.device_count() >= 1
        return
    # No GPU: the static runtime must fail cleanly (an exception), never crash the process.
    try:
        n = mod.device_count()
    except RuntimeError as exc:
        assert "CUDA" in str(exc)
    else:
        assert n == 0


def test_launch_config_follows_the_vocabulary():
    _need_module()
    bf16 = torch.bfloat16
    assert cuda_backend.launch_config(7, bf16, bf16, block=0, cluster=0)[0] == "warp"
    assert cuda_backend.launch_config(1000, torch.float32, torch.float32, block=0, cluster=0)[0] == "warp"
    mode, threads, cluster = cuda_backend.launch_config(32000, bf16, bf16, block=0, cluster=0)
    assert mode == "block" and threads in (256, 512) and cluster == 1
    mode, threads, cluster = cuda_backend.launch_config(128256, bf16, bf16, block=0, cluster=0)
    assert mode == "block" and threads == 512 and cluster in (2, 4, 8)
    # Overrides
    assert cuda_backend.launch_config(128256, bf16, bf16, block=32, cluster=0) == ("warp", 32, 1)
    assert cuda_backend.launch_config(7, bf16, bf16, block=512, cluster=8) == ("block", 512, 8)
    assert cuda_backend.launch_config(7, bf16, bf16, block=256, cluster=3)[2] in (2, 4)


# ---- one case: inputs, a launch, and the comparison with float64 ----------------------------------


def make_case(n, vocab, dz, du, *, gen, device="cpu", layout="contiguous", label_dtype=torch.int64):
    """Student/teacher/labels/grad buffers. layout "strided": rows live inside wider buffers at
    different offsets (misaligned rows, student and teacher misaligned differently, a gradient
    with its own stride), labels every other element."""
    z = make_logits((n, vocab), dz, generator=gen)
    u = make_logits((n, vocab), du, generator=gen) if du is not None else None
    y = torch.randint(0, vocab, (n,), generator=gen).to(label_dtype)
    if n > 2:
        y[n // 2] = -100
    if layout == "strided":
        def embed(x, pad, off):
            big = torch.full((n, vocab + pad), 1e4, dtype=x.dtype)  # a read of the padding would show
            big[:, off:off + vocab] = x
            return big[:, off:off + vocab]

        z = embed(z, 5, 1)
        u = embed(u, 3, 3) if u is not None else None
        yy = torch.full((2 * n,), 7, dtype=label_dtype)
        yy[::2] = y
        y = yy[::2]
        gbuf = torch.full((n, vocab + 6), 777.0, dtype=dz)
        grad = gbuf[:, 2:2 + vocab]
    else:
        gbuf = torch.full((n, vocab), float("nan"), dtype=dz)
        grad = gbuf
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    if device != "cpu":
        z, u, y, gbuf = to(z), to(u), to(y), to(gbuf)
        grad = gbuf[:, 2:2 + vocab] if layout == "strided" else gbuf
    return z, u, y, grad, gbuf


def run_and_check(runner, n, vocab, dz, du, *, tau, w, gen, device="cpu", layout="contiguous",
                  scale_kind="row", label_dtype=torch.int64, **launch):
    z, u, y, grad, gbuf = make_case(n, vocab, dz, du, gen=gen, device=device, layout=layout,
                                    label_dtype=label_dtype)
    if scale_kind == "row":  # reduction "none": a non-uniform grad_output per row
        scale = (torch.rand(n, generator=gen) * 3 - 1).to(device)
    else:
        scale = torch.tensor([0.37]).to(device)
    out = runner(z, u, y, kd_weight=w, temperature=tau, ignore_index=-100, grad=grad, grad_scale=scale, **launch)
    assert_rows_match(out, grad, z, u, y, kd_weight=w, temperature=tau, grad_scale=scale)
    if layout == "strided":  # nothing outside the gradient's rows was written
        pad = torch.ones(gbuf.shape, dtype=torch.bool, device=gbuf.device)
        pad[:, 2:2 + vocab] = False
        assert bool((gbuf[pad] == 777.0).all())
    # Forward only (no gradient): the same statistics.
    out2 = runner(z, u, y, kd_weight=w, temperature=tau, ignore_index=-100, **launch)
    assert torch.equal(out2.loss, out.loss) and torch.equal(out2.lse, out.lse)


# ---- the kernel source on the CPU (tests/cuda_emulator), launch by launch --------------------------


def _emu(lib):
    return lambda *a, **k: cuda_emulator.rows(lib, *a, **k)


# Launch modes of the kernel: (mode, threads per block, cluster).
EMU_CONFIGS = [("warp", 256, 1), ("block", 256, 1), ("block", 512, 1), ("block", 256, 2), ("block", 256, 8)]


@pytest.mark.parametrize("mode,block,cluster", EMU_CONFIGS)
@pytest.mark.parametrize("dz,du", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                   (torch.float16, torch.float16), (torch.bfloat16, torch.float32),
                                   (torch.float32, torch.bfloat16)], ids=str)
def test_emulated_kernel_matches_float64(emulator, mode, block, cluster, dz, du, gen):
    tau, w = (2.0, 0.5) if dz != du else (1.0, 0.3)
    run_and_check(_emu(emulator), 3, 1003, dz, du, tau=tau, w=w, gen=gen, mode=mode, block=block, cluster=cluster)


@pytest.mark.parametrize("mode,block,cluster", EMU_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_emulated_kernel_strided_misaligned_rows(emulator, mode, block, cluster, dtype, gen):
    run_and_check(_emu(emulator), 4, 777, dtype, dtype, tau=2.0, w=0.5, gen=gen, layout="strided",
                  label_dtype=torch.int32, mode=mode, block=block, cluster=cluster)


@pytest.mark.parametrize("layout,dtype", [("contiguous", torch.bfloat16), ("strided", torch.float32)])
def test_emulated_kernel_largest_cluster(emulator, layout, dtype, gen):
    # 8 blocks of 512 threads per row: the largest launch the kernel makes.
    run_and_check(_emu(emulator), 2, 5003, dtype, dtype, tau=2.0, w=0.5, gen=gen, layout=layout,
                  mode="block", block=512, cluster=8)


def test_emulated_kernel_many_groups_per_thread(emulator, gen):
    # 70001 fp32 logits over 256 threads: ~68 groups per thread, odd tail, both pass orders.
    run_and_check(_emu(emulator), 2, 70001, torch.float32, torch.float32, tau=2.0, w=0.5, gen=gen,
                  mode="block", block=256, cluster=1)


@pytest.mark.parametrize("mode,block,cluster", [("block", 256, 1), ("block", 512, 4)])
def test_emulated_kernel_special_values(emulator, mode, block, cluster, gen):
    """-inf and NaN through the block and cluster combines (tests/test_contract.py covers them
    through the warp-per-row launch these rows get by default)."""
    n, v = 8, 1500
    z = make_logits((n, v), generator=gen)
    u = make_logits((n, v), generator=gen)
    y = torch.randint(40, v, (n,), generator=gen)
    u[0, :] = float("-inf")
    u[0, 5] = 1.0  # a single allowed teacher token
    u[1, : v // 2 + 300] = float("-inf")  # long -inf stretches
    z[2, 10:40] = float("-inf")
    u[2, 10:40] = float("-inf")  # both -inf: finite
    z[3, 100] = float("-inf")  # teacher has mass there: KD = +inf
    z[4, 777] = float("nan")
    u[5, 3] = float("nan")
    y[6] = -100
    grad = torch.empty(n, v)
    scale = torch.ones(n)
    out = cuda_emulator.rows(emulator, z, u, y, kd_weight=0.5, temperature=2.0, ignore_index=-100, grad=grad,
                             grad_scale=scale, mode=mode, block=block, cluster=cluster)
    fine = [0, 1, 2, 7]
    assert_rows_match(
        RowOutputs(out.loss[fine], out.ce[fine], out.kd[fine], out.lse[fine]), grad[fine], z[fine], u[fine],
        y[fine], kd_weight=0.5, temperature=2.0, grad_scale=scale[fine],
    )
    assert torch.isinf(out.kd[3]) and out.kd[3] > 0 and torch.isinf(out.loss[3])
    assert torch.isnan(out.loss[4]) and torch.isnan(out.loss[5]) and torch.isnan(grad[4]).all()
    assert torch.isnan(grad[5]).all()
    assert out.loss[6] == 0 and (grad[6] == 0).all() and (out.lse[6] == 0).all()


def test_emulator_reports_out_of_bounds_loads(emulator, gen):
    """The checker itself: declaring the student one element shorter than it is must be reported
    as an out-of-bounds load (so a real overrun would not pass silently)."""
    n, v = 2, 64
    z = make_logits((n, v), generator=gen)
    y = torch.zeros(n, dtype=torch.long)
    out = RowOutputs.empty(n, "cpu")
    codes = cuda_backend.DTYPE_CODES
    ia = [z.data_ptr(), v, codes[z.dtype], 0, 0, 0, y.data_ptr(), 1, 1, n, v, -100,
          out.loss.data_ptr(), out.ce.data_ptr(), out.kd.data_ptr(), out.lse.data_ptr(), 0, 0, 0, 0, 0, 256, 1]
    regions = [[z.data_ptr(), v * 4, (v - 1) * 4, n, 0], [y.data_ptr(), 8, 8, n, 0]]
    rc, err = cuda_emulator.launch(emulator, ia, (0.0, 1.0), regions)
    assert rc == 1 and "out-of-bounds" in err


# ---- distillation options (docs/design.md, "Distillation options") ---------------------------------
# rows_kernel_options against the reference backend with the same options on the same inputs (the
# reference in float64): loss, ce, kd to 1e-5 of max(|part|, |loss|), the log-sum-exps that are
# defined, accuracy exactly, the gradient to 1e-5 (fp32) / 1e-2 (16-bit) in relative norm.

OPTION_CASES = {
    "softcap": dict(softcap=8.0),
    "teacher_softcap": dict(teacher_softcap=6.0),
    "kd_vocab": dict(kd_vocab=150),
    "kd_vocab_1": dict(kd_vocab=1),
    "reverse_kl": dict(divergence="reverse_kl"),
    "jsd": dict(divergence="jsd", beta=0.3),
    "label_smoothing": dict(label_smoothing=0.1),
    "z_loss": dict(z_loss=1e-3),
    "forward_all": dict(softcap=8.0, teacher_softcap=6.0, kd_vocab=150, label_smoothing=0.1, z_loss=1e-3),
    "reverse_combo": dict(divergence="reverse_kl", softcap=8.0, kd_vocab=150, z_loss=1e-4),
    "jsd_combo": dict(divergence="jsd", beta=0.7, teacher_softcap=6.0, kd_vocab=97, label_smoothing=0.05),
}
# (mode, threads per block, cluster): a warp per row, a block per row, a cluster of blocks per row
OPTION_CONFIGS = [("warp", 256, 1), ("block", 256, 1), ("block", 256, 2)]


def _options_case(n, vocab, dz, du, opts, *, gen, teacher_vocab=None, layout="contiguous"):
    """Inputs for an options run: V = `vocab` (not a multiple of any vector width), a teacher of
    its own vocabulary when kd_vocab is set, an ignored row, rows whose label is the argmax and
    rows with a tie for the maximum (lowest index wins)."""
    vt = teacher_vocab or (vocab if opts.kd_vocab is None else vocab - 22)
    z = make_logits((n, vocab), torch.float32, generator=gen)
    u = make_logits((n, vt), torch.float32, generator=gen) if du is not None else None
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[0] = int(z[0].argmax())
    if n > 3:
        z[2, 7] = z[2, 120] = z[2].max() + 1.0  # tie: argmax is 7
        y[2] = 120
        z[3, 11] = z[3, 60] = z[3].max() + 1.0
        y[3] = 11
    y[1] = -100
    z = z.to(dz)
    u = u.to(du) if u is not None else None
    if layout == "strided":  # misaligned rows inside wider buffers, each tensor its own stride
        def embed(x, pad, off):
            big = torch.full((n, x.shape[1] + pad), 1e4, dtype=x.dtype)
            big[:, off:off + x.shape[1]] = x
            return big[:, off:off + x.shape[1]]

        z = embed(z, 5, 1)
        u = embed(u, 3, 3) if u is not None else None
        gbuf = torch.full((n, vocab + 6), 777.0, dtype=dz)
        grad = gbuf[:, 2:2 + vocab]
    else:
        gbuf = grad = torch.full((n, vocab), float("nan"), dtype=dz)
    return z, u, y, grad, gbuf


def _check_options(out, grad, ref, ref_grad, dz, with_teacher):
    loss = ref.loss.abs()
    for name in ("loss", "ce", "kd"):
        got, want = getattr(out, name).double(), getattr(ref, name)
        bound = 1e-5 * torch.maximum(want.abs(), loss) + 1e-7
        err = (got - want).abs()
        assert bool((err <= bound).all()), (name, got, want)
    cols = [0, 1, 2] if with_teacher else [0]
    lse, want = out.lse.double()[:, cols], ref.lse[:, cols]
    assert bool(((lse - want).abs() <= 1e-5 * want.abs() + 1e-6).all()), (lse, want)
    if not with_teacher:
        assert bool((out.lse[1] == 0).all())
    assert out.accuracy is not None and torch.equal(out.accuracy.double(), ref.accuracy), (out.accuracy, ref.accuracy)
    tol = 1e-5 if dz == torch.float32 else 1e-2
    g = grad.double()
    assert bool(torch.isfinite(g).all()), "gradient not fully written"
    assert bool((g[1] == 0).all())
    rel = float((g - ref_grad).norm() / ref_grad.norm())
    assert rel <= tol, rel


def run_options(lib, opts, dz, du, *, gen, n=5, vocab=203, w=0.5, tau=2.0, layout="contiguous", runner=None,
                device="cpu", **launch):
    """One options case through the emulated kernel (or `runner`, a rows() on `device`) against
    the reference in float64."""
    runner = runner or _emu(lib)
    z, u, y, grad, gbuf = _options_case(n, vocab, dz, du, opts, gen=gen, layout=layout)
    scale = torch.rand(n, generator=gen) * 2 - 0.5
    ref_grad = torch.empty(n, vocab, dtype=torch.float64)
    ref = reference.rows(z.double(), None if u is None else u.double(), y, kd_weight=w, temperature=tau,
                         ignore_index=-100, grad=ref_grad, grad_scale=scale.double(), options=opts)
    if device != "cpu":
        z, y, scale, gbuf = z.to(device), y.to(device), scale.to(device), gbuf.to(device)
        u = u.to(device) if u is not None else None
        grad = gbuf[:, 2:2 + vocab] if layout == "strided" else gbuf
    out = runner(z, u, y, kd_weight=w, temperature=tau, ignore_index=-100, grad=grad, grad_scale=scale,
                 options=opts, **launch)
    out = RowOutputs(*(None if x is None else x.cpu() for x in (out.loss, out.ce, out.kd, out.lse, out.accuracy)))
    grad, gbuf = grad.cpu(), gbuf.cpu()
    _check_options(out, grad, ref, ref_grad, dz, u is not None and w > 0)
    if layout == "strided":  # nothing written outside the gradient's rows
        pad = torch.ones(gbuf.shape, dtype=torch.bool)
        pad[:, 2:2 + vocab] = False
        assert bool((gbuf[pad] == 777.0).all())
    # Forward only: the same statistics.
    out2 = runner(z, u, y, kd_weight=w, temperature=tau, ignore_index=-100, options=opts, **launch)
    assert torch.equal(out2.loss.cpu(), out.loss) and torch.equal(out2.accuracy.cpu(), out.accuracy)


@pytest.mark.parametrize("mode,block,cluster", OPTION_CONFIGS)
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_emulated_options_match_reference(emulator, case, mode, block, cluster, gen):
    opts = LossOptions(**OPTION_CASES[case])
    run_options(emulator, opts, torch.float32, torch.float32, gen=gen, mode=mode, block=block, cluster=cluster)


@pytest.mark.parametrize("mode,block,cluster", [("warp", 256, 1), ("block", 512, 4)])
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_emulated_options_bf16(emulator, case, mode, block, cluster, gen):
    # 512-thread choices run the options kernel in 256-thread blocks (as the real launcher does)
    opts = LossOptions(**OPTION_CASES[case])
    du = torch.bfloat16 if mode == "warp" else torch.float32
    run_options(emulator, opts, torch.bfloat16, du, gen=gen, tau=1.0 if mode == "warp" else 3.0, mode=mode,
                block=block, cluster=cluster)


@pytest.mark.parametrize("mode,block,cluster", [("warp", 256, 1), ("block", 256, 2)])
def test_emulated_options_without_teacher(emulator, mode, block, cluster, gen):
    """kd_weight 0: no teacher read; softcap, label smoothing, z-loss and accuracy on CE alone."""
    opts = LossOptions(softcap=8.0, label_smoothing=0.1, z_loss=1e-3)
    run_options(emulator, opts, torch.float32, None, gen=gen, w=0.0, mode=mode, block=block, cluster=cluster)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_emulated_options_strided_misaligned(emulator, dtype, gen):
    opts = LossOptions(divergence="jsd", beta=0.4, softcap=8.0, kd_vocab=150, label_smoothing=0.1)
    run_options(emulator, opts, dtype, dtype, gen=gen, layout="strided", mode="block", block=256, cluster=2)


def test_emulated_options_accuracy_alone(emulator, gen):
    """Default options with an accuracy output run the options kernel: the plain loss and its
    gradient, plus the accuracy."""
    n, v = 5, 203
    z, u, y, grad, _ = _options_case(n, v, torch.float32, torch.float32, DEFAULT_OPTIONS, gen=gen)
    out = RowOutputs.empty(n, "cpu")
    out.accuracy = torch.empty(n)
    scale = torch.ones(n)
    a = compiled_rows_args(z, u, y, out, kd_weight=0.5, temperature=2.0, ignore_index=-100, grad=grad,
                           grad_scale=scale, options=DEFAULT_OPTIONS)
    assert a["accuracy"] != 0
    ia = [a[k] for k in ("student", "student_row_stride", "student_dtype", "teacher", "teacher_row_stride",
                         "teacher_dtype", "labels", "labels_stride", "labels_int64", "n_rows", "vocab",
                         "ignore_index", "loss", "ce", "kd", "lse", "grad", "grad_row_stride", "grad_scale",
                         "grad_scale_stride")] + [0, 256, 1, 0, 0, a["accuracy"]]
    regions = [cuda_emulator.region(z, n, v, False), cuda_emulator.region(y, n, 1, False),
               cuda_emulator.region(u, n, v, False), cuda_emulator.region(grad, n, v, True),
               cuda_emulator.region(scale, n, 1, False)]
    rc, err = cuda_emulator.launch(emulator, ia, (0.5, 2.0), regions)
    assert rc == 0, err
    ref_grad = torch.empty(n, v, dtype=torch.float64)
    ref = reference.rows(z.double(), u.double(), y, kd_weight=0.5, temperature=2.0, ignore_index=-100,
                         grad=ref_grad, grad_scale=scale.double())
    _check_options(out, grad, ref, ref_grad, torch.float32, True)


def test_supports_options_claims_what_the_kernel_computes():
    for case in OPTION_CASES.values():
        ok, why = cuda_backend.supports_options(LossOptions(**case))
        assert ok, why
    assert cuda_backend.supports_options(DEFAULT_OPTIONS) == (True, "")


# ---- on a GPU ------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device: GPU comparisons of backend cuda skipped")


def _gpu_ready():
    ok, why = cuda_backend.supports_device(torch.device("cuda"))
    if not ok:
        pytest.skip(f"backend cuda unusable here: {why}")


def _cuda_rows(*a, **k):
    out = cuda_backend.rows(*a, **k)
    torch.cuda.synchronize()
    return out


GPU_CONFIGS = [(32, 0), (256, 1), (512, 1), (512, 2), (512, 4), (512, 8)]


@gpu
@pytest.mark.parametrize("block,cluster", GPU_CONFIGS)
@pytest.mark.parametrize("dz,du", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                   (torch.float16, torch.float16), (torch.bfloat16, torch.float32),
                                   (torch.float32, torch.bfloat16)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("vocab", [1000, 128256])
def test_gpu_every_launch_configuration(block, cluster, dz, du, layout, vocab, gen):
    _gpu_ready()
    run_and_check(_cuda_rows, 5, vocab, dz, du, tau=2.0, w=0.5, gen=gen, device="cuda", layout=layout,
                  label_dtype=torch.int32 if layout == "strided" else torch.int64, block=block, cluster=cluster)


@gpu
@pytest.mark.parametrize("block,cluster", [(32, 0), (512, 1), (512, 4)])
def test_gpu_special_values(block, cluster, gen):
    _gpu_ready()
    n, v = 8, 5000
    z = make_logits((n, v), generator=gen)
    u = make_logits((n, v), generator=gen)
    y = torch.randint(40, v, (n,), generator=gen)
    u[0, :] = float("-inf")
    u[0, 5] = 1.0
    u[1, : v // 2 + 300] = float("-inf")
    z[2, 10:40] = float("-inf")
    u[2, 10:40] = float("-inf")
    z[3, 100] = float("-inf")
    z[4, 777] = float("nan")
    u[5, 3] = float("nan")
    y[6] = -100
    grad = torch.empty(n, v, device="cuda")
    scale = torch.ones(n, device="cuda")
    out = _cuda_rows(z.cuda(), u.cuda(), y.cuda(), kd_weight=0.5, temperature=2.0, ignore_index=-100, grad=grad,
                     grad_scale=scale, block=block, cluster=cluster)
    fine = [0, 1, 2, 7]
    out_f = RowOutputs(out.loss[fine], out.ce[fine], out.kd[fine], out.lse[fine])
    assert_rows_match(out_f, grad[fine], z[fine], u[fine], y[fine], kd_weight=0.5, temperature=2.0,
                      grad_scale=scale[fine].cpu())
    loss, kd = out.loss.cpu(), out.kd.cpu()
    assert torch.isinf(kd[3]) and kd[3] > 0 and torch.isinf(loss[3])
    assert torch.isnan(loss[4]) and torch.isnan(loss[5])
    assert torch.isnan(grad[4].cpu()).all() and torch.isnan(grad[5].cpu()).all()
    assert loss[6] == 0 and (grad[6] == 0).all()


@gpu
@pytest.mark.parametrize("block,cluster", [(32, 0), (256, 1), (512, 4)])
@pytest.mark.parametrize("case", list(OPTION_CASES))
@pytest.mark.parametrize("dz,vocab", [(torch.float32, 1003), (torch.bfloat16, 32003)], ids=str)
def test_gpu_options_match_reference(case, block, cluster, dz, vocab, gen):
    _gpu_ready()
    opts = LossOptions(**OPTION_CASES[case])
    run_options(None, opts, dz, dz, gen=gen, vocab=vocab, runner=_cuda_rows, device="cuda", block=block,
                cluster=cluster)


@gpu
def test_gpu_respects_current_stream_and_device(gen):
    _gpu_ready()
    z = make_logits((64, 32000), torch.bfloat16, generator=gen).cuda()
    u = make_logits((64, 32000), torch.bfloat16, generator=gen).cuda()
    y = torch.randint(0, 32000, (64,), generator=gen).cuda()
    ref = sk.salt_loss(z, u, y, backend="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = sk.salt_loss(z, u, y, backend="cuda")
    torch.cuda.current_stream().wait_stream(s)
    assert float(got) == float(ref)


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_second_device_leaves_the_current_device_alone(gen):
    _gpu_ready()
    torch.cuda.set_device(0)
    z = make_logits((16, 5000), generator=gen)
    u = make_logits((16, 5000), generator=gen)
    y = torch.randint(0, 5000, (16,), generator=gen)
    got = sk.salt_loss(z.to("cuda:1"), u.to("cuda:1"), y.to("cuda:1"), backend="cuda")
    assert got.device == torch.device("cuda:1") and torch.cuda.current_device() == 0
    rl, _, _ = oracle_rows(z, u, y, 0.5, 1.0)
    want = oracle_reduce(rl, y, "mean")
    assert abs(float(got) - float(want)) <= 1e-5 * abs(float(want)) + 1e-6


@gpu
@pytest.mark.parametrize("dz", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("vocab", [1000, 128256])
def test_gpu_topk_kernel_matches_reference(dz, vocab, gen):
    """The top-k teacher kernel on the GPU against the reference rows (both tails, softcap, label
    smoothing and z-loss on the second), and topk_salt_loss through the op."""
    from salt_kernels.backends.base import LossOptions

    _gpu_ready()
    n, k = 6, 64
    z = make_logits((n, vocab), dz, generator=gen)
    lp, idx = torch.log_softmax(make_logits((n, vocab), generator=gen).double(), -1).topk(k, -1)
    lp = lp.to(torch.bfloat16)
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[1] = -100
    scale = torch.rand(n, generator=gen) + 0.5
    for tail, options in (("bucket", LossOptions()), ("renormalize", LossOptions(softcap=30.0, label_smoothing=0.1,
                                                                                   z_loss=1e-3))):
        kw = dict(tail=tail, kd_weight=0.5, temperature=2.0, ignore_index=-100, options=options)
        g_ref, g = torch.empty_like(z), torch.empty_like(z).cuda()
        ref = reference.topk_rows(z, idx, lp, y, grad=g_ref, grad_scale=scale, **kw)
        out = cuda_backend.topk_rows(z.cuda(), idx.cuda(), lp.cuda(), y.cuda(), grad=g, grad_scale=scale.cuda(), **kw)
        torch.cuda.synchronize()
        for name in ("loss", "ce", "kd", "accuracy"):
            torch.testing.assert_close(getattr(out, name).cpu(), getattr(ref, name), rtol=2e-5, atol=2e-5, msg=name)
        tol = 1e-4 if dz == torch.float32 else 1e-2
        assert float((g.cpu().double() - g_ref.double()).norm() / g_ref.double().norm()) <= tol
    got = sk.topk_salt_loss(z.cuda(), idx.cuda(), lp.cuda(), y.cuda(), temperature=2.0, backend="cuda")
    want = sk.topk_salt_loss(z, idx, lp, y, temperature=2.0, backend="reference")
    assert abs(float(got) - float(want)) <= 1e-4 * abs(float(want))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
