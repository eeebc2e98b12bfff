"""The fused linear SALT loss as torch.library custom ops (docs/design.md, "The fused linear
form"): output projections of student and teacher composed with a backend's rows()
(backends/base.py) chunk by chunk, so no [tokens x vocab] tensor is ever held.

    torch.ops.salt_kernels.linear_salt_loss(h_s [N, d_s], w_s [V_s, d_s], b_s, h_t [N, d_t],
        w_t [V_t, d_t], b_t, labels (any shape, N), kd_weight, temperature, ignore_index, reduction,
        backend, chunk_size, compute_dtype, teacher_dtype, *options, want_h, want_w, want_b,
        want_accuracy) -> (loss, ce, kd, z_loss, accuracy, grad_h, grad_w, grad_b)
    torch.ops.salt_kernels.linear_salt_loss_backward(..., labels, grad_output, ..., *options,
        want_h, want_w, want_b) -> (grad_h, grad_w, grad_b)

(*options: the fields of backends.base.LossOptions in order.)


Per chunk of (non-ignored) token rows:

    z = h_s @ W_s.T + b_s               student logits, compute dtype       [c, V] buffer
    u = h_t @ W_t.T + b_t               teacher logits, teacher dtype       [c, V] buffer (skipped when kd_weight == 0)
    backend.rows(z, u, y, grad=g, grad_scale=s)   loss parts and g = s * d loss / d z   [c, V] buffer
    grad_h[chunk] = g @ W_s             grad_W += g.T @ h_s (fp32)          grad_b += sum_rows g (fp32)

The three buffers are allocated once and reused by every chunk. For "mean" and "sum" the gradients
asked for (want_*) are computed in the forward pass (the loss's scale is known there) and handed
out by backward, scaled by grad_output; none is computed when no input requires grad. For
"none" the per-row grad_output is only known in backward, which runs the chunks again with it as
the row scale. On the CPU ignored rows are dropped before any projection; on a GPU finding them
would cost a sync, so every row is projected and ignored rows contribute zeros.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..backends import registry
from ..backends.base import DEFAULT_OPTIONS, LossOptions, result_dtype
from .common import (
    accuracy_rows,
    check_addressable,
    check_labels_in_op,
    grad_scale_for,
    loss_options,
    n_valid_rows,
    op_signatures,
    options_params,
    part_reduction,
    reduce_rows,
    register_loss_ops,
    row_kwargs,
    z_loss_rows,
)
from .topk_salt_loss import TOPK_OPTIONS, check_teacher_topk

F32 = torch.float32

# Memory budget of one chunk's [chunk x V] buffers (student logits, teacher logits, gradient).
# On the CPU the matmuls run near peak from about 100 rows on. On a GPU each chunk also reads and
# writes the fp32 weight-gradient accumulator (V x d_s), so chunks must be long enough for the
# GEMMs to stay compute bound (about 1400 rows at V=128256 in bf16); 1 GiB is still a fraction
# of the logits plain PyTorch holds at that size (not measured on a GPU yet).
DEFAULT_CHUNK_BYTES = 64 << 20
DEFAULT_CHUNK_BYTES_GPU = 1 << 30
# Chunks below this many rows make the weight-gradient GEMM memory bound; the budget is exceeded
# rather than going below it (unless there are fewer rows).
MIN_CHUNK_ROWS = 64


def default_chunk_size(n_rows: int, vocab: int, bytes_per_row_element: int, budget: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that the chunk's [rows x vocab] buffers take about `budget` bytes
    (at least MIN_CHUNK_ROWS rows, at most n_rows, a multiple of 8 when above 8)."""
    rows = budget // max(1, vocab * bytes_per_row_element)
    rows = max(MIN_CHUNK_ROWS, rows)
    if rows > 8:
        rows -= rows % 8
    return max(1, min(rows, max(1, n_rows)))


def plan_chunk_size(chunk_size, n_rows: int, vocab: int, compute_dtype, teacher_dtype, device) -> int:
    """chunk_size as given, or the default for the device's memory budget."""
    if chunk_size is not None:
        return int(chunk_size)
    per_element = 2 * compute_dtype.itemsize + (teacher_dtype.itemsize if teacher_dtype is not None else 0)
    budget = DEFAULT_CHUNK_BYTES if device.type == "cpu" else DEFAULT_CHUNK_BYTES_GPU
    return default_chunk_size(n_rows, vocab, per_element, budget)


@dataclass
class LinearPlan:
    """Everything the chunk loop needs besides the tensors."""

    backend: object
    kd_weight: float
    temperature: float
    ignore_index: int
    reduction: str
    chunk_size: int
    compute_dtype: torch.dtype  # dtype of the student's matmuls and logits
    teacher_dtype: torch.dtype | None  # dtype of the teacher's matmuls and logits
    use_teacher: bool
    options: LossOptions = DEFAULT_OPTIONS
    want_accuracy: bool = False
    topk_tail: str | None = None  # set: the teacher is a cached top-k (indices, log-probs)


class _Chunks:
    """The rows one call projects, in the dtypes the matmuls run in: the non-ignored rows on the
    CPU, every row on a GPU (no sync)."""

    def __init__(self, plan: LinearPlan, h_s, w_s, b_s, h_t, w_t, b_t, labels):
        n = labels.shape[0]
        self.n = n
        self.n_valid_t = n_valid_rows(labels, plan.ignore_index)
        if labels.device.type == "cpu":
            idx = (labels != plan.ignore_index).nonzero().reshape(-1)
            self.all_valid = idx.numel() == n
        else:
            idx, self.all_valid = None, True
        self.idx = idx
        self.n_rows = n if self.all_valid else idx.numel()

        def pick(x):
            return x if self.all_valid else x.index_select(0, idx)

        cd = plan.compute_dtype
        self.h_s = pick(h_s).to(cd)
        self.w_s = w_s.to(cd)
        self.b_s = None if b_s is None else b_s.to(cd)
        self.labels = pick(labels)
        if plan.topk_tail is not None:
            # h_t, w_t: the teacher's top-k indices and log-probs, picked like the rows
            self.t_idx, self.t_lp = (None, None) if h_t is None else (pick(h_t), pick(w_t))
            self.h_t = self.w_t = self.b_t = None
        elif plan.use_teacher:
            td = plan.teacher_dtype
            k = plan.options.kd_vocab  # only the first k teacher logits are ever read
            self.h_t = pick(h_t).to(td)
            self.w_t = (w_t if k is None else w_t[:k]).to(td)
            self.b_t = None if b_t is None else (b_t if k is None else b_t[:k]).to(td)
        else:
            self.h_t = self.w_t = self.b_t = None


def _project(h, w, b, out):
    if b is None:
        torch.mm(h, w.t(), out=out)
    else:
        torch.addmm(b, h, w.t(), out=out)


_ADDMM_OUT_DTYPE_OK: dict[str, bool] = {}


def _accumulate_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b, with a and b possibly in a low-precision dtype, without a temporary of
    acc's size: fp32 inputs go straight to addmm_; on CUDA a bf16/fp16 GEMM with fp32 output is
    used when this torch has it (out_dtype=); else (and on CPU) the chunk-sized operands are cast
    to fp32, which on a GPU runs an fp32 GEMM several times slower: said once per process."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    dev = acc.device.type
    if dev == "cuda" and _ADDMM_OUT_DTYPE_OK.get(dev, True):
        try:
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            _ADDMM_OUT_DTYPE_OK[dev] = True
            return
        except (RuntimeError, TypeError, NotImplementedError) as exc:
            _ADDMM_OUT_DTYPE_OK[dev] = False
            warnings.warn(
                f"salt_kernels.linear_salt_loss: this torch ({torch.__version__}) has no addmm with "
                f"out_dtype=float32 for {a.dtype} inputs ({type(exc).__name__}); the weight gradient is "
                "accumulated with an fp32 GEMM instead, several times slower on a GPU",
                RuntimeWarning,
                stacklevel=2,
            )
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def run_chunks(plan: LinearPlan, ch: _Chunks, *, row_scale, want_h: bool, want_w: bool, want_b: bool):
    """One pass over the valid rows. row_scale: None (no gradient), or an fp32 tensor of shape [1]
    or [n_valid] scaling each row's gradient. Returns the parts per projected row (fp32: loss, ce,
    kd, z_loss, accuracy) and the gradients asked for: grad_h [n_rows, d_s] in the compute dtype, grad_w [V, d_s] and grad_b [V]
    in fp32 (None where not asked)."""
    nv = ch.n_rows
    vocab = ch.w_s.shape[0]
    device = ch.h_s.device
    want_grad = row_scale is not None and (want_h or want_w or want_b)
    acc = result_dtype(plan.compute_dtype)  # fp32 accumulation (float64 for float64 inputs)
    # loss, ce, kd, z_loss, accuracy: separate tensors, as an op's outputs must not alias
    parts = [torch.empty(nv, dtype=acc, device=device) for _ in range(5)]
    grad_h = torch.empty(nv, ch.h_s.shape[1], dtype=plan.compute_dtype, device=device) if want_grad and want_h else None
    grad_w = torch.zeros(ch.w_s.shape, dtype=acc, device=device) if want_grad and want_w else None
    grad_b = torch.zeros(vocab, dtype=acc, device=device) if want_grad and want_b else None
    if nv == 0:
        return parts, grad_h, grad_w, grad_b

    step = max(1, min(plan.chunk_size, nv))
    z_buf = torch.empty(step, vocab, dtype=plan.compute_dtype, device=device)
    project_teacher = plan.use_teacher and plan.topk_tail is None
    u_buf = torch.empty(step, ch.w_t.shape[0], dtype=plan.teacher_dtype, device=device) if project_teacher else None
    g_buf = torch.empty(step, vocab, dtype=plan.compute_dtype, device=device) if want_grad else None
    per_row_scale = want_grad and row_scale.numel() > 1
    for r0 in range(0, nv, step):
        r1 = min(nv, r0 + step)
        c = r1 - r0
        h = ch.h_s[r0:r1]
        z = z_buf[:c]
        _project(h, ch.w_s, ch.b_s, z)
        g = g_buf[:c] if want_grad else None
        kw = dict(row_kwargs(plan, plan.options), grad=g,
                  grad_scale=(row_scale[r0:r1] if per_row_scale else row_scale) if want_grad else None)
        if plan.topk_tail is not None:
            out = plan.backend.topk_rows(z, ch.t_idx[r0:r1], ch.t_lp[r0:r1], ch.labels[r0:r1], tail=plan.topk_tail, **kw)
        else:
            u = None
            if project_teacher:
                u = u_buf[:c]
                _project(ch.h_t[r0:r1], ch.w_t, ch.b_t, u)
            out = plan.backend.rows(z, u, ch.labels[r0:r1], **kw)
        y = ch.labels[r0:r1]
        z_loss = z_loss_rows(out, plan.options.z_loss)
        accuracy = accuracy_rows(out, z, y, plan.ignore_index, plan.want_accuracy)
        for i, x in enumerate((out.loss, out.ce, out.kd, z_loss, accuracy)):
            parts[i][r0:r1] = x
        if want_grad:
            if grad_h is not None:
                torch.mm(g, ch.w_s, out=grad_h[r0:r1])
            if grad_w is not None:
                _accumulate_mm(grad_w, g.t(), h)
            if grad_b is not None:
                grad_b.add_(g.sum(0, dtype=acc))
    return parts, grad_h, grad_w, grad_b


def _scatter_rows(rows: Tensor, ch: _Chunks) -> Tensor:
    if ch.all_valid:
        return rows
    full = torch.zeros(ch.n, dtype=rows.dtype, device=rows.device)
    return full.index_copy_(0, ch.idx, rows)


def _finish_grads(ch: _Chunks, h_s, w_s, b_s, grad_h, grad_w, grad_b):
    """Projected-row / fp32 gradients -> gradients shaped and typed like the inputs; an empty
    tensor for each one not asked for (an op returns tensors only)."""
    if grad_h is not None:
        if ch.all_valid:
            grad_h = grad_h.to(h_s.dtype)
        else:
            full = torch.zeros(h_s.shape, dtype=h_s.dtype, device=h_s.device)
            grad_h = full.index_copy_(0, ch.idx, grad_h.to(h_s.dtype))
    grad_w = None if grad_w is None else grad_w.to(w_s.dtype)
    grad_b = None if grad_b is None else grad_b.to(b_s.dtype)
    return tuple(h_s.new_empty(0) if g is None else g for g in (grad_h, grad_w, grad_b))


_LINEAR_GRADS = "bool want_h, bool want_w, bool want_b"
FORWARD, BACKWARD = op_signatures(
    "Tensor h_s, Tensor w_s, Tensor? b_s, Tensor? h_t, Tensor? w_t, Tensor? b_t, Tensor labels",
    f"SymInt chunk_size, ScalarType compute_dtype, ScalarType? teacher_dtype, {options_params()}",
    f"{_LINEAR_GRADS}, bool want_accuracy", _LINEAR_GRADS,
)
TOPK_FORWARD, TOPK_BACKWARD = op_signatures(
    "Tensor h_s, Tensor w_s, Tensor? b_s, Tensor indices, Tensor logprobs, Tensor labels",
    f"SymInt chunk_size, ScalarType compute_dtype, str tail, {TOPK_OPTIONS}",
    f"{_LINEAR_GRADS}, bool want_accuracy", _LINEAR_GRADS,
)


def _bind(signature, args):
    """The bound arguments of a fused linear op, with `teacher`: (h_t, w_t, b_t), or (indices,
    log-probs, None) for a top-k teacher; refuses tensors without addressable storage."""
    a = signature.bind(args)
    a.teacher = (a.h_t, a.w_t, a.b_t) if hasattr(a, "h_t") else (a.indices, a.logprobs, None)
    check_addressable(a.h_s, a.w_s, a.b_s, *a.teacher, a.labels)
    return a


def _plan(a) -> LinearPlan:
    """The plan of a fused linear op's bound arguments (a top-k teacher when they have a tail)."""
    tail = getattr(a, "tail", None)
    teacher_dtype = getattr(a, "teacher_dtype", None)
    return LinearPlan(
        backend=registry.get(a.backend),
        kd_weight=a.kd_weight,
        temperature=a.temperature,
        ignore_index=a.ignore_index,
        reduction=a.reduction,
        chunk_size=a.chunk_size,
        compute_dtype=a.compute_dtype,
        teacher_dtype=teacher_dtype,
        use_teacher=a.kd_weight > 0 if tail is not None else teacher_dtype is not None,
        options=loss_options(a),
        want_accuracy=getattr(a, "want_accuracy", False),
        topk_tail=tail,
    )


def _linear_forward(a) -> tuple:
    """Forward of a fused linear op: parts (reduced) and the gradients asked for (mean/sum)."""
    plan = _plan(a)
    reduction = plan.reduction
    shape, labels = a.labels.shape, a.labels.reshape(-1)
    want_h, want_w, want_b = a.want_h, a.want_w, a.want_b and a.b_s is not None
    with torch.autocast(a.h_s.device.type, enabled=False), torch.no_grad():
        check_labels_in_op(labels, a.w_s.shape[0], plan.ignore_index)
        ch = _Chunks(plan, a.h_s, a.w_s, a.b_s, *a.teacher, labels)
        row_scale = None
        if reduction != "none" and (want_h or want_w or want_b):
            row_scale = grad_scale_for(reduction, ch.n_valid_t, None)
        parts, gh, gw, gb = run_chunks(plan, ch, row_scale=row_scale, want_h=want_h, want_w=want_w, want_b=want_b)
        if reduction == "none":
            parts = [_scatter_rows(x, ch).reshape(shape) for x in parts]
        else:
            parts = [reduce_rows(x, part_reduction(reduction, i), ch.n_valid_t) for i, x in enumerate(parts)]
        grads = _finish_grads(ch, a.h_s, a.w_s, a.b_s, gh, gw, gb)
    return (*parts, *grads)


def _linear_backward(a) -> tuple:
    """Gradients of a fused linear op scaled by grad_output ("none", or a second backward)."""
    plan = _plan(a)
    labels = a.labels.reshape(-1)
    want_h, want_w, want_b = a.want_h, a.want_w, a.want_b and a.b_s is not None
    with torch.autocast(a.h_s.device.type, enabled=False), torch.no_grad():
        ch = _Chunks(plan, a.h_s, a.w_s, a.b_s, *a.teacher, labels)
        row_scale = grad_scale_for(plan.reduction, ch.n_valid_t, a.grad_output)
        if plan.reduction == "none" and not ch.all_valid:
            row_scale = row_scale.index_select(0, ch.idx).contiguous()
        _, gh, gw, gb = run_chunks(plan, ch, row_scale=row_scale, want_h=want_h, want_w=want_w, want_b=want_b)
        return _finish_grads(ch, a.h_s, a.w_s, a.b_s, gh, gw, gb)


def _grad_shapes(a, want_h, want_w, want_b):
    h_s, w_s, b_s = a.h_s, a.w_s, a.b_s
    return (
        h_s.new_empty(h_s.shape if want_h else (0,)),
        w_s.new_empty(w_s.shape if want_w else (0,)),
        (b_s if b_s is not None else h_s).new_empty(b_s.shape if want_b and b_s is not None else (0,)),
    )


def _register_fakes(forward_op, backward_op, forward, backward) -> None:
    """Shapes and dtypes of a fused linear op's outputs and of its backward op's."""

    @forward_op.register_fake
    def _(*args):
        a = forward.bind(args)
        shape = a.labels.shape if a.reduction == "none" else ()
        parts = [a.h_s.new_empty(shape, dtype=result_dtype(a.compute_dtype)) for _ in range(5)]
        fwd = a.reduction != "none"  # "none" computes its gradients in backward
        return (*parts, *_grad_shapes(a, a.want_h and fwd, a.want_w and fwd, a.want_b and fwd))

    @backward_op.register_fake
    def _(*args):
        a = backward.bind(args)
        return _grad_shapes(a, a.want_h, a.want_w, a.want_b)


@torch.library.custom_op("salt_kernels::linear_salt_loss", mutates_args=(), schema=FORWARD.schema(8))
def linear_salt_loss_op(*args) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _linear_forward(_bind(FORWARD, args))


@torch.library.custom_op("salt_kernels::linear_salt_loss_backward", mutates_args=(), schema=BACKWARD.schema(3))
def linear_salt_loss_backward_op(*args) -> tuple[Tensor, Tensor, Tensor]:
    return _linear_backward(_bind(BACKWARD, args))


_register_fakes(linear_salt_loss_op, linear_salt_loss_backward_op, FORWARD, BACKWARD)
LinearSaltLossFunction = register_loss_ops("linear_salt_loss", linear_salt_loss_op, linear_salt_loss_backward_op,
                                           FORWARD, BACKWARD, n_grads=3)


# ---- the fused linear loss with an offline top-k teacher -----------------------------------


@torch.library.custom_op("salt_kernels::linear_topk_salt_loss", mutates_args=(), schema=TOPK_FORWARD.schema(8))
def linear_topk_salt_loss_op(*args) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    a = _bind(TOPK_FORWARD, args)
    if a.kd_weight > 0:
        check_teacher_topk(a.indices, a.logprobs, a.w_s.shape[0])
    return _linear_forward(a)


@torch.library.custom_op("salt_kernels::linear_topk_salt_loss_backward", mutates_args=(),
                         schema=TOPK_BACKWARD.schema(3))
def linear_topk_salt_loss_backward_op(*args) -> tuple[Tensor, Tensor, Tensor]:
    return _linear_backward(_bind(TOPK_BACKWARD, args))


_register_fakes(linear_topk_salt_loss_op, linear_topk_salt_loss_backward_op, TOPK_FORWARD, TOPK_BACKWARD)
LinearTopkSaltLossFunction = register_loss_ops("linear_topk_salt_loss", linear_topk_salt_loss_op,
                                               linear_topk_salt_loss_backward_op, TOPK_FORWARD, TOPK_BACKWARD,
                                               n_grads=3)
