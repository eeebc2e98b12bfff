"""Launcher of the Triton kernels (kernels.py beside this file) for the row contract of
backends/base.py. Triton is imported lazily: without it (or without a CUDA device) the backend
reports why through is_available() and importing salt_kernels still works.

Runs on CUDA tensors; on CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1 set
before salt_kernels.backends.triton.kernels is imported, which the tests do).

Launch plan, per call (see kernels.py for the modes):
  fused  one program per row: statistics loop, then gradient loop over the same row.
  split  SPLIT programs per row over slices of SLICE_V entries, two launches (partials, then
         merge + gradient): for few long rows, where one program per row leaves SMs idle.
  sync   the same split in one launch with a per-row counter: each slice is re-read for its
         gradient while still in L2 (GPU only; opt-in until measured on a GPU).
With distillation options (docs/design.md, "Distillation options") that change the result,
salt_rows_options_kernel runs instead of salt_rows_kernel, in the same plans, and also returns
the per-row accuracy; divergence "jsd" adds one launch to split (its sums need the merged
normalizers) and one more wait to sync.
"auto" picks split for few long rows, sync when the fused plan's rows in flight overflow the L2
and the gradient pass re-reads them, else fused (plan() has the figures). The knobs below
(module attributes, or SALT_TRITON_MODE / SALT_TRITON_BLOCK_V) let tests force small blocks
and several slices under the interpreter, and let benchmarks compare plans.
"""

from __future__ import annotations

import importlib
import os

import torch

from ..base import LossOptions, RowArgs, RowOutputs

NAME = "triton"

# Plan knobs: None / "auto" means chosen per call.
MODE: str = os.environ.get("SALT_TRITON_MODE", "auto")  # auto | fused | split | sync
BLOCK_V: int | None = int(os.environ["SALT_TRITON_BLOCK_V"]) if os.environ.get("SALT_TRITON_BLOCK_V") else None
SLICE_V: int | None = None  # entries per slice in split/sync (a multiple of the block)
NUM_WARPS: int | None = None

MODES = ("auto", "fused", "split", "sync")
MAX_SPLIT = 64  # slices per row; the merge loads them as one vector

_kernels = None
_import_error: str | None = None


def _load():
    """The kernels module, imported on first use; None (with the reason kept) without triton."""
    global _kernels, _import_error
    if _kernels is None and _import_error is None:
        try:
            from . import kernels as triton_kernels

            _kernels = triton_kernels
        except Exception as exc:  # ImportError, or a broken triton install
            _import_error = f"triton is not usable: {type(exc).__name__}: {exc}"
    return _kernels


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernel_is_interpreted() -> bool:
    return type(_kernels.salt_rows_kernel).__name__ == "InterpretedFunction"


def is_available() -> tuple[bool, str]:
    if _load() is None:
        return False, _import_error
    if torch.cuda.is_available():
        return True, ""
    if interpreting() and _kernel_is_interpreted():
        return True, ""
    return False, "no CUDA device (triton runs on CUDA tensors; on CPU tensors only under TRITON_INTERPRET=1)"


def supports_options(options: LossOptions) -> tuple[bool, str]:
    """Every distillation option (docs/design.md, "Distillation options") is computed in the
    kernels (salt_rows_options_kernel)."""
    return True, ""


def supports_device(device: torch.device) -> tuple[bool, str]:
    if _load() is None:
        return False, _import_error
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, ""
    if device.type == "cpu":
        if not interpreting():
            return False, "backend triton runs on CUDA tensors; on CPU tensors only under TRITON_INTERPRET=1"
        if not _kernel_is_interpreted():
            return False, (
                "salt_kernels.backends.triton.kernels was imported before TRITON_INTERPRET=1 was set; "
                "set it before the first use of the triton backend"
            )
        return True, ""
    return False, f"backend triton runs on CUDA tensors, got a {device.type} tensor"


def _grad_scale(grad_scale: torch.Tensor, out: RowOutputs, device: torch.device) -> tuple[torch.Tensor, int]:
    """The per-row gradient scale as the kernels read it: fp32 and contiguous, stride 0 for one
    value shared by every row."""
    scale = grad_scale.to(device=device, dtype=torch.float32).reshape(-1)
    stride = 1 if scale.numel() > 1 else 0
    return (scale.contiguous() if stride else scale), stride


def _tau_mode(tau: float) -> int:
    """1: tau == 1 (z/tau is z); 2..4: integer tau (exp by multiplies); 0: any other tau."""
    if tau == 1.0:
        return 1
    if tau in (2.0, 3.0, 4.0):
        return int(tau)
    return 0


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _l2_bytes(device: torch.device) -> int:
    """The device's L2 cache size (50 MB, an H100's, where it cannot be read)."""
    try:
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or DEFAULT_L2
    except (RuntimeError, AssertionError, AttributeError):
        return DEFAULT_L2


DEFAULT_L2 = 50 << 20
PROGRAMS_PER_SM = 3  # the fused/sync kernels at 8 warps compile to ~80 registers: 3 fit an SM
SYNC_SLICE_BLOCKS = 8  # blocks per sync slice at least: spreads its fixed cost (ticket, wait, merge)


def plan(n: int, vocab: int, device: torch.device, entry_bytes: int = 4, reread: bool = True) -> dict:
    """Block size, warps and launch mode for n rows of vocab entries (exposed for benchmarks).
    entry_bytes: bytes read per vocabulary entry (student + teacher element sizes); reread: the
    gradient pass reads each entry a second time.

    Choices (first principles, not yet timed on a GPU; benchmarks/gpu/check.sh times every plan):
    2048-entry blocks at 8 warps, 8 entries per thread, which compile (triton 3.6 and 3.9, sm_90)
    to about 80 registers, so three programs share an SM. "auto" takes
      split  when rows are too few to give every SM two programs;
      sync   when the gradient pass re-reads the row and the rows the fused plan keeps in flight
             (SMs x 3 programs x a row's bytes) exceed the L2: the fused plan's second read would
             then come from HBM; sync slices are sized so that the slices in flight fit in half the
             L2 (at least SYNC_SLICE_BLOCKS blocks each, at most MAX_SPLIT per row);
      fused  otherwise (and on the CPU interpreter, which cannot run sync's spin-wait)."""
    pow2 = 1 << max(0, (vocab - 1).bit_length())
    block = BLOCK_V or min(2048, max(pow2, 16))
    warps = NUM_WARPS or (8 if block >= 2048 else 4)
    if MODE not in MODES:
        raise ValueError(f"salt_kernels.backends.triton.launcher.MODE must be one of {', '.join(MODES)}, got {MODE!r}")
    mode = MODE
    if mode == "sync" and device.type != "cuda":
        mode = "split"  # the interpreter runs programs one by one: a spin-wait would never end
    blocks = -(-vocab // block)
    resident = PROGRAMS_PER_SM * _sm_count(device)
    if SLICE_V:
        slice_v = -(-SLICE_V // block) * block
    elif mode == "auto" and n < resident:
        # Programs per row that give every SM two, with slices of at least 4 blocks.
        want = min(-(-2 * _sm_count(device) // n), blocks // 4, MAX_SPLIT)
        slice_v = -(-blocks // max(want, 1)) * block
        mode = "split" if -(-vocab // slice_v) > 1 else "fused"
    elif mode == "auto" and reread and device.type == "cuda" and resident * vocab * entry_bytes > _l2_bytes(device):
        fit = _l2_bytes(device) // 2 // (resident * entry_bytes)  # entries per slice in flight
        slice_v = max(SYNC_SLICE_BLOCKS, fit // block) * block
        mode = "sync"
    elif mode == "auto":
        mode, slice_v = "fused", vocab
    else:
        # About 4 blocks per slice: small enough that a slice is still in L2 when re-read.
        slice_v = 4 * block
    slice_v = max(slice_v, -(-(-(-vocab // MAX_SPLIT)) // block) * block)
    split = -(-vocab // slice_v)
    if mode == "fused" or split == 1:
        mode, split, slice_v = "fused", 1, vocab
    return dict(mode=mode, block_v=block, num_warps=warps, split=split, slice_v=slice_v)


def rows(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, **keywords) -> RowOutputs:
    """The row contract of backends/base.py (keywords: those of RowArgs)."""
    a = RowArgs(student, teacher, labels, **keywords)
    kd_weight, temperature, ignore_index, grad, grad_scale, options = (
        a.kd_weight, a.temperature, a.ignore_index, a.grad, a.grad_scale, a.options)
    k = _load()
    n, vocab = student.shape
    device = student.device
    out = RowOutputs.empty(n, device)
    if n == 0:
        return out
    use_teacher = a.use_teacher
    tau = float(temperature)
    p = plan(n, vocab, device, student.element_size() + (teacher.element_size() if use_teacher else 0),
             reread=grad is not None)
    has_grad = grad is not None
    scale, scale_stride = _grad_scale(grad_scale, out, device) if has_grad else (out.loss, 0)  # else: never read
    split = p["split"]
    flags = _option_flags(options, vocab, use_teacher)
    kernel = k.salt_rows_options_kernel if flags is not None else k.salt_rows_kernel
    fields = k.WS_FIELDS_OPTIONS if flags is not None else k.WS_FIELDS
    ws = torch.empty(n * split * fields if split > 1 else 1, dtype=torch.float32, device=device)
    cnt = torch.zeros(n + 1 if p["mode"] == "sync" else 1, dtype=torch.int32, device=device)
    outputs = [out.loss, out.ce, out.kd, out.lse]
    option_args = []
    meta = dict(
        SPLIT=split,
        SPLIT_POW2=max(2, 1 << (split - 1).bit_length()),
        BLOCK_V=p["block_v"],
        HAS_TEACHER=use_teacher,
        TAU_MODE=_tau_mode(tau),
        num_warps=p["num_warps"],
    )
    if flags is not None:
        out.accuracy = torch.empty(n, dtype=torch.float32, device=device)
        outputs.append(out.accuracy)
        o = options
        option_args = [
            float(o.softcap or 1.0), float(o.teacher_softcap or 1.0), int(o.kd_vocab or vocab),
            float(o.beta), float(o.label_smoothing), float(o.z_loss),
        ]
        meta.update(flags)
    args = [
        student, student.stride(0),
        teacher if use_teacher else student, teacher.stride(0) if use_teacher else 0,
        labels, labels.stride(0),
        *outputs,
        grad if has_grad else student, grad.stride(0) if has_grad else 0,
        scale, scale_stride,
        ws, cnt,
        vocab, p["slice_v"], float(kd_weight) if use_teacher else 0.0, tau, 1.0 / tau, int(ignore_index),
        *option_args,
    ]
    grid = (n * split,)
    with _on_device(device):
        if p["mode"] == "fused":
            kernel[grid](*args, MODE=k.MODE_FUSED, HAS_GRAD=has_grad, **meta)
        elif p["mode"] == "split":
            kernel[grid](*args, MODE=k.MODE_PART, HAS_GRAD=False, **meta)
            if flags is not None and flags["DIVERGENCE"] == k.DIV_JSD:
                # JSD needs the merged normalizers before its sums: one more pass per slice.
                kernel[grid](*args, MODE=k.MODE_JSD, HAS_GRAD=False, **meta)
            kernel[grid](*args, MODE=k.MODE_FINISH, HAS_GRAD=has_grad, **meta)
        else:
            kernel[grid](*args, MODE=k.MODE_SYNC, HAS_GRAD=has_grad, **meta)
    return out


def _option_flags(options: LossOptions, vocab: int, use_teacher: bool) -> dict | None:
    """The constexpr flags of salt_rows_options_kernel for `options`, or None when none of them
    changes this call's result (then the plain kernel runs, and accuracy is left to the op).
    Teacher-side options count only when the teacher is read; kd_vocab only when it is less than
    the student's vocabulary (kd_vocab == V with a longer, padded teacher row is the plain loss:
    only the first V teacher entries are read either way)."""
    o = options
    flags = dict(
        SOFTCAP=o.softcap is not None,
        TEACHER_SOFTCAP=use_teacher and o.teacher_softcap is not None,
        KD_VOCAB=use_teacher and o.kd_vocab is not None and o.kd_vocab < vocab,
        DIVERGENCE=_kernels.DIVERGENCES[o.divergence] if use_teacher else _kernels.DIV_FORWARD_KL,
        SMOOTHING=o.label_smoothing > 0,
        Z_LOSS=o.z_loss > 0,
    )
    if not any(flags.values()):
        return None
    flags["ACCURACY"] = True  # a specialization of its own anyway: one compare per entry more
    return flags


class _on_device:
    """Launches on the tensors' GPU (Triton uses the current device)."""

    def __init__(self, device: torch.device):
        self.ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


# ---- offline top-k teacher ------------------------------------------------------------------------

TOPK_MAX_K = 4096  # slots per row the kernel holds as one vector; longer rows run reference.topk_rows
TOPK_BITMAP_BYTES = 64 << 20  # the K bitmaps of the rows of one launch (rows beyond: more launches)

_extra_kernels: dict = {}


def load_kernels(name: str):
    """A kernels module beside this one (topk_kernels, slice_kernels), imported on first use;
    None when triton is not usable (_load says why)."""
    if name not in _extra_kernels and _load() is not None:
        _extra_kernels[name] = importlib.import_module(f"{__package__}.{name}")
    return _extra_kernels.get(name)


def block_plan(vocab: int, minimum: int) -> dict:
    """Block size and warps of a one-program-per-row kernel over rows of `vocab` entries: the
    next power of two up to 2048 (the BLOCK_V knob overrides), at least `minimum` entries."""
    pow2 = 1 << max(0, (vocab - 1).bit_length())
    block = max(minimum, BLOCK_V or min(2048, pow2))
    warps = NUM_WARPS or (8 if block >= 2048 else 4)
    return dict(block_v=block, num_warps=warps)


def topk_rows(student: torch.Tensor, indices: torch.Tensor, logprobs: torch.Tensor, labels: torch.Tensor, *,
              tail: str = "bucket", **keywords) -> RowOutputs:
    """The row contract with an offline top-k teacher (backends/reference.py topk_rows has the
    math; keywords: those of RowArgs), one program per row (topk_kernels.py). Here, in torch, only
    what is O(k) per row: the tail outcome's log r (float64 sum of the teacher's probabilities)."""
    a = RowArgs(student, None, labels, **keywords)
    kd_weight, tau, options, grad, grad_scale = a.kd_weight, float(a.temperature), a.options, a.grad, a.grad_scale
    k = load_kernels("topk_kernels")
    n, vocab = student.shape
    device = student.device
    use_teacher = kd_weight > 0 and indices is not None
    slots = indices.shape[1] if use_teacher else 0
    if slots > TOPK_MAX_K:
        from .. import reference

        return reference.topk_rows(student, indices, logprobs, labels, tail=tail, **keywords)
    out = RowOutputs.empty(n, device)
    out.accuracy = torch.empty(n, dtype=torch.float32, device=device)
    if n == 0:
        return out
    p = block_plan(vocab, 32)  # at least one bitmap word per tile row
    block = p["block_v"]
    words = -(-vocab // block) * (block // 32)  # bitmap words per row, whole blocks
    if use_teacher:
        filled = indices >= 0
        l64 = torch.where(filled, logprobs.to(torch.float64).clamp(max=0.0), float("-inf"))
        rest = torch.clamp(1.0 - l64.exp().sum(dim=-1), min=0.0)  # float64: no loss of the tail
        n_filled = filled.sum(dim=-1)
        bucket = (rest > 0) & (n_filled < vocab)
        if tail == "renormalize":
            bucket = bucket & (n_filled == 0)  # an empty row keeps one outcome: D = 0
        bucket = bucket | (n_filled == 0)
        log_rest = torch.where(bucket, rest.log(), float("-inf")).to(torch.float32)
        chunk = max(1, TOPK_BITMAP_BYTES // (4 * words))
        bits = torch.empty(min(n, chunk) * words, dtype=torch.int32, device=device)
    else:
        indices, logprobs, log_rest, chunk = student, student, out.loss, n  # never read
        bits = torch.empty(1, dtype=torch.int32, device=device)
    has_grad = grad is not None
    scale, scale_stride = _grad_scale(grad_scale, out, device) if has_grad else (out.loss, 0)  # else: never read
    meta = dict(
        BLOCK_V=block,
        K_POW2=max(2, 1 << max(0, (slots - 1).bit_length())),
        HAS_TEACHER=use_teacher,
        TAU_MODE=_tau_mode(tau),
        HAS_GRAD=has_grad,
        SOFTCAP=options.softcap is not None,
        SMOOTHING=options.label_smoothing > 0,
        Z_LOSS=options.z_loss > 0,
        num_warps=p["num_warps"],
    )
    with _on_device(device):
        for r0 in range(0, n, chunk):
            r1 = min(n, r0 + chunk)
            rows_ = slice(r0, r1)
            k.topk_rows_kernel[(r1 - r0,)](
                student[rows_], student.stride(0),
                indices[rows_], indices.stride(0) if use_teacher else 0,
                logprobs[rows_], logprobs.stride(0) if use_teacher else 0,
                log_rest[rows_], labels[rows_], labels.stride(0) if labels.dim() else 0,
                out.loss[rows_], out.ce[rows_], out.kd[rows_], out.lse[rows_], out.accuracy[rows_],
                grad[rows_] if has_grad else student, grad.stride(0) if has_grad else 0,
                scale[rows_] if scale_stride else scale, scale_stride, bits, words,
                vocab, slots, float(kd_weight) if use_teacher else 0.0, tau, 1.0 / tau, int(a.ignore_index),
                float(options.softcap or 1.0), float(options.label_smoothing), float(options.z_loss),
                **meta,
            )
    return out
