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
    finish_backward,
    grad_scale_for,
    n_valid_rows,
    no_context,
    no_second_order,
    once_differentiable,
    part_reduction,
    reduce_rows,
    z_loss_rows,
)

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
        kw = dict(
            kd_weight=plan.kd_weight,
            temperature=plan.temperature,
            ignore_index=plan.ignore_index,
            grad=g,
            grad_scale=(row_scale[r0:r1] if per_row_scale else row_scale) if want_grad else None,
            options=plan.options,
        )
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


def _plan(labels, kd_weight, temperature, ignore_index, reduction, backend, chunk_size, compute_dtype, teacher_dtype,
          options: LossOptions, want_accuracy: bool = False) -> LinearPlan:
    return LinearPlan(
        backend=registry.get(backend),
        kd_weight=kd_weight,
        temperature=temperature,
        ignore_index=ignore_index,
        reduction=reduction,
        chunk_size=chunk_size,
        compute_dtype=compute_dtype,
        teacher_dtype=teacher_dtype,
        use_teacher=teacher_dtype is not None,
        options=options,
        want_accuracy=want_accuracy,
    )


@torch.library.custom_op("salt_kernels::linear_salt_loss", mutates_args=())
def linear_salt_loss_op(
    h_s: Tensor,
    w_s: Tensor,
    b_s: Tensor | None,
    h_t: Tensor | None,
    w_t: Tensor | None,
    b_t: Tensor | None,
    labels: Tensor,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    reduction: str,
    backend: str,
    chunk_size: int,
    compute_dtype: torch.dtype,
    teacher_dtype: torch.dtype | None,
    softcap: float | None,
    teacher_softcap: float | None,
    kd_vocab: int | None,
    divergence: str,
    beta: float,
    label_smoothing: float,
    z_loss: float,
    want_h: bool,
    want_w: bool,
    want_b: bool,
    want_accuracy: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_addressable(h_s, w_s, b_s, h_t, w_t, b_t, labels)
    options = LossOptions(softcap, teacher_softcap, kd_vocab, divergence, beta, label_smoothing, z_loss)
    plan = _plan(labels, kd_weight, temperature, ignore_index, reduction, backend, chunk_size, compute_dtype,
                 teacher_dtype, options, want_accuracy)
    return _linear_forward(h_s, w_s, b_s, h_t, w_t, b_t, labels, plan, want_h, want_w, want_b)


def _linear_forward(h_s, w_s, b_s, h_t, w_t, b_t, labels, plan: LinearPlan, want_h, want_w, want_b) -> tuple:
    """Forward of a fused linear op: parts (reduced) and the gradients asked for (mean/sum)."""
    reduction = plan.reduction
    shape, labels = labels.shape, labels.reshape(-1)
    want_b = want_b and b_s is not None
    with torch.autocast(h_s.device.type, enabled=False), torch.no_grad():
        check_labels_in_op(labels, w_s.shape[0], plan.ignore_index)
        ch = _Chunks(plan, h_s, w_s, b_s, h_t, w_t, b_t, labels)
        row_scale = None
        if reduction != "none" and (want_h or want_w or want_b):
            row_scale = grad_scale_for(reduction, ch.n_valid_t, None)
        parts, gh, gw, gb = run_chunks(plan, ch, row_scale=row_scale, want_h=want_h, want_w=want_w, want_b=want_b)
        if reduction == "none":
            parts = [_scatter_rows(x, ch).reshape(shape) for x in parts]
        else:
            parts = [reduce_rows(x, part_reduction(reduction, i), ch.n_valid_t) for i, x in enumerate(parts)]
        grads = _finish_grads(ch, h_s, w_s, b_s, gh, gw, gb)
    return (*parts, *grads)


def _linear_backward(h_s, w_s, b_s, h_t, w_t, b_t, labels, grad_output, plan: LinearPlan, want_h, want_w, want_b):
    """Gradients of a fused linear op scaled by grad_output ("none", or a second backward)."""
    labels = labels.reshape(-1)
    want_b = want_b and b_s is not None
    with torch.autocast(h_s.device.type, enabled=False), torch.no_grad():
        ch = _Chunks(plan, h_s, w_s, b_s, h_t, w_t, b_t, labels)
        row_scale = grad_scale_for(plan.reduction, ch.n_valid_t, grad_output)
        if plan.reduction == "none" and not ch.all_valid:
            row_scale = row_scale.index_select(0, ch.idx).contiguous()
        _, gh, gw, gb = run_chunks(plan, ch, row_scale=row_scale, want_h=want_h, want_w=want_w, want_b=want_b)
        return _finish_grads(ch, h_s, w_s, b_s, gh, gw, gb)


def _grad_shapes(h_s, w_s, b_s, want_h, want_w, want_b):
    return (
        h_s.new_empty(h_s.shape if want_h else (0,)),
        w_s.new_empty(w_s.shape if want_w else (0,)),
        (b_s if b_s is not None else h_s).new_empty(b_s.shape if want_b and b_s is not None else (0,)),
    )


def _fake_forward(h_s, w_s, b_s, labels, reduction, compute_dtype, want_h, want_w, want_b):
    shape = labels.shape if reduction == "none" else ()
    parts = [h_s.new_empty(shape, dtype=result_dtype(compute_dtype)) for _ in range(5)]
    fwd = reduction != "none"  # "none" computes its gradients in backward
    return (*parts, *_grad_shapes(h_s, w_s, b_s, want_h and fwd, want_w and fwd, want_b and fwd))


@linear_salt_loss_op.register_fake
def _(h_s, w_s, b_s, h_t, w_t, b_t, labels, kd_weight, temperature, ignore_index, reduction, backend, chunk_size,
      compute_dtype, teacher_dtype, *options_and_flags):
    want_h, want_w, want_b, _want_accuracy = options_and_flags[-4:]
    return _fake_forward(h_s, w_s, b_s, labels, reduction, compute_dtype, want_h, want_w, want_b)


@torch.library.custom_op("salt_kernels::linear_salt_loss_backward", mutates_args=())
def linear_salt_loss_backward_op(
    h_s: Tensor,
    w_s: Tensor,
    b_s: Tensor | None,
    h_t: Tensor | None,
    w_t: Tensor | None,
    b_t: Tensor | None,
    labels: Tensor,
    grad_output: Tensor,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    reduction: str,
    backend: str,
    chunk_size: int,
    compute_dtype: torch.dtype,
    teacher_dtype: torch.dtype | None,
    softcap: float | None,
    teacher_softcap: float | None,
    kd_vocab: int | None,
    divergence: str,
    beta: float,
    label_smoothing: float,
    z_loss: float,
    want_h: bool,
    want_w: bool,
    want_b: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    check_addressable(h_s, w_s, b_s, h_t, w_t, b_t, labels)
    options = LossOptions(softcap, teacher_softcap, kd_vocab, divergence, beta, label_smoothing, z_loss)
    plan = _plan(labels, kd_weight, temperature, ignore_index, reduction, backend, chunk_size, compute_dtype,
                 teacher_dtype, options)
    return _linear_backward(h_s, w_s, b_s, h_t, w_t, b_t, labels, grad_output, plan, want_h, want_w, want_b)


@linear_salt_loss_backward_op.register_fake
def _(h_s, w_s, b_s, *args):
    want_h, want_w, want_b = args[-3:]
    return _grad_shapes(h_s, w_s, b_s, want_h, want_w, want_b)


def _computed(grad: Tensor, like: Tensor | None) -> bool:
    """Whether an op output holds a gradient (an empty 1-d tensor stands for "not computed")."""
    return like is not None and grad.shape == like.shape


def linear_autograd(name: str, *, n_tensors: int, arg_names: tuple, backward_op):
    """setup_context and backward of a fused linear loss op whose inputs are (h_s, w_s, b_s,
    *other tensors, *args named arg_names ending with want_h, want_w, want_b, want_accuracy) and
    whose outputs are (loss, ce, kd, z_loss, accuracy, grad_h, grad_w, grad_b). The gradients
    computed in the forward are kept on ctx, not saved, and handed out once (see
    common.rows_autograd); "none" and a second backward call backward_op()."""

    def setup_context(ctx, inputs, output):
        tensors = inputs[:n_tensors]
        for arg, value in zip(arg_names, inputs[n_tensors:]):
            setattr(ctx, arg, value)
        parts, grads = output[1:5], output[5:]
        ctx.mark_non_differentiable(*parts, *grads)
        # Outputs other than the loss get no gradient: without this autograd would hand backward
        # a zero tensor for each of them, one of which is as large as the logits.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*tensors)
        fresh = ctx.reduction != "none" and any(_computed(g, t) for g, t in zip(grads, tensors))
        ctx.grads = grads if fresh else None

    def backward(ctx, grad_loss, *_unused):
        if grad_loss is None:  # the loss got no gradient (grads are not materialized)
            return (None,) * (n_tensors + len(arg_names))
        tensors = ctx.saved_tensors
        args = [getattr(ctx, arg) for arg in arg_names]
        # What the forward was asked for may be more than this backward needs (e.g. the weight only).
        need = ctx.needs_input_grad[:3]
        grads, ctx.grads = ctx.grads, None  # handed out once; a second backward recomputes below
        if grads is not None:
            out = [finish_backward(g, grad_loss) if n and _computed(g, t) else None
                   for g, t, n in zip(grads, tensors[:3], need)]
        else:
            args = args[:-4] + [bool(n) for n in need]  # want_h, want_w, want_b; no want_accuracy
            with torch.no_grad():  # not differentiable; once_differentiable below says so
                out = backward_op()(*tensors, grad_loss, *args)
            out = [g if n and _computed(g, t) else None for g, t, n in zip(out, tensors[:3], need)]
        return once_differentiable(name, tuple(out)) + (None,) * (n_tensors - 3 + len(arg_names))

    return setup_context, backward


_ARGS = ("kd_weight", "temperature", "ignore_index", "reduction", "backend", "chunk_size", "compute_dtype",
         "teacher_dtype", "softcap", "teacher_softcap", "kd_vocab", "divergence", "beta", "label_smoothing",
         "z_loss", "want_h", "want_w", "want_b", "want_accuracy")
setup_context, backward = linear_autograd(
    "salt_kernels.linear_salt_loss", n_tensors=7, arg_names=_ARGS,
    backward_op=lambda: torch.ops.salt_kernels.linear_salt_loss_backward,
)
linear_salt_loss_op.register_autograd(backward, setup_context=setup_context)
linear_salt_loss_backward_op.register_autograd(no_second_order("salt_kernels.linear_salt_loss"), setup_context=no_context)


class LinearSaltLossFunction(torch.autograd.Function):
    """The op with its registered autograd, as an autograd.Function with setup_context (for the
    torch.func transforms, which refuse the wrapper torch.library builds)."""

    @staticmethod
    def forward(*args):
        return torch.ops.salt_kernels.linear_salt_loss(*args)

    setup_context = staticmethod(setup_context)
    backward = staticmethod(backward)


# ---- the fused linear loss with an offline top-k teacher -----------------------------------


@torch.library.custom_op("salt_kernels::linear_topk_salt_loss", mutates_args=())
def linear_topk_salt_loss_op(
    h_s: Tensor,
    w_s: Tensor,
    b_s: Tensor | None,
    indices: Tensor,
    logprobs: Tensor,
    labels: Tensor,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    reduction: str,
    backend: str,
    chunk_size: int,
    compute_dtype: torch.dtype,
    tail: str,
    softcap: float | None,
    label_smoothing: float,
    z_loss: float,
    want_h: bool,
    want_w: bool,
    want_b: bool,
    want_accuracy: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from .topk_salt_loss import check_teacher_topk

    check_addressable(h_s, w_s, b_s, indices, logprobs, labels)
    if kd_weight > 0:
        check_teacher_topk(indices, logprobs, w_s.shape[0])
    return _linear_forward(h_s, w_s, b_s, indices, logprobs, None, labels, _topk_plan(
        labels, kd_weight, temperature, ignore_index, reduction, backend, chunk_size, compute_dtype, tail, softcap,
        label_smoothing, z_loss, want_accuracy), want_h, want_w, want_b)


def _topk_plan(labels, kd_weight, temperature, ignore_index, reduction, backend, chunk_size, compute_dtype, tail, softcap,
               label_smoothing, z_loss, want_accuracy=False) -> LinearPlan:
    options = LossOptions(softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss)
    plan = _plan(labels, kd_weight, temperature, ignore_index, reduction, backend, chunk_size, compute_dtype, None,
                 options, want_accuracy)
    plan.topk_tail = tail
    plan.use_teacher = kd_weight > 0
    return plan


@linear_topk_salt_loss_op.register_fake
def _(h_s, w_s, b_s, indices, logprobs, labels, kd_weight, temperature, ignore_index, reduction, backend, chunk_size,
      compute_dtype, *args):
    want_h, want_w, want_b, _want_accuracy = args[-4:]
    return _fake_forward(h_s, w_s, b_s, labels, reduction, compute_dtype, want_h, want_w, want_b)


@torch.library.custom_op("salt_kernels::linear_topk_salt_loss_backward", mutates_args=())
def linear_topk_salt_loss_backward_op(
    h_s: Tensor,
    w_s: Tensor,
    b_s: Tensor | None,
    indices: Tensor,
    logprobs: Tensor,
    labels: Tensor,
    grad_output: Tensor,
    kd_weight: float,
    temperature: float,
    ignore_index: int,
    reduction: str,
    backend: str,
    chunk_size: int,
    compute_dtype: torch.dtype,
    tail: str,
    softcap: float | None,
    label_smoothing: float,
    z_loss: float,
    want_h: bool,
    want_w: bool,
    want_b: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    check_addressable(h_s, w_s, b_s, indices, logprobs, labels)
    plan = _topk_plan(labels, kd_weight, temperature, ignore_index, reduction, backend, chunk_size, compute_dtype, tail,
                      softcap, label_smoothing, z_loss)
    return _linear_backward(h_s, w_s, b_s, indices, logprobs, None, labels, grad_output, plan, want_h, want_w, want_b)


@linear_topk_salt_loss_backward_op.register_fake
def _(h_s, w_s, b_s, *args):
    want_h, want_w, want_b = args[-3:]
    return _grad_shapes(h_s, w_s, b_s, want_h, want_w, want_b)


_TOPK_ARGS = ("kd_weight", "temperature", "ignore_index", "reduction", "backend", "chunk_size", "compute_dtype", "tail",
              "softcap", "label_smoothing", "z_loss", "want_h", "want_w", "want_b", "want_accuracy")
_topk_setup_context, _topk_backward = linear_autograd(
    "salt_kernels.linear_topk_salt_loss", n_tensors=6, arg_names=_TOPK_ARGS,
    backward_op=lambda: torch.ops.salt_kernels.linear_topk_salt_loss_backward,
)
linear_topk_salt_loss_op.register_autograd(_topk_backward, setup_context=_topk_setup_context)
linear_topk_salt_loss_backward_op.register_autograd(no_second_order("salt_kernels.linear_topk_salt_loss"),
                                                    setup_context=no_context)


class LinearTopkSaltLossFunction(torch.autograd.Function):
    """The top-k op with its registered autograd, as an autograd.Function (for torch.func)."""

    @staticmethod
    def forward(*args):
        return torch.ops.salt_kernels.linear_topk_salt_loss(*args)

    setup_context = staticmethod(_topk_setup_context)
    backward = staticmethod(_topk_backward)
