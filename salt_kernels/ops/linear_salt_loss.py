"""The autograd.Function of the fused linear SALT loss: output projections of student and teacher,
composed with a backend's rows() (backends/base.py) chunk by chunk, so no [tokens x vocab] tensor is ever
held.

Per chunk of (non-ignored) token rows:

    z = h_s @ W_s.T + b_s               student logits, compute dtype       [c, V] buffer
    u = h_t @ W_t.T + b_t               teacher logits, teacher dtype       [c, V] buffer (skipped when kd_weight == 0)
    backend.rows(z, u, y, grad=g, grad_scale=s)   loss parts and g = s * d loss / d z   [c, V] buffer
    grad_h[chunk] = g @ W_s             grad_W += g.T @ h_s (fp32)          grad_b += sum_rows g (fp32)

The three buffers are allocated once and reused by every chunk. For "mean" and "sum" the gradient
is computed in the forward pass (the loss's scale is known there) and handed out by backward,
scaled by grad_output. For "none" the per-row grad_output is only known in backward, which runs
the chunks again with it as the row scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    """Everything the chunk loop needs besides the tensors (kept on the autograd ctx)."""

    backend: object
    kd_weight: float
    temperature: float
    ignore_index: int
    reduction: str
    chunk_size: int
    compute_dtype: torch.dtype  # dtype of the student's matmuls and logits
    teacher_dtype: torch.dtype | None  # dtype of the teacher's matmuls and logits
    use_teacher: bool


class _Chunks:
    """The valid rows of one call, in the dtypes the matmuls run in."""

    def __init__(self, plan: LinearPlan, h_s, w_s, b_s, h_t, w_t, b_t, labels):
        n = labels.shape[0]
        valid = labels != plan.ignore_index
        idx = valid.nonzero().reshape(-1)  # a device sync on GPU; it sizes everything below
        self.n = n
        self.n_valid = idx.numel()
        self.all_valid = self.n_valid == n
        self.idx = idx

        def pick(x):
            return x if self.all_valid else x.index_select(0, idx)

        cd = plan.compute_dtype
        self.h_s = pick(h_s).to(cd)
        self.w_s = w_s.to(cd)
        self.b_s = None if b_s is None else b_s.to(cd)
        self.labels = pick(labels)
        if plan.use_teacher:
            td = plan.teacher_dtype
            self.h_t = pick(h_t).to(td)
            self.w_t = w_t.to(td)
            self.b_t = None if b_t is None else b_t.to(td)
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
    used when this torch has it, else (and on CPU) the chunk-sized operands are cast to fp32."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    dev = acc.device.type
    if dev == "cuda" and _ADDMM_OUT_DTYPE_OK.get(dev, True):
        try:
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            _ADDMM_OUT_DTYPE_OK[dev] = True
            return
        except (RuntimeError, TypeError, NotImplementedError):
            _ADDMM_OUT_DTYPE_OK[dev] = False
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def run_chunks(plan: LinearPlan, ch: _Chunks, *, row_scale, want_h: bool, want_w: bool, want_b: bool):
    """One pass over the valid rows. row_scale: None (no gradient), or an fp32 tensor of shape [1]
    or [n_valid] scaling each row's gradient. Returns (loss, ce, kd) per valid row (fp32) and the
    gradients asked for: grad_h [n_valid, d_s] in the compute dtype, grad_w [V, d_s] and grad_b [V]
    in fp32 (None where not asked)."""
    nv = ch.n_valid
    vocab = ch.w_s.shape[0]
    device = ch.h_s.device
    want_grad = row_scale is not None and (want_h or want_w or want_b)
    loss = torch.empty(nv, dtype=F32, device=device)
    ce = torch.empty(nv, dtype=F32, device=device)
    kd = torch.empty(nv, dtype=F32, device=device)
    grad_h = torch.empty(nv, ch.h_s.shape[1], dtype=plan.compute_dtype, device=device) if want_grad and want_h else None
    grad_w = torch.zeros(ch.w_s.shape, dtype=F32, device=device) if want_grad and want_w else None
    grad_b = torch.zeros(vocab, dtype=F32, device=device) if want_grad and want_b else None
    if nv == 0:
        return loss, ce, kd, grad_h, grad_w, grad_b

    step = max(1, min(plan.chunk_size, nv))
    z_buf = torch.empty(step, vocab, dtype=plan.compute_dtype, device=device)
    u_buf = torch.empty(step, vocab, dtype=plan.teacher_dtype, device=device) if plan.use_teacher else None
    g_buf = torch.empty(step, vocab, dtype=plan.compute_dtype, device=device) if want_grad else None
    per_row_scale = want_grad and row_scale.numel() > 1
    for r0 in range(0, nv, step):
        r1 = min(nv, r0 + step)
        c = r1 - r0
        h = ch.h_s[r0:r1]
        z = z_buf[:c]
        _project(h, ch.w_s, ch.b_s, z)
        u = None
        if plan.use_teacher:
            u = u_buf[:c]
            _project(ch.h_t[r0:r1], ch.w_t, ch.b_t, u)
        g = g_buf[:c] if want_grad else None
        out = plan.backend.rows(
            z,
            u,
            ch.labels[r0:r1],
            kd_weight=plan.kd_weight,
            temperature=plan.temperature,
            ignore_index=plan.ignore_index,
            grad=g,
            grad_scale=(row_scale[r0:r1] if per_row_scale else row_scale) if want_grad else None,
        )
        loss[r0:r1] = out.loss
        ce[r0:r1] = out.ce
        kd[r0:r1] = out.kd
        if want_grad:
            if grad_h is not None:
                torch.mm(g, ch.w_s, out=grad_h[r0:r1])
            if grad_w is not None:
                _accumulate_mm(grad_w, g.t(), h)
            if grad_b is not None:
                grad_b.add_(g.sum(0, dtype=F32))
    return loss, ce, kd, grad_h, grad_w, grad_b


def _reduce(rows: torch.Tensor, reduction: str, n_valid: int) -> torch.Tensor:
    total = rows.sum()
    return total / max(1, n_valid) if reduction == "mean" else total


def _scatter_rows(rows: torch.Tensor, ch: _Chunks) -> torch.Tensor:
    if ch.all_valid:
        return rows
    full = torch.zeros(ch.n, dtype=rows.dtype, device=rows.device)
    return full.index_copy_(0, ch.idx, rows)


def _finish_grads(ch: _Chunks, h_s, w_s, b_s, grad_h, grad_w, grad_b):
    """Valid-row / fp32 gradients -> gradients shaped and typed like the inputs."""
    if grad_h is not None:
        if ch.all_valid:
            grad_h = grad_h.to(h_s.dtype)
        else:
            full = torch.zeros(h_s.shape, dtype=h_s.dtype, device=h_s.device)
            grad_h = full.index_copy_(0, ch.idx, grad_h.to(h_s.dtype))
    if grad_w is not None:
        grad_w = grad_w.to(w_s.dtype)
    if grad_b is not None:
        grad_b = grad_b.to(b_s.dtype)
    return grad_h, grad_w, grad_b


def _scale_(t: torch.Tensor | None, factor: torch.Tensor) -> torch.Tensor | None:
    if t is None:
        return None
    if factor.device.type == "cpu":
        f = float(factor)
        if f != 1.0:
            t.mul_(f)
        return t
    return t.mul_(factor.to(t.dtype))  # no device sync to test for 1.0


class LinearSaltLossFunction(torch.autograd.Function):
    """Inputs: student_hidden [N, d_s], student_weight [V, d_s], student_bias [V] | None,
    teacher_hidden [N, d_t] | None, teacher_weight [V, d_t] | None, teacher_bias [V] | None,
    labels [N], plan. Outputs: loss (reduced; [N] for "none"), ce, kd (detached)."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, labels, plan: LinearPlan):
        with torch.autocast(h_s.device.type, enabled=False), torch.no_grad():
            ch = _Chunks(plan, h_s, w_s, b_s, h_t, w_t, b_t, labels)
            want_h, want_w, want_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
            row_scale = None
            if plan.reduction != "none" and (want_h or want_w or want_b):
                s = 1.0 / max(1, ch.n_valid) if plan.reduction == "mean" else 1.0
                row_scale = torch.full((1,), s, dtype=F32, device=h_s.device)
            loss, ce, kd, gh, gw, gb = run_chunks(
                plan, ch, row_scale=row_scale, want_h=want_h, want_w=want_w, want_b=want_b
            )
            if plan.reduction == "none":
                loss, ce, kd = (_scatter_rows(x, ch) for x in (loss, ce, kd))
                ctx.grads = None
            else:
                loss, ce, kd = (_reduce(x, plan.reduction, ch.n_valid) for x in (loss, ce, kd))
                # Kept as attributes, not saved tensors, so backward hands them out without a
                # copy (autograd steals a gradient nobody else references).
                ctx.grads = _finish_grads(ch, h_s, w_s, b_s, gh, gw, gb) if row_scale is not None else None
        ctx.mark_non_differentiable(ce, kd)
        ctx.plan = plan
        ctx.save_for_backward(h_s, w_s, b_s, h_t, w_t, b_t, labels)
        return loss, ce, kd

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        plan: LinearPlan = ctx.plan
        h_s, w_s, b_s, h_t, w_t, b_t, labels = ctx.saved_tensors
        none5 = (None,) * 5
        if ctx.grads is not None:
            gh, gw, gb = ctx.grads
            ctx.grads = None  # handed out once; a second backward recomputes below
            return (_scale_(gh, grad_loss), _scale_(gw, grad_loss), _scale_(gb, grad_loss)) + none5
        want_h, want_w, want_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        with torch.autocast(h_s.device.type, enabled=False), torch.no_grad():
            ch = _Chunks(plan, h_s, w_s, b_s, h_t, w_t, b_t, labels)
            if plan.reduction == "none":
                g = grad_loss.reshape(-1).to(F32)
                row_scale = (g if ch.all_valid else g.index_select(0, ch.idx)).contiguous()
            else:
                s = 1.0 / max(1, ch.n_valid) if plan.reduction == "mean" else 1.0
                row_scale = (grad_loss.to(F32) * s).reshape(1)
            _, _, _, gh, gw, gb = run_chunks(plan, ch, row_scale=row_scale, want_h=want_h, want_w=want_w, want_b=want_b)
            gh, gw, gb = _finish_grads(ch, h_s, w_s, b_s, gh, gw, gb)
        return (gh, gw, gb) + none5
