"""Triton kernels of the SALT loss (docs/design.md, "One-pass algorithm"). The launcher is
launcher.py.

One kernel, specialised by constexpr MODE, computes per row the loss, its CE and KD parts, the
three log-sum-exps and (HAS_GRAD) the gradient w.r.t. the student, already scaled:

  MODE_FUSED  one program per row: a statistics loop over the vocabulary, then a gradient loop
              over the same row (the autograd layer wants the gradient in the forward pass).
  MODE_PART   SPLIT programs per row, each over one slice of SLICE_V entries: partial statistics
              into a workspace [N, SPLIT, 8].
  MODE_FINISH SPLIT programs per row, launched after MODE_PART: merge the row's partials, write
              the row's results (slice 0) and the gradient of the slice.
  MODE_SYNC   PART and FINISH in one launch: a program publishes its partials, waits for its
              row's other slices (an atomic counter per row), merges and writes its gradient
              slice while the slice is still in L2. Programs take a ticket from an atomic
              counter and derive (row, slice) from it, so a program only ever waits for programs
              that have already started or that take the next tickets; this cannot deadlock as
              long as SPLIT programs fit on the device at once. It spins, so it never runs under
              the interpreter (programs run one after another there).

Statistics (per row, or per slice) are kept relative to the running maximum m_z of z and m_u of
u: s_z = sum exp(z - m_z), s_zt = sum exp((z - m_z) / tau), s_u = sum exp((u - m_u) / tau) and
acc = sum exp((u - m_u) / tau) * (u - z) over u != -inf, so lse_z = m_z + log s_z,
lse_zt = m_z / tau + log s_zt, lse_u = m_u / tau + log s_u and KD = tau * acc / s_u +
tau^2 * (lse_zt - lse_u). Sums are kept as per-lane vectors rescaled by a scalar factor, so each
block costs one cross-lane reduction (the max) per input. With an integer tau (TAU_MODE 2..4)
exp(z - m) = exp((z - m) / tau)^tau: a multiply instead of an exp, which matters because the
loss is bound by memory only if it spends few exps per element.

-inf and NaN follow csrc/salt_math.h: teacher -inf entries add nothing, a student -inf where the
teacher has mass makes KD +inf, and a NaN in a used row reaches every output of the row (it
makes its sums NaN whether or not the max reductions propagate it).
"""

from __future__ import annotations

import triton
import triton.language as tl

MODE_FUSED = 0
MODE_PART = 1
MODE_FINISH = 2
MODE_SYNC = 3
WS_FIELDS = 8  # workspace floats per (row, slice): m_z, s_z, s_zt, m_u, s_u, acc, (2 spare)


@triton.jit
def _tau_pow(e, TAU_MODE: tl.constexpr):
    """e ** tau for an integer tau in 2..4, by multiplies."""
    e2 = e * e
    if TAU_MODE == 2:
        r = e2
    elif TAU_MODE == 3:
        r = e2 * e
    else:
        r = e2 * e2
    return r


@triton.jit
def _slice_stats(z_row, u_row, start, end, inv_tau,
                 BLOCK_V: tl.constexpr, HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr,
                 EVICT: tl.constexpr):
    """Online statistics of z[start:end] (and u[start:end]): (m_z, s_z, s_zt, m_u, s_u, acc).
    EVICT is the L2 policy of the loads: "evict_last" when this program reads the same entries
    again for the gradient, so they are still in L2 then."""
    NEG_INF: tl.constexpr = float("-inf")
    C_Z: tl.constexpr = 1.4426950408889634
    c_t = inv_tau * 1.4426950408889634
    m_z = float("-inf")
    m_u = float("-inf")
    vs_z = tl.zeros([BLOCK_V], dtype=tl.float32)
    vs_zt = tl.zeros([BLOCK_V], dtype=tl.float32)
    vs_u = tl.zeros([BLOCK_V], dtype=tl.float32)
    vacc = tl.zeros([BLOCK_V], dtype=tl.float32)
    for off in range(start, end, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        mask = cols < end
        # Padding lanes read -inf: no mass, no KD term, never a new maximum.
        z = tl.load(z_row + cols, mask=mask, other=NEG_INF, eviction_policy=EVICT).to(tl.float32)
        m_new = tl.maximum(m_z, tl.max(z, 0))
        # An all -inf prefix keeps the maximum at -inf; shift by 0 then so that no -inf - -inf
        # appears (exp(-inf - 0) = 0 is the right answer for every term).
        m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)
        d = z - m_safe
        dm = m_z - m_safe
        if TAU_MODE == 1:
            vs_z = vs_z * tl.exp2(dm * C_Z) + tl.exp2(d * C_Z)
        elif TAU_MODE == 0:
            vs_z = vs_z * tl.exp2(dm * C_Z) + tl.exp2(d * C_Z)
            vs_zt = vs_zt * tl.exp2(dm * c_t) + tl.exp2(d * c_t)
        else:
            e_t = tl.exp2(d * c_t)
            vs_zt = vs_zt * tl.exp2(dm * c_t) + e_t
            vs_z = vs_z * tl.exp2(dm * C_Z) + _tau_pow(e_t, TAU_MODE)
        m_z = m_new
        if HAS_TEACHER:
            u = tl.load(u_row + cols, mask=mask, other=NEG_INF, eviction_policy=EVICT).to(tl.float32)
            mu_new = tl.maximum(m_u, tl.max(u, 0))
            mu_safe = tl.where(mu_new == NEG_INF, 0.0, mu_new)
            alpha = tl.exp2((m_u - mu_safe) * c_t)
            e_u = tl.exp2((u - mu_safe) * c_t)
            # kd_term of salt_math.h: p_j == 0 adds 0; z == -inf under teacher mass adds +inf.
            term = tl.where(u == NEG_INF, 0.0, tl.where(z == NEG_INF, float("inf"), e_u * (u - z)))
            vs_u = vs_u * alpha + e_u
            vacc = vacc * alpha + term
            m_u = mu_new
    s_z = tl.sum(vs_z, 0)
    if TAU_MODE == 1:
        s_zt = s_z
    else:
        s_zt = tl.sum(vs_zt, 0)
    return m_z, s_z, s_zt, m_u, tl.sum(vs_u, 0), tl.sum(vacc, 0)


@triton.jit
def _merge_partials(ws_row, inv_tau, SPLIT: tl.constexpr, SPLIT_POW2: tl.constexpr,
                    HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr, VOLATILE: tl.constexpr):
    """Merges the SPLIT partial states of one row (WS_FIELDS floats each) into one state."""
    NEG_INF: tl.constexpr = float("-inf")
    FIELDS: tl.constexpr = 8
    C_Z: tl.constexpr = 1.4426950408889634
    c_t = inv_tau * 1.4426950408889634
    k = tl.arange(0, SPLIT_POW2)
    ok = k < SPLIT
    p = ws_row + k * FIELDS
    mz = tl.load(p + 0, mask=ok, other=NEG_INF, volatile=VOLATILE)
    sz = tl.load(p + 1, mask=ok, other=0.0, volatile=VOLATILE)
    m_z = tl.max(mz, 0)
    d = mz - tl.where(m_z == NEG_INF, 0.0, m_z)  # empty slices: exp(-inf) = 0
    s_z = tl.sum(sz * tl.exp2(d * C_Z), 0)
    if TAU_MODE == 1:
        s_zt = s_z
    else:
        szt = tl.load(p + 2, mask=ok, other=0.0, volatile=VOLATILE)
        s_zt = tl.sum(szt * tl.exp2(d * c_t), 0)
    m_u = 0.0
    s_u = 0.0
    acc = 0.0
    if HAS_TEACHER:
        mu = tl.load(p + 3, mask=ok, other=NEG_INF, volatile=VOLATILE)
        su = tl.load(p + 4, mask=ok, other=0.0, volatile=VOLATILE)
        au = tl.load(p + 5, mask=ok, other=0.0, volatile=VOLATILE)
        m_u = tl.max(mu, 0)
        f = tl.exp2((mu - tl.where(m_u == NEG_INF, 0.0, m_u)) * c_t)
        s_u = tl.sum(su * f, 0)
        # A slice with no teacher mass has acc == 0 and f == 0: 0, not NaN.
        acc = tl.sum(tl.where(f == 0.0, 0.0, au * f), 0)
    return m_z, s_z, s_zt, m_u, s_u, acc


@triton.jit
def _store_partials(ws_row, m_z, s_z, s_zt, m_u, s_u, acc):
    tl.store(ws_row + 0, m_z)
    tl.store(ws_row + 1, s_z)
    tl.store(ws_row + 2, s_zt)
    tl.store(ws_row + 3, m_u)
    tl.store(ws_row + 4, s_u)
    tl.store(ws_row + 5, acc)


@triton.jit
def _finish_row(z_row, y, V, row, m_z, s_z, s_zt, m_u, s_u, acc,
                loss_ptr, ce_ptr, kd_ptr, lse_ptr, kd_weight, tau, inv_tau,
                HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr):
    """Writes loss, ce, kd and the three log-sum-exps of one used row."""
    lse_z = m_z + tl.log(s_z)  # -inf + log(0) = -inf for an all -inf row
    if TAU_MODE == 1:
        lse_zt = lse_z
    else:
        lse_zt = m_z * inv_tau + tl.log(s_zt)
    in_range = (y >= 0) & (y < V)
    # A label outside [0, V) (only possible with validate=False) gives NaN, as the CPU kernel.
    z_y = tl.load(z_row + tl.where(in_range, y, 0)).to(tl.float32)
    ce = lse_z - tl.where(in_range, z_y, float("nan"))
    loss = tl.where(kd_weight < 1.0, (1.0 - kd_weight) * ce, 0.0)
    if HAS_TEACHER:
        lse_u = m_u * inv_tau + tl.log(s_u)
        # tau^2 * (acc / (tau * s_u) - lse_u + lse_zt); the max shift m_z - m_u is taken apart
        # from the logs so that it does not round twice.
        kd = tau * (acc / s_u) + tau * (m_z - m_u) + tau * tau * (tl.log(s_zt) - tl.log(s_u))
        loss += kd_weight * kd
    else:
        lse_u = 0.0
        kd = 0.0
    tl.store(loss_ptr + row, loss)
    tl.store(ce_ptr + row, ce)
    tl.store(kd_ptr + row, kd)
    tl.store(lse_ptr + row * 3 + 0, lse_z)
    tl.store(lse_ptr + row * 3 + 1, lse_zt)
    tl.store(lse_ptr + row * 3 + 2, lse_u)


@triton.jit
def _store_ignored_row(row, loss_ptr, ce_ptr, kd_ptr, lse_ptr):
    tl.store(loss_ptr + row, 0.0)
    tl.store(ce_ptr + row, 0.0)
    tl.store(kd_ptr + row, 0.0)
    tl.store(lse_ptr + row * 3 + 0, 0.0)
    tl.store(lse_ptr + row * 3 + 1, 0.0)
    tl.store(lse_ptr + row * 3 + 2, 0.0)


@triton.jit
def _grad_slice(z_row, u_row, g_row, start, end, y, m_z, s_z, s_zt, m_u, s_u, scale,
                kd_weight, tau, inv_tau,
                BLOCK_V: tl.constexpr, HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr):
    """g = scale * ((1 - w) * (softmax(z) - onehot(y)) + w * tau * (softmax(z/tau) - softmax(u/tau)))
    over z[start:end], each probability taken as exp2((x - m) * c - log2 s): the large shift m
    is removed exactly first, so the exponent rounds on its own size only."""
    C_Z: tl.constexpr = 1.4426950408889634
    c_t = inv_tau * 1.4426950408889634
    c_label = scale * (1.0 - kd_weight)
    c_z = c_label
    c_kd = scale * kd_weight * tau
    l_z = tl.log2(s_z)
    l_zt = tl.log2(s_zt)
    if TAU_MODE >= 2:
        # softmax(z) = softmax(z/tau)^tau * s_zt^tau / s_z, since both are relative to m_z.
        c_z = c_z * (_tau_pow(s_zt, TAU_MODE) / s_z)
    if TAU_MODE == 1:
        if HAS_TEACHER:
            c_z = c_z + c_kd
    l_u = 0.0
    if HAS_TEACHER:
        l_u = tl.log2(s_u)
    for off in range(start, end, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        mask = cols < end
        # Last use of these entries: let them leave L2 first.
        d = tl.load(z_row + cols, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32) - m_z
        if TAU_MODE == 0:
            g = c_z * tl.exp2(d * C_Z - l_z)
            if HAS_TEACHER:
                g += c_kd * tl.exp2(d * c_t - l_zt)
        elif TAU_MODE == 1:
            g = c_z * tl.exp2(d * C_Z - l_z)
        else:
            p_t = tl.exp2(d * c_t - l_zt)
            g = c_z * _tau_pow(p_t, TAU_MODE)
            if HAS_TEACHER:
                g += c_kd * p_t
        if HAS_TEACHER:
            u = tl.load(u_row + cols, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
            g -= c_kd * tl.exp2((u - m_u) * c_t - l_u)
        g = tl.where(cols == y, g - c_label, g)
        tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=mask)


@triton.jit
def _zero_slice(g_row, start, end, BLOCK_V: tl.constexpr):
    for off in range(start, end, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        tl.store(g_row + cols, tl.zeros([BLOCK_V], dtype=g_row.dtype.element_ty), mask=cols < end)


@triton.jit
def salt_rows_kernel(
    z_ptr, z_stride, u_ptr, u_stride, y_ptr, y_stride,
    loss_ptr, ce_ptr, kd_ptr, lse_ptr,
    g_ptr, g_stride, scale_ptr, scale_stride,
    ws_ptr, cnt_ptr,
    V, SLICE_V, kd_weight, tau, inv_tau, ignore_index,
    MODE: tl.constexpr, SPLIT: tl.constexpr, SPLIT_POW2: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr, HAS_GRAD: tl.constexpr,
):
    # MODE: 0 fused, 1 partials, 2 merge + gradient, 3 both in one launch (module docstring).
    # The workspace holds 8 (WS_FIELDS) floats per (row, slice).
    if MODE == 3:
        # Ticket order = start order (see the module docstring: why this cannot deadlock).
        pid = tl.atomic_add(cnt_ptr, 1)
    else:
        pid = tl.program_id(0)
    row = (pid // SPLIT).to(tl.int64)  # 64-bit: row * stride may exceed 2^31
    part = pid % SPLIT
    if MODE == 0:
        start = 0
        end = V
    else:
        start = part * SLICE_V
        end = tl.minimum(start + SLICE_V, V)
    z_row = z_ptr + row * z_stride
    u_row = u_ptr + row * u_stride
    g_row = g_ptr + row * g_stride
    ws_row = ws_ptr + row * (SPLIT * 8)
    y = tl.load(y_ptr + row * y_stride).to(tl.int64)
    used = y != ignore_index
    if used:
        if MODE == 2:
            m_z, s_z, s_zt, m_u, s_u, acc = _merge_partials(
                ws_row, inv_tau, SPLIT, SPLIT_POW2, HAS_TEACHER, TAU_MODE, False)
        else:
            # Keep the entries in L2 when this program reads them again for the gradient.
            if HAS_GRAD and MODE != 1:
                EVICT: tl.constexpr = "evict_last"
            else:
                EVICT: tl.constexpr = "evict_first"
            m_z, s_z, s_zt, m_u, s_u, acc = _slice_stats(
                z_row, u_row, start, end, inv_tau, BLOCK_V, HAS_TEACHER, TAU_MODE, EVICT)
            if MODE != 0:
                _store_partials(ws_row + part * 8, m_z, s_z, s_zt, m_u, s_u, acc)
            if MODE == 3:
                # The barrier orders this program's partial stores before the release of the
                # row counter; after the acquire loop and a second barrier every thread reads
                # the other slices' partials (volatile: from L2, never a stale L1 line).
                tl.debug_barrier()
                seen = tl.atomic_add(cnt_ptr + 1 + row, 1) + 1
                while seen < SPLIT:
                    seen = tl.atomic_add(cnt_ptr + 1 + row, 0)
                tl.debug_barrier()
                m_z, s_z, s_zt, m_u, s_u, acc = _merge_partials(
                    ws_row, inv_tau, SPLIT, SPLIT_POW2, HAS_TEACHER, TAU_MODE, True)
        if MODE != 1:
            if part == 0:
                _finish_row(z_row, y, V, row, m_z, s_z, s_zt, m_u, s_u, acc,
                            loss_ptr, ce_ptr, kd_ptr, lse_ptr, kd_weight, tau, inv_tau,
                            HAS_TEACHER, TAU_MODE)
            if HAS_GRAD:
                scale = tl.load(scale_ptr + row * scale_stride)
                _grad_slice(z_row, u_row, g_row, start, end, y, m_z, s_z, s_zt, m_u, s_u,
                            scale, kd_weight, tau, inv_tau, BLOCK_V, HAS_TEACHER, TAU_MODE)
    else:
        if MODE != 1:
            if part == 0:
                _store_ignored_row(row, loss_ptr, ce_ptr, kd_ptr, lse_ptr)
            if HAS_GRAD:
                _zero_slice(g_row, start, end, BLOCK_V)
