// CUDA row kernel of the SALT loss (docs/design.md, "One-pass algorithm"): forward statistics
// and the scaled gradient in one kernel, one row per block (or per cluster of blocks, or per
// warp for small vocabularies). Included by the per-dtype translation units
// salt_cuda_{f32,bf16,f16}.cu, so the instantiations compile in parallel; salt_cuda.cu holds the
// host-side dispatcher.
//
// Work split of one row (V logits, vocabulary contiguous, any row stride):
//   * `h` head elements until the student row pointer is 16-byte aligned, then G full groups of
//     VEC = 16 / sizeof(student element) elements, then the tail. Groups are loaded with 16-byte
//     vector loads (the teacher with 8-, 16- or 32-byte ones, by its dtype) when that tensor's
//     row is aligned at the same element; otherwise the same groups are loaded element by element
//     (coalesced through L1), so the arithmetic is identical on both paths. Head and tail
//     elements (fewer than 2 * VEC) are handled one by one.
//   * Group g goes to thread g mod S of the row's S threads (S = 32, BLOCK, or BLOCK * cluster).
//   * Pass 1: per-thread online state (running max and sums, fp32), then warp-shuffle and shared
//     memory (and, for a cluster, distributed shared memory) combines with salt_math.h's
//     lse_combine / kd_combine. Every thread ends with the identical row statistics.
//   * Pass 2 (when a gradient is requested): each thread walks its groups in reverse, so the
//     logits it read last (most likely still in L2) are read again first, and writes
//     grad_value(...) of salt_math.h with streaming stores.
//
// Exps are ex2.approx on arguments pre-scaled by log2(e) (relative error ~2^-22); everything
// else follows salt_math.h: -inf teacher entries contribute 0 (kd_term), a student -inf where the
// teacher has mass gives +inf, NaN anywhere in the row makes the row's statistics NaN, and with
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

  __device__ __forceinline__ void load(const T* p, bool vec, bool last_use) {
    if (vec) {
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

  __device__ __forceinline__ float get(int k) const {
    if constexpr (DT == kFloat32) {
      return __uint_as_float(w[k]);
    } else {
      return half_bits_to_float<DT>((k & 1) ? (w[k >> 1] >> 16) : (w[k >> 1] & 0xffffu));
    }
  }
};

// Stores VEC floats as the student dtype: one 16-byte streaming store when aligned.
template <int DT, int VEC>
__device__ __forceinline__ void store_group(typename Elem<DT>::T* p, bool vec, const float (&g)[VEC]) {
  static_assert(VEC * sizeof(typename Elem<DT>::T) == 16, "a student group is 16 bytes");
  if (vec) {
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

// ---- online state --------------------------------------------------------------------------------

// Per-thread state while scanning: raw running maxima (mz of z, mu of u) and sums relative to them:
// sz = sum exp(z - mz), szt = sum exp((z - mz) / tau), su = sum exp((u - mu) / tau),
// a = sum exp((u - mu) / tau) * (u - z) (kd_term).
struct Scan {
  float mz, sz, szt, mu, su, a;
  bool nan;
};

// Combinable statistics in salt_math.h's form: each pair (m, s) stands for m + log(s), with
// m in the domain of the quantity (z, z / tau, u / tau).
struct Stats {
  float mz, sz, mzt, szt, mu, su, a;
  int nan;
};

__device__ __forceinline__ Scan scan_init() {
  return Scan{-INFINITY, 0.f, 0.f, -INFINITY, 0.f, 0.f, false};
}
__device__ __forceinline__ Stats stats_empty() {
  return Stats{-INFINITY, 0.f, -INFINITY, 0.f, -INFINITY, 0.f, 0.f, 0};
}

// Folds N elements (z[k], u[k]) into the state: one max per stream and group, one rescale when
// the max grows, then one exp per element and stream (two for z when tau != 1).
template <bool TEACHER, int N, class ZG, class UG>
__device__ __forceinline__ void accumulate(Scan& s, const ZG& zg, const UG& ug, float L, float Lt,
                                           bool tau1) {
  float z[N];
  bool bad = false;
  float gm = -INFINITY;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    z[k] = zg.get(k);
    bad |= z[k] != z[k];
    gm = fmaxf(gm, z[k]);  // NaN is dropped here and reported through `nan`
  }
  if (gm > s.mz) {
    const float d = s.mz - gm;  // -inf for an empty state: factor 0
    s.sz *= fast_exp2(d * L);
    if (TEACHER && !tau1) s.szt *= fast_exp2(d * Lt);
    s.mz = gm;
  }
  if (s.mz != -INFINITY) {  // an all -inf prefix contributes nothing (and -inf - -inf is NaN)
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float d = z[k] - s.mz;
      s.sz += fast_exp2(d * L);
      if (TEACHER && !tau1) s.szt += fast_exp2(d * Lt);
    }
  }
  if constexpr (TEACHER) {
    float u[N];
    float gu = -INFINITY;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      u[k] = ug.get(k);
      bad |= u[k] != u[k];
      gu = fmaxf(gu, u[k]);
    }
    if (gu > s.mu) {
      const float f = fast_exp2((s.mu - gu) * Lt);
      s.su *= f;
      s.a *= f;
      s.mu = gu;
    }
    if (s.mu != -INFINITY) {
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float e = fast_exp2((u[k] - s.mu) * Lt);
        s.su += e;
        s.a += kd_term(u[k], z[k], e);
      }
    }
  }
  s.nan = s.nan || bad;
}

template <bool TEACHER>
__device__ __forceinline__ Stats to_stats(const Scan& s, float inv_tau, bool tau1) {
  Stats t;
  t.mz = s.mz;
  t.sz = s.sz;
  if (TEACHER && !tau1) {
    t.mzt = s.mz * inv_tau;
    t.szt = s.szt;
  } else {
    t.mzt = s.mz;
    t.szt = s.sz;
  }
  t.mu = TEACHER ? s.mu * inv_tau : -INFINITY;
  t.su = TEACHER ? s.su : 0.f;
  t.a = TEACHER ? s.a : 0.f;
  t.nan = s.nan ? 1 : 0;
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
template <int DZ, int DU, bool TEACHER, int BLOCK, bool WARP_ROWS>
__global__ void __launch_bounds__(BLOCK, 1024 / BLOCK)
    rows_kernel(const RowsArgs args, const int cluster) {
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

  // Row layout: head [0, h), groups [h, tail0), tail [tail0, V).
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
    }
    if (grow) {
      float zero[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) zero[k] = 0.f;
      for (int g = t; g < G; g += S) store_group<DZ, VEC>(grow + h + g * VEC, gvec, zero);
      for (int i = t; i < n_scalar; i += S) store_scalar<DZ>(grow + (i < h ? i : tail0 + (i - h)), 0.f);
    }
    return;  // uniform over the row's threads (and its whole cluster): no barrier is skipped
  }

  const float w = TEACHER ? args.kd_weight : 0.f;
  const float tau = args.temperature;
  const float inv_tau = 1.f / tau;
  const bool tau1 = tau == 1.f;
  const float L = kLog2e;
  const float Lt = tau1 ? kLog2e : kLog2e * inv_tau;

  // ---- pass 1: statistics ----
  Scan sc = scan_init();
  for (int g = t; g < G; g += 2 * S) {
    const int g1 = g + S;
    const bool has1 = g1 < G;
    ZGroup z0, z1;
    UGroup u0, u1;
    z0.load(zrow + h + g * VEC, zvec, false);
    if (TEACHER) u0.load(urow + h + g * VEC, uvec, false);
    if (has1) {
      z1.load(zrow + h + g1 * VEC, zvec, false);
      if (TEACHER) u1.load(urow + h + g1 * VEC, uvec, false);
    }
    accumulate<TEACHER, VEC>(sc, z0, u0, L, Lt, tau1);
    if (has1) accumulate<TEACHER, VEC>(sc, z1, u1, L, Lt, tau1);
  }
  for (int i = t; i < n_scalar; i += S) {
    const int j = i < h ? i : tail0 + (i - h);
    Group<kFloat32, 4> zs, us;  // only element 0 is used
    zs.w[0] = __float_as_uint(load_scalar<DZ>(zrow + j, false));
    us.w[0] = TEACHER ? __float_as_uint(load_scalar<DU>(urow + j, false)) : 0u;
    accumulate<TEACHER, 1>(sc, zs, us, L, Lt, tau1);
  }

  Stats st = to_stats<TEACHER>(sc, inv_tau, tau1);
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
  if (st.nan) lse_z = lse_zt = lse_u = NAN;

  if (is_writer) {
    const bool label_ok = label >= 0 && label < V;
    const float ce = label_ok ? ce_value(lse_z, load_scalar<DZ>(zrow + label, false)) : NAN;
    const float kd = TEACHER ? kd_value(st.a, st.su, lse_u, lse_zt, tau) : 0.f;
    args.loss[row] = loss_value(ce, kd, w);
    args.ce[row] = ce;
    args.kd[row] = kd;
    args.lse[3 * row] = lse_z;
    args.lse[3 * row + 1] = lse_zt;
    args.lse[3 * row + 2] = lse_u;
  }

  // ---- pass 2: gradient, groups in reverse order ----
  if (grow) {
    const float scale = __ldg(args.grad_scale + row * args.grad_scale_stride);
    // A row whose logits are all -inf has lse -inf; every element is -inf then, and using +inf as
    // the offset gives exp(-inf) = 0 instead of exp(-inf - -inf) = NaN.
    const float oz = lse_z == -INFINITY ? INFINITY : lse_z;
    const float ozt = lse_zt == -INFINITY ? INFINITY : lse_zt;
    const float ou = lse_u == -INFINITY ? INFINITY : lse_u;
    auto grad_elem = [&](float z, float u, int64_t j) -> float {
      const float pz = fast_exp2((z - oz) * L);
      float pzt = 0.f, pu = 0.f;
      if constexpr (TEACHER) {
        pzt = tau1 ? pz : fast_exp2(fmaf(z, inv_tau, -ozt) * L);
        pu = fast_exp2(fmaf(u, inv_tau, -ou) * L);
      }
      return grad_value(pz, pzt, pu, j == label, w, tau, scale);
    };
    const int K = t < G ? (G - 1 - t) / S + 1 : 0;  // groups this thread owns: t + k * S, k < K
    for (int k = K - 1; k >= 0; k -= 2) {
      const int g0 = t + k * S;
      const int g1 = g0 - S;
      const bool has1 = k >= 1;
      ZGroup z0, z1;
      UGroup u0, u1;
      z0.load(zrow + h + g0 * VEC, zvec, true);
      if (TEACHER) u0.load(urow + h + g0 * VEC, uvec, true);
      if (has1) {
        z1.load(zrow + h + g1 * VEC, zvec, true);
        if (TEACHER) u1.load(urow + h + g1 * VEC, uvec, true);
      }
      {
        float out[VEC];
        const int j0 = h + g0 * VEC;
#pragma unroll
        for (int e = 0; e < VEC; ++e) out[e] = grad_elem(z0.get(e), TEACHER ? u0.get(e) : 0.f, j0 + e);
        store_group<DZ, VEC>(grow + j0, gvec, out);
      }
      if (has1) {
        float out[VEC];
        const int j1 = h + g1 * VEC;
#pragma unroll
        for (int e = 0; e < VEC; ++e) out[e] = grad_elem(z1.get(e), TEACHER ? u1.get(e) : 0.f, j1 + e);
        store_group<DZ, VEC>(grow + j1, gvec, out);
      }
    }
    for (int i = t; i < n_scalar; i += S) {
      const int j = i < h ? i : tail0 + (i - h);
      const float z = load_scalar<DZ>(zrow + j, true);
      const float u = TEACHER ? load_scalar<DU>(urow + j, true) : 0.f;
      store_scalar<DZ>(grow + j, grad_elem(z, u, j));
    }
  }

  if constexpr (!WARP_ROWS) {
    if (cluster_wait) cg::this_cluster().barrier_wait();
  }
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

template <int DZ, int DU, bool TEACHER, int BLOCK, bool WARP_ROWS>
__global__ void __launch_bounds__(BLOCK, 1024 / BLOCK)
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

#if !defined(SALT_CUDA_EMULATION)
// ---- host side ----------------------------------------------------------------------------------

// Launches rows_kernel<DZ, DU, TEACHER, ...> for the chosen configuration. Returns the launch's
// cudaError_t (cudaSuccess when queued).
template <int DZ, int DU, bool TEACHER>
cudaError_t launch_typed(const RowsArgs& a, const LaunchConfig& cfg) {
  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  if (cfg.mode == kModeWarp) {
    constexpr int kBlock = 256;
    const int64_t blocks = (a.n_rows + kBlock / 32 - 1) / (kBlock / 32);
    rows_kernel<DZ, DU, TEACHER, kBlock, true><<<unsigned(blocks), kBlock, 0, stream>>>(a, 1);
    return cudaGetLastError();
  }
  const int64_t blocks = a.n_rows * cfg.cluster;
  if (cfg.cluster == 1) {
    if (cfg.block == 256)
      rows_kernel<DZ, DU, TEACHER, 256, false><<<unsigned(blocks), 256, 0, stream>>>(a, 1);
    else
      rows_kernel<DZ, DU, TEACHER, 512, false><<<unsigned(blocks), 512, 0, stream>>>(a, 1);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t lc = {};
  lc.gridDim = dim3(unsigned(blocks), 1, 1);
  lc.blockDim = dim3(unsigned(cfg.block), 1, 1);
  lc.dynamicSmemBytes = 0;
  lc.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(cfg.cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  lc.attrs = attr;
  lc.numAttrs = 1;
  const int cl = cfg.cluster;
  cudaError_t err;
  if (cfg.block == 256)
    err = cudaLaunchKernelEx(&lc, rows_kernel<DZ, DU, TEACHER, 256, false>, a, cl);
  else
    err = cudaLaunchKernelEx(&lc, rows_kernel<DZ, DU, TEACHER, 512, false>, a, cl);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

// rows_kernel_options for the chosen configuration: a warp per row, or blocks of 256 threads (a
// 512-thread choice runs as 256, so the options add two instances per dtype pair, not three),
// with the configuration's cluster.
template <int DZ, int DU, bool TEACHER>
cudaError_t launch_typed_options(const RowsArgs& a, const LaunchConfig& cfg) {
  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  constexpr int kBlock = 256;
  if (cfg.mode == kModeWarp) {
    const int64_t blocks = (a.n_rows + kBlock / 32 - 1) / (kBlock / 32);
    rows_kernel_options<DZ, DU, TEACHER, kBlock, true><<<unsigned(blocks), kBlock, 0, stream>>>(a, 1);
    return cudaGetLastError();
  }
  const int64_t blocks = a.n_rows * cfg.cluster;
  if (cfg.cluster == 1) {
    rows_kernel_options<DZ, DU, TEACHER, kBlock, false><<<unsigned(blocks), kBlock, 0, stream>>>(a, 1);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t lc = {};
  lc.gridDim = dim3(unsigned(blocks), 1, 1);
  lc.blockDim = dim3(unsigned(kBlock), 1, 1);
  lc.dynamicSmemBytes = 0;
  lc.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(cfg.cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  lc.attrs = attr;
  lc.numAttrs = 1;
  const cudaError_t err =
      cudaLaunchKernelEx(&lc, rows_kernel_options<DZ, DU, TEACHER, kBlock, false>, a, int(cfg.cluster));
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
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
