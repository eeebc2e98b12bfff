"""Triton kernels of the per-element work of the vocab-parallel loss (docs/design.md,
"Vocab-parallel"). The launcher is slice_launcher.py; the all-reduces and the per-row merge stay
in salt_kernels/distributed/vocab_parallel.py, whose PyTorch path (shard_rows with CPU tensors)
is the readable statement of the same math.

Each rank holds the columns [start, start + local) of the student logits z and of the teacher
logits u, for a vocabulary of V columns in all; KD covers the global columns below kd_vocab, so
the slice's first kd_cols = clamp(kd_vocab - start, 0, local) columns. One program per row walks
the slice in blocks of BLOCK_V columns. Two kernels:

  slice_stats_kernel  the slice's statistics of one row, after the soft caps (z <- c tanh(z / c),
      u <- c_t tanh(u / c_t), docs/design.md, "Distillation options"): per statistic x in
      {z over the slice, z / tau over the KD columns, u / tau over the KD columns} the maximum
      m_x and s_x = sum exp(x - m_x), in the online form of docs/design.md, "One-pass
      algorithm" (a state (m, s) stands for m + log s; when a larger element arrives s is
      rescaled by exp(m_old - m_new)); z[y] when the label y is a column of this slice (0
      otherwise); sum_j z_j (label smoothing); and the global index of the first maximum of z
      (torch.argmax's rule: the lowest index, the first NaN if there is one). The group then
      merges these into the global log-sum-exps lse_z, lse_zt and lse_u.
  slice_given_stats_kernel  with the global log-sum-exps known, so that
      log q_j = z_j / tau - lse_zt and log p_j = u_j / tau - lse_u over the KD columns:
        PARTS     the slice's partial sums of the divergence: forward_kl sum p (log p - log q);
                  reverse_kl sum q (log q - log p); jsd sum p (log p - log m) and
                  sum q (log q - log m), log m = logaddexp(log p + log beta, log q + log(1 - beta));
                  a term of zero mass adds 0 (docs/design.md, "Infinities and NaN").
        HAS_GRAD  d loss_i / d z on the slice, unscaled, in the student's dtype:
                  (1 - w) softmax(z) - (1 - w)(1 - eps) onehot(y) - (1 - w) eps / V
                  + 2 lam lse_z softmax(z) + w tau dD/d(z / tau) on the KD columns, times the soft
                  cap's 1 - (z / c)^2; dD/d(z / tau) is q - p (forward_kl),
                  q (log q - log p - D) (reverse_kl) and (1 - beta) q (log q - log m - KL(q || m))
                  (jsd), where D / KL(q || m) is the group's value of the row (d_ptr): so
                  reverse_kl and jsd need one launch for PARTS, the all-reduce, then one for the
                  gradient, while forward_kl writes both in one launch. Ignored rows get zeros.
All arithmetic is fp32; masked-off lanes read -inf (no mass, never a maximum) and are dropped
from every sum by a mask.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels import DIV_FORWARD_KL, DIV_JSD, DIV_REVERSE_KL, DIVERGENCES, _softcap  # noqa: F401 (DIVERGENCES: the launcher's)

_FORWARD_KL = tl.constexpr(DIV_FORWARD_KL)  # what the kernels may read of the above
_REVERSE_KL = tl.constexpr(DIV_REVERSE_KL)
_JSD = tl.constexpr(DIV_JSD)
# Columns of the statistics output, one row of fp32 per logits row.
STAT_FIELDS = 8  # m_z, m_zt, m_u, s_z, s_zt, s_u, z[y], sum_z
_STAT_FIELDS = tl.constexpr(STAT_FIELDS)


@triton.jit
def _shift(m):
    """What exps are taken against: the maximum when finite, else 0 (an all -inf row keeps
    s = 0 instead of exp(-inf - -inf) = NaN), as vocab_parallel._sumexp."""
    return tl.where(tl.abs(m) < float("inf"), m, 0.0)


@triton.jit
def _online(m, s, x):
    """The state (m, s) after the block x ([BLOCK_V], masked-off lanes -inf)."""
    m_new = tl.maximum(m, tl.max(x, 0))
    k = _shift(m_new)
    s = s * tl.exp(m - k) + tl.sum(tl.exp(x - k), 0)  # m = -inf: s is 0 and stays 0
    return m_new, s


@triton.jit
def slice_stats_kernel(
    z_ptr, z_stride, u_ptr, u_stride, y_ptr, y_stride, out_ptr, first_ptr,
    start, local, kd_cols, ignore_index, inv_tau, softcap, teacher_softcap,
    BLOCK_V: tl.constexpr, HAS_TEACHER: tl.constexpr, SOFTCAP: tl.constexpr,
    TEACHER_SOFTCAP: tl.constexpr, SMOOTHING: tl.constexpr,
):
    """One row's statistics of the slice into out_ptr[row, 0:STAT_FIELDS] and the global index
    of its first maximum into first_ptr[row] (module docstring). The slice has local >= 1
    columns (the launcher handles an empty one)."""
    NEG_INF: tl.constexpr = float("-inf")
    BIG: tl.constexpr = 2147483647
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    u_row = u_ptr + row * u_stride
    inv_cap = 1.0 / softcap
    inv_tcap = 1.0 / teacher_softcap
    m_z = float("-inf")
    s_z = 0.0
    m_zt = float("-inf")
    s_zt = 0.0
    m_u = float("-inf")
    s_u = 0.0
    sum_z = 0.0
    first = BIG  # column of the first maximum so far
    first_nan = BIG
    for off in range(0, local, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        mask = cols < local
        kd = mask & (cols < kd_cols)
        z = tl.load(z_row + cols, mask=mask, other=NEG_INF).to(tl.float32)
        if SOFTCAP:
            z = tl.where(mask, _softcap(z, softcap, inv_cap), NEG_INF)  # the cap maps -inf to -cap
        # The first maximum: a block's maximum replaces the running one only when larger, so on
        # ties the lower column (an earlier block) stays; NaN is tracked apart.
        b_max = tl.max(z, 0)
        b_first = tl.min(tl.where(mask & (z == b_max), cols, BIG), 0)
        first = tl.where(b_max > m_z, b_first, tl.where(b_max == m_z, tl.minimum(first, b_first), first))
        first_nan = tl.minimum(first_nan, tl.min(tl.where(mask & (z != z), cols, BIG), 0))
        m_z, s_z = _online(m_z, s_z, z)
        m_zt, s_zt = _online(m_zt, s_zt, tl.where(kd, z * inv_tau, NEG_INF))
        if HAS_TEACHER:
            u = tl.load(u_row + cols, mask=kd, other=NEG_INF).to(tl.float32)
            if TEACHER_SOFTCAP:
                u = tl.where(kd, _softcap(u, teacher_softcap, inv_tcap), NEG_INF)
            m_u, s_u = _online(m_u, s_u, u * inv_tau)
        if SMOOTHING:
            sum_z += tl.sum(tl.where(mask, z, 0.0), 0)
    # A NaN makes the row's maximum NaN (as torch.max), so that no rank claims the argmax by
    # comparing with the group's maximum; torch.argmax's index is the first NaN.
    has_nan = first_nan < BIG
    m_z = tl.where(has_nan, float("nan"), m_z)
    first = tl.where(has_nan, first_nan, first)
    # z[y] on the rank whose slice holds the label y (a used row), 0 elsewhere.
    y = tl.load(y_ptr + row * y_stride).to(tl.int64)
    mine = (y != ignore_index) & (y >= start) & (y < start + local)
    z_y = tl.load(z_row + tl.where(mine, y - start, 0)).to(tl.float32)
    if SOFTCAP:
        z_y = _softcap(z_y, softcap, inv_cap)
    z_y = tl.where(mine, z_y, 0.0)
    out_row = out_ptr + row * _STAT_FIELDS
    tl.store(out_row + 0, m_z)
    tl.store(out_row + 1, m_zt)
    tl.store(out_row + 2, m_u)
    tl.store(out_row + 3, s_z)
    tl.store(out_row + 4, s_zt)
    tl.store(out_row + 5, s_u)
    tl.store(out_row + 6, z_y)
    tl.store(out_row + 7, sum_z)
    tl.store(first_ptr + row, start + first.to(tl.int64))


@triton.jit
def _log_m(log_p, log_q, log_beta, log_1m_beta):
    """log(beta p + (1 - beta) q) = logaddexp(log p + log beta, log q + log(1 - beta)); -inf
    when both are -inf."""
    a = log_p + log_beta
    b = log_q + log_1m_beta
    hi = tl.maximum(a, b)
    lo = tl.minimum(a, b)
    return tl.where(hi == float("-inf"), hi, hi + tl.log(1.0 + tl.exp(lo - hi)))


@triton.jit
def slice_given_stats_kernel(
    z_ptr, z_stride, u_ptr, u_stride, y_ptr, y_stride, lse_ptr, d_ptr, parts_ptr, g_ptr, g_stride,
    start, local, kd_cols, vocab, ignore_index, kd_weight, tau, inv_tau, softcap, teacher_softcap,
    beta, log_beta, log_1m_beta, smoothing, z_loss,
    BLOCK_V: tl.constexpr, HAS_TEACHER: tl.constexpr, DIVERGENCE: tl.constexpr, SOFTCAP: tl.constexpr,
    TEACHER_SOFTCAP: tl.constexpr, SMOOTHING: tl.constexpr, Z_LOSS: tl.constexpr, PARTS: tl.constexpr,
    HAS_GRAD: tl.constexpr,
):
    """With the row's global (lse_z, lse_zt, lse_u) at lse_ptr[row, 0:3]: (PARTS) the slice's
    partial sums of the divergence into parts_ptr[row, 0:2] (the second one for jsd only), and
    (HAS_GRAD) the slice's gradient into g_ptr's row, reading the row's D (reverse_kl) or
    KL(q || m) (jsd) at d_ptr[row] (module docstring). An ignored row gets zeros."""
    NEG_INF: tl.constexpr = float("-inf")
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    u_row = u_ptr + row * u_stride
    g_row = g_ptr + row * g_stride
    inv_cap = 1.0 / softcap
    inv_tcap = 1.0 / teacher_softcap
    y = tl.load(y_ptr + row * y_stride).to(tl.int64)
    used = y != ignore_index
    # The label's column in this slice (-1: another rank's, or an ignored row).
    y_col = tl.where(used & (y >= start) & (y < start + local), y - start, -1)
    lse_z = tl.load(lse_ptr + row * 3 + 0)
    lse_zt = tl.load(lse_ptr + row * 3 + 1)
    lse_u = tl.load(lse_ptr + row * 3 + 2)
    d = 0.0
    if HAS_GRAD:
        if HAS_TEACHER:
            if DIVERGENCE != _FORWARD_KL:
                d = tl.load(d_ptr + row)
    c_ce = 1.0 - kd_weight
    c_kd = kd_weight * tau
    part0 = tl.zeros([BLOCK_V], dtype=tl.float32)
    part1 = tl.zeros([BLOCK_V], dtype=tl.float32)
    for off in range(0, local, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        mask = cols < local
        if used:
            z = tl.load(z_row + cols, mask=mask, other=NEG_INF).to(tl.float32)
            if SOFTCAP:
                z = tl.where(mask, _softcap(z, softcap, inv_cap), NEG_INF)
            if HAS_TEACHER:
                kd = mask & (cols < kd_cols)
                u = tl.load(u_row + cols, mask=kd, other=NEG_INF).to(tl.float32)
                if TEACHER_SOFTCAP:
                    u = tl.where(kd, _softcap(u, teacher_softcap, inv_tcap), NEG_INF)
                log_q = z * inv_tau - lse_zt
                log_p = u * inv_tau - lse_u
                q = tl.exp(log_q)
                p = tl.exp(log_p)
                if DIVERGENCE == _JSD:
                    log_m = _log_m(log_p, log_q, log_beta, log_1m_beta)
                if PARTS:
                    if DIVERGENCE == _FORWARD_KL:
                        part0 += tl.where(kd & (p != 0.0), p * (log_p - log_q), 0.0)
                    elif DIVERGENCE == _REVERSE_KL:
                        part0 += tl.where(kd & (q != 0.0), q * (log_q - log_p), 0.0)
                    else:
                        part0 += tl.where(kd & (p != 0.0), p * (log_p - log_m), 0.0)
                        part1 += tl.where(kd & (q != 0.0), q * (log_q - log_m), 0.0)
            if HAS_GRAD:
                sm = tl.exp(z - lse_z)
                g = c_ce * sm
                g = tl.where(cols == y_col, g - c_ce * (1.0 - smoothing), g)
                if SMOOTHING:
                    g -= c_ce * smoothing / vocab
                if Z_LOSS:
                    g += (2.0 * z_loss) * lse_z * sm
                if HAS_TEACHER:
                    if DIVERGENCE == _FORWARD_KL:
                        dg = q - p
                    elif DIVERGENCE == _REVERSE_KL:
                        dg = tl.where(q == 0.0, 0.0, q * (log_q - log_p - d))
                    else:
                        dg = tl.where(q == 0.0, 0.0, q * ((1.0 - beta) * (log_q - log_m) - (1.0 - beta) * d))
                    g += tl.where(kd, c_kd * dg, 0.0)
                if SOFTCAP:
                    zc = z * inv_cap
                    g = g * (1.0 - zc * zc)  # d(c tanh(x / c)) / dx at the capped value
                tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=mask)
        else:
            if HAS_GRAD:
                tl.store(g_row + cols, tl.zeros([BLOCK_V], dtype=g_row.dtype.element_ty), mask=mask)
    if PARTS:
        tl.store(parts_ptr + row * 2 + 0, tl.sum(part0, 0))
        tl.store(parts_ptr + row * 2 + 1, tl.sum(part1, 0))
