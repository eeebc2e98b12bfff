// CUDA row kernel of the SALT loss (docs/design.md, "One-pass algorithm"): forward statistics
// and the scaled gradient in one kernel, one row per block (or per cluster of blocks, or per
// warp for small vocabularies). Included by the per-dtype translation units
// salt_cuda_{f32,bf16,f16}.cu, so the instantiations compile in parallel; salt_cuda.cu holds the
// host-side dispatcher.
//
// Work split of one row (V logits, vocabulary contiguous, any row stride):
//   * `h` head elements until the student row pointer is 16-byte aligned, then G full groups of
//     VEC = 16 / sizeof(student element) elements, then the tail. The host picks one of two
//     instances per call (pick_rows_kernel): ALIGNED, when every row's teacher and gradient are
//     aligned at the same element as the student's groups (rows_vector_aligned), loads groups
//     with 16-byte vector loads (the teacher with 8-, 16- or 32-byte ones, by its dtype) and
//     stores them with 16-byte stores; otherwise h = 0 and every element is loaded and stored by
//     itself (coalesced through L1), with the same arithmetic. Head and tail elements (fewer than
//     2 * VEC) are handled one by one.
//   * Group g goes to thread g mod S of the row's S threads (S = 32, BLOCK, or BLOCK * cluster).
//   * Pass 1: per-thread online state (running max and sums, fp32), then warp-shuffle and shared
//     memory (and, for a cluster, distributed shared memory) combines with salt_math.h's
//     lse_combine / kd_combine. Every thread ends with the identical row statistics.
//   * Pass 2 (when a gradient is requested): each thread walks its groups in reverse, so the
//     logits it read last (most likely still in L2) are read again first, and writes
//     grad_value(...) of salt_math.h with streaming stores.
//
// Exps are ex2.approx on FMA-folded arguments x * log2(e) / tau - k (relative error ~2^-22); for
// an integer tau (the TAU template parameter, picked on the host) exp(z - m) comes from
// exp((z - m) / tau)^tau by multiplies, not a second exp. Everything else follows salt_math.h:
// -inf teacher entries contribute 0 (kd_term), a student -inf where the teacher has mass gives
// +inf, NaN anywhere in the row makes the row's statistics NaN (selects and flags, no branch per
// element: see "online state"), and with
// kd_weight == 0 the teacher pointer is never touched (TEACHER == false).
//
// SALT_CUDA_EMULATION (tests only, see tests/cuda_emulator/emulation.h): the same source compiled by a host compiler,
// each CUDA thread a host thread, so that indexing, barriers, shuffles, the cluster exchange and
// every global access (bounds and alignment) are checked on machines without a GPU.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(SALT_CUDA_EMULATION)
#include "emulation.h"
#define SALT_SHARED(type, name, count) type* name = salt_emu::shared_array<type>(count)
#else
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define SALT_SHARED(type, name, count) __shared__ type name[count]
#endif

#include "../salt_math.h"
#include "salt_cuda.h"

namespace salt {
namespace cuda {

namespace cg = cooperative_groups;

constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFull = 0xffffffffu;

template <int DT>
struct Elem {
  using T = uint16_t;
};
template <>
struct Elem<kFloat32> {
  using T = float;
};

__device__ __forceinline__ float fast_exp2(float x) {
  // 2^x; -inf -> +0, NaN -> NaN, results below 2^-126 flush to 0 (irrelevant next to the row max).
#if defined(SALT_CUDA_EMULATION)
  return salt_emu::approx_exp2(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// ---- conversions --------------------------------------------------------------------------------

template <int DT>
__device__ __forceinline__ float half_bits_to_float(uint32_t h) {
  if constexpr (DT == kBFloat16) {
    return __uint_as_float(h << 16);
  } else {
#if defined(SALT_CUDA_EMULATION)
    return half_to_float(static_cast<uint16_t>(h));
#else
    return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
#endif
  }
}

template <int DT>
__device__ __forceinline__ float load_scalar(const typename Elem<DT>::T* p, bool last_use) {
  if constexpr (DT == kFloat32) {
    return last_use ? __ldcs(p) : __ldg(p);
  } else {
    const unsigned short* q = reinterpret_cast<const unsigned short*>(p);
    return half_bits_to_float<DT>(last_use ? __ldcs(q) : __ldg(q));
  }
}

template <int DT>
__device__ __forceinline__ void store_scalar(typename Elem<DT>::T* p, float x) {
  if constexpr (DT == kFloat32) {
    __stcs(p, x);
  } else {
#if defined(SALT_CUDA_EMULATION)
    const uint16_t b = DT == kBFloat16 ? float_to_bf16(x) : float_to_half(x);
    __stcs(reinterpret_cast<unsigned short*>(p), static_cast<unsigned short>(b));
#else
    if constexpr (DT == kBFloat16)
      __stcs(reinterpret_cast<unsigned short*>(p), __bfloat16_as_ushort(__float2bfloat16_rn(x)));
    else
      __stcs(reinterpret_cast<unsigned short*>(p), __half_as_ushort(__float2half_rn(x)));
#endif
  }
}

// Two floats -> one 32-bit word of two 16-bit values (low half first), rounding to nearest even.
template <int DT>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t w;
#if defined(SALT_CUDA_EMULATION)
  if constexpr (DT == kBFloat16)
    w = uint32_t(float_to_bf16(lo)) | (uint32_t(float_to_bf16(hi)) << 16);
  else
    w = uint32_t(float_to_half(lo)) | (uint32_t(float_to_half(hi)) << 16);
#else
  if constexpr (DT == kBFloat16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&w, &v, 4);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&w, &v, 4);
  }
#endif
  return w;
}

// ---- a group of VEC consecutive elements, kept as raw 32-bit words until used ---------------------

template <int DT, int VEC>
struct Group {
  using T = typename Elem<DT>::T;
  static constexpr int kBytes = VEC * int(sizeof(T));
  static constexpr int kWords = kBytes / 4;
  // Alignment a row pointer needs for the vector path: 16 bytes, or 8 for an 8-byte group.
  static constexpr int kAlign = kBytes >= 16 ? 16 : kBytes;
  static_assert(kBytes == 8 || kBytes % 16 == 0, "group is 8 bytes or a multiple of 16");
  uint32_t w[kWords];

  // VECTOR: 16-byte (8-byte for an 8-byte group) loads, the row aligned at this group;
  // otherwise element by element (coalesced through L1), the same words either way.
  template <bool VECTOR>
  __device__ __forceinline__ void load(const T* p, bool last_use) {
    if constexpr (VECTOR) {
      if constexpr (kBytes >= 16) {
        const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
        for (int i = 0; i < kBytes / 16; ++i) {
          const uint4 v = last_use ? __ldcs(q + i) : __ldg(q + i);
          w[4 * i] = v.x;
          w[4 * i + 1] = v.y;
          w[4 * i + 2] = v.z;
          w[4 * i + 3] = v.w;
        }
      } else {
        const uint2* q = reinterpret_cast<const uint2*>(p);
        const uint2 v = last_use ? __ldcs(q) : __ldg(q);
        w[0] = v.x;
        w[1] = v.y;
      }
    } else {
      if constexpr (DT == kFloat32) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) w[k] = __float_as_uint(load_scalar<DT>(p + k, last_use));
      } else {
        const unsigned short* q = reinterpret_cast<const unsigned short*>(p);
#pragma unroll
        for (int i = 0; i < kWords; ++i) {
          const uint32_t lo = last_use ? __ldcs(q + 2 * i) : __ldg(q + 2 * i);
          const uint32_t hi = last_use ? __ldcs(q + 2 * i + 1) : __ldg(q + 2 * i + 1);
          w[i] = lo | (hi << 16);
        }
      }
    }
  }

  // Run-time choice of the path (rows_kernel_options).
  __device__ __forceinline__ void load(const T* p, bool vec, bool last_use) {
    if (vec)
      load<true>(p, last_use);
    else
      load<false>(p, last_use);
  }

  __device__ __forceinline__ float get(int k) const {
    if constexpr (DT == kFloat32) {
      return __uint_as_float(w[k]);
    } else {
      return half_bits_to_float<DT>((k & 1) ? (w[k >> 1] >> 16) : (w[k >> 1] & 0xffffu));
    }
  }
};

// Stores VEC floats as the student dtype: one 16-byte streaming store (VECTOR) or VEC scalar ones.
template <int DT, int VEC, bool VECTOR>
__device__ __forceinline__ void store_group(typename Elem<DT>::T* p, const float (&g)[VEC]) {
  static_assert(VEC * sizeof(typename Elem<DT>::T) == 16, "a student group is 16 bytes");
  if constexpr (VECTOR) {
    uint4 v;
    if constexpr (DT == kFloat32) {
      v = make_uint4(__float_as_uint(g[0]), __float_as_uint(g[1]), __float_as_uint(g[2]),
                     __float_as_uint(g[3]));
    } else {
      v = make_uint4(pack2<DT>(g[0], g[1]), pack2<DT>(g[2], g[3]), pack2<DT>(g[4], g[5]),
                     pack2<DT>(g[6], g[7]));
    }
    __stcs(reinterpret_cast<uint4*>(p), v);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) store_scalar<DT>(p + k, g[k]);
  }
}

// Run-time choice of the path (rows_kernel_options).
template <int DT, int VEC>
__device__ __forceinline__ void store_group(typename Elem<DT>::T* p, bool vec, const float (&g)[VEC]) {
  if (vec)
    store_group<DT, VEC, true>(p, g);
  else
    store_group<DT, VEC, false>(p, g);
}

// ---- online state --------------------------------------------------------------------------------
//
// The statistics loop works in log2 units with FMA-folded exponents: an entry x adds
// exp2(x * c - k), c = log2(e) (or log2(e) / tau), k a per-thread offset that only grows: the
// running maximum times c, rounded once. Each sum stays relative to its own offset exactly (a
// rescale multiplies by exp2(k_old - k_new), built from the same rounded values), and to_stats
// turns the offsets back into natural-log maxima for salt_math.h's combines.
//
// MODE (the template parameter TAU, or 1 without a teacher) picks how z's two sums are formed:
//   0       any tau: exp2(z c - kz) and exp2(z c / tau - kt), two exps per entry;
//   1       tau == 1, or no teacher: one sum, s_zt is s_z;
//   2, 3, 4 integer tau n: e = exp2(z c / tau - kt) and exp(z - m) = e^n by multiplies, so s_z is
//           relative to n * kt; one exp per entry for z.
//
// Special values without branches per entry:
//   * NaN: the group maxima propagate NaN (max.NaN), one test per group sets the `nan` flag, which
//     makes the row's statistics NaN after the combines (a NaN never has to survive a sum).
//   * An empty prefix (every z or u so far -inf) has offset -inf; the entries are then taken
//     relative to 0 instead (each adds exp2(-inf) = 0) and the first finite maximum rescales the
//     zero sums by exp2(-inf) = 0.
//   * KD term a += e_u * (u - z) (salt_math.h's kd_term): a teacher -inf has e_u == 0, and
//     u - z clamped to >= -FLT_MAX makes the product 0 (not 0 * -inf or 0 * NaN); a student -inf
//     where the teacher is not -inf is u - z == +inf, caught by the running maximum `dmax` of
//     u - z (NaN dropped): dmax == +inf makes a = +inf at the end of the row (kd_term's +inf),
//     whatever the polluted accumulator holds.

constexpr float kLn2 = 0.6931471805599453f;

struct Scan {
  float kz;  // MODE 0: offset of sz, in log2 units (max z * log2(e))
  float kt;  // offset of szt (max z * log2(e) / tau); of sz too in MODES 1..4 (sz relative to MODE * kt)
  float ku;  // offset of su and a (max u * log2(e) / tau)
  float sz, szt, su, a;
  float dmax;  // running max of u - z: +inf iff a student -inf meets a teacher entry that is not -inf
  bool nan;
};

// Combinable statistics in salt_math.h's form: each pair (m, s) stands for m + log(s), with
// m in the domain of the quantity (z, z / tau, u / tau). nan: bit 0 a NaN in the row, bit 1 the
// KD term is +inf (see Scan::dmax).
struct Stats {
  float mz, sz, mzt, szt, mu, su, a;
  int nan;
};

__device__ __forceinline__ Scan scan_init() {
  return Scan{-INFINITY, -INFINITY, -INFINITY, 0.f, 0.f, 0.f, 0.f, -INFINITY, false};
}
__device__ __forceinline__ Stats stats_empty() {
  return Stats{-INFINITY, 0.f, -INFINITY, 0.f, -INFINITY, 0.f, 0.f, 0};
}

// max(a, b), NaN if either is NaN (fmaxf drops NaN).
__device__ __forceinline__ float fmax_nan(float a, float b) {
#if defined(SALT_CUDA_EMULATION)
  return (a != a || b != b) ? NAN : fmaxf(a, b);
#else
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#endif
}

// x^N by multiplies, N in 0..4.
template <int N>
__device__ __forceinline__ float ipow(float x) {
  static_assert(N >= 0 && N <= 4, "integer tau 1..4");
  if constexpr (N == 0) {
    return 1.f;
  } else if constexpr (N == 1) {
    return x;
  } else if constexpr (N == 2) {
    return x * x;
  } else if constexpr (N == 3) {
    return x * x * x;
  } else {
    const float x2 = x * x;
    return x2 * x2;
  }
}

// Folds N entries (zf(k), uf(k)) into the state: one maximum per stream, one rescale when it
// grows, then per entry the exps of the MODE and the KD term. Entries k >= NLIVE count only when
// `live1` (otherwise their offset is +inf, so each adds exp2(-inf) = 0: a pair of groups whose
// second is missing passes the first twice instead of branching).
template <int MODE, bool TEACHER, int N, int NLIVE, class ZF, class UF>
__device__ __forceinline__ void accumulate(Scan& s, const ZF& zf, const UF& uf, bool live1, float L,
                                           float Lt) {
  float gz = -INFINITY;
#pragma unroll
  for (int k = 0; k < N; ++k) gz = fmax_nan(gz, zf(k));
  const float nkt = gz * Lt;
  if (nkt > s.kt) {  // false for NaN
    const float f = fast_exp2(s.kt - nkt);  // 0 for an empty state
    if constexpr (MODE == 0) {
      const float nkz = gz * L;
      s.sz *= fast_exp2(s.kz - nkz);
      s.kz = nkz;
    } else {
      s.sz *= ipow<MODE>(f);
    }
    if constexpr (TEACHER && MODE != 1) s.szt *= f;
    s.kt = nkt;
  }
  const float ot0 = s.kt == -INFINITY ? 0.f : s.kt;
  const float ot1 = live1 ? ot0 : INFINITY;
  float oz0 = 0.f, oz1 = 0.f;
  if constexpr (MODE == 0) {
    oz0 = s.kz == -INFINITY ? 0.f : s.kz;
    oz1 = live1 ? oz0 : INFINITY;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const float z = zf(k);
    const float et = fast_exp2(fmaf(z, Lt, -(k < NLIVE ? ot0 : ot1)));
    if constexpr (MODE == 0) {
      s.sz += fast_exp2(fmaf(z, L, -(k < NLIVE ? oz0 : oz1)));
      s.szt += et;
    } else {
      s.sz += ipow<MODE>(et);
      if constexpr (TEACHER && MODE != 1) s.szt += et;
    }
  }
  bool bad = gz != gz;
  if constexpr (TEACHER) {
    float gu = -INFINITY;
#pragma unroll
    for (int k = 0; k < N; ++k) gu = fmax_nan(gu, uf(k));
    bad |= gu != gu;
    const float nku = gu * Lt;
    if (nku > s.ku) {
      const float f = fast_exp2(s.ku - nku);
      s.su *= f;
      s.a *= f;
      s.ku = nku;
    }
    const float ou0 = s.ku == -INFINITY ? 0.f : s.ku;
    const float ou1 = live1 ? ou0 : INFINITY;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float u = uf(k);
      const float eu = fast_exp2(fmaf(u, Lt, -(k < NLIVE ? ou0 : ou1)));
      s.su += eu;
      const float d = u - zf(k);
      s.dmax = fmaxf(s.dmax, d);
      s.a = fmaf(eu, fmaxf(d, -3.40282347e38f), s.a);
    }
  }
  s.nan |= bad;
}

template <int MODE, bool TEACHER>
__device__ __forceinline__ Stats to_stats(const Scan& s) {
  Stats t;
  t.mz = (MODE == 0 ? s.kz : float(MODE) * s.kt) * kLn2;
  t.sz = s.sz;
  if constexpr (TEACHER) {
    t.mzt = s.kt * kLn2;
    t.szt = MODE == 1 ? s.sz : s.szt;
    t.mu = s.ku * kLn2;
    t.su = s.su;
    t.a = s.a;
  } else {
    t.mzt = t.mz;
    t.szt = t.sz;
    t.mu = -INFINITY;
    t.su = 0.f;
    t.a = 0.f;
  }
  t.nan = (s.nan ? 1 : 0) | (TEACHER && s.dmax == INFINITY ? 2 : 0);
  return t;
}

template <bool TEACHER>
__device__ __forceinline__ void combine(Stats& x, const Stats& y) {
  lse_combine(x.mz, x.sz, y.mz, y.sz);
  if constexpr (TEACHER) {
    lse_combine(x.mzt, x.szt, y.mzt, y.szt);
    kd_combine(x.mu, x.su, x.a, y.mu, y.su, y.a);
  }
  x.nan |= y.nan;
}

// Butterfly all-reduce over the 32 lanes. The combines are commutative bit for bit (each pair of
// partners computes the same sums in the same order), so every lane ends with the same Stats.
template <bool TEACHER>
__device__ __forceinline__ void warp_allreduce(Stats& s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Stats o;
    o.mz = __shfl_xor_sync(kFull, s.mz, off);
    o.sz = __shfl_xor_sync(kFull, s.sz, off);
    if constexpr (TEACHER) {
      o.mzt = __shfl_xor_sync(kFull, s.mzt, off);
      o.szt = __shfl_xor_sync(kFull, s.szt, off);
      o.mu = __shfl_xor_sync(kFull, s.mu, off);
      o.su = __shfl_xor_sync(kFull, s.su, off);
      o.a = __shfl_xor_sync(kFull, s.a, off);
    }
    o.nan = __shfl_xor_sync(kFull, s.nan, off);
    combine<TEACHER>(s, o);
  }
  if constexpr (!TEACHER) {
    s.mzt = s.mz;
    s.szt = s.sz;
  }
}

// ---- the kernel -----------------------------------------------------------------------------------

// BLOCK threads per block. WARP_ROWS: each warp owns one row (BLOCK / 32 rows per block, no block
// synchronization); otherwise the block, or the `cluster` blocks of a thread-block cluster
// (cluster > 1 only when launched with that cluster dimension), own one row.
// ALIGNED: every row's groups are loaded and stored with vector accesses (the host checked, with
// rows_vector_aligned, that student, teacher and gradient rows are aligned at the group starts);
// otherwise every element is loaded and stored by itself. TAU: 1..4 an integer temperature
// (the host checked it), 0 any temperature (see "online state" for what the modes compute).
// Launch bounds (BLOCK, 1024 / BLOCK): 1024 resident threads per SM, so at most 64 registers per
// thread; the kernel fits them without spills, and 32 warps per SM keep more loads in flight
// than a 128-register, 16-warp bound would. A warp per row (small vocabularies) keeps more
// state per thread: 768 resident threads (85 registers) there, which it fits without spills.
template <int DZ, int DU, bool TEACHER, int BLOCK, bool WARP_ROWS, bool ALIGNED, int TAU>
__global__ void __launch_bounds__(BLOCK, WARP_ROWS ? 768 / BLOCK : 1024 / BLOCK)
    rows_kernel(const RowsArgs args, const int cluster) {
  using TZ = typename Elem<DZ>::T;
  using TU = typename Elem<DU>::T;
  constexpr int VEC = 16 / int(sizeof(TZ));
  constexpr int NWARPS = BLOCK / 32;
  constexpr int MODE = TEACHER ? TAU : 1;
  static_assert(NWARPS <= 32, "one warp combines the per-warp partial states");
  static_assert(TAU >= 0 && TAU <= 4, "TAU: 0 (any tau) or an integer tau 1..4");
  using ZGroup = Group<DZ, VEC>;
  using UGroup = Group<DU, VEC>;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int64_t row;
  int rank = 0;  // block rank inside the cluster
  int t;         // this thread's index among the row's S threads
  int S;
  if constexpr (WARP_ROWS) {
    row = int64_t(blockIdx.x) * NWARPS + warp;
    if (row >= args.n_rows) return;  // whole warp: no block-level synchronization in this mode
    t = lane;
    S = 32;
  } else {
    row = int64_t(blockIdx.x) / cluster;
    rank = int(blockIdx.x % unsigned(cluster));
    t = rank * BLOCK + int(threadIdx.x);
    S = cluster * BLOCK;
  }
  const bool is_writer = WARP_ROWS ? lane == 0 : (rank == 0 && threadIdx.x == 0);

  const int V = int(args.vocab);  // the launcher checked vocab < 2^31
  const int64_t label = args.labels_int64
                            ? __ldg(static_cast<const long long*>(args.labels) + row * args.labels_stride)
                            : int64_t(__ldg(static_cast<const int*>(args.labels) + row * args.labels_stride));
  TZ* const grow = args.grad ? static_cast<TZ*>(args.grad) + row * args.grad_row_stride : nullptr;
  const TZ* const zrow = static_cast<const TZ*>(args.student) + row * args.student_row_stride;
  const TU* const urow =
      TEACHER ? static_cast<const TU*>(args.teacher) + row * args.teacher_row_stride : nullptr;

  // Row layout: head [0, h), groups [h, tail0), tail [tail0, V). ALIGNED: h elements until the
  // student row is 16-byte aligned (rows_vector_aligned computes the same h on the host).
  int h = 0;
  if constexpr (ALIGNED) h = int(((16 - reinterpret_cast<uintptr_t>(zrow) % 16) % 16) / sizeof(TZ));
  if (h > V) h = V;
  const int G = (V - h) / VEC;
  const int tail0 = h + G * VEC;
  const int n_scalar = h + (V - tail0);

  if (label == args.ignore_index) {
    if (is_writer) {
      args.loss[row] = args.ce[row] = args.kd[row] = 0.f;
      args.lse[3 * row] = args.lse[3 * row + 1] = args.lse[3 * row + 2] = 0.f;
    }
    if (grow) {
      float zero[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) zero[k] = 0.f;
      for (int g = t; g < G; g += S) store_group<DZ, VEC, ALIGNED>(grow + h + g * VEC, zero);
      for (int i = t; i < n_scalar; i += S) store_scalar<DZ>(grow + (i < h ? i : tail0 + (i - h)), 0.f);
    }
    return;  // uniform over the row's threads (and its whole cluster): no barrier is skipped
  }
  const bool label_ok = label >= 0 && label < V;
  const int label32 = label_ok ? int(label) : -1;  // 32-bit compares in the loops

  const float w = TEACHER ? args.kd_weight : 0.f;
  const float tau = args.temperature;
  const float L = kLog2e;
  const float Lt = MODE == 1 ? kLog2e : kLog2e / tau;

  // ---- pass 1: statistics, groups in pairs ----
  Scan sc = scan_init();
  for (int g = t; g < G; g += 2 * S) {
    const bool live1 = g + S < G;
    const int g1 = live1 ? g + S : g;  // a missing second group: the first again, not counted
    ZGroup z0, z1;
    UGroup u0, u1;
    z0.template load<ALIGNED>(zrow + h + g * VEC, false);
    z1.template load<ALIGNED>(zrow + h + g1 * VEC, false);
    if constexpr (TEACHER) {
      u0.template load<ALIGNED>(urow + h + g * VEC, false);
      u1.template load<ALIGNED>(urow + h + g1 * VEC, false);
    }
    accumulate<MODE, TEACHER, 2 * VEC, VEC>(
        sc, [&](int k) { return k < VEC ? z0.get(k) : z1.get(k - VEC); },
        [&](int k) { return k < VEC ? u0.get(k) : u1.get(k - VEC); }, live1, L, Lt);
  }
  for (int i = t; i < n_scalar; i += S) {
    const int j = i < h ? i : tail0 + (i - h);
    const float z = load_scalar<DZ>(zrow + j, false);
    const float u = TEACHER ? load_scalar<DU>(urow + j, false) : 0.f;
    accumulate<MODE, TEACHER, 1, 1>(
        sc, [&](int) { return z; }, [&](int) { return u; }, true, L, Lt);
  }

  Stats st = to_stats<MODE, TEACHER>(sc);
  warp_allreduce<TEACHER>(st);
  if constexpr (!WARP_ROWS) {
    SALT_SHARED(Stats, warp_part, NWARPS);
    if (lane == 0) warp_part[warp] = st;
    __syncthreads();
    st = lane < NWARPS ? warp_part[lane] : stats_empty();
    warp_allreduce<TEACHER>(st);  // every warp combines the same partials in the same order
  }

  // Cluster: exchange the blocks' partial states through distributed shared memory. Arrival on
  // the second cluster barrier says "done reading the others' shared memory"; the wait at the
  // end of the kernel keeps this block's shared memory alive until every block has read it.
  bool cluster_wait = false;
  if constexpr (!WARP_ROWS) {
    if (cluster > 1) {
      SALT_SHARED(Stats, block_part, 1);
      cg::cluster_group cl = cg::this_cluster();
      if (threadIdx.x == 0) block_part[0] = st;
      cl.sync();
      Stats r = stats_empty();
      if (lane < cluster) r = *cl.map_shared_rank(&block_part[0], lane);
      warp_allreduce<TEACHER>(r);
      st = r;
      cl.barrier_arrive();
      cluster_wait = true;
    }
  }

  float lse_z = lse_value(st.mz, st.sz);
  float lse_zt = TEACHER ? lse_value(st.mzt, st.szt) : lse_z;
  float lse_u = TEACHER ? lse_value(st.mu, st.su) : 0.f;
  if (st.nan & 1) lse_z = lse_zt = lse_u = NAN;

  if (is_writer) {
    const float ce = label_ok ? ce_value(lse_z, load_scalar<DZ>(zrow + label, false)) : NAN;
    const float kd = TEACHER ? kd_value((st.nan & 2) ? INFINITY : st.a, st.su, lse_u, lse_zt, tau) : 0.f;
    args.loss[row] = loss_value(ce, kd, w);
    args.ce[row] = ce;
    args.kd[row] = kd;
    args.lse[3 * row] = lse_z;
    args.lse[3 * row + 1] = lse_zt;
    args.lse[3 * row + 2] = lse_u;
  }

  // ---- pass 2: gradient, groups in reverse order ----
  // scale * ((1 - w) (p_z - [j == y]) + w tau (p_zt - p_u)) (salt_math.h's grad_value) as
  // c_z p_z + c_kd p_zt - c_kd p_u - c_z [j == y], exponents FMA-folded in log2 units. Integer
  // tau n: p_z = p_zt^n * exp(n lse_zt - lse_z), so c_z p_z + c_kd p_zt = p_zt (cK p_zt^(n-1) + c_kd).
  if (grow) {
    const float scale = __ldg(args.grad_scale + row * args.grad_scale_stride);
    // A row whose logits are all -inf has lse -inf; every element is -inf then, and using +inf as
    // the offset gives exp(-inf) = 0 instead of exp(-inf - -inf) = NaN.
    const float oz = lse_z == -INFINITY ? INFINITY : lse_z;
    const float ozt = lse_zt == -INFINITY ? INFINITY : lse_zt;
    const float ou = lse_u == -INFINITY ? INFINITY : lse_u;
    const float kz = oz * L;
    const float kt = MODE == 1 ? kz : ozt * L;
    const float ku = ou * L;
    const float c_z = scale * (1.f - w);
    const float c_kd = TEACHER ? scale * w * tau : 0.f;
    float cK = c_z;
    if constexpr (TEACHER && MODE >= 2) cK = oz == INFINITY ? c_z : c_z * fast_exp2(float(MODE) * kt - kz);
    auto grad_elem = [&](float z, float u, bool is_label) -> float {
      float g;
      if constexpr (MODE == 0) {
        g = c_z * fast_exp2(fmaf(z, L, -kz));
        g = fmaf(c_kd, fast_exp2(fmaf(z, Lt, -kt)), g);
      } else {
        const float q = fast_exp2(fmaf(z, Lt, -kt));
        g = TEACHER ? q * fmaf(cK, ipow<MODE - 1>(q), c_kd) : cK * q;
      }
      if constexpr (TEACHER) g = fmaf(-c_kd, fast_exp2(fmaf(u, Lt, -ku)), g);
      return is_label ? g - c_z : g;
    };
    const int K = t < G ? (G - 1 - t) / S + 1 : 0;  // groups this thread owns: t + k * S, k < K
    for (int k = K - 1; k >= 0; k -= 2) {
      const int g0 = t + k * S;
      const bool live1 = k >= 1;
      const int g1 = live1 ? g0 - S : g0;  // a missing second group: the first again, not stored
      ZGroup z0, z1;
      UGroup u0, u1;
      z0.template load<ALIGNED>(zrow + h + g0 * VEC, true);
      z1.template load<ALIGNED>(zrow + h + g1 * VEC, true);
      if constexpr (TEACHER) {
        u0.template load<ALIGNED>(urow + h + g0 * VEC, true);
        u1.template load<ALIGNED>(urow + h + g1 * VEC, true);
      }
      const int j0 = h + g0 * VEC, j1 = h + g1 * VEC;
      const int y0 = label32 - j0, y1 = label32 - j1;  // the label's index in each group
      float out0[VEC], out1[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        out0[e] = grad_elem(z0.get(e), TEACHER ? u0.get(e) : 0.f, e == y0);
        out1[e] = grad_elem(z1.get(e), TEACHER ? u1.get(e) : 0.f, e == y1);
      }
      store_group<DZ, VEC, ALIGNED>(grow + j0, out0);
      if (live1) store_group<DZ, VEC, ALIGNED>(grow + j1, out1);
    }
    for (int i = t; i < n_scalar; i += S) {
      const int j = i < h ? i : tail0 + (i - h);
      const float z = load_scalar<DZ>(zrow + j, true);
      const float u = TEACHER ? load_scalar<DU>(urow + j, true) : 0.f;
      store_scalar<DZ>(grow + j, grad_elem(z, u, j == label32));
    }
  }

  if constexpr (!WARP_ROWS) {
    if (cluster_wait) cg::this_cluster().barrier_wait();
  }
}

// Whether every row of the launch can take rows_kernel's vector path (ALIGNED): with h the
// student row's head (elements until 16-byte alignment, as in the kernel), the teacher row at h
// aligned for its group loads and the gradient row at h aligned to 16 bytes. The residues of
// the row addresses modulo 16 repeat at least every 16 rows, so 16 rows decide for all.
template <int DZ, int DU, bool TEACHER>
inline bool rows_vector_aligned(const RowsArgs& a) {
  constexpr uint64_t zb = sizeof(typename Elem<DZ>::T), ub = sizeof(typename Elem<DU>::T);
  constexpr int VEC = int(16 / zb);
  constexpr uint64_t ualign = uint64_t(Group<DU, VEC>::kAlign);
  const int64_t rows = a.n_rows < 16 ? a.n_rows : 16;
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t z = uint64_t(reinterpret_cast<uintptr_t>(a.student)) + uint64_t(r * a.student_row_stride) * zb;
    if (z % zb != 0) return false;
    const uint64_t h = ((16 - z % 16) % 16) / zb;
    if (TEACHER) {
      const uint64_t u = uint64_t(reinterpret_cast<uintptr_t>(a.teacher)) +
                         uint64_t(r * a.teacher_row_stride) * ub + h * ub;
      if (u % ualign != 0) return false;
    }
    if (a.grad != nullptr) {
      const uint64_t g = uint64_t(reinterpret_cast<uintptr_t>(a.grad)) + uint64_t(r * a.grad_row_stride) * zb + h * zb;
      if (g % 16 != 0) return false;
    }
  }
  return true;
}

// rows_kernel's TAU for a temperature: 1..4 when it is that integer, else 0.
inline int tau_mode(float tau) {
  return tau == 1.f ? 1 : tau == 2.f ? 2 : tau == 3.f ? 3 : tau == 4.f ? 4 : 0;
}

// ---- the distillation options (docs/design.md, "Distillation options") ---------------------------
//
// A second kernel, rows_kernel_options, runs a row when any option is on (or the accuracy is
// asked for); rows_kernel above keeps the plain loss's hot loop unchanged. Same work split and
// combines; per element it applies the softcaps (salt_math.h's softcap_value), keeps the KD
// statistics over the first K = kd_vocab entries only (the teacher is never read past K), and
// tracks the raw argmax (softcapping is increasing) and, for label smoothing, the sum of z.
// The divergence is a run-time switch (one instance per dtype pair and launch shape):
//   forward KL: the accumulator a rescales with the teacher's state, as in rows_kernel;
//   reverse KL: the accumulator b = sum exp(z/tau - m) (z - u) rescales with the state of z/tau;
//   JSD: one more pass over the first K entries once the normalizers are known gives KL(p || m)
//        and KL(q || m) entry by entry (salt_math.h's jsd_terms), two sums merged like the other
//        statistics.

// Per-thread state. Maxima in the raw domain of the (capped) logits: mz of z over [0, V), mzt of z
// over [0, K), mu of u over [0, K); sums relative to them (szt, su at tau).
struct OScan {
  float mz, sz, mzt, szt, mu, su, a, sumz, amax;
  int aidx;
  bool nan;
};

// Combinable form (salt_math.h's (m, s) pairs with m in the domain of z, z / tau, u / tau).
struct OStats {
  float mz, sz, mzt, szt, mu, su, a, sumz, amax;
  int aidx, nan;
};

struct JsdSums {
  float kl_pm, kl_qm;  // KL(p || m), KL(q || m)
};

__device__ __forceinline__ OScan oscan_init() {
  return OScan{-INFINITY, 0.f, -INFINITY, 0.f, -INFINITY, 0.f, 0.f, 0.f, -INFINITY, 0x7fffffff, false};
}
__device__ __forceinline__ OStats ostats_empty() {
  return OStats{-INFINITY, 0.f, -INFINITY, 0.f, -INFINITY, 0.f, 0.f, 0.f, -INFINITY, 0x7fffffff, 0};
}

// Whether (v, i) comes before (bv, bi) in torch's argmax order: the first NaN, else the largest
// value, lowest index among equal ones.
__device__ __forceinline__ bool argmax_better(float v, int i, float bv, int bi) {
  const bool vn = v != v, bn = bv != bv;
  if (vn || bn) return vn && (!bn || i < bi);
  return v > bv || (v == bv && i < bi);
}

// One raw student element z (index j; kd: j < K) and teacher element u into the state.
template <bool TEACHER>
__device__ __forceinline__ void opt_accumulate(OScan& s, float z, float u, int j, bool kd, float cap,
                                               float tcap, bool smooth, int div, float L, float Lt) {
  s.nan = s.nan || (z != z);
  if (argmax_better(z, j, s.amax, s.aidx)) {
    s.amax = z;
    s.aidx = j;
  }
  const float zc = cap > 0.f ? softcap_value(z, cap) : z;
  if (smooth) s.sumz += zc;
  if (zc > s.mz) {
    s.sz *= fast_exp2((s.mz - zc) * L);  // -inf for an empty state: factor 0
    s.mz = zc;
  }
  if (zc != -INFINITY) s.sz += fast_exp2((zc - s.mz) * L);  // NaN lands here
  if constexpr (TEACHER) {
    if (kd) {
      s.nan = s.nan || (u != u);
      const float uc = tcap > 0.f ? softcap_value(u, tcap) : u;
      if (zc > s.mzt) {
        const float f = fast_exp2((s.mzt - zc) * Lt);
        s.szt *= f;
        if (div == kReverseKL) s.a *= f;
        s.mzt = zc;
      }
      const float ezt = zc == -INFINITY ? 0.f : fast_exp2((zc - s.mzt) * Lt);
      s.szt += ezt;
      if (uc > s.mu) {
        const float f = fast_exp2((s.mu - uc) * Lt);
        s.su *= f;
        if (div == kForwardKL) s.a *= f;
        s.mu = uc;
      }
      const float eu = uc == -INFINITY ? 0.f : fast_exp2((uc - s.mu) * Lt);
      s.su += eu;
      if (div == kForwardKL) s.a += kd_term(uc, zc, eu);
      else if (div == kReverseKL) s.a += reverse_kd_term(zc, uc, ezt);
    }
  }
}

template <bool TEACHER>
__device__ __forceinline__ OStats to_ostats(const OScan& s, float inv_tau) {
  OStats t;
  t.mz = s.mz;
  t.sz = s.sz;
  t.mzt = TEACHER ? s.mzt * inv_tau : -INFINITY;
  t.szt = TEACHER ? s.szt : 0.f;
  t.mu = TEACHER ? s.mu * inv_tau : -INFINITY;
  t.su = TEACHER ? s.su : 0.f;
  t.a = TEACHER ? s.a : 0.f;
  t.sumz = s.sumz;
  t.amax = s.amax;
  t.aidx = s.aidx;
  t.nan = s.nan ? 1 : 0;
  return t;
}

// Merges y into x. The a-accumulator goes with the teacher's state (forward KL) or the state of
// z / tau (reverse KL); JSD has none.
struct OCombine {
  int div;
  template <bool TEACHER>
  __device__ __forceinline__ void operator()(OStats& x, const OStats& y) const {
    lse_combine(x.mz, x.sz, y.mz, y.sz);
    if constexpr (TEACHER) {
      if (div == kReverseKL) {
        kd_combine(x.mzt, x.szt, x.a, y.mzt, y.szt, y.a);
        lse_combine(x.mu, x.su, y.mu, y.su);
      } else if (div == kForwardKL) {
        lse_combine(x.mzt, x.szt, y.mzt, y.szt);
        kd_combine(x.mu, x.su, x.a, y.mu, y.su, y.a);
      } else {
        lse_combine(x.mzt, x.szt, y.mzt, y.szt);
        lse_combine(x.mu, x.su, y.mu, y.su);
      }
    }
    x.sumz += y.sumz;
    if (argmax_better(y.amax, y.aidx, x.amax, x.aidx)) {
      x.amax = y.amax;
      x.aidx = y.aidx;
    }
    x.nan |= y.nan;
  }
  template <bool TEACHER>
  __device__ __forceinline__ void operator()(JsdSums& x, const JsdSums& y) const {
    x.kl_pm += y.kl_pm;
    x.kl_qm += y.kl_qm;
  }
};

// Butterfly all-reduce of a struct of 32-bit words over the 32 lanes. Every combine above gives
// the same bits whichever operand is its first (the larger maximum wins, equal maxima add the
// two sums, and float addition commutes), so every lane ends with the same statistics.
template <bool TEACHER, class St>
__device__ __forceinline__ void warp_allreduce_any(St& s, const OCombine& comb) {
  static_assert(sizeof(St) % 4 == 0, "32-bit words");
  constexpr int kW = int(sizeof(St) / 4);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    uint32_t wi[kW], wo[kW];
    memcpy(wi, &s, sizeof(St));
#pragma unroll
    for (int i = 0; i < kW; ++i) wo[i] = __shfl_xor_sync(kFull, wi[i], off);
    St o;
    memcpy(&o, wo, sizeof(St));
    comb.template operator()<TEACHER>(s, o);
  }
}

// All-reduce of `st` over the row's threads: warp, block (shared memory `warp_part`), cluster
// (distributed shared memory `block_part`). For a cluster, the arrival that follows the reads of
// the other blocks' `block_part` is completed (barrier_wait) by the next reduction or at the end
// of the kernel, so no block leaves while another may still read its shared memory.
template <bool TEACHER, bool WARP_ROWS, int NWARPS, class St>
__device__ __forceinline__ void row_allreduce(St& st, const St& empty, const OCombine& comb, St* warp_part,
                                              St* block_part, int cluster, int lane, int warp,
                                              bool& cluster_wait) {
  warp_allreduce_any<TEACHER>(st, comb);
  if constexpr (!WARP_ROWS) {
    if (lane == 0) warp_part[warp] = st;
    __syncthreads();
    st = lane < NWARPS ? warp_part[lane] : empty;
    warp_allreduce_any<TEACHER>(st, comb);
    if (cluster > 1) {
      cg::cluster_group cl = cg::this_cluster();
      if (cluster_wait) cl.barrier_wait();
      if (threadIdx.x == 0) block_part[0] = st;
      cl.sync();
      St r = empty;
      if (lane < cluster) r = *cl.map_shared_rank(&block_part[0], lane);
      warp_allreduce_any<TEACHER>(r, comb);
      st = r;
      cl.barrier_arrive();
      cluster_wait = true;
    }
  }
}

// Launch bounds as rows_kernel's: 64 registers a thread for blocks, 85 for a warp per row.
template <int DZ, int DU, bool TEACHER, int BLOCK, bool WARP_ROWS>
__global__ void __launch_bounds__(BLOCK, WARP_ROWS ? 768 / BLOCK : 1024 / BLOCK)
    rows_kernel_options(const RowsArgs args, const int cluster) {
  using TZ = typename Elem<DZ>::T;
  using TU = typename Elem<DU>::T;
  constexpr int VEC = 16 / int(sizeof(TZ));
  constexpr int NWARPS = BLOCK / 32;
  static_assert(NWARPS <= 32, "one warp combines the per-warp partial states");
  using ZGroup = Group<DZ, VEC>;
  using UGroup = Group<DU, VEC>;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int64_t row;
  int rank = 0;
  int t;
  int S;
  if constexpr (WARP_ROWS) {
    row = int64_t(blockIdx.x) * NWARPS + warp;
    if (row >= args.n_rows) return;
    t = lane;
    S = 32;
  } else {
    row = int64_t(blockIdx.x) / cluster;
    rank = int(blockIdx.x % unsigned(cluster));
    t = rank * BLOCK + int(threadIdx.x);
    S = cluster * BLOCK;
  }
  const bool is_writer = WARP_ROWS ? lane == 0 : (rank == 0 && threadIdx.x == 0);

  const int V = int(args.vocab);
  const int K = TEACHER ? (args.kd_vocab > 0 && args.kd_vocab < args.vocab ? int(args.kd_vocab) : V) : 0;
  const int64_t label = args.labels_int64
                            ? __ldg(static_cast<const long long*>(args.labels) + row * args.labels_stride)
                            : int64_t(__ldg(static_cast<const int*>(args.labels) + row * args.labels_stride));
  TZ* const grow = args.grad ? static_cast<TZ*>(args.grad) + row * args.grad_row_stride : nullptr;
  const TZ* const zrow = static_cast<const TZ*>(args.student) + row * args.student_row_stride;
  const TU* const urow =
      TEACHER ? static_cast<const TU*>(args.teacher) + row * args.teacher_row_stride : nullptr;

  const uintptr_t zaddr = reinterpret_cast<uintptr_t>(zrow);
  int h = 0;
  bool zvec = false;
  if (zaddr % sizeof(TZ) == 0) {
    h = int(((16 - zaddr % 16) % 16) / sizeof(TZ));
    zvec = true;
  }
  if (h > V) h = V;
  const int G = (V - h) / VEC;
  const int tail0 = h + G * VEC;
  const int n_scalar = h + (V - tail0);
  const bool uvec = TEACHER && reinterpret_cast<uintptr_t>(urow + h) % UGroup::kAlign == 0;
  const bool gvec = grow != nullptr && reinterpret_cast<uintptr_t>(grow + h) % 16 == 0;

  if (label == args.ignore_index) {
    if (is_writer) {
      args.loss[row] = args.ce[row] = args.kd[row] = 0.f;
      args.lse[3 * row] = args.lse[3 * row + 1] = args.lse[3 * row + 2] = 0.f;
      if (args.accuracy) args.accuracy[row] = 0.f;
    }
    if (grow) {
      float zero[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) zero[k] = 0.f;
      for (int g = t; g < G; g += S) store_group<DZ, VEC>(grow + h + g * VEC, gvec, zero);
      for (int i = t; i < n_scalar; i += S) store_scalar<DZ>(grow + (i < h ? i : tail0 + (i - h)), 0.f);
    }
    return;
  }

  const float w = TEACHER ? args.kd_weight : 0.f;
  const float tau = args.temperature;
  const float inv_tau = 1.f / tau;
  const float L = kLog2e;
  const float Lt = kLog2e * inv_tau;
  const float cap = args.softcap, tcap = args.teacher_softcap;
  const float eps = args.label_smoothing, lam = args.z_loss, beta = args.beta;
  const bool smooth = eps != 0.f;
  const int div = TEACHER ? int(args.divergence) : int(kForwardKL);
  const OCombine comb{div};

  // Teacher element e of the group starting at j0 (0 past K, where it is never used).
  auto group_u = [&](float (&uv)[VEC], int j0, bool last_use) {
    if (j0 + VEC <= K) {
      UGroup ug;
      ug.load(urow + j0, uvec, last_use);
#pragma unroll
      for (int e = 0; e < VEC; ++e) uv[e] = ug.get(e);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) uv[e] = j0 + e < K ? load_scalar<DU>(urow + j0 + e, last_use) : 0.f;
    }
  };

  // ---- pass 1: statistics ----
  OScan sc = oscan_init();
  for (int g = t; g < G; g += S) {
    const int j0 = h + g * VEC;
    ZGroup zg;
    zg.load(zrow + j0, zvec, false);
    float uv[VEC];
    if constexpr (TEACHER) {
      if (j0 < K) group_u(uv, j0, false);
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e)
      opt_accumulate<TEACHER>(sc, zg.get(e), TEACHER ? uv[e] : 0.f, j0 + e, j0 + e < K, cap, tcap, smooth, div,
                              L, Lt);
  }
  for (int i = t; i < n_scalar; i += S) {
    const int j = i < h ? i : tail0 + (i - h);
    const float z = load_scalar<DZ>(zrow + j, false);
    const float u = TEACHER && j < K ? load_scalar<DU>(urow + j, false) : 0.f;
    opt_accumulate<TEACHER>(sc, z, u, j, j < K, cap, tcap, smooth, div, L, Lt);
  }

  SALT_SHARED(OStats, warp_part, NWARPS);
  SALT_SHARED(OStats, block_part, 1);
  SALT_SHARED(JsdSums, warp_part2, NWARPS);
  SALT_SHARED(JsdSums, block_part2, 1);
  bool cluster_wait = false;
  OStats st = to_ostats<TEACHER>(sc, inv_tau);
  row_allreduce<TEACHER, WARP_ROWS, NWARPS>(st, ostats_empty(), comb, warp_part, block_part, cluster, lane, warp,
                                            cluster_wait);

  float lse_z = lse_value(st.mz, st.sz);
  float lse_zt = TEACHER ? lse_value(st.mzt, st.szt) : lse_z;
  float lse_u = TEACHER ? lse_value(st.mu, st.su) : 0.f;
  if (st.nan) lse_z = lse_zt = lse_u = NAN;
  const float oz = lse_z == -INFINITY ? INFINITY : lse_z;
  const float ozt = lse_zt == -INFINITY ? INFINITY : lse_zt;
  const float ou = lse_u == -INFINITY ? INFINITY : lse_u;
  const float cr = lse_u - lse_zt;  // r_j = log q_j - log p_j = (z_j - u_j) / tau + cr

  // p_j, q_j and log q_j of an entry j < K from its capped logits.
  auto pq = [&](float zc, float uc, float& p, float& q, float& log_q) {
    log_q = fmaf(zc, inv_tau, -ozt);
    q = fast_exp2(log_q * L);
    p = fast_exp2(fmaf(uc, inv_tau, -ou) * L);
  };

  // ---- JSD: KL(p || m) and KL(q || m) over [0, K) ----
  float kl_qm = 0.f, kd = 0.f;
  if constexpr (TEACHER) {
    if (div == kJSD) {
      JsdSums js{0.f, 0.f};
      auto jsd_elem = [&](float z, float u) {
        const float zc = cap > 0.f ? softcap_value(z, cap) : z;
        const float uc = tcap > 0.f ? softcap_value(u, tcap) : u;
        float kl_pm, kl_qm_j, log_q_over_m;
        jsd_terms(fmaf(uc, inv_tau, -ou), fmaf(zc, inv_tau, -ozt), beta, kl_pm, kl_qm_j, log_q_over_m);
        js.kl_pm += kl_pm;
        js.kl_qm += kl_qm_j;
      };
      for (int g = t; g < G; g += S) {
        const int j0 = h + g * VEC;
        if (j0 >= K) break;
        ZGroup zg;
        zg.load(zrow + j0, zvec, false);
        float uv[VEC];
        group_u(uv, j0, false);
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          if (j0 + e < K) jsd_elem(zg.get(e), uv[e]);
      }
      for (int i = t; i < n_scalar; i += S) {
        const int j = i < h ? i : tail0 + (i - h);
        if (j < K) jsd_elem(load_scalar<DZ>(zrow + j, false), load_scalar<DU>(urow + j, false));
      }
      row_allreduce<TEACHER, WARP_ROWS, NWARPS>(js, JsdSums{0.f, 0.f}, comb, warp_part2, block_part2, cluster,
                                                lane, warp, cluster_wait);
      if (st.nan) js.kl_pm = js.kl_qm = NAN;
      kl_qm = js.kl_qm;
      kd = jsd_value(js.kl_pm, js.kl_qm, beta, tau);
    } else if (div == kReverseKL) {
      kd = reverse_kd_value(st.a, st.szt, lse_u, lse_zt, tau);
    } else {
      kd = kd_value(st.a, st.su, lse_u, lse_zt, tau);
    }
  }

  if (is_writer) {
    const bool label_ok = label >= 0 && label < V;
    float zl = NAN;
    if (label_ok) {
      zl = load_scalar<DZ>(zrow + label, false);
      if (cap > 0.f) zl = softcap_value(zl, cap);
    }
    const float ce = label_ok ? smoothed_ce_value(lse_z, zl, st.sumz / float(V), eps) : NAN;
    args.loss[row] = loss_value(ce, kd, w) + z_loss_value(lse_z, lam);
    args.ce[row] = ce;
    args.kd[row] = kd;
    args.lse[3 * row] = lse_z;
    args.lse[3 * row + 1] = lse_zt;
    args.lse[3 * row + 2] = lse_u;
    if (args.accuracy) args.accuracy[row] = label_ok && int64_t(st.aidx) == label ? 1.f : 0.f;
  }

  // ---- pass 2: gradient, groups in reverse order ----
  if (grow) {
    const float scale = __ldg(args.grad_scale + row * args.grad_scale_stride);
    const float zlg = lam == 0.f ? 0.f : 2.f * lam * lse_z;
    const float inv_v = 1.f / float(V);
    // reverse KL: D = KL(q || p) without the tau^2
    const float d_rev = TEACHER && div == kReverseKL ? st.a / (tau * st.szt) - lse_zt + lse_u : 0.f;
    auto grad_elem = [&](float z, float u, int j) -> float {
      const float zc = cap > 0.f ? softcap_value(z, cap) : z;
      const float pz = fast_exp2((zc - oz) * L);
      float kdg = 0.f;
      if constexpr (TEACHER) {
        if (j < K) {
          const float uc = tcap > 0.f ? softcap_value(u, tcap) : u;
          float p, q, log_q;
          pq(zc, uc, p, q, log_q);
          if (div == kForwardKL) {
            kdg = forward_kd_grad(p, q);
          } else if (div == kReverseKL) {
            kdg = reverse_kd_grad(q, (zc - uc) * inv_tau + cr, d_rev);
          } else {
            float kl_pm, kl_qm_j, log_q_over_m;
            jsd_terms(fmaf(uc, inv_tau, -ou), log_q, beta, kl_pm, kl_qm_j, log_q_over_m);
            kdg = jsd_grad(q, log_q_over_m, kl_qm, beta);
          }
        }
      }
      const float cf = cap > 0.f ? softcap_grad_factor(zc, cap) : 1.f;
      return grad_value_options(pz, kdg, int64_t(j) == label, w, tau, eps, inv_v, zlg, cf, scale);
    };
    const int Kg = t < G ? (G - 1 - t) / S + 1 : 0;
    for (int k = Kg - 1; k >= 0; --k) {
      const int g = t + k * S;
      const int j0 = h + g * VEC;
      ZGroup zg;
      zg.load(zrow + j0, zvec, true);
      float uv[VEC];
      if constexpr (TEACHER) {
        if (j0 < K) group_u(uv, j0, true);
      }
      float out[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) out[e] = grad_elem(zg.get(e), TEACHER ? uv[e] : 0.f, j0 + e);
      store_group<DZ, VEC>(grow + j0, gvec, out);
    }
    for (int i = t; i < n_scalar; i += S) {
      const int j = i < h ? i : tail0 + (i - h);
      const float z = load_scalar<DZ>(zrow + j, true);
      const float u = TEACHER && j < K ? load_scalar<DU>(urow + j, true) : 0.f;
      store_scalar<DZ>(grow + j, grad_elem(z, u, j));
    }
  }

  if constexpr (!WARP_ROWS) {
    if (cluster_wait) cg::this_cluster().barrier_wait();
  }
}

// Whether a launch needs rows_kernel_options (an option on, or the accuracy asked for).
inline bool uses_options(const RowsArgs& a) {
  if (a.accuracy != nullptr || a.softcap > 0.f || a.label_smoothing != 0.f || a.z_loss != 0.f) return true;
  const bool teacher = a.teacher != nullptr && a.kd_weight != 0.f;
  return teacher && (a.teacher_softcap > 0.f || a.divergence != kForwardKL || (a.kd_vocab > 0 && a.kd_vocab < a.vocab));
}

// ---- kernel choice (host side; the emulator's harness picks through the same functions) ----------

using RowsKernel = void (*)(const RowsArgs, const int);

template <int DZ, int DU, bool TEACHER, bool ALIGNED, int TAU>
inline RowsKernel rows_kernel_shape(bool warp_rows, int block) {
  if (warp_rows) return rows_kernel<DZ, DU, TEACHER, 256, true, ALIGNED, TAU>;
  if (block == 256) return rows_kernel<DZ, DU, TEACHER, 256, false, ALIGNED, TAU>;
  return rows_kernel<DZ, DU, TEACHER, 512, false, ALIGNED, TAU>;
}

// The rows_kernel instance for a launch: the vector path when every row allows it, and then the
// integer-tau mode of the temperature; the element-wise path (a fallback for misaligned layouts)
// runs the general TAU 0. Without a teacher the temperature plays no part (TAU 0).
template <int DZ, int DU, bool TEACHER>
inline RowsKernel pick_rows_kernel(const RowsArgs& a, bool warp_rows, int block) {
  if (!rows_vector_aligned<DZ, DU, TEACHER>(a)) return rows_kernel_shape<DZ, DU, TEACHER, false, 0>(warp_rows, block);
  if constexpr (!TEACHER) {
    return rows_kernel_shape<DZ, DU, false, true, 0>(warp_rows, block);
  } else {
    switch (tau_mode(a.temperature)) {
      case 1: return rows_kernel_shape<DZ, DU, true, true, 1>(warp_rows, block);
      case 2: return rows_kernel_shape<DZ, DU, true, true, 2>(warp_rows, block);
      case 3: return rows_kernel_shape<DZ, DU, true, true, 3>(warp_rows, block);
      case 4: return rows_kernel_shape<DZ, DU, true, true, 4>(warp_rows, block);
      default: return rows_kernel_shape<DZ, DU, true, true, 0>(warp_rows, block);
    }
  }
}

#if !defined(SALT_CUDA_EMULATION)
// ---- host side ----------------------------------------------------------------------------------

// Launches `kernel` as `blocks` blocks of `block` threads on the arguments' stream, grouped in
// thread-block clusters of `cluster` blocks when cluster > 1. Returns the launch's cudaError_t
// (cudaSuccess when queued).
inline cudaError_t launch_rows(RowsKernel kernel, const RowsArgs& a, int64_t blocks, int block, int cluster) {
  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  if (cluster == 1) {
    kernel<<<unsigned(blocks), block, 0, stream>>>(a, 1);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t lc = {};
  lc.gridDim = dim3(unsigned(blocks), 1, 1);
  lc.blockDim = dim3(unsigned(block), 1, 1);
  lc.dynamicSmemBytes = 0;
  lc.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  lc.attrs = attr;
  lc.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&lc, kernel, a, cluster);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

// Blocks of 256 threads that give every row a warp.
inline int64_t warp_row_blocks(const RowsArgs& a) { return (a.n_rows + 256 / 32 - 1) / (256 / 32); }

// Launches the rows_kernel instance pick_rows_kernel<DZ, DU, TEACHER> chooses for these rows and
// the configuration.
template <int DZ, int DU, bool TEACHER>
cudaError_t launch_typed(const RowsArgs& a, const LaunchConfig& cfg) {
  if (cfg.mode == kModeWarp) return launch_rows(pick_rows_kernel<DZ, DU, TEACHER>(a, true, 256), a, warp_row_blocks(a), 256, 1);
  const int block = cfg.block == 256 ? 256 : 512;
  return launch_rows(pick_rows_kernel<DZ, DU, TEACHER>(a, false, block), a, a.n_rows * cfg.cluster, block,
                     int(cfg.cluster));
}

// rows_kernel_options for the chosen configuration: a warp per row, or blocks of 256 threads (a
// 512-thread choice runs as 256, so the options add two instances per dtype pair, not three),
// with the configuration's cluster.
template <int DZ, int DU, bool TEACHER>
cudaError_t launch_typed_options(const RowsArgs& a, const LaunchConfig& cfg) {
  if (cfg.mode == kModeWarp) return launch_rows(rows_kernel_options<DZ, DU, TEACHER, 256, true>, a, warp_row_blocks(a), 256, 1);
  return launch_rows(rows_kernel_options<DZ, DU, TEACHER, 256, false>, a, a.n_rows * cfg.cluster, 256,
                     int(cfg.cluster));
}

template <int DZ>
cudaError_t launch_student(const RowsArgs& a, const LaunchConfig& cfg) {
  const bool teacher = a.teacher != nullptr && a.kd_weight != 0.f;
  if (uses_options(a)) {
    if (!teacher) return launch_typed_options<DZ, kFloat32, false>(a, cfg);
    switch (a.teacher_dtype) {
      case kBFloat16: return launch_typed_options<DZ, kBFloat16, true>(a, cfg);
      case kFloat16: return launch_typed_options<DZ, kFloat16, true>(a, cfg);
      default: return launch_typed_options<DZ, kFloat32, true>(a, cfg);
    }
  }
  if (!teacher) return launch_typed<DZ, kFloat32, false>(a, cfg);
  switch (a.teacher_dtype) {
    case kBFloat16: return launch_typed<DZ, kBFloat16, true>(a, cfg);
    case kFloat16: return launch_typed<DZ, kFloat16, true>(a, cfg);
    default: return launch_typed<DZ, kFloat32, true>(a, cfg);
  }
}

// Defined in salt_cuda_{f32,bf16,f16}.cu: every instantiation for one student dtype.
cudaError_t launch_student_f32(const RowsArgs& a, const LaunchConfig& cfg);
cudaError_t launch_student_bf16(const RowsArgs& a, const LaunchConfig& cfg);
cudaError_t launch_student_f16(const RowsArgs& a, const LaunchConfig& cfg);
#endif  // !SALT_CUDA_EMULATION

}  // namespace cuda
}  // namespace salt
