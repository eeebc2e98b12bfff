// CUDA kernel of the SALT loss with an offline top-k teacher (docs/design.md, "Top-k teacher";
// the readable math is salt_kernels/backends/reference.py topk_rows, and this kernel follows the
// Triton one, salt_kernels/backends/triton/topk_kernels.py, step by step). Included by
// salt_cuda_topk.cu (the instantiations and the launch) and by the CPU emulator of the tests.
//
// One block of kTopkBlock threads per row; entry j of the row goes to thread j mod kTopkBlock,
// slot s of the teacher's k to thread s mod kTopkBlock.
//   1. Membership of K: a bitmap of the row's entries in shared memory (one bit per entry, at
//      most kTopkMaxVocab entries of salt_cuda.h: 32 KB), zeroed, then one atomicOr per filled slot.
//   2. Statistics over the entries outside K: per thread the online (max, sum of exps) states of
//      z and of z / tau (salt_math.h lse_update), then a block reduction: the rest's
//      log-sum-exps; plus, over every entry, the sum of z (label smoothing) and whether some
//      entry beats the label's logit (accuracy with torch.argmax's ties: the lowest index wins,
//      the first NaN wins). The K entries then join z's and z / tau's states: lse_z, lse_zt.
//   3. KD over the |K| + 1 outcomes: the teacher's log-probs clamped to <= 0, the tail's mass
//      r = 1 - sum_K exp(l) summed in float64, the bucket/renormalize choice, p normalized over
//      the outcomes, D = sum p (log p - log q), a term of zero mass adding 0. Block reductions.
//   4. The gradient (when asked), written once per entry: the entries outside K in a pass over
//      the row (skipping K's entries), then K's entries from the slot threads. Outside K the KD
//      part is e_j (q_rest - p_rest) with e_j = exp(z_j / tau - lse_rest) <= 1, so nothing
//      overflows however little mass the rest holds.
// Ignored rows get zeros everywhere, gradient included. The student softcap, label smoothing and
// z-loss are those of the full-teacher kernels. Exps are expf (this kernel reads the student
// row twice and the teacher's k slots: it is not bound by exps at k << V).
#pragma once

#include "rows_kernel.cuh"

namespace salt {
namespace cuda {

constexpr int kTopkBlock = 256;
constexpr int kTopkWarps = kTopkBlock / 32;
constexpr int kTopkWords = int(kTopkMaxVocab / 32);

__device__ __forceinline__ double shfl_xor_double(double v, int offset) {
  unsigned long long b;
  memcpy(&b, &v, sizeof b);
  unsigned lo = unsigned(b), hi = unsigned(b >> 32);
  lo = __shfl_xor_sync(kFull, lo, offset);
  hi = __shfl_xor_sync(kFull, hi, offset);
  b = (static_cast<unsigned long long>(hi) << 32) | lo;
  memcpy(&v, &b, sizeof v);
  return v;
}

// Block-wide reductions; every thread gets the same result (the warps' partials are combined in
// warp order by every thread). `scratch` holds 2 * kTopkWarps doubles; the trailing barrier lets
// the next reduction reuse it.
struct TopkReduce {
  double* scratch;

  __device__ __forceinline__ float sum(float v) const {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(kFull, v, o);
    return float(publish(double(v), 0.0, [](double a, double b) { return a + b; }));
  }
  __device__ __forceinline__ double sum(double v) const {
    for (int o = 16; o > 0; o /= 2) v += shfl_xor_double(v, o);
    return publish(v, 0.0, [](double a, double b) { return a + b; });
  }
  // max that keeps NaN (a NaN anywhere gives NaN)
  __device__ __forceinline__ float max(float v) const {
    for (int o = 16; o > 0; o /= 2) v = fmax_nan(v, __shfl_xor_sync(kFull, v, o));
    return float(publish(double(v), -double(INFINITY), [](double a, double b) {
      return (a != a || b != b) ? double(NAN) : (a > b ? a : b);
    }));
  }
  // (m, s) log-sum-exp states: salt_math.h lse_combine.
  __device__ __forceinline__ void lse(float& m, float& s) const {
    for (int o = 16; o > 0; o /= 2) {
      const float m2 = __shfl_xor_sync(kFull, m, o), s2 = __shfl_xor_sync(kFull, s, o);
      lse_combine(m, s, m2, s2);
    }
    const int warp = int(threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) {
      scratch[2 * warp] = m;
      scratch[2 * warp + 1] = s;
    }
    __syncthreads();
    m = -INFINITY;
    s = 0.f;
    for (int w = 0; w < kTopkWarps; ++w) {
      const float mw = float(scratch[2 * w]), sw = float(scratch[2 * w + 1]);
      if (sw != sw || mw != mw) {  // a NaN state stays NaN
        m = mw;
        s = NAN;
      } else if (s == s) {
        lse_combine(m, s, mw, sw);
      }
    }
    __syncthreads();
  }

 private:
  template <typename Op>
  __device__ __forceinline__ double publish(double v, double init, Op op) const {
    if (threadIdx.x % 32 == 0) scratch[int(threadIdx.x) / 32] = v;
    __syncthreads();
    double r = init;
    for (int w = 0; w < kTopkWarps; ++w) r = op(r, scratch[w]);
    __syncthreads();
    return r;
  }
};

template <int DT>
__device__ __forceinline__ float load_any(const void* p, int64_t i) {
  return load_scalar<DT>(static_cast<const typename Elem<DT>::T*>(p) + i, false);
}

// One row per block (module comment). DZ: the student's dtype; DL: the log-probs' dtype;
// TEACHER: kd_weight > 0 (the slots are read).
template <int DZ, int DL, bool TEACHER>
__global__ void __launch_bounds__(kTopkBlock) topk_rows_kernel(const TopkArgs targs) {
  using TZ = typename Elem<DZ>::T;
  const RowsArgs& args = targs.rows;
  const int64_t row = blockIdx.x;
  const int t = int(threadIdx.x);
  const int V = int(args.vocab);
  const int64_t label = args.labels_int64
                            ? __ldg(static_cast<const long long*>(args.labels) + row * args.labels_stride)
                            : int64_t(__ldg(static_cast<const int*>(args.labels) + row * args.labels_stride));
  TZ* const grow = args.grad ? static_cast<TZ*>(args.grad) + row * args.grad_row_stride : nullptr;
  const TZ* const zrow = static_cast<const TZ*>(args.student) + row * args.student_row_stride;

  if (label == args.ignore_index) {
    if (t == 0) {
      args.loss[row] = args.ce[row] = args.kd[row] = 0.f;
      args.lse[3 * row] = args.lse[3 * row + 1] = args.lse[3 * row + 2] = 0.f;
      if (args.accuracy) args.accuracy[row] = 0.f;
    }
    if (grow)
      for (int j = t; j < V; j += kTopkBlock) store_scalar<DZ>(grow + j, 0.f);
    return;
  }

  SALT_SHARED(uint32_t, bits, kTopkWords);
  SALT_SHARED(double, scratch, 2 * kTopkWarps);
  const TopkReduce red{scratch};

  const float w = TEACHER ? args.kd_weight : 0.f;
  const float tau = args.temperature, inv_tau = 1.f / tau;
  const bool tau1 = tau == 1.f;
  const float cap = args.softcap, eps = args.label_smoothing, lam = args.z_loss;
  const bool smooth = eps != 0.f;
  const int K = TEACHER ? int(targs.k) : 0;
  const void* const ids_row =
      TEACHER ? static_cast<const char*>(targs.indices) + row * targs.indices_row_stride * (targs.indices_int64 ? 8 : 4)
              : nullptr;
  const void* const lp_row =
      TEACHER ? static_cast<const char*>(targs.logprobs) + row * targs.logprobs_row_stride * (DL == kFloat32 ? 4 : 2)
              : nullptr;
  auto slot_id = [&](int s) -> int {
    return targs.indices_int64 ? int(__ldg(static_cast<const long long*>(ids_row) + s))
                               : __ldg(static_cast<const int*>(ids_row) + s);
  };
  auto capped = [&](float z) { return cap > 0.f ? softcap_value(z, cap) : z; };

  const bool in_range = label >= 0 && label < V;
  const int y32 = in_range ? int(label) : -1;
  const float zy = capped(load_scalar<DZ>(zrow + (in_range ? label : 0), false));

  // ---- 1. membership of K ----
  if constexpr (TEACHER) {
    const int words = (V + 31) / 32;
    for (int i = t; i < words; i += kTopkBlock) bits[i] = 0u;
    __syncthreads();
    for (int s = t; s < K; s += kTopkBlock) {
      const int id = slot_id(s);
      if (id >= 0) atomicOr(&bits[id >> 5], 1u << (id & 31));
    }
    __syncthreads();
  }
  auto in_k = [&](int j) -> bool { return TEACHER && ((bits[j >> 5] >> (j & 31)) & 1u) != 0u; };

  // ---- 2. statistics: the entries outside K, then K's ----
  float mz = -INFINITY, sz = 0.f, mt = -INFINITY, st = 0.f, sum_z = 0.f;
  int miss = 0;
  for (int j = t; j < V; j += kTopkBlock) {
    const float z = capped(load_scalar<DZ>(zrow + j, false));
    if (smooth) sum_z += z;
    const bool nan = z != z;
    const bool beats = j < y32 ? (z >= zy || nan) : (zy == zy && j > y32 && (z > zy || nan));
    miss |= beats ? 1 : 0;
    if (in_k(j)) continue;
    lse_update(mz, sz, z);
    if (!tau1) lse_update(mt, st, z * inv_tau);
  }
  red.lse(mz, sz);
  if (!tau1) red.lse(mt, st);
  if (tau1) {
    mt = mz;
    st = sz;
  }
  if (smooth) sum_z = red.sum(sum_z);
  miss = red.max(float(miss)) > 0.f ? 1 : 0;
  const float lse_rest = lse_value(mt, st);  // the rest's log-sum-exp of z / tau
  // K's entries join both states.
  float kz = -INFINITY, ksz = 0.f, kt = -INFINITY, kst = 0.f;
  int filled = 0;
  float max_a = -INFINITY;
  double mass = 0.0;
  if constexpr (TEACHER) {
    for (int s = t; s < K; s += kTopkBlock) {
      const int id = slot_id(s);
      if (id < 0) continue;
      const float z = capped(load_scalar<DZ>(zrow + id, false));
      lse_update(kz, ksz, z);
      if (!tau1) lse_update(kt, kst, z * inv_tau);
      const float l = fminf(load_any<DL>(lp_row, s), 0.f);
      ++filled;
      mass += exp(double(l));
      max_a = fmaxf(max_a, l * inv_tau);
    }
    red.lse(kz, ksz);
    if (!tau1) red.lse(kt, kst);
    filled = int(red.sum(float(filled)));
    mass = red.sum(mass);
    max_a = red.max(max_a);
  }
  float m_all = mz, s_all = sz, mt_all = mt, st_all = st;
  lse_combine(m_all, s_all, kz, ksz);
  if (!tau1) lse_combine(mt_all, st_all, kt, kst);
  const float lse_z = lse_value(m_all, s_all);
  const float lse_zt = tau1 ? lse_z : lse_value(mt_all, st_all);

  // ---- 3. KD over K and the tail outcome ----
  float kd = 0.f, lse_a = 0.f, p_rest = 0.f;
  if constexpr (TEACHER) {
    const double r = mass < 1.0 ? 1.0 - mass : 0.0;
    bool bucket = r > 0.0 && filled < V;
    if (!targs.bucket) bucket = bucket && filled == 0;  // an empty row keeps one outcome: D = 0
    bucket = bucket || filled == 0;
    const float a_rest = bucket ? logf(float(r)) * inv_tau : -INFINITY;  // r in float keeps its relative precision
    const float m_a = fmaxf(max_a, a_rest);  // finite: a row without K has a tail outcome
    float sa = 0.f;
    for (int s = t; s < K; s += kTopkBlock)
      if (slot_id(s) >= 0) sa += expf(fminf(load_any<DL>(lp_row, s), 0.f) * inv_tau - m_a);
    sa = red.sum(sa);
    lse_a = m_a + logf(sa + expf(a_rest - m_a));
    float d = 0.f;
    for (int s = t; s < K; s += kTopkBlock) {
      const int id = slot_id(s);
      if (id < 0) continue;
      const float log_p = fminf(load_any<DL>(lp_row, s), 0.f) * inv_tau - lse_a;
      const float p = expf(log_p);
      const float log_q = capped(load_scalar<DZ>(zrow + id, false)) * inv_tau - lse_zt;
      if (p != 0.f) d += p * (log_p - log_q);
    }
    d = red.sum(d);
    const float log_p_rest = a_rest - lse_a;
    p_rest = expf(log_p_rest);
    if (p_rest != 0.f) d += p_rest * (log_p_rest - (lse_rest - lse_zt));
    kd = tau * tau * d;
  }

  // ---- outputs ----
  const float zy_ce = in_range ? zy : NAN;  // a label outside [0, V): NaN, as the other kernels
  const float ce = smooth ? lse_z - (1.f - eps) * zy_ce - eps * (sum_z / float(V)) : lse_z - zy_ce;
  if (t == 0) {
    float loss = loss_value(ce, kd, w);
    if (lam != 0.f) loss += lam * lse_z * lse_z;
    args.loss[row] = loss;
    args.ce[row] = ce;
    args.kd[row] = kd;
    args.lse[3 * row] = lse_z;
    args.lse[3 * row + 1] = TEACHER ? lse_zt : lse_z;
    args.lse[3 * row + 2] = TEACHER ? lse_rest : 0.f;
    if (args.accuracy) args.accuracy[row] = in_range && miss == 0 ? 1.f : 0.f;
  }
  if (!grow) return;

  // ---- 4. gradient ----
  const float scale = args.grad_scale[row * args.grad_scale_stride];
  const float c_label = scale * (1.f - w);
  const float c_z = c_label + (lam != 0.f ? scale * 2.f * lam * lse_z : 0.f);
  const float c_y = smooth ? c_label * (1.f - eps) : c_label;
  const float c_unif = smooth ? c_label * eps / float(V) : 0.f;
  const float c_kd = scale * w * tau;
  // Outside K: KD part e_j (q_rest - p_rest), e_j = exp(z_j / tau - lse_rest).
  const float c_e = TEACHER ? c_kd * (expf(lse_rest - lse_zt) - p_rest) : 0.f;
  auto finish = [&](float g, float z, int j) {
    if (j == y32) g -= c_y;
    if (smooth) g -= c_unif;
    if (cap > 0.f) g *= softcap_grad_factor(z, cap);
    return g;
  };
  for (int j = t; j < V; j += kTopkBlock) {
    if (in_k(j)) continue;
    const float z = capped(load_scalar<DZ>(zrow + j, true));
    float g = c_z * expf(z - lse_z);
    if (TEACHER) g += c_e * expf(z * inv_tau - lse_rest);
    store_scalar<DZ>(grow + j, finish(g, z, j));
  }
  if constexpr (TEACHER) {
    for (int s = t; s < K; s += kTopkBlock) {
      const int id = slot_id(s);
      if (id < 0) continue;
      const float z = capped(load_scalar<DZ>(zrow + id, false));
      const float p = expf(fminf(load_any<DL>(lp_row, s), 0.f) * inv_tau - lse_a);
      const float q = expf(z * inv_tau - lse_zt);
      store_scalar<DZ>(grow + id, finish(c_z * expf(z - lse_z) + c_kd * (q - p), z, id));
    }
  }
}

using TopkKernel = void (*)(const TopkArgs);

// The instance for these arguments' dtypes (the teacher's slots read only with kd_weight > 0).
template <int DZ>
TopkKernel pick_topk_kernel(const TopkArgs& a) {
  if (a.rows.kd_weight == 0.f || a.k == 0) return topk_rows_kernel<DZ, kFloat32, false>;
  switch (a.logprobs_dtype) {
    case kBFloat16: return topk_rows_kernel<DZ, kBFloat16, true>;
    case kFloat16: return topk_rows_kernel<DZ, kFloat16, true>;
    default: return topk_rows_kernel<DZ, kFloat32, true>;
  }
}

inline TopkKernel pick_topk(const TopkArgs& a) {
  switch (a.rows.student_dtype) {
    case kBFloat16: return pick_topk_kernel<kBFloat16>(a);
    case kFloat16: return pick_topk_kernel<kFloat16>(a);
    default: return pick_topk_kernel<kFloat32>(a);
  }
}

#if !defined(SALT_CUDA_EMULATION)
// Queues the kernel for every row on a.rows.stream (defined in salt_cuda_topk.cu).
cudaError_t launch_topk(const TopkArgs& a);
#endif

}  // namespace cuda
}  // namespace salt
