"""Triton kernel of the SALT loss with an offline top-k teacher (docs/design.md, "Top-k teacher";
the readable math is reference.topk_rows). The launcher is topk_rows in launcher.py.

One program per row (student row z of V entries, the teacher's k slots: ids and log-probs at
temperature 1, a negative id marking an empty slot), in four steps:

  1. Membership of K. The program loads its k ids once (a [K_POW2] vector, k <= 256 is the
     intended size; any k works) and marks them in a bitmap of the row's entries in a workspace
     (one bit per entry, words of 32 entries, the row padded to whole blocks; the launcher gives
     each row in flight its own words): zero the words, a barrier, one atomic OR per filled slot,
     a barrier. Reading the bitmap costs one 32-bit word per 32 entries (a word is loaded once
     per tile row of 32 entries and broadcast), a shift and a test per entry; comparing each
     block's columns with the k ids would cost k compares per entry.
  2. Statistics over the row, in blocks of BLOCK_V entries seen as [BLOCK_V / 32, 32] tiles (a
     tile row is one bitmap word), over the entries outside K only (an entry of K reads as -inf
     there): their running maximum m_r and, relative to it, s_rz = sum exp(z - m_r) and
     s_rt = sum exp((z - m_r) / tau), so lse_rest = m_r / tau + log s_rt is the rest's own
     log-sum-exp (no cancellation, and no underflow however far K's entries lie above the rest);
     plus, over every entry, sum z (label smoothing) and whether some entry beats the label's
     logit (accuracy, torch.argmax's ties: the lowest index wins, the first NaN wins). With an
     integer tau (TAU_MODE 2..4) exp(z - m) = exp((z - m) / tau)^tau, by multiplies. After the
     loop the k entries of K (a gather, still in L2) join the sums: m, s_z, s_zt of the row.
  3. KD over the |K| + 1 outcomes, in fp32 on [K_POW2] vectors: the teacher's log-probs clamped
     to <= 0 with the tail outcome's log r (r = 1 - sum_K exp(l) in float64, computed by the
     launcher: -inf when the row has no tail outcome) divided by tau and normalized,
     D = sum p (log p - log q) over the outcomes, a term of zero mass adding 0.
  4. (HAS_GRAD) The gradient, written once per entry: a pass over the row writes every entry
     outside K, skipping the entries of K in its stores; there every probability is taken
     relative to the rest's normalizer, e_j = exp((z_j - m_r) / tau) / s_rt <= 1: q_j =
     e_j q_rest, the KD part q_j - p_rest q_j / q_rest = e_j (q_rest - p_rest), and softmax(z)_j
     = e_j^tau s_rt^tau exp(m_r - m) / s_z with an integer tau (one exp per entry; a second one
     for any other tau), so nothing overflows when q_rest underflows. Then the k entries of K
     are written from the gathered z (KD part q_j - p_j). The two sets of stores do not overlap,
     so no ordering between them is needed.

The cross-entropy side (label smoothing, z-loss, softcap on the student: c * tanh(z / c) on load,
the gradient times 1 - (z / c)^2) is that of the full-teacher kernels (kernels.py). Ignored rows
get zeros everywhere, their gradient rows included. All arithmetic is fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels import _softcap, _tau_pow, _tau_pow_m1, grad_coefficients, store_ignored_row, store_row



@triton.jit
def _mark_ids(bits_row, ids, filled, n_words, NW: tl.constexpr):
    """The bitmap of K in this row's words: zeros, then one bit per filled slot. The barriers
    order every thread's zero stores before the atomics and the atomics before the reads."""
    w = tl.arange(0, NW)
    for off in range(0, n_words, NW):
        tl.store(bits_row + off + w, tl.zeros([NW], dtype=tl.int32), mask=off + w < n_words)
    tl.debug_barrier()
    word = tl.where(filled, ids >> 5, 0)
    bit = tl.full(ids.shape, 1, tl.int32) << (ids & 31).to(tl.int32)
    tl.atomic_or(bits_row + word, bit, mask=filled)
    tl.debug_barrier()


@triton.jit
def _in_k(bits_row, off, NW: tl.constexpr):
    """[NW, 32] membership of K of the block at `off` (a multiple of 32). The words are read from
    L2 (.cg): the atomics that wrote them never went through this SM's L1."""
    words = tl.load(bits_row + off // 32 + tl.arange(0, NW), cache_modifier=".cg")
    lane = tl.arange(0, 32)
    return ((words[:, None] >> lane[None, :]) & 1) != 0


@triton.jit
def topk_rows_kernel(
    z_ptr, z_stride, ids_ptr, ids_stride, lp_ptr, lp_stride, log_rest_ptr, y_ptr, y_stride,
    loss_ptr, ce_ptr, kd_ptr, lse_ptr, accuracy_ptr,
    g_ptr, g_stride, scale_ptr, scale_stride, bits_ptr, n_words,
    V, K, kd_weight, tau, inv_tau, ignore_index, softcap, smoothing, z_loss,
    BLOCK_V: tl.constexpr, K_POW2: tl.constexpr, HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr,
    HAS_GRAD: tl.constexpr, SOFTCAP: tl.constexpr, SMOOTHING: tl.constexpr, Z_LOSS: tl.constexpr,
):
    """One row per program (module docstring). bits_ptr: n_words int32 per program, n_words a
    whole number of blocks' words. log_rest_ptr: per row, log r of the tail outcome or -inf when
    the row has none (the launcher's float64 sum). TAU_MODE: 1 for tau == 1, 2..4 for those
    integers, 0 otherwise."""
    NEG_INF: tl.constexpr = float("-inf")
    C: tl.constexpr = 1.4426950408889634  # log2(e)
    LN2: tl.constexpr = 0.6931471805599453
    NW: tl.constexpr = BLOCK_V // 32
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    g_row = g_ptr + row * g_stride
    bits_row = bits_ptr + row * n_words
    tile = tl.arange(0, NW)[:, None] * 32 + tl.arange(0, 32)[None, :]
    inv_cap = 1.0 / softcap
    c_t = inv_tau * C
    y = tl.load(y_ptr + row * y_stride).to(tl.int64)
    if y != ignore_index:
        in_range = (y >= 0) & (y < V)
        y32 = tl.where(in_range, y, -1).to(tl.int32)
        zy = tl.load(z_row + tl.where(in_range, y, 0)).to(tl.float32)
        if SOFTCAP:
            zy = _softcap(zy, softcap, inv_cap)
        slot = tl.arange(0, K_POW2)
        if HAS_TEACHER:
            ids = tl.load(ids_ptr + row * ids_stride + slot, mask=slot < K, other=-1).to(tl.int32)
            filled = ids >= 0
            _mark_ids(bits_row, ids, filled, n_words, NW)
        # ---- 2. statistics -------------------------------------------------------------------
        m = tl.full([], NEG_INF, tl.float32)
        vs_z = tl.zeros([NW, 32], dtype=tl.float32)
        vs_zt = tl.zeros([NW, 32], dtype=tl.float32)
        vsum = tl.zeros([NW, 32], dtype=tl.float32)
        vmiss = tl.zeros([NW, 32], dtype=tl.int1)
        for off in range(0, V, BLOCK_V):
            cols = off + tile
            mask = cols < V
            z = tl.load(z_row + cols, mask=mask, other=NEG_INF, eviction_policy="evict_last").to(tl.float32)
            if SOFTCAP:
                z = tl.where(mask, _softcap(z, softcap, inv_cap), NEG_INF)  # the cap maps -inf to -cap
            if SMOOTHING:
                vsum += tl.where(mask, z, 0.0)
            nan = z != z
            beats = tl.where(cols < y32, (z >= zy) | nan, tl.where(zy == zy, (cols > y32) & ((z > zy) | nan), False))
            vmiss = vmiss | (beats & mask)
            if HAS_TEACHER:
                # The sums run over the entries outside K; K joins them after the loop.
                z = tl.where(_in_k(bits_row, off, NW), NEG_INF, z)
            m_new = tl.maximum(m, tl.max(tl.max(z, 1), 0))
            ms = tl.where(m_new == NEG_INF, 0.0, m_new)  # a row of -inf so far: no -inf - -inf
            if TAU_MODE == 1:
                a_t = tl.exp2((m - ms) * C)
                e_t = tl.exp2((z - ms) * C)
                a_z = a_t
                e_z = e_t
            else:
                a_t = tl.exp2((m - ms) * c_t)
                e_t = tl.exp2((z - ms) * c_t)
                if TAU_MODE == 0:
                    a_z = tl.exp2((m - ms) * C)
                    e_z = tl.exp2((z - ms) * C)
                else:
                    a_z = _tau_pow(a_t, TAU_MODE)
                    e_z = _tau_pow(e_t, TAU_MODE)
                vs_zt = vs_zt * a_t + e_t
            vs_z = vs_z * a_z + e_z
            m = m_new
        s_z = tl.sum(tl.sum(vs_z, 1), 0)
        if TAU_MODE == 1:
            s_zt = s_z
        else:
            s_zt = tl.sum(tl.sum(vs_zt, 1), 0)
        # So far the entries outside K (all of them without a teacher), relative to their own
        # maximum m_r (however far above it K's entries are); then K's entries join the sums.
        m_r = m
        s_rt = s_zt
        lse_rest = 0.0
        if HAS_TEACHER:
            lse_rest = m * inv_tau + tl.log(s_zt)
            ids_safe = tl.where(filled, ids, 0)
            zk = tl.load(z_row + ids_safe, mask=filled, other=0.0).to(tl.float32)
            if SOFTCAP:
                zk = _softcap(zk, softcap, inv_cap)
            zk_m = tl.where(filled, zk, NEG_INF)
            m_k = tl.maximum(m, tl.max(zk_m, 0))
            ms = tl.where(m_k == NEG_INF, 0.0, m_k)
            s_z = s_z * tl.exp2((m - ms) * C) + tl.sum(tl.exp2((zk_m - ms) * C), 0)
            if TAU_MODE == 1:
                s_zt = s_z
            else:
                s_zt = s_zt * tl.exp2((m - ms) * c_t) + tl.sum(tl.exp2((zk_m - ms) * c_t), 0)
            m = m_k
        lse_z = m + tl.log(s_z)  # -inf + log(0) = -inf for an all -inf row
        lse_zt = m * inv_tau + tl.log(s_zt)
        miss = tl.max(tl.max(vmiss.to(tl.int32), 1), 0)
        # ---- cross-entropy side ----------------------------------------------------------------
        zy_ce = tl.where(in_range, zy, float("nan"))  # a label outside [0, V): NaN, as the CPU kernel
        if SMOOTHING:
            sum_z = tl.sum(tl.sum(vsum, 1), 0)
            ce = lse_z - (1.0 - smoothing) * zy_ce - smoothing * (sum_z / V)
        else:
            ce = lse_z - zy_ce
        loss = tl.where(kd_weight < 1.0, (1.0 - kd_weight) * ce, 0.0)
        kd = 0.0
        if HAS_TEACHER:
            # ---- 3. KD over K and the tail outcome ------------------------------------------------
            log_qk = zk * inv_tau - lse_zt
            log_q_rest = lse_rest - lse_zt
            lp = tl.load(lp_ptr + row * lp_stride + slot, mask=filled, other=0.0).to(tl.float32)
            a = tl.where(filled, tl.minimum(lp, 0.0) * inv_tau, NEG_INF)
            a_rest = tl.load(log_rest_ptr + row) * inv_tau
            m_a = tl.maximum(tl.max(a, 0), a_rest)  # finite: a row without K has a tail outcome
            lse_a = m_a + tl.log(tl.sum(tl.exp(a - m_a), 0) + tl.exp(a_rest - m_a))
            log_pk = a - lse_a
            pk = tl.exp(log_pk)
            log_p_rest = a_rest - lse_a
            p_rest = tl.exp(log_p_rest)
            terms = tl.where(pk == 0.0, 0.0, pk * (log_pk - log_qk))
            d = tl.sum(terms, 0) + tl.where(p_rest == 0.0, 0.0, p_rest * (log_p_rest - log_q_rest))
            kd = tau * tau * d
            loss += kd_weight * kd
        else:
            lse_zt = lse_z
        store_row(row, loss, ce, kd, lse_z, lse_zt, lse_rest, in_range, miss, lse_z, z_loss,
                  loss_ptr, ce_ptr, kd_ptr, lse_ptr, accuracy_ptr, Z_LOSS, True)
        if HAS_GRAD:
            # ---- 4. gradient ------------------------------------------------------------------------
            scale = tl.load(scale_ptr + row * scale_stride)
            c_z, c_y, c_unif, c_kd = grad_coefficients(scale, kd_weight, tau, V, smoothing,
                                                       scale * 2.0 * z_loss * lse_z, SMOOTHING, Z_LOSS)
            if not HAS_TEACHER:
                c_kd = 0.0
            # Outside K every probability is taken relative to the rest's normalizer,
            # e_j = exp((z_j - m_r) / tau) / s_rt <= 1, so nothing overflows however little mass
            # the rest holds: q_j = e_j * q_rest, p_rest * q_j / q_rest = p_rest * e_j, and
            # softmax(z)_j = e_j^tau * s_rt^tau * exp(m_r - m) / s_z (integer tau; <= V^tau).
            mrs = tl.where(m_r == NEG_INF, 0.0, m_r)
            l_r = tl.where(s_rt == 0.0, 0.0, tl.log2(s_rt))  # no entry left: e_j = 0, not NaN
            q_rest = tl.exp2((m_r - m) * c_t) * (s_rt / s_zt)
            c_e = 0.0
            if HAS_TEACHER:
                c_e = c_kd * (q_rest - p_rest)  # KD part outside K: e_j (q_rest - p_rest)
            if TAU_MODE == 1:
                c_e += c_z * q_rest
            elif TAU_MODE >= 2:
                c_sm = c_z * (_tau_pow(s_rt, TAU_MODE) * tl.exp2((m_r - m) * C) / s_z)
            else:
                l_z = tl.log2(s_z)
            for off in range(0, V, BLOCK_V):
                cols = off + tile
                mask = cols < V
                z = tl.load(z_row + cols, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
                if SOFTCAP:
                    z = _softcap(z, softcap, inv_cap)
                e = tl.exp2((z - mrs) * c_t - l_r)
                if TAU_MODE == 1:
                    g = c_e * e
                elif TAU_MODE == 0:
                    g = c_z * tl.exp2((z - m) * C - l_z) + c_e * e
                else:
                    g = e * tl.fma(c_sm, _tau_pow_m1(e, TAU_MODE), c_e)
                g = tl.where(cols == y32, g - c_y, g)
                if SMOOTHING:
                    g -= c_unif
                if SOFTCAP:
                    zc = z * inv_cap
                    g = g * (1.0 - zc * zc)
                if HAS_TEACHER:
                    mask = mask & ~_in_k(bits_row, off, NW)
                tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=mask)
            if HAS_TEACHER:
                # The entries of K: KD part q_j - p_j.
                qk = tl.exp2((zk - m) * c_t - tl.log2(s_zt))
                if TAU_MODE == 1:
                    gk = c_z * qk
                else:
                    gk = c_z * tl.exp2((zk - m) * C - tl.log2(s_z))
                gk += c_kd * (qk - pk)
                gk = tl.where(ids == y32, gk - c_y, gk)
                if SMOOTHING:
                    gk -= c_unif
                if SOFTCAP:
                    zkc = zk * inv_cap
                    gk = gk * (1.0 - zkc * zkc)
                tl.store(g_row + ids_safe, gk.to(g_row.dtype.element_ty), mask=filled)
    else:
        store_ignored_row(row, loss_ptr, ce_ptr, kd_ptr, lse_ptr, accuracy_ptr, True)
        if HAS_GRAD:
            for off in range(0, V, BLOCK_V):
                cols = off + tl.arange(0, BLOCK_V)
                tl.store(g_row + cols, tl.zeros([BLOCK_V], dtype=g_row.dtype.element_ty), mask=cols < V)
