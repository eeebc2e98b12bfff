"""Triton kernels of the SALT loss (docs/design.md, "One-pass algorithm"). The launcher is
launcher.py.

One kernel body, specialised by constexpr MODE, computes per row the loss, its CE and KD parts,
the three log-sum-exps and (HAS_GRAD) the gradient w.r.t. the student, already scaled:

  MODE_FUSED  one program per row: a statistics loop over the vocabulary, then a gradient loop
              over the same row (the autograd layer wants the gradient in the forward pass).
  MODE_PART   SPLIT programs per row, each over one slice of SLICE_V entries: partial statistics
              into a workspace [N, SPLIT, FIELDS].
  MODE_JSD    (divergence "jsd" only) SPLIT programs per row, launched after MODE_PART: merge the
              row's statistics, then the slice's partial sums of KL(p || m) and KL(q || m).
  MODE_FINISH SPLIT programs per row, launched after MODE_PART (and MODE_JSD): merge the row's
              partials, write the row's results (slice 0) and the gradient of the slice.
  MODE_SYNC   all of these in one launch: a program publishes its partials, waits for its
              row's other slices (an atomic counter per row), merges and writes its gradient
              slice while the slice is still in L2 (JSD waits twice on the same counter).
              Programs take a ticket from an atomic counter and derive (row, slice) from it, so a
              program only ever waits for programs that have already started or that take the
              next tickets; this cannot deadlock as long as SPLIT programs fit on the device at
              once. It spins, so it never runs under the interpreter (programs run one after
              another there).

Two entry points share the body: salt_rows_kernel, the plain SALT loss, and
salt_rows_options_kernel, which also takes the distillation options (docs/design.md,
"Distillation options") as constexpr flags plus their values. With every flag off the body
compiles to the plain kernel: the options cost nothing unless used.

Statistics (per row, or per slice) are kept relative to the running maximum m_z of z and m_u of
u: s_z = sum exp(z - m_z), s_zt = sum exp((z - m_z) / tau), s_u = sum exp((u - m_u) / tau) and
acc = sum exp((u - m_u) / tau) * (u - z) over u != -inf, so lse_z = m_z + log s_z,
lse_zt = m_z / tau + log s_zt, lse_u = m_u / tau + log s_u and KD = tau * acc / s_u +
tau^2 * (lse_zt - lse_u). Sums are kept as per-lane vectors; the statistics loop reads a block as
rows of 8 entries, one row per thread (the JSD kernel: of 256, one per warp), and keeps the
running maxima and rescale factors per row, so a block's maximum reduces within a thread (no
shuffle, shared memory or barrier); the rows merge once after the loop. Exponents are FMA-folded: exp2(x * c - k), k = m * c (+ log2 s) once
per row and block, one FFMA per entry; the statistics loop carries k from block to block so that
rescales are exact and its merge puts back the rounding of m * c, so the sums stay relative to m.
With an integer tau (TAU_MODE 2..4) exp(z - m) = exp((z - m) / tau)^tau: a multiply instead of
an exp, which matters because the loss is bound by memory only if it spends few exps per element.
The folded form needs |x| * log2(e) / tau below the float maximum (about 2.4e38 at tau 1).

Options, per row (docs/design.md, "Distillation options"; z and u below are the capped logits
when SOFTCAP / TEACHER_SOFTCAP, c * tanh(x / c) applied on load, the gradient multiplied by
1 - (z / c)^2 at the end):
  KD_VOCAB    the KD side covers only [0, k): the row is read as two regions, [0, k) with the
              teacher and every statistic, [k, V) for the cross-entropy side only; the block
              that k cuts is read in a loop of its own (an edge block), so the other blocks
              keep aligned vector loads whatever k is. The KD side's s_zt is then relative to
              m_t, the maximum of z over [0, k), instead of m_z.
  DIVERGENCE  0 forward KL (above); 1 reverse KL: acc = sum exp((z - m_t) / tau) * (z - u),
              rescaled with s_zt, and KD = tau * acc / s_zt + tau^2 * (lse_u - lse_zt);
              2 JSD: a second pass over [0, k) sums KL(p || m) and KL(q || m) once the
              normalizers are known (one more launch, or one more wait, in the split plans).
  SMOOTHING   also sum_j z_j, for the mean of label smoothing; Z_LOSS adds z_loss * lse_z^2.
  ACCURACY    also whether some entry beats the label's logit (larger, or equal at a lower
              index, or the first NaN: torch.argmax), one flag per lane, merged by "or".

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
MODE_JSD = 4
DIV_FORWARD_KL = 0
DIV_REVERSE_KL = 1
DIV_JSD = 2
# Workspace floats per (row, slice). Plain kernel: m_z, s_z, s_zt, m_u, s_u, acc (2 spare); the
# options kernel adds m_t, sum_z, miss (accuracy), KL(p || m), KL(q || m).
WS_FIELDS = 8
WS_FIELDS_OPTIONS = 16
DIVERGENCES = {"forward_kl": DIV_FORWARD_KL, "reverse_kl": DIV_REVERSE_KL, "jsd": DIV_JSD}

_F_MT = tl.constexpr(6)
_F_SUM = tl.constexpr(7)
_F_MISS = tl.constexpr(8)
_F_KL_PM = tl.constexpr(9)
_F_KL_QM = tl.constexpr(10)


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
def _tau_pow_m1(e, TAU_MODE: tl.constexpr):
    """e ** (tau - 1) for an integer tau in 2..4."""
    if TAU_MODE == 2:
        r = e
    elif TAU_MODE == 3:
        r = e * e
    else:
        r = e * e * e
    return r


@triton.jit
def _piece(piece: tl.constexpr, start, end, edge_lo, edge_hi):
    """Bounds of one piece of a slice: the whole blocks [start, end), then (EDGE) the edge
    block [edge_lo, edge_hi)."""
    if piece == 0:
        lo = start
        hi = end
    else:
        lo = edge_lo
        hi = edge_hi
    return lo, hi


@triton.jit
def _softcap(x, cap, inv_cap):
    """cap * tanh(x / cap) in fp32: below |x / cap| = 0.625 the odd polynomial of Cephes' tanhf
    (no cancellation near 0), above it 1 - 2 / (exp(2 |x / cap|) + 1), which saturates to 1 (so
    -inf maps to -cap); NaN stays NaN."""
    a = x * inv_cap
    aa = tl.abs(a)
    s = a * a
    small = ((((-5.70498872745e-3 * s + 2.06390887954e-2) * s - 5.37397155531e-2) * s
              + 1.33314422036e-1) * s - 3.33332819422e-1) * s * a + a
    big = 1.0 - 2.0 / (tl.exp2(aa * 2.8853900817779268) + 1.0)  # 2 * log2(e)
    return cap * tl.where(aa < 0.625, small, tl.where(a < 0.0, -big, big))


@triton.jit
def _slice_stats(z_row, u_row, start, end, edge_lo, edge_hi, y, zy, inv_tau, cap, inv_cap, tcap, inv_tcap,
                 BLOCK_V: tl.constexpr, HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr,
                 EVICT: tl.constexpr, SOFTCAP: tl.constexpr, TEACHER_SOFTCAP: tl.constexpr,
                 DIVERGENCE: tl.constexpr, SMOOTHING: tl.constexpr, ACCURACY: tl.constexpr,
                 EDGE: tl.constexpr):
    """Online statistics of z[start:end] (and u[start:end]): (m_z, s_z, s_zt, m_u, s_u, acc,
    sum_z, miss), miss = 1 when some entry beats the label y's logit zy (ACCURACY). EDGE adds
    the entries [edge_lo, edge_hi) (at most one block, any alignment) in a loop of their own, so
    that only that block gives up vector loads (the order of the entries does not matter).
    EVICT is the L2 policy of the loads: "evict_last" when this program reads the same entries
    again, so they are still in L2 then.

    A block is ROWS x W entries, a row of W = 8 entries per thread (module docstring,
    "Statistics"): every running maximum, offset and rescale factor is per row, so the maxima
    reduce within a thread (no shuffle; a row per warp costs 5 shuffles per input and block, one
    block-wide maximum shared memory and two barriers), and the rows merge once, after the loop.
    Both loads of a block are issued before its first reduction: one trip to memory per block
    (memory-level parallelism), not one per input.
    The exponents are FMA-folded: exp2(x * c - k) with k = m * c once per row and block, so an
    entry costs one FFMA instead of x - m then * c; the sums are relative to 2^k and k is carried
    to the next block, so rescales are exact, and the merge puts back the rounding of m * c."""
    NEG_INF: tl.constexpr = float("-inf")
    C_Z: tl.constexpr = 1.4426950408889634
    # A row is one thread's 8 entries (one 16-byte load of bf16), so a row's maximum needs no
    # shuffle; the JSD kernel keeps a row per warp (256 entries), with which it does not spill.
    W: tl.constexpr = (256 if BLOCK_V >= 256 else BLOCK_V) if DIVERGENCE == 2 else (8 if BLOCK_V >= 8 else BLOCK_V)
    ROWS: tl.constexpr = BLOCK_V // W
    c_t = inv_tau * 1.4426950408889634
    grid = tl.arange(0, ROWS)[:, None] * W + tl.arange(0, W)[None, :]
    # Per row: the maximum, and k = m * c (-inf while the row has seen only -inf) that the sums
    # are relative to: kz for s_z (TAU_MODE 0, 1), kt for s_zt (and s_z = sum e_t^tau with an
    # integer tau), ku for s_u and the forward KL's acc.
    m_z = tl.full([ROWS], NEG_INF, tl.float32)
    m_u = tl.full([ROWS], NEG_INF, tl.float32)
    kz = tl.full([ROWS], NEG_INF, tl.float32)
    kt = tl.full([ROWS], NEG_INF, tl.float32)
    ku = tl.full([ROWS], NEG_INF, tl.float32)
    vs_z = tl.zeros([ROWS, W], dtype=tl.float32)
    vs_zt = tl.zeros([ROWS, W], dtype=tl.float32)
    vs_u = tl.zeros([ROWS, W], dtype=tl.float32)
    vacc = tl.zeros([ROWS, W], dtype=tl.float32)
    vsum = 0.0
    if SMOOTHING:
        vsum = tl.zeros([ROWS, W], dtype=tl.float32)
    vmiss = False
    if ACCURACY:
        vmiss = tl.zeros([ROWS, W], dtype=tl.int1)
    for piece in tl.static_range(1 + EDGE):
        lo, hi = _piece(piece, start, end, edge_lo, edge_hi)
        for off in range(lo, hi, BLOCK_V):
            cols = off + grid
            mask = cols < hi
            # Padding lanes read -inf: no mass, no KD term, never a new maximum.
            z = tl.load(z_row + cols, mask=mask, other=NEG_INF, eviction_policy=EVICT).to(tl.float32)
            if HAS_TEACHER:
                u = tl.load(u_row + cols, mask=mask, other=NEG_INF, eviction_policy=EVICT).to(tl.float32)
            if SOFTCAP:
                z = tl.where(mask, _softcap(z, cap, inv_cap), NEG_INF)  # the cap maps -inf to -cap
            if SMOOTHING:
                vsum += tl.where(mask, z, 0.0)
            if ACCURACY:
                # z_j beats the label's logit zy if larger, or equal at a lower index; a NaN
                # counts as larger than everything and the first NaN wins (torch.argmax).
                nan = z != z
                beats = tl.where(cols < y, (z >= zy) | nan,
                                 tl.where(zy == zy, (cols > y) & ((z > zy) | nan), False))
                vmiss = vmiss | (beats & mask)
            m_z = tl.maximum(m_z, tl.max(z, 1))
            # e_t = exp((z - m) / tau) and its rescale factor a_t: the reverse KL's cross term.
            # A row of -inf only so far shifts by 0 (k = -inf there): exp2(-inf) = 0 for every
            # term, no -inf - -inf; the previous k of -inf rescales by exp2(-inf) = 0.
            if TAU_MODE == 1 or TAU_MODE == 0:
                kz_new = m_z * C_Z
                kz_s = tl.where(kz_new == NEG_INF, 0.0, kz_new)
                a_z = tl.exp2(kz - kz_s)
                e_z = tl.exp2(tl.fma(z, C_Z, -kz_s[:, None]))
                vs_z = vs_z * a_z[:, None] + e_z
                kz = kz_new
                if TAU_MODE == 1:
                    a_t = a_z
                    e_t = e_z
            if TAU_MODE != 1:
                kt_new = m_z * c_t
                kt_s = tl.where(kt_new == NEG_INF, 0.0, kt_new)
                a_t = tl.exp2(kt - kt_s)
                e_t = tl.exp2(tl.fma(z, c_t, -kt_s[:, None]))
                vs_zt = vs_zt * a_t[:, None] + e_t
                kt = kt_new
                if TAU_MODE != 0:
                    # exp(z - m) = exp((z - m) / tau)^tau: relative to tau * kt.
                    vs_z = vs_z * _tau_pow(a_t, TAU_MODE)[:, None] + _tau_pow(e_t, TAU_MODE)
            if HAS_TEACHER:
                if TEACHER_SOFTCAP:
                    u = tl.where(mask, _softcap(u, tcap, inv_tcap), NEG_INF)
                m_u = tl.maximum(m_u, tl.max(u, 1))
                ku_new = m_u * c_t
                ku_s = tl.where(ku_new == NEG_INF, 0.0, ku_new)
                alpha = tl.exp2(ku - ku_s)
                e_u = tl.exp2(tl.fma(u, c_t, -ku_s[:, None]))
                ku = ku_new
                vs_u = vs_u * alpha[:, None] + e_u
                if DIVERGENCE == 0:
                    # kd_term of salt_math.h: p_j == 0 adds 0; z == -inf under teacher mass adds +inf.
                    term = tl.where(u == NEG_INF, 0.0, tl.where(z == NEG_INF, float("inf"), e_u * (u - z)))
                    vacc = vacc * alpha[:, None] + term
                elif DIVERGENCE == 1:
                    # The mirror image: q_j == 0 adds 0; u == -inf under student mass adds +inf.
                    term = tl.where(z == NEG_INF, 0.0, tl.where(u == NEG_INF, float("inf"), e_t * (z - u)))
                    vacc = vacc * a_t[:, None] + term
    # Merge the rows: row r's sums are relative to 2^k_r, the slice's to 2^(m * c) exactly, so
    # row r is scaled by exp2(k_r - m * c) (one fma: m * c - k_r rounds once). A row of -inf only
    # (k_r = -inf) scales by 0: its sums are 0, or NaN if it read a NaN, which stays.
    mz = tl.max(m_z, 0)
    mz_s = tl.where(mz == NEG_INF, 0.0, mz)
    if TAU_MODE == 1 or TAU_MODE == 0:
        f_z = tl.exp2(-tl.fma(mz_s, C_Z, -kz))
    if TAU_MODE != 1:
        f_t = tl.exp2(-tl.fma(mz_s, c_t, -kt))
        if TAU_MODE != 0:
            f_z = _tau_pow(f_t, TAU_MODE)
    else:
        f_t = f_z
    s_z = tl.sum(tl.sum(vs_z, 1) * f_z, 0)
    if TAU_MODE == 1:
        s_zt = s_z
    else:
        s_zt = tl.sum(tl.sum(vs_zt, 1) * f_t, 0)
    mu = tl.max(m_u, 0)
    s_u = 0.0
    acc = 0.0
    if HAS_TEACHER:
        mu_s = tl.where(mu == NEG_INF, 0.0, mu)
        f_u = tl.exp2(-tl.fma(mu_s, c_t, -ku))
        s_u = tl.sum(tl.sum(vs_u, 1) * f_u, 0)
        if DIVERGENCE != 2:
            # A +inf term (-inf where the other side has mass) stays +inf in a row that scales by 0.
            racc = tl.sum(vacc, 1)
            if DIVERGENCE == 0:
                racc = tl.where(racc == float("inf"), racc, racc * f_u)
            else:
                racc = tl.where(racc == float("inf"), racc, racc * f_t)
            acc = tl.sum(racc, 0)
    sum_z = 0.0
    if SMOOTHING:
        sum_z = tl.sum(tl.sum(vsum, 1), 0)
    miss = 0
    if ACCURACY:
        miss = tl.max(tl.max(vmiss.to(tl.int32), 1), 0)
    return mz, s_z, s_zt, mu, s_u, acc, sum_z, miss


@triton.jit
def _kd_bounds(start, end, kd_vocab, BLOCK_V: tl.constexpr):
    """The pieces of [start, end) around k = kd_vocab: [start, a1) and [e_lo1, e_hi1) below k,
    [e_lo2, e_hi2) and [a2, end) from k on, where a1 <= k <= a2 are k rounded down and up to a
    block and e_* are the (at most one-block) edges, so that the loops over whole blocks keep
    aligned, vectorizable bounds whatever k is."""
    k_dn = (kd_vocab // BLOCK_V) * BLOCK_V
    k_up = ((kd_vocab + BLOCK_V - 1) // BLOCK_V) * BLOCK_V
    a1 = tl.minimum(end, k_dn)
    e_lo1 = tl.maximum(start, k_dn)
    e_hi1 = tl.minimum(end, kd_vocab)
    e_lo2 = tl.maximum(start, kd_vocab)
    e_hi2 = tl.minimum(end, k_up)
    a2 = tl.maximum(start, k_up)
    return a1, e_lo1, e_hi1, e_lo2, e_hi2, a2


@triton.jit
def _row_stats(z_row, u_row, start, end, kd_vocab, y, zy, inv_tau, cap, inv_cap, tcap, inv_tcap,
               BLOCK_V: tl.constexpr, HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr,
               EVICT: tl.constexpr, SOFTCAP: tl.constexpr, TEACHER_SOFTCAP: tl.constexpr,
               KD_VOCAB: tl.constexpr, DIVERGENCE: tl.constexpr, SMOOTHING: tl.constexpr,
               ACCURACY: tl.constexpr):
    """Statistics of z[start:end] (and u): (m_z, s_z, s_zt, m_t, m_u, s_u, acc, sum_z, miss),
    where m_t is the maximum the KD side's s_zt (and reverse-KL acc) are relative to."""
    if KD_VOCAB:
        # The entries below k with the KD side, then the rest for the cross-entropy side only.
        a1, e_lo1, e_hi1, e_lo2, e_hi2, a2 = _kd_bounds(start, end, kd_vocab, BLOCK_V)
        m1, s1, s_zt, m_u, s_u, acc, sum1, miss1 = _slice_stats(
            z_row, u_row, start, a1, e_lo1, e_hi1, y, zy, inv_tau, cap, inv_cap, tcap, inv_tcap, BLOCK_V,
            HAS_TEACHER, TAU_MODE, EVICT, SOFTCAP, TEACHER_SOFTCAP, DIVERGENCE, SMOOTHING, ACCURACY, True)
        m2, s2, _s2t, _mu2, _su2, _acc2, sum2, miss2 = _slice_stats(
            z_row, u_row, a2, end, e_lo2, e_hi2, y, zy, inv_tau, cap, inv_cap, tcap, inv_tcap, BLOCK_V,
            False, 1, EVICT, SOFTCAP, False, 0, SMOOTHING, ACCURACY, True)
        m_z = tl.maximum(m1, m2)
        ms = tl.where(m_z == float("-inf"), 0.0, m_z)
        s_z = s1 * tl.exp2((m1 - ms) * 1.4426950408889634) + s2 * tl.exp2((m2 - ms) * 1.4426950408889634)
        m_t = m1
        sum_z = sum1 + sum2
        miss = miss1
        if ACCURACY:
            miss = tl.maximum(miss1, miss2)
    else:
        m_z, s_z, s_zt, m_u, s_u, acc, sum_z, miss = _slice_stats(
            z_row, u_row, start, end, start, start, y, zy, inv_tau, cap, inv_cap, tcap, inv_tcap, BLOCK_V,
            HAS_TEACHER, TAU_MODE, EVICT, SOFTCAP, TEACHER_SOFTCAP, DIVERGENCE, SMOOTHING, ACCURACY, False)
        m_t = m_z
    return m_z, s_z, s_zt, m_t, m_u, s_u, acc, sum_z, miss


@triton.jit
def _jsd_sums(z_row, u_row, start, end, edge_lo, edge_hi, m_t, s_zt, m_u, s_u, inv_tau, beta,
              cap, inv_cap, tcap, inv_tcap, BLOCK_V: tl.constexpr, SOFTCAP: tl.constexpr,
              TEACHER_SOFTCAP: tl.constexpr, EVICT: tl.constexpr, EDGE: tl.constexpr):
    """(KL(p || m), KL(q || m)) summed over [start, end) (and [edge_lo, edge_hi) with EDGE),
    m = beta p + (1 - beta) q, with the row's normalizers known; a term of zero mass adds 0."""
    NEG_INF: tl.constexpr = float("-inf")
    LN2: tl.constexpr = 0.6931471805599453
    c_t = inv_tau * 1.4426950408889634
    l_zt = tl.log2(s_zt)
    l_u = tl.log2(s_u)
    vpm = tl.zeros([BLOCK_V], dtype=tl.float32)
    vqm = tl.zeros([BLOCK_V], dtype=tl.float32)
    for piece in tl.static_range(1 + EDGE):
        lo, hi = _piece(piece, start, end, edge_lo, edge_hi)
        for off in range(lo, hi, BLOCK_V):
            cols = off + tl.arange(0, BLOCK_V)
            mask = cols < hi
            z = tl.load(z_row + cols, mask=mask, other=NEG_INF, eviction_policy=EVICT).to(tl.float32)
            u = tl.load(u_row + cols, mask=mask, other=NEG_INF, eviction_policy=EVICT).to(tl.float32)
            if SOFTCAP:
                z = tl.where(mask, _softcap(z, cap, inv_cap), NEG_INF)
            if TEACHER_SOFTCAP:
                u = tl.where(mask, _softcap(u, tcap, inv_tcap), NEG_INF)
            a = (z - m_t) * c_t - l_zt  # log2 q
            b = (u - m_u) * c_t - l_u  # log2 p
            q = tl.exp2(a)
            p = tl.exp2(b)
            lm = tl.log2(beta * p + (1.0 - beta) * q)
            vpm += tl.where(p == 0.0, 0.0, p * (b - lm))
            vqm += tl.where(q == 0.0, 0.0, q * (a - lm))
    return LN2 * tl.sum(vpm, 0), LN2 * tl.sum(vqm, 0)


@triton.jit
def _merge_partials(ws_row, inv_tau, SPLIT: tl.constexpr, SPLIT_POW2: tl.constexpr,
                    HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr, VOLATILE: tl.constexpr,
                    FIELDS: tl.constexpr, KD_VOCAB: tl.constexpr, DIVERGENCE: tl.constexpr,
                    SMOOTHING: tl.constexpr, ACCURACY: tl.constexpr):
    """Merges the SPLIT partial states of one row (FIELDS floats each) into one state."""
    NEG_INF: tl.constexpr = float("-inf")
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
    if KD_VOCAB:
        # The KD side is relative to its own maximum m_t.
        mt = tl.load(p + _F_MT, mask=ok, other=NEG_INF, volatile=VOLATILE)
        m_t = tl.max(mt, 0)
        dt = mt - tl.where(m_t == NEG_INF, 0.0, m_t)
        szt = tl.load(p + 2, mask=ok, other=0.0, volatile=VOLATILE)
        s_zt = tl.sum(szt * tl.exp2(dt * c_t), 0)
    else:
        m_t = m_z
        dt = d
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
        if DIVERGENCE != 2:
            au = tl.load(p + 5, mask=ok, other=0.0, volatile=VOLATILE)
        m_u = tl.max(mu, 0)
        f = tl.exp2((mu - tl.where(m_u == NEG_INF, 0.0, m_u)) * c_t)
        s_u = tl.sum(su * f, 0)
        if DIVERGENCE == 0:
            # A slice with no teacher mass has acc == 0 and f == 0: 0, not NaN.
            acc = tl.sum(tl.where(f == 0.0, 0.0, au * f), 0)
        elif DIVERGENCE == 1:
            ft = tl.exp2(dt * c_t)  # the reverse KL's cross term goes with s_zt
            acc = tl.sum(tl.where(ft == 0.0, 0.0, au * ft), 0)
    sum_z = 0.0
    if SMOOTHING:
        sum_z = tl.sum(tl.load(p + _F_SUM, mask=ok, other=0.0, volatile=VOLATILE), 0)
    miss = 0.0
    if ACCURACY:
        miss = tl.max(tl.load(p + _F_MISS, mask=ok, other=0.0, volatile=VOLATILE), 0)
    return m_z, s_z, s_zt, m_t, m_u, s_u, acc, sum_z, miss


@triton.jit
def _merge_jsd(ws_row, SPLIT: tl.constexpr, SPLIT_POW2: tl.constexpr, VOLATILE: tl.constexpr,
               FIELDS: tl.constexpr):
    k = tl.arange(0, SPLIT_POW2)
    ok = k < SPLIT
    p = ws_row + k * FIELDS
    kl_pm = tl.sum(tl.load(p + _F_KL_PM, mask=ok, other=0.0, volatile=VOLATILE), 0)
    kl_qm = tl.sum(tl.load(p + _F_KL_QM, mask=ok, other=0.0, volatile=VOLATILE), 0)
    return kl_pm, kl_qm


@triton.jit
def _store_partials(ws_row, m_z, s_z, s_zt, m_t, m_u, s_u, acc, sum_z, miss,
                    KD_VOCAB: tl.constexpr, SMOOTHING: tl.constexpr, ACCURACY: tl.constexpr):
    tl.store(ws_row + 0, m_z)
    tl.store(ws_row + 1, s_z)
    tl.store(ws_row + 2, s_zt)
    tl.store(ws_row + 3, m_u)
    tl.store(ws_row + 4, s_u)
    tl.store(ws_row + 5, acc)
    if KD_VOCAB:
        tl.store(ws_row + _F_MT, m_t)
    if SMOOTHING:
        tl.store(ws_row + _F_SUM, sum_z)
    if ACCURACY:
        tl.store(ws_row + _F_MISS, miss.to(tl.float32))


@triton.jit
def _finish_row(z_row, y, V, row, m_z, s_z, s_zt, m_t, m_u, s_u, acc, sum_z, miss, kl_pm, kl_qm,
                loss_ptr, ce_ptr, kd_ptr, lse_ptr, accuracy_ptr, kd_weight, tau, inv_tau,
                cap, inv_cap, beta, smoothing, z_loss,
                HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr, SOFTCAP: tl.constexpr,
                KD_VOCAB: tl.constexpr, DIVERGENCE: tl.constexpr, SMOOTHING: tl.constexpr,
                Z_LOSS: tl.constexpr, ACCURACY: tl.constexpr):
    """Writes loss, ce, kd, the three log-sum-exps (and the accuracy) of one used row."""
    lse_z = m_z + tl.log(s_z)  # -inf + log(0) = -inf for an all -inf row
    if TAU_MODE == 1 and not KD_VOCAB:
        lse_zt = lse_z
    else:
        lse_zt = m_t * inv_tau + tl.log(s_zt)
    in_range = (y >= 0) & (y < V)
    # A label outside [0, V) (only possible with validate=False) gives NaN, as the CPU kernel.
    z_y = tl.load(z_row + tl.where(in_range, y, 0)).to(tl.float32)
    if SOFTCAP:
        z_y = _softcap(z_y, cap, inv_cap)
    if SMOOTHING:
        # (1 - eps) * (lse - z_y) + eps * (lse - mean_j z_j)
        ce = lse_z - (1.0 - smoothing) * tl.where(in_range, z_y, float("nan")) - smoothing * (sum_z / V)
    else:
        ce = lse_z - tl.where(in_range, z_y, float("nan"))
    loss = tl.where(kd_weight < 1.0, (1.0 - kd_weight) * ce, 0.0)
    if HAS_TEACHER:
        lse_u = m_u * inv_tau + tl.log(s_u)
        if DIVERGENCE == 0:
            # tau^2 * (acc / (tau * s_u) - lse_u + lse_zt); the max shift m_z - m_u is taken
            # apart from the logs so that it does not round twice.
            kd = tau * (acc / s_u) + tau * (m_t - m_u) + tau * tau * (tl.log(s_zt) - tl.log(s_u))
        elif DIVERGENCE == 1:
            # tau^2 * (acc / (tau * s_zt) - lse_zt + lse_u)
            kd = tau * (acc / s_zt) + tau * (m_u - m_t) + tau * tau * (tl.log(s_u) - tl.log(s_zt))
        else:
            kd = tau * tau * (beta * kl_pm + (1.0 - beta) * kl_qm)
        loss += kd_weight * kd
    else:
        lse_u = 0.0
        kd = 0.0
    store_row(row, loss, ce, kd, lse_z, lse_zt, lse_u, in_range, miss, lse_z, z_loss,
              loss_ptr, ce_ptr, kd_ptr, lse_ptr, accuracy_ptr, Z_LOSS, ACCURACY)


@triton.jit
def store_row(row, loss, ce, kd, lse_a, lse_b, lse_c, in_range, miss, lse_z, z_loss, loss_ptr, ce_ptr, kd_ptr,
              lse_ptr, accuracy_ptr, Z_LOSS: tl.constexpr, ACCURACY: tl.constexpr):
    """One used row's outputs (the loss with its z-loss term added here), its three log-sum-exps
    and (ACCURACY) whether its argmax is the label (a label in range that no entry beats). Shared
    with topk_kernels.py."""
    if Z_LOSS:
        loss += z_loss * lse_z * lse_z
    tl.store(loss_ptr + row, loss)
    tl.store(ce_ptr + row, ce)
    tl.store(kd_ptr + row, kd)
    tl.store(lse_ptr + row * 3 + 0, lse_a)
    tl.store(lse_ptr + row * 3 + 1, lse_b)
    tl.store(lse_ptr + row * 3 + 2, lse_c)
    if ACCURACY:
        tl.store(accuracy_ptr + row, tl.where(in_range & (miss == 0), 1.0, 0.0))


@triton.jit
def grad_coefficients(scale, kd_weight, tau, V, smoothing, c_zloss, SMOOTHING: tl.constexpr, Z_LOSS: tl.constexpr):
    """The gradient's per-row factors (c_z on softmax(z), c_y on the label's one-hot, c_unif on
    every entry, c_kd on the KD term), with the row's gradient scale folded in; c_zloss =
    scale * 2 * z_loss * lse_z. Shared with topk_kernels.py."""
    c_label = scale * (1.0 - kd_weight)
    c_z = c_label
    if Z_LOSS:
        c_z = c_z + c_zloss
    c_y = c_label
    c_unif = 0.0
    if SMOOTHING:
        c_y = c_label * (1.0 - smoothing)
        c_unif = c_label * smoothing / V
    return c_z, c_y, c_unif, scale * kd_weight * tau


@triton.jit
def store_ignored_row(row, loss_ptr, ce_ptr, kd_ptr, lse_ptr, accuracy_ptr, ACCURACY: tl.constexpr):
    """Zeros for every output of an ignored row. Shared with topk_kernels.py."""
    tl.store(loss_ptr + row, 0.0)
    tl.store(ce_ptr + row, 0.0)
    tl.store(kd_ptr + row, 0.0)
    tl.store(lse_ptr + row * 3 + 0, 0.0)
    tl.store(lse_ptr + row * 3 + 1, 0.0)
    tl.store(lse_ptr + row * 3 + 2, 0.0)
    if ACCURACY:
        tl.store(accuracy_ptr + row, 0.0)


@triton.jit
def _grad_slice(z_row, u_row, g_row, start, end, edge_lo, edge_hi, y, V, m_z, s_z, m_t, s_zt, m_u, s_u,
                scale, kd_weight, tau, inv_tau, c_zloss, kd_shift, cap, inv_cap, tcap, inv_tcap, beta, smoothing,
                BLOCK_V: tl.constexpr, HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr,
                SOFTCAP: tl.constexpr, TEACHER_SOFTCAP: tl.constexpr, KD_VOCAB: tl.constexpr,
                DIVERGENCE: tl.constexpr, SMOOTHING: tl.constexpr, Z_LOSS: tl.constexpr,
                EDGE: tl.constexpr):
    """g = scale * ((1 - w) * (softmax(z) - onehot(y)) + w * tau * (softmax(z/tau) - softmax(u/tau)))
    over z[start:end] (and [edge_lo, edge_hi) with EDGE, as in _slice_stats), each probability
    taken as exp2((x - m) * c - log2 s): the large shift m is removed exactly first, so the
    exponent rounds on its own size only. Options (module docstring): z_loss adds
    c_zloss * softmax(z) (c_zloss = scale * 2 * z_loss * lse_z), label smoothing scales the
    one-hot by 1 - eps and subtracts eps / V everywhere, the KD term follows DIVERGENCE
    (kd_shift: E_q[z - u] for the reverse KL, log2(e) * KL(q || m) for JSD), and a soft cap
    multiplies the whole gradient by 1 - (z / cap)^2 at the capped z.
    The exponents are FMA-folded: exp2(x * c - k) with k = m * c + log2 s once per row, one
    FFMA per entry instead of x - m, * c and - log2 s (k rounds once, to its own size).
    y is the label as a 32-bit column (-1 when outside [0, V)): one 32-bit compare per entry.
    The loads keep no `other`: a padding lane's value is never stored."""
    C_Z: tl.constexpr = 1.4426950408889634
    c_t = inv_tau * 1.4426950408889634
    c_z, c_y, c_unif, c_kd = grad_coefficients(scale, kd_weight, tau, V, smoothing, c_zloss, SMOOTHING, Z_LOSS)
    l_z = tl.log2(s_z)
    l_zt = tl.log2(s_zt)
    if TAU_MODE >= 2:
        # softmax(z) = softmax(z/tau)^tau * s_zt^tau / s_z, since both are relative to m_z
        # (with KD_VOCAB s_zt is relative to m_t: one more factor exp(m_t - m_z)).
        if KD_VOCAB:
            c_z = c_z * (_tau_pow(s_zt, TAU_MODE) * tl.exp2((m_t - m_z) * C_Z) / s_z)
        else:
            c_z = c_z * (_tau_pow(s_zt, TAU_MODE) / s_z)
    if TAU_MODE == 1:
        if HAS_TEACHER:
            if DIVERGENCE == 0:
                if not KD_VOCAB:
                    c_z = c_z + c_kd  # softmax(z / tau) is softmax(z)
    l_u = 0.0
    if HAS_TEACHER:
        l_u = tl.log2(s_u)
    # The folded offsets: an all -inf row has m = -inf and log2 s = -inf, so k = -inf and every
    # entry gets -inf + inf = NaN, as (z - m) did.
    k_z = tl.fma(m_z, C_Z, l_z)
    if KD_VOCAB:
        k_t = tl.fma(m_t, c_t, l_zt)
    elif TAU_MODE == 1:
        k_t = k_z
    else:
        k_t = tl.fma(m_z, c_t, l_zt)
    k_u = tl.fma(m_u, c_t, l_u)
    for piece in tl.static_range(1 + EDGE):
        lo, hi = _piece(piece, start, end, edge_lo, edge_hi)
        for off in range(lo, hi, BLOCK_V):
            cols = off + tl.arange(0, BLOCK_V)
            mask = cols < hi
            # Last use of these entries: let them leave L2 first.
            z = tl.load(z_row + cols, mask=mask, eviction_policy="evict_first").to(tl.float32)
            if HAS_TEACHER:
                u = tl.load(u_row + cols, mask=mask, eviction_policy="evict_first").to(tl.float32)
            if SOFTCAP:
                z = _softcap(z, cap, inv_cap)
            # q = softmax(z / tau) over the KD entries, a = log2 q.
            if TAU_MODE == 0:
                g = c_z * tl.exp2(tl.fma(z, C_Z, -k_z))
                if HAS_TEACHER:
                    a = tl.fma(z, c_t, -k_t)
                    q = tl.exp2(a)
                    if DIVERGENCE == 0:
                        g += c_kd * q
            elif TAU_MODE == 1:
                sm = tl.exp2(tl.fma(z, C_Z, -k_z))
                g = c_z * sm
                if HAS_TEACHER:
                    if KD_VOCAB:
                        a = tl.fma(z, C_Z, -k_t)
                        q = tl.exp2(a)
                        if DIVERGENCE == 0:
                            g += c_kd * q
                    else:
                        a = tl.fma(z, C_Z, -k_z)
                        q = sm  # forward KL: already in c_z
            else:
                a = tl.fma(z, c_t, -k_t)
                q = tl.exp2(a)
                if HAS_TEACHER and DIVERGENCE == 0:
                    # c_z q^tau + c_kd q as q (c_z q^(tau - 1) + c_kd): one multiply fewer.
                    g = q * tl.fma(c_z, _tau_pow_m1(q, TAU_MODE), c_kd)
                else:
                    g = c_z * _tau_pow(q, TAU_MODE)
            if HAS_TEACHER:
                if TEACHER_SOFTCAP:
                    u = _softcap(u, tcap, inv_tcap)
                if DIVERGENCE == 0:
                    g -= c_kd * tl.exp2(tl.fma(u, c_t, -k_u))
                elif DIVERGENCE == 1:
                    # tau * q_j * (log q_j - log p_j - D) = q_j * (z_j - u_j - E_q[z - u]), q_j == 0 adds 0
                    g += (c_kd * inv_tau) * tl.where(q == 0.0, 0.0, q * (z - u - kd_shift))
                else:
                    # tau * (1 - beta) * q_j * (log(q_j / m_j) - KL(q || m)), the logs in base 2
                    b = tl.fma(u, c_t, -k_u)
                    lm = tl.log2(beta * tl.exp2(b) + (1.0 - beta) * q)
                    c_js = c_kd * (1.0 - beta) * 0.6931471805599453
                    g += c_js * tl.where(q == 0.0, 0.0, q * (a - lm - kd_shift))
            g = tl.where(tl.arange(0, BLOCK_V) == y - off, g - c_y, g)
            if SMOOTHING:
                g -= c_unif
            if SOFTCAP:
                zc = z * inv_cap
                g = g * (1.0 - zc * zc)  # d(cap * tanh(x / cap)) / dx at the capped value
            tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=mask)


@triton.jit
def _zero_slice(g_row, start, end, BLOCK_V: tl.constexpr):
    for off in range(start, end, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        tl.store(g_row + cols, tl.zeros([BLOCK_V], dtype=g_row.dtype.element_ty), mask=cols < end)


@triton.jit
def _wait_row(cnt_ptr, row, target):
    """Adds this program to its row's counter, then spins until `target` programs have. The
    barrier before orders this program's workspace stores before the release; after the acquire
    loop and a second barrier every thread reads the other slices' partials (volatile: from L2,
    never a stale L1 line)."""
    tl.debug_barrier()
    seen = tl.atomic_add(cnt_ptr + 1 + row, 1) + 1
    while seen < target:
        seen = tl.atomic_add(cnt_ptr + 1 + row, 0)
    tl.debug_barrier()


@triton.jit
def salt_rows_options_kernel(
    z_ptr, z_stride, u_ptr, u_stride, y_ptr, y_stride,
    loss_ptr, ce_ptr, kd_ptr, lse_ptr, accuracy_ptr,
    g_ptr, g_stride, scale_ptr, scale_stride,
    ws_ptr, cnt_ptr,
    V, SLICE_V, kd_weight, tau, inv_tau, ignore_index,
    softcap, teacher_softcap, kd_vocab, beta, smoothing, z_loss,
    MODE: tl.constexpr, SPLIT: tl.constexpr, SPLIT_POW2: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_TEACHER: tl.constexpr, TAU_MODE: tl.constexpr, HAS_GRAD: tl.constexpr,
    SOFTCAP: tl.constexpr, TEACHER_SOFTCAP: tl.constexpr, KD_VOCAB: tl.constexpr,
    DIVERGENCE: tl.constexpr, SMOOTHING: tl.constexpr, Z_LOSS: tl.constexpr,
    ACCURACY: tl.constexpr, FIELDS: tl.constexpr = 16,
):
    """The loss with the distillation options (docs/design.md, "Distillation options"), each
    one a constexpr flag with its value beside it (a value whose flag is off is not read):
    softcap / teacher_softcap (SOFTCAP / TEACHER_SOFTCAP), kd_vocab (KD_VOCAB, when it is less
    than V), DIVERGENCE (DIV_*) with beta, smoothing (SMOOTHING), z_loss (Z_LOSS), and the per-row
    accuracy into accuracy_ptr (ACCURACY). FIELDS floats of workspace per (row, slice):
    WS_FIELDS_OPTIONS here, WS_FIELDS when salt_rows_kernel runs it with every option off."""
    # MODE: 0 fused, 1 partials, 2 merge + gradient, 3 all in one launch, 4 JSD partials
    # (module docstring). The workspace holds FIELDS floats per (row, slice).
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
    ws_row = ws_ptr + row * (SPLIT * FIELDS)
    inv_cap = 1.0 / softcap
    inv_tcap = 1.0 / teacher_softcap
    y = tl.load(y_ptr + row * y_stride).to(tl.int64)
    used = y != ignore_index
    if used:
        if MODE == 2 or MODE == 4:
            m_z, s_z, s_zt, m_t, m_u, s_u, acc, sum_z, miss = _merge_partials(
                ws_row, inv_tau, SPLIT, SPLIT_POW2, HAS_TEACHER, TAU_MODE, False, FIELDS,
                KD_VOCAB, DIVERGENCE, SMOOTHING, ACCURACY)
        else:
            # Keep the entries in L2 when this program reads them again (gradient, JSD pass).
            if (HAS_GRAD or DIVERGENCE == 2) and MODE != 1:
                EVICT: tl.constexpr = "evict_last"
            else:
                EVICT: tl.constexpr = "evict_first"
            zy = 0.0
            if ACCURACY:
                # The label's (capped) logit, which no entry may beat for a hit.
                zy = tl.load(z_row + tl.where((y >= 0) & (y < V), y, 0)).to(tl.float32)
                if SOFTCAP:
                    zy = _softcap(zy, softcap, inv_cap)
            # The label is compared with 32-bit column indices (one outside [0, V) scores 0 anyway).
            m_z, s_z, s_zt, m_t, m_u, s_u, acc, sum_z, miss = _row_stats(
                z_row, u_row, start, end, kd_vocab, y.to(tl.int32), zy, inv_tau, softcap, inv_cap, teacher_softcap,
                inv_tcap, BLOCK_V, HAS_TEACHER, TAU_MODE, EVICT, SOFTCAP, TEACHER_SOFTCAP, KD_VOCAB, DIVERGENCE,
                SMOOTHING, ACCURACY)
            if MODE != 0:
                _store_partials(ws_row + part * FIELDS, m_z, s_z, s_zt, m_t, m_u, s_u, acc, sum_z, miss,
                                KD_VOCAB, SMOOTHING, ACCURACY)
            if MODE == 3:
                _wait_row(cnt_ptr, row, SPLIT)
                m_z, s_z, s_zt, m_t, m_u, s_u, acc, sum_z, miss = _merge_partials(
                    ws_row, inv_tau, SPLIT, SPLIT_POW2, HAS_TEACHER, TAU_MODE, True, FIELDS,
                    KD_VOCAB, DIVERGENCE, SMOOTHING, ACCURACY)
        kl_pm = 0.0
        kl_qm = 0.0
        if HAS_TEACHER:
            if DIVERGENCE == 2:
                # JSD: a pass over this program's KD entries, now that the normalizers are known.
                if MODE != 2:
                    if HAS_GRAD and MODE != 4:
                        JSD_EVICT: tl.constexpr = "evict_last"
                    else:
                        JSD_EVICT: tl.constexpr = "evict_first"
                    if KD_VOCAB:
                        a1, e_lo1, e_hi1, _e_lo2, _e_hi2, _a2 = _kd_bounds(start, end, kd_vocab, BLOCK_V)
                        kl_pm, kl_qm = _jsd_sums(z_row, u_row, start, a1, e_lo1, e_hi1, m_t, s_zt, m_u, s_u,
                                                 inv_tau, beta, softcap, inv_cap, teacher_softcap, inv_tcap,
                                                 BLOCK_V, SOFTCAP, TEACHER_SOFTCAP, JSD_EVICT, True)
                    else:
                        kl_pm, kl_qm = _jsd_sums(z_row, u_row, start, end, start, start, m_t, s_zt, m_u, s_u,
                                                 inv_tau, beta, softcap, inv_cap, teacher_softcap, inv_tcap,
                                                 BLOCK_V, SOFTCAP, TEACHER_SOFTCAP, JSD_EVICT, False)
                    if MODE != 0:
                        tl.store(ws_row + part * FIELDS + _F_KL_PM, kl_pm)
                        tl.store(ws_row + part * FIELDS + _F_KL_QM, kl_qm)
                    if MODE == 3:
                        _wait_row(cnt_ptr, row, 2 * SPLIT)
                        kl_pm, kl_qm = _merge_jsd(ws_row, SPLIT, SPLIT_POW2, True, FIELDS)
                else:
                    kl_pm, kl_qm = _merge_jsd(ws_row, SPLIT, SPLIT_POW2, False, FIELDS)
        if MODE != 1 and MODE != 4:
            if part == 0:
                _finish_row(z_row, y, V, row, m_z, s_z, s_zt, m_t, m_u, s_u, acc, sum_z, miss, kl_pm, kl_qm,
                            loss_ptr, ce_ptr, kd_ptr, lse_ptr, accuracy_ptr, kd_weight, tau, inv_tau,
                            softcap, inv_cap, beta, smoothing, z_loss,
                            HAS_TEACHER, TAU_MODE, SOFTCAP, KD_VOCAB, DIVERGENCE, SMOOTHING, Z_LOSS, ACCURACY)
            if HAS_GRAD:
                scale = tl.load(scale_ptr + row * scale_stride)
                c_zloss = 0.0
                if Z_LOSS:
                    c_zloss = scale * 2.0 * z_loss * (m_z + tl.log(s_z))
                kd_shift = 0.0
                if HAS_TEACHER:
                    if DIVERGENCE == 1:
                        kd_shift = acc / s_zt
                    elif DIVERGENCE == 2:
                        kd_shift = kl_qm * 1.4426950408889634
                # The label as a 32-bit column: one outside [0, V) matches none.
                y32 = tl.where((y >= 0) & (y < V), y, -1).to(tl.int32)
                if KD_VOCAB:
                    a1, e_lo1, e_hi1, e_lo2, e_hi2, a2 = _kd_bounds(start, end, kd_vocab, BLOCK_V)
                    _grad_slice(z_row, u_row, g_row, start, a1, e_lo1, e_hi1, y32, V, m_z, s_z, m_t, s_zt, m_u,
                                s_u, scale, kd_weight, tau, inv_tau, c_zloss, kd_shift, softcap, inv_cap,
                                teacher_softcap, inv_tcap, beta, smoothing, BLOCK_V, HAS_TEACHER, TAU_MODE,
                                SOFTCAP, TEACHER_SOFTCAP, KD_VOCAB, DIVERGENCE, SMOOTHING, Z_LOSS, True)
                    # The entries from k on: cross-entropy side only.
                    _grad_slice(z_row, u_row, g_row, a2, end, e_lo2, e_hi2, y32, V, m_z, s_z, m_t, s_zt, m_u,
                                s_u, scale, kd_weight, tau, inv_tau, c_zloss, kd_shift, softcap, inv_cap,
                                teacher_softcap, inv_tcap, beta, smoothing, BLOCK_V, False, 1, SOFTCAP, False,
                                False, 0, SMOOTHING, Z_LOSS, True)
                else:
                    _grad_slice(z_row, u_row, g_row, start, end, start, start, y32, V, m_z, s_z, m_t, s_zt, m_u,
                                s_u, scale, kd_weight, tau, inv_tau, c_zloss, kd_shift, softcap, inv_cap,
                                teacher_softcap, inv_tcap, beta, smoothing, BLOCK_V, HAS_TEACHER, TAU_MODE,
                                SOFTCAP, TEACHER_SOFTCAP, KD_VOCAB, DIVERGENCE, SMOOTHING, Z_LOSS, False)
    else:
        if MODE != 1 and MODE != 4:
            if part == 0:
                store_ignored_row(row, loss_ptr, ce_ptr, kd_ptr, lse_ptr, accuracy_ptr, ACCURACY)
            if HAS_GRAD:
                _zero_slice(g_row, start, end, BLOCK_V)


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
    """The plain SALT loss (docs/design.md, "The loss"): every option off, WS_FIELDS floats of
    workspace per (row, slice)."""
    salt_rows_options_kernel(z_ptr, z_stride, u_ptr, u_stride, y_ptr, y_stride,
                             loss_ptr, ce_ptr, kd_ptr, lse_ptr, loss_ptr,
                             g_ptr, g_stride, scale_ptr, scale_stride,
                             ws_ptr, cnt_ptr,
                             V, SLICE_V, kd_weight, tau, inv_tau, ignore_index,
                             1.0, 1.0, V, 0.5, 0.0, 0.0,
                             MODE, SPLIT, SPLIT_POW2, BLOCK_V, HAS_TEACHER, TAU_MODE, HAS_GRAD,
                             False, False, False, 0, False, False, False, 8)
