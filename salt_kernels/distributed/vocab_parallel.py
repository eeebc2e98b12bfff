"""The SALT loss with the vocabulary split over a process group (docs/design.md, "Vocab-parallel").

Each rank holds a contiguous slice of the vocabulary, in rank order (sizes may differ): its
columns of the student and teacher logits, or, in the linear form, its rows of both output
weights. Labels are vocabulary-wide ids, the same on every rank. No rank ever gathers logits.

Per chunk of rows, three all-reduces of a few fp32 numbers per row:
  1. MAX of the row maxima of z, z / tau and u / tau over the slices;
  2. SUM of the sums of exps against those maxima (the global log-sum-exps), z[y] from the rank
     that owns y, the sum of z (label smoothing), and MIN of the first index of the maximum
     (accuracy, with torch.argmax's tie rule);
  3. SUM of the divergence's partial sums, which need the global log-sum-exps.
Each rank then writes the gradient of its own slice; the math is the reference backend's
(backends/reference.py), row by row, with the log-sum-exps and sums of the whole vocabulary.
Rows are processed in chunks of about CHUNK_ELEMENTS logits of the widest slice, the same chunks
on every rank, so the extra memory stays at a few fp32 copies of one chunk.

The per-element work of a chunk (statistics, the divergence's partial sums, the gradient) is
chunked PyTorch for CPU tensors, and on CUDA tensors the Triton kernels of
backends/triton/slice_kernels.py when the Triton backend is usable there (slice_kernels()
chooses; SALT_VP_KERNELS forces one). Both run the same all-reduces; only the per-row merge
between them is PyTorch in either case. shard_rows_steps is the chunk loop as a generator that
yields each all-reduce, so that a test can run every rank's slice in one process.

The gradient of the student slice is computed in the forward (while the chunk is at hand) and
scaled by the incoming gradient in the backward, as the fused kernels do.
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import _validation as V
from ..backends.base import LossOptions, result_dtype
from ..backends.reference import _cap, _xlogy_terms, combine_loss
from ..backends.triton.slice_launcher import NO_INDEX as _NO_INDEX  # imports no triton

CHUNK_ELEMENTS = 1 << 21


class Shard:
    """Where this rank's slice sits in the vocabulary, and the group it is split over."""

    def __init__(self, local_vocab: int, group, device: torch.device):
        self.group = group
        sizes = torch.tensor([local_vocab], dtype=torch.int64)
        if dist.get_backend(group) == "nccl":
            sizes = sizes.to(device)
        world = dist.get_world_size(group)
        gathered = [torch.zeros_like(sizes) for _ in range(world)]
        dist.all_gather(gathered, sizes, group=group)
        self._place([int(s.item()) for s in gathered], dist.get_rank(group))

    @classmethod
    def from_sizes(cls, sizes, rank: int, group=None) -> "Shard":
        """Rank `rank`'s place among slices of `sizes` columns (rank order), without asking a
        process group (all_reduce still needs `group`; shard_rows_steps does not)."""
        shard = cls.__new__(cls)
        shard.group = group
        shard._place([int(s) for s in sizes], rank)
        return shard

    def _place(self, sizes, rank: int) -> None:
        self.sizes = sizes
        self.rank = rank
        self.start = sum(sizes[:rank])
        self.vocab = sum(sizes)
        self.local = sizes[rank]
        self.widest = max(sizes)

    def all_reduce(self, x: torch.Tensor, op) -> torch.Tensor:
        dist.all_reduce(x, op=op, group=self.group)
        return x

    def chunk_rows(self) -> int:
        return max(1, CHUNK_ELEMENTS // max(self.widest, 1))


def _lse(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """log-sum-exp from a global maximum m and the sum of exp(x - m) (-inf rows stay -inf)."""
    return torch.where(torch.isfinite(m), m + s.log(), m)


def _shift(m: torch.Tensor) -> torch.Tensor:
    """What exps are taken against: the maximum where finite, else 0 (an all -inf row keeps a
    sum of 0 instead of exp(-inf - -inf) = NaN)."""
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _sumexp(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 0:
        return torch.zeros_like(m)
    return (x - _shift(m)[:, None]).exp().sum(-1)


def _rowmax(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 0:
        return torch.full(x.shape[:1], -math.inf, dtype=x.dtype, device=x.device)
    return x.max(-1).values


def _outputs(z_shard, want_grad: bool):
    """(rows, device, math dtype, the per-row outputs, the gradient buffer or None)."""
    n, device, dt = z_shard.shape[0], z_shard.device, result_dtype(z_shard.dtype)
    outs = {k: torch.zeros(n, dtype=dt, device=device) for k in ("loss", "ce", "kd", "accuracy")}
    return n, device, dt, outs, (torch.empty_like(z_shard) if want_grad else None)


def _store_rows(outs: dict, r0: int, r1: int, valid, ce, kd, accuracy, lse_z, w: float, lam: float) -> None:
    """A chunk's per-row results into `outs`, zeros on ignored rows."""
    loss = combine_loss(ce, kd, w)
    if lam > 0:
        loss = loss + lam * lse_z * lse_z
    zero = torch.zeros_like(loss)
    for key, value in (("loss", loss), ("ce", ce), ("kd", kd), ("accuracy", accuracy)):
        outs[key][r0:r1] = torch.where(valid, value, zero)


def _student_grad(z, lse_z, y_loc, mine, w: float, eps: float, lam: float, vocab: int) -> torch.Tensor:
    """d loss / d z of the CE (label smoothing) and z-loss terms on this slice, before the KD term
    and the softcap's chain factor; the label's -1 only on the rank that owns it."""
    softmax = (z - lse_z[:, None]).exp()
    g = (1 - w) * softmax
    hit = torch.full_like(g[:, :1], -(1 - w) * (1 - eps))
    g.scatter_add_(1, y_loc[:, None], torch.where(mine[:, None], hit, torch.zeros_like(hit)))
    if eps > 0:
        g -= (1 - w) * eps / vocab
    if lam > 0:
        g += (2 * lam) * lse_z[:, None] * softmax
    return g


KERNELS_ENV = "SALT_VP_KERNELS"
KERNEL_CHOICES = ("auto", "torch", "triton")


def slice_kernels(z_shard: torch.Tensor, choice: str | None = None) -> str:
    """Which code does shard_rows' per-element work on this rank's slice: "triton" (the kernels
    of backends/triton/slice_kernels.py) or "torch" (the chunked PyTorch below, the readable
    statement of the math). `choice` (default: the SALT_VP_KERNELS environment variable, else
    "auto"): "auto" takes triton for CUDA tensors when the Triton backend is usable there, and
    torch otherwise (CPU tensors, float64, no triton); "torch" and "triton" force one, and
    "triton" raises ValueError with the reason where it cannot run (CPU tensors run it only under
    TRITON_INTERPRET=1, as the tests do)."""
    choice = choice or os.environ.get(KERNELS_ENV) or "auto"
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"vocab-parallel kernels must be one of {', '.join(KERNEL_CHOICES)} (argument or "
                         f"{KERNELS_ENV}), got {choice!r}")
    if choice == "torch" or (choice == "auto" and not z_shard.is_cuda):
        return "torch"
    if z_shard.dtype == torch.float64:
        if choice == "triton":
            raise ValueError("the vocab-parallel triton kernels compute in fp32; float64 logits run the torch path")
        return "torch"
    from ..backends.triton import slice_launcher

    ok, why = slice_launcher.supports_device(z_shard.device)
    if ok:
        return "triton"
    if choice == "triton":
        raise ValueError(f"the vocab-parallel triton kernels cannot run here: {why}")
    return "torch"


def shard_rows(z_shard, u_shard, labels, shard: Shard, *, kd_weight, temperature, ignore_index,
               options: LossOptions, want_grad: bool, kernels: str | None = None):
    """Per-row loss, ce, kd, accuracy of the whole-vocabulary SALT loss from this rank's slice, and
    (want_grad) d loss_i / d z_i on the slice, in the student's dtype. `kernels`: see
    slice_kernels()."""
    steps = shard_rows_steps(z_shard, u_shard, labels, shard, kd_weight=kd_weight, temperature=temperature,
                             ignore_index=ignore_index, options=options, want_grad=want_grad,
                             kernels=slice_kernels(z_shard, kernels))
    return run_steps(steps, shard)


def run_steps(steps, shard: Shard):
    """Runs a generator of shard_rows_steps, doing each all-reduce it asks for on the group;
    returns what the generator returns."""
    try:
        x, op = next(steps)
        while True:
            x, op = steps.send(shard.all_reduce(x, op))
    except StopIteration as stop:
        return stop.value


def shard_rows_steps(z_shard, u_shard, labels, shard: Shard, *, kd_weight, temperature, ignore_index,
                     options: LossOptions, want_grad: bool, kernels: str = "torch"):
    """shard_rows as a generator: every all-reduce is a `reduced = yield tensor, op`, so that
    run_steps does them on the process group and a test can run the ranks' generators in one
    process, side by side; returns (outputs, gradient). Only `shard`'s start, local, vocab and
    chunk_rows() are used. kernels: "torch" or "triton" (slice_kernels())."""
    n, device, dt, outs, grad = _outputs(z_shard, want_grad)
    if kernels == "triton" and grad is not None and grad.stride(-1) != 1:
        grad = torch.empty(z_shard.shape, dtype=z_shard.dtype, device=device)
    chunk = _torch_chunk if kernels == "torch" else _triton_chunk
    step = shard.chunk_rows()
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        yield from chunk(z_shard, u_shard, labels, shard, r0, r1, outs, grad, dt, kd_weight=kd_weight,
                         temperature=temperature, ignore_index=ignore_index, options=options)
    return outs, grad


def _ce(lse_z, sums, eps: float, vocab: int):
    """CE per row from the group's sums (column 3: z[y], column 4: sum_j z_j)."""
    ce = lse_z - sums[:, 3]
    if eps > 0:
        ce = (1 - eps) * ce + eps * (lse_z - sums[:, 4] / vocab)
    return ce


def _d(d_parts, divergence: str, beta: float):
    """D per row from the group's partial sums of the divergence."""
    return d_parts[:, 0] if divergence != "jsd" else beta * d_parts[:, 0] + (1 - beta) * d_parts[:, 1]


def _torch_chunk(z_shard, u_shard, labels, shard, r0, r1, outs, grad, dt, *, kd_weight, temperature,
                 ignore_index, options: LossOptions):
    """Rows r0:r1 in chunked PyTorch (the generator protocol of shard_rows_steps)."""
    tau, w, o = float(temperature), float(kd_weight), shard.start
    use_teacher = u_shard is not None and w > 0
    kl = options.kd_columns(o, shard.local, shard.vocab)
    eps, lam, beta = options.label_smoothing, options.z_loss, options.beta
    z = _cap(z_shard[r0:r1].to(dt), options.softcap)
    y = labels[r0:r1].long()
    valid = y != ignore_index
    mine = valid & (y >= o) & (y < o + shard.local)
    y_loc = torch.where(mine, y - o, torch.zeros_like(y))
    zt = z[:, :kl] / tau if tau != 1 else z[:, :kl]
    ut = _cap(u_shard[r0:r1, :kl].to(dt), options.teacher_softcap) / tau if use_teacher else zt[:, :0]
    # 1. maxima
    m = yield torch.stack([_rowmax(z), _rowmax(zt), _rowmax(ut)], 1), dist.ReduceOp.MAX
    # 2. sums of exps, z[y], sum of z, first index of the maximum
    z_y = torch.where(mine, z.gather(1, y_loc[:, None])[:, 0], torch.zeros_like(z[:, 0]))
    sums = torch.stack([_sumexp(z, m[:, 0]), _sumexp(zt, m[:, 1]), _sumexp(ut, m[:, 2]), z_y, z.sum(-1)], 1)
    sums = yield sums, dist.ReduceOp.SUM
    first = torch.where(_rowmax(z) == m[:, 0], z.argmax(-1) + o, torch.full_like(y, _NO_INDEX))
    first = yield first, dist.ReduceOp.MIN
    lse_z, lse_zt, lse_u = (_lse(m[:, i], sums[:, i]) for i in range(3))
    ce = _ce(lse_z, sums, eps, shard.vocab)
    # 3. the divergence's sums
    kd = torch.zeros_like(ce)
    if use_teacher:
        log_p, log_q = ut - lse_u[:, None], zt - lse_zt[:, None]
        p, q = log_p.exp(), log_q.exp()
        if options.divergence == "forward_kl":
            parts = [_xlogy_terms(p, log_p - log_q).sum(-1)]
        elif options.divergence == "reverse_kl":
            parts = [_xlogy_terms(q, log_q - log_p).sum(-1)]
        else:
            log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
            parts = [_xlogy_terms(p, log_p - log_m).sum(-1), _xlogy_terms(q, log_q - log_m).sum(-1)]
        d_parts = yield torch.stack(parts, 1), dist.ReduceOp.SUM
        d = _d(d_parts, options.divergence, beta)
        kd = tau * tau * d
    _store_rows(outs, r0, r1, valid, ce, kd, (first == y).to(dt), lse_z, w, lam)
    if grad is None:
        return
    g = _student_grad(z, lse_z, y_loc, mine, w, eps, lam, shard.vocab)
    if use_teacher and kl > 0:
        if options.divergence == "forward_kl":
            dg = q - p
        elif options.divergence == "reverse_kl":
            s = log_q - log_p
            dg = torch.where(q == 0, torch.zeros_like(q), q * (s - d[:, None]))
        else:
            gj = (1 - beta) * (log_q - log_m)
            dg = torch.where(q == 0, torch.zeros_like(q), q * (gj - (1 - beta) * d_parts[:, 1:2]))
        g[:, :kl] += w * tau * dg
    if options.softcap is not None:
        g *= 1 - (z / options.softcap) ** 2
    grad[r0:r1].copy_(torch.where(valid[:, None], g, torch.zeros_like(g)))


def _rescale(s_local, m_local, m):
    """Sums of exps taken against this slice's maxima, re-expressed against the group's maxima m
    (exp(x - m) = exp(x - m_local) exp(m_local - m), with _sumexp's shift of 0 for a maximum that
    is not finite); a slice with nothing (s == 0) adds 0, a NaN stays."""
    return torch.where(s_local == 0, torch.zeros_like(s_local), s_local * (_shift(m_local) - _shift(m)).exp())


def _triton_chunk(z_shard, u_shard, labels, shard, r0, r1, outs, grad, dt, *, kd_weight, temperature,
                  ignore_index, options: LossOptions):
    """Rows r0:r1 with the per-element work in the Triton slice kernels
    (backends/triton/slice_kernels.py) and the same all-reduces as _torch_chunk: the stats
    kernel gives each slice's maxima and sums of exps against them, which are all-reduced (MAX)
    and rescaled to the group's maxima before the SUM; the given-stats kernel gives the
    divergence's partial sums and the gradient. forward_kl writes both in one launch; reverse_kl
    and jsd need the group's D for the gradient, so a second launch follows the all-reduce."""
    from ..backends.triton import slice_launcher as sl

    tau, w, o = float(temperature), float(kd_weight), shard.start
    use_teacher = u_shard is not None and w > 0
    eps, lam, beta, divergence = options.label_smoothing, options.z_loss, options.beta, options.divergence
    z = z_shard[r0:r1]
    u = u_shard[r0:r1] if use_teacher else None
    y = labels[r0:r1]
    common = dict(start=o, vocab=shard.vocab, temperature=tau, ignore_index=ignore_index, options=options)
    st = sl.slice_stats(z, u, y, **common)
    # 1. maxima
    m = yield st.maxima.clone(), dist.ReduceOp.MAX
    # 2. sums of exps (against the group's maxima), z[y], sum of z, first index of the maximum
    sums = torch.cat([_rescale(st.sumexp, st.maxima, m), st.z_y[:, None], st.sum_z[:, None]], 1)
    sums = yield sums, dist.ReduceOp.SUM
    first = torch.where(st.maxima[:, 0] == m[:, 0], st.first, torch.full_like(st.first, _NO_INDEX))
    first = yield first, dist.ReduceOp.MIN
    lse = _lse(m, sums[:, :3])
    lse_z = lse[:, 0]
    ce = _ce(lse_z, sums, eps, shard.vocab)
    # 3. the divergence's sums (and, for forward_kl, the gradient in the same pass)
    kd = torch.zeros_like(ce)
    one_pass = grad is not None and (not use_teacher or divergence == "forward_kl")
    g = grad[r0:r1] if grad is not None else None
    if use_teacher:
        parts = sl.slice_given_stats(z, u, y, lse, kd_weight=w, parts=True, grad=g if one_pass else None, **common)
        d_parts = yield parts[:, :2 if divergence == "jsd" else 1].contiguous(), dist.ReduceOp.SUM
        d = _d(d_parts, divergence, beta)
        kd = tau * tau * d
    elif one_pass:
        sl.slice_given_stats(z, u, y, lse, kd_weight=w, parts=False, grad=g, **common)
    y_long = y.long()
    _store_rows(outs, r0, r1, y_long != ignore_index, ce, kd, (first == y_long).to(dt), lse_z, w, lam)
    if grad is not None and not one_pass:
        # The gradient of reverse_kl / jsd needs the group's D (jsd: its KL(q || m) part).
        sl.slice_given_stats(z, u, y, lse, kd_weight=w, parts=False, grad=g,
                             d=d if divergence == "reverse_kl" else d_parts[:, 1], **common)


def shard_topk_rows(z_shard, indices, logprobs, labels, shard: Shard, *, kd_weight, temperature, ignore_index,
                    tail: str, options: LossOptions, want_grad: bool):
    """shard_rows for an offline top-k teacher (docs/design.md, "Top-k teacher"): indices are
    vocabulary-wide ids (negative: empty slot), log-probabilities at temperature 1. Besides the
    statistics of shard_rows, the group sums z/tau at the top k (each id from the rank that owns
    it) and the sum of exps of z/tau outside the top k (the tail, without cancellation)."""
    n, device, dt, outs, grad = _outputs(z_shard, want_grad)
    tau, w, o = float(temperature), float(kd_weight), shard.start
    eps, lam = options.label_smoothing, options.z_loss
    use_teacher = w > 0
    neg_inf = float("-inf")
    for r0 in range(0, n, shard.chunk_rows()):
        r1 = min(n, r0 + shard.chunk_rows())
        z = _cap(z_shard[r0:r1].to(dt), options.softcap)
        zt = z / tau if tau != 1 else z
        y = labels[r0:r1].long()
        valid = y != ignore_index
        mine = valid & (y >= o) & (y < o + shard.local)
        y_loc = torch.where(mine, y - o, torch.zeros_like(y))
        idx = indices[r0:r1].long()
        filled = idx >= 0
        owned = filled & (idx >= o) & (idx < o + shard.local)
        idx_loc = torch.where(owned, idx - o, torch.zeros_like(idx))
        in_k = torch.zeros(z.shape, dtype=torch.int32, device=device).scatter_add_(1, idx_loc, owned.to(torch.int32)) > 0
        m = shard.all_reduce(torch.stack([_rowmax(z), _rowmax(zt)], 1), dist.ReduceOp.MAX)
        rest = torch.where(in_k, torch.zeros_like(zt), (zt - _shift(m[:, 1])[:, None]).exp()).sum(-1)
        z_y = torch.where(mine, z.gather(1, y_loc[:, None])[:, 0], torch.zeros_like(z[:, 0]))
        zt_k = torch.where(owned, zt.gather(1, idx_loc), torch.zeros_like(idx, dtype=dt))
        sums = torch.cat([torch.stack([_sumexp(z, m[:, 0]), _sumexp(zt, m[:, 1]), rest, z_y, z.sum(-1)], 1), zt_k], 1)
        shard.all_reduce(sums, dist.ReduceOp.SUM)
        first = torch.where(_rowmax(z) == m[:, 0], z.argmax(-1) + o, torch.full_like(y, _NO_INDEX))
        shard.all_reduce(first, dist.ReduceOp.MIN)
        lse_z, lse_zt = _lse(m[:, 0], sums[:, 0]), _lse(m[:, 1], sums[:, 1])
        lse_rest = torch.where(sums[:, 2] > 0, _lse(m[:, 1], sums[:, 2]), torch.full_like(lse_z, neg_inf))
        ce = lse_z - sums[:, 3]
        if eps > 0:
            ce = (1 - eps) * ce + eps * (lse_z - sums[:, 4] / shard.vocab)
        kd = torch.zeros_like(ce)
        if use_teacher:
            n_filled = filled.sum(-1)
            l64 = torch.where(filled, logprobs[r0:r1].to(torch.float64).clamp(max=0.0), neg_inf)
            tail_mass = torch.clamp(1.0 - l64.exp().sum(-1), min=0.0)  # float64: no loss of the tail
            bucket = (tail_mass > 0) & (n_filled < shard.vocab)
            if tail == "renormalize":
                bucket = bucket & (n_filled == 0)
            bucket = bucket | (n_filled == 0)
            log_tail = torch.where(bucket, tail_mass.log(), torch.full_like(tail_mass, neg_inf)).to(dt)
            a = torch.cat([l64.to(dt), log_tail[:, None]], 1) / tau
            log_p = a - torch.logsumexp(a, dim=-1, keepdim=True)
            zt_all = torch.where(filled, sums[:, 5:], torch.zeros_like(sums[:, 5:]))
            log_q = torch.cat([zt_all, lse_rest[:, None]], 1) - lse_zt[:, None]
            p = log_p.exp()
            kd = tau * tau * _xlogy_terms(p, log_p - log_q).sum(-1)
        _store_rows(outs, r0, r1, valid, ce, kd, (first == y).to(dt), lse_z, w, lam)
        if not want_grad:
            continue
        g = _student_grad(z, lse_z, y_loc, mine, w, eps, lam, shard.vocab)
        if use_teacher:
            # d D / d(z/tau): q_i - p_i on K, q_i - p_rest * q_i / Q_rest elsewhere
            q = (zt - lse_zt[:, None]).exp()
            d = q - p[:, -1:] * torch.where(in_k, torch.zeros_like(q), (zt - lse_rest[:, None]).exp())
            p_k = torch.where(owned, p[:, :-1], torch.zeros_like(p[:, :-1]))
            g += w * tau * d.scatter_add(1, idx_loc, -p_k)
        if options.softcap is not None:
            g *= 1 - (z / options.softcap) ** 2
        grad[r0:r1].copy_(torch.where(valid[:, None], g, torch.zeros_like(g)))
    return outs, grad


class _VocabParallelRows(torch.autograd.Function):
    """Per-row loss (and detached parts) of a vocab-parallel loss, `compute(z_shard, want_grad)`
    -> (outputs, gradient); the student slice's gradient is made in the forward and scaled per
    row in the backward."""

    @staticmethod
    def forward(ctx, z_shard, compute, want):
        outs, grad = compute(z_shard, want)
        ctx.save_for_backward(grad if grad is not None else z_shard.new_empty(0))
        ctx.mark_non_differentiable(outs["ce"], outs["kd"], outs["accuracy"])
        return outs["loss"], outs["ce"], outs["kd"], outs["accuracy"]

    @staticmethod
    def backward(ctx, grad_loss, *_):
        (grad,) = ctx.saved_tensors
        if grad_loss is None or grad.numel() == 0:
            return None, None, None
        return grad * grad_loss.to(grad.dtype)[:, None], None, None


def _group(group):
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("the vocab-parallel loss needs an initialized torch.distributed process group "
                           "(torch.distributed.init_process_group, e.g. under torchrun)")
    return group if group is not None else dist.group.WORLD


def _reduce(rows: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / valid.sum().clamp_min(1).to(rows.dtype)


def _check_common(labels, lead, device, what, kd_weight, temperature, ignore_index, reduction, options):
    kd_weight, temperature, ignore_index = V.check_options(kd_weight=kd_weight, temperature=temperature,
                                                           ignore_index=ignore_index, reduction=reduction)
    V.check_labels(labels, lead, device, what)
    return kd_weight, temperature, ignore_index, V.check_loss_options(**options)


def _setup(what, lead, local_vocab, group, labels, teacher, teacher_name, validate, *, kd_weight, temperature,
           ignore_index, reduction, options: dict):
    """Checks shared by the vocab-parallel losses; (kd_weight, temperature, ignore_index,
    LossOptions, Shard). `lead` is the tensor whose leading shape the labels have."""
    kd_weight, temperature, ignore_index, opts = _check_common(
        labels, lead.shape[:-1], lead.device, what, kd_weight, temperature, ignore_index, reduction, options)
    if teacher is None and kd_weight > 0:
        raise ValueError(f"{teacher_name} is None: pass the teacher's side, or kd_weight=0 for cross-entropy alone")
    shard = Shard(local_vocab, group, lead.device)
    _check_labels_global(labels, shard.vocab, ignore_index, validate)
    if opts.kd_vocab is not None and opts.kd_vocab > shard.vocab:
        raise ValueError(f"kd_vocab must be at most the joined vocabulary ({shard.vocab}), got {opts.kd_vocab}")
    return kd_weight, temperature, ignore_index, opts, shard


def _check_labels_global(labels, vocab, ignore_index, validate):
    if validate:
        V.check_label_values(labels, vocab, ignore_index)


def _options(softcap, teacher_softcap, kd_vocab, divergence, beta, label_smoothing, z_loss) -> dict:
    return dict(softcap=softcap, teacher_softcap=teacher_softcap, kd_vocab=kd_vocab, divergence=divergence,
                beta=beta, label_smoothing=label_smoothing, z_loss=z_loss)


def vocab_parallel_salt_loss(student_shard, teacher_shard, labels, *, group=None, kd_weight=0.5, temperature=1.0,
                             ignore_index=-100, reduction="mean", return_parts=False, validate=True, softcap=None,
                             teacher_softcap=None, kd_vocab=None, divergence="forward_kl", beta=0.5,
                             label_smoothing=0.0, z_loss=0.0):
    """salt_loss over a vocabulary split across `group` (default: the world): `student_shard`
    (..., V_r) and `teacher_shard` (..., V_r) are this rank's contiguous columns, in rank order;
    `labels` (...) holds vocabulary-wide ids. Value, parts and gradient equal salt_loss on the
    joined logits. The teacher's slices follow the student's; `kd_vocab` counts global columns.
    Returns the loss (and SaltParts with return_parts), the same on every rank."""
    group = _group(group)
    V.check_logits("student_shard", student_shard)
    if teacher_shard is not None:
        V.check_logits("teacher_shard", teacher_shard)
        if teacher_shard.shape != student_shard.shape:
            raise ValueError(f"teacher_shard must have the shape of student_shard {tuple(student_shard.shape)} "
                             f"(the same vocabulary slice), got {tuple(teacher_shard.shape)}")
    kd_weight, temperature, ignore_index, options, shard = _setup(
        "student_shard", student_shard, student_shard.shape[-1], group, labels, teacher_shard, "teacher_shard",
        validate, kd_weight=kd_weight, temperature=temperature, ignore_index=ignore_index, reduction=reduction,
        options=_options(softcap, teacher_softcap, kd_vocab, divergence, beta, label_smoothing, z_loss))
    lead = labels.shape
    z = student_shard.reshape(-1, student_shard.shape[-1])
    u = None if teacher_shard is None else teacher_shard.reshape(-1, teacher_shard.shape[-1])
    y = labels.reshape(-1)
    def compute(z_rows, want):
        return shard_rows(z_rows, u, y, shard, kd_weight=kd_weight, temperature=temperature,
                          ignore_index=ignore_index, options=options, want_grad=want)

    return _finish(z, y, compute, ignore_index, reduction, return_parts, kd_weight, options, lead)


def _finish(z, y, compute, ignore_index, reduction, return_parts, kd_weight, options, lead):
    """Runs a per-row vocab-parallel loss through autograd and applies the reduction."""
    from ..functional import SaltParts

    want = torch.is_grad_enabled() and z.requires_grad
    loss, ce, kd, acc = _VocabParallelRows.apply(z, compute, want)
    valid = y != ignore_index
    out = _reduce(loss, valid, reduction)
    if reduction == "none":
        out = out.reshape(lead)
    if not return_parts:
        return out
    zl = torch.zeros_like(ce)
    if options.z_loss > 0:
        zl = loss.detach() - combine_loss(ce, kd, kd_weight)
    parts = [_reduce(p, valid, reduction) for p in (ce, kd, zl)]
    accuracy = acc if reduction == "none" else acc.sum() / valid.sum().clamp_min(1).to(acc.dtype)
    if reduction == "none":
        parts, accuracy = [p.reshape(lead) for p in parts], accuracy.reshape(lead)
    return out, SaltParts(*parts, accuracy)


def vocab_parallel_topk_salt_loss(student_shard, teacher_indices, teacher_logprobs, labels, *, group=None,
                                  kd_weight=0.5, temperature=1.0, tail="bucket", ignore_index=-100,
                                  reduction="mean", return_parts=False, validate=True, softcap=None,
                                  label_smoothing=0.0, z_loss=0.0):
    """topk_salt_loss over a vocabulary split across `group`: `student_shard` (..., V_r) is this
    rank's contiguous columns (rank order); teacher_indices / teacher_logprobs (..., k) and
    labels hold vocabulary-wide ids and are the same on every rank. Equal to topk_salt_loss on the
    joined logits."""
    group = _group(group)
    V.check_logits("student_shard", student_shard)
    kd_weight, temperature, ignore_index, options = _check_common(
        labels, student_shard.shape[:-1], student_shard.device, "student_shard", kd_weight, temperature,
        ignore_index, reduction, dict(softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss))
    V.validate_topk_inputs(student_shard, teacher_indices, teacher_logprobs, labels, kd_weight=kd_weight, tail=tail,
                           lead_name="student_shard")
    shard = Shard(student_shard.shape[-1], group, student_shard.device)
    _check_labels_global(labels, shard.vocab, ignore_index, validate)
    lead = labels.shape
    z = student_shard.reshape(-1, student_shard.shape[-1])
    y = labels.reshape(-1)
    if kd_weight > 0:
        k = teacher_indices.shape[-1]
        idx, lp = teacher_indices.reshape(-1, k), teacher_logprobs.detach().reshape(-1, k)
        if validate and bool(((idx >= shard.vocab) | (idx < -1)).any()):
            raise ValueError(f"teacher_indices must be in [0, {shard.vocab}) (or negative for an empty slot)")
    else:
        idx = torch.full((z.shape[0], 1), -1, dtype=torch.int64, device=z.device)
        lp = torch.zeros(z.shape[0], 1, dtype=torch.float32, device=z.device)

    def compute(z_rows, want):
        return shard_topk_rows(z_rows, idx, lp, y, shard, kd_weight=kd_weight, temperature=temperature,
                               ignore_index=ignore_index, tail=tail, options=options, want_grad=want)

    return _finish(z, y, compute, ignore_index, reduction, return_parts, kd_weight, options, lead)


class _VocabParallelLinear(torch.autograd.Function):
    """Loss of the linear form, chunked over tokens: per chunk the slices of both logits,
    shard_rows, and the gradients of the student's hidden states (partial, summed over the group
    at the end), weight slice and bias slice. With reduction "mean" or "sum" it returns the
    reduced loss and makes the gradients in the forward; with "none" it returns the rows and
    recomputes in the backward with the rows' gradients as weights."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, labels, shard, kd_weight, temperature, ignore_index, options,
                chunk, reduction, want):
        ctx.args = (shard, kd_weight, temperature, ignore_index, options, chunk)
        ctx.needs = (h_s.requires_grad, w_s.requires_grad, b_s is not None and b_s.requires_grad)
        ctx.reduction = reduction
        if reduction == "none":
            rows, _ = _linear_pass(h_s, w_s, b_s, h_t, w_t, b_t, labels, *ctx.args, row_scale=None, want=False)
            ctx.save_for_backward(h_s, w_s, b_s, h_t, w_t, b_t, labels)
            return rows
        valid = (labels != ignore_index).sum()
        scale = 1.0 if reduction == "sum" else 1.0 / valid.clamp_min(1).to(result_dtype(h_s.dtype))
        rows, ctx.grads = _linear_pass(h_s, w_s, b_s, h_t, w_t, b_t, labels, *ctx.args, row_scale=scale, want=want)
        return rows.sum() * scale

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.reduction == "none":
            h_s, w_s, b_s, h_t, w_t, b_t, labels = ctx.saved_tensors
            _, grads = _linear_pass(h_s, w_s, b_s, h_t, w_t, b_t, labels, *ctx.args, row_scale=grad_out, want=True)
        else:
            grads = ctx.grads
            if grads is None:
                return (None,) * 15
            grads = tuple(None if g is None else g * grad_out.to(g.dtype) for g in grads)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs)) + (None,) * 12


def _linear_pass(h_s, w_s, b_s, h_t, w_t, b_t, labels, shard, kd_weight, temperature, ignore_index, options,
                 chunk, *, row_scale, want):
    """Per-row losses (fp32) and, with `want`, the gradients (hidden [summed over the group],
    weight slice, bias slice) of sum_i row_scale_i * loss_i."""
    n = h_s.shape[0]
    dt = result_dtype(h_s.dtype)  # fp32 accumulation (float64 for float64 inputs)
    rows = torch.zeros(n, dtype=dt, device=h_s.device)
    g_h = torch.zeros(n, h_s.shape[1], dtype=dt, device=h_s.device) if want else None
    g_w = torch.zeros(w_s.shape, dtype=dt, device=w_s.device) if want else None
    g_b = torch.zeros(w_s.shape[0], dtype=dt, device=w_s.device) if want and b_s is not None else None
    use_teacher = h_t is not None and kd_weight > 0
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        z = F.linear(h_s[c0:c1], w_s, b_s)
        u = F.linear(h_t[c0:c1], w_t, b_t) if use_teacher else None
        outs, g = shard_rows(z, u, labels[c0:c1], shard, kd_weight=kd_weight, temperature=temperature,
                             ignore_index=ignore_index, options=options, want_grad=want)
        rows[c0:c1] = outs["loss"]
        if want:
            scale = row_scale[c0:c1].to(dt)[:, None] if torch.is_tensor(row_scale) and row_scale.dim() else row_scale
            g = g.to(dt) * scale
            g_h[c0:c1] = g @ w_s.to(dt)
            g_w += g.t() @ h_s[c0:c1].to(dt)
            if g_b is not None:
                g_b += g.sum(0)
    if want:
        shard.all_reduce(g_h, dist.ReduceOp.SUM)
        g_h, g_w = g_h.to(h_s.dtype), g_w.to(w_s.dtype)
        g_b = None if g_b is None else g_b.to(b_s.dtype)
        return rows, (g_h, g_w, g_b)
    return rows, None


def vocab_parallel_linear_salt_loss(student_hidden, student_weight_shard, teacher_hidden, teacher_weight_shard,
                                    labels, *, student_bias_shard=None, teacher_bias_shard=None, group=None,
                                    kd_weight=0.5, temperature=1.0, ignore_index=-100, reduction="mean",
                                    validate=True, chunk_size=None, softcap=None, teacher_softcap=None,
                                    kd_vocab=None, divergence="forward_kl", beta=0.5, label_smoothing=0.0,
                                    z_loss=0.0):
    """linear_salt_loss with both output weights split by rows (vocabulary) across `group`: every
    rank passes the full hidden states (..., d) and its own rows of the weights (and biases), in
    rank order; the gradient of student_hidden is summed over the group, the weight slice gets
    its own gradient. No rank holds more than chunk_size x its slice of logits."""
    group = _group(group)
    for name, x in (("student_hidden", student_hidden), ("student_weight_shard", student_weight_shard)):
        V.check_logits(name, x)
    if student_weight_shard.dim() != 2 or student_weight_shard.shape[1] != student_hidden.shape[-1]:
        raise ValueError(f"student_weight_shard must be (V_r, {student_hidden.shape[-1]}), got "
                         f"{tuple(student_weight_shard.shape)}")
    if teacher_hidden is not None:
        if teacher_weight_shard is None or teacher_weight_shard.shape[0] != student_weight_shard.shape[0]:
            raise ValueError("teacher_weight_shard must hold the same vocabulary rows as student_weight_shard "
                             f"({student_weight_shard.shape[0]})")
        if teacher_weight_shard.shape[1] != teacher_hidden.shape[-1]:
            raise ValueError(f"teacher_weight_shard must be (V_r, {teacher_hidden.shape[-1]}), got "
                             f"{tuple(teacher_weight_shard.shape)}")
    kd_weight, temperature, ignore_index, options, shard = _setup(
        "student_hidden", student_hidden, student_weight_shard.shape[0], group, labels, teacher_hidden,
        "teacher_hidden", validate, kd_weight=kd_weight, temperature=temperature, ignore_index=ignore_index,
        reduction=reduction, options=_options(softcap, teacher_softcap, kd_vocab, divergence, beta, label_smoothing,
                                              z_loss))
    lead = labels.shape
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    h_t = None if teacher_hidden is None else teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    y = labels.reshape(-1)
    chunk = int(chunk_size) if chunk_size else shard.chunk_rows()
    want = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (h_s, student_weight_shard, student_bias_shard))
    out = _VocabParallelLinear.apply(h_s, student_weight_shard, student_bias_shard, h_t, teacher_weight_shard,
                                     teacher_bias_shard, y, shard, kd_weight, temperature, ignore_index, options,
                                     chunk, reduction, want)
    return out.reshape(lead) if reduction == "none" else out
