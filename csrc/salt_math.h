// The SALT loss math of docs/design.md, "The loss" and "One-pass algorithm", as inline
// functions shared by the CPU kernel (csrc/cpu) and the CUDA kernel (csrc/cuda). One source for
// the online log-sum-exp update, the combine of two partial states, the final per-row
// statistics and the gradient element.
//
// No Python, no PyTorch: plain C++17 that nvcc also accepts.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define SALT_HD __host__ __device__ __forceinline__
#else
#define SALT_HD inline
#endif

namespace salt {

// ---- argument block shared by every compiled backend --------------------------------------
// Rows are addressed as base + row * row_stride (elements); the vocabulary dimension is
// contiguous. Every offset is 64-bit.
enum Dtype : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct RowsArgs {
  const void* student = nullptr;  // [n_rows, vocab]
  int64_t student_row_stride = 0;
  int32_t student_dtype = kFloat32;
  const void* teacher = nullptr;  // [n_rows, vocab]; never read when kd_weight == 0
  int64_t teacher_row_stride = 0;
  int32_t teacher_dtype = kFloat32;
  const void* labels = nullptr;  // [n_rows]
  int64_t labels_stride = 1;
  int32_t labels_int64 = 1;  // 1: int64 labels, 0: int32
  int64_t n_rows = 0;
  int64_t vocab = 0;
  float kd_weight = 0.f;
  float temperature = 1.f;
  int64_t ignore_index = -100;
  // Outputs, fp32, one entry per row (lse: three per row: lse_z, lse_zt, lse_u).
  float* loss = nullptr;
  float* ce = nullptr;
  float* kd = nullptr;
  float* lse = nullptr;
  // Optional gradient w.r.t. the student logits, in the student's dtype, scaled per row by
  // grad_scale[row * grad_scale_stride] (stride 0: one scale for every row).
  void* grad = nullptr;
  int64_t grad_row_stride = 0;
  const float* grad_scale = nullptr;
  int64_t grad_scale_stride = 0;
  int32_t num_threads = 1;  // CPU only
  void* stream = nullptr;   // CUDA only: cudaStream_t
};

// ---- online log-sum-exp ----------------------------------------------------------------------
// State (m, s) stands for log(s) + m = log sum_j exp(x_j). An empty state is (-inf, 0).
// The KD state adds a = sum_j exp(u_j/tau - m) * (u_j - z_j), rescaled with s.

SALT_HD float rescale_factor(float m_old, float m_new) {
  // exp(m_old - m_new) with an empty old state (-inf) giving 0 rather than NaN.
  return m_old == -INFINITY ? 0.f : expf(m_old - m_new);
}

// Merge partial state (m2, s2) into (m, s).
SALT_HD void lse_combine(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m2 > m) {
    s = s * rescale_factor(m, m2) + s2;
    m = m2;
  } else {
    s = s + s2 * expf(m2 - m);
  }
}

// Merge partial KD state (m2, s2, a2) into (m, s, a).
SALT_HD void kd_combine(float& m, float& s, float& a, float m2, float s2, float a2) {
  if (m2 == -INFINITY) return;
  if (m2 > m) {
    const float f = rescale_factor(m, m2);
    s = s * f + s2;
    a = a * f + a2;
    m = m2;
  } else {
    const float f = expf(m2 - m);
    s += s2 * f;
    a += a2 * f;
  }
}

// One element into an online state (used by scalar paths: small V and the CUDA per-thread loop).
SALT_HD void lse_update(float& m, float& s, float x) {
  if (x > m) {
    s = s * rescale_factor(m, x) + 1.f;
    m = x;
  } else if (x != -INFINITY) {
    s += expf(x - m);  // a NaN x lands here and makes s NaN
  }
}

SALT_HD float lse_value(float m, float s) {
  // log-sum-exp of the state; -inf for an empty (all -inf) row.
  return m == -INFINITY ? -INFINITY : m + logf(s);
}

// KD contribution of one vocabulary entry to the a-accumulator, before scaling by exp(-m):
// p_j == 0 (teacher -inf) contributes 0; a student -inf where the teacher has mass gives +inf.
SALT_HD float kd_term(float u, float z, float e_u) {
  if (u == -INFINITY) return 0.f;
  if (z == -INFINITY) return INFINITY;
  return e_u * (u - z);
}

// ---- per-row results ------------------------------------------------------------------------

// KD_i = tau^2 * KL(p || q) from the final statistics: KL = a / (tau * s_u) - lse_u + lse_zt.
SALT_HD float kd_value(float a, float s_u, float lse_u, float lse_zt, float tau) {
  return tau * tau * (a / (tau * s_u) - lse_u + lse_zt);
}

SALT_HD float ce_value(float lse_z, float z_label) { return lse_z - z_label; }

// (1 - w) * CE + w * KD, where a zero weight drops its term entirely (so an infinite CE with
// w == 1 gives KD rather than 0 * inf = NaN).
SALT_HD float loss_value(float ce, float kd, float w) {
  float out = 0.f;
  if (w < 1.f) out += (1.f - w) * ce;
  if (w > 0.f) out += w * kd;
  return out;
}

// Gradient element: scale * ((1 - w) * (softmax(z)_j - [j == y]) + w * tau * (softmax(z/tau)_j -
// softmax(u/tau)_j)), given the three probabilities.
SALT_HD float grad_value(float p_z, float p_zt, float p_u, bool is_label, float w, float tau,
                         float scale) {
  float g = (1.f - w) * (p_z - (is_label ? 1.f : 0.f));
  if (w > 0.f) g += w * tau * (p_zt - p_u);
  return scale * g;
}

// ---- dtype conversions (bit-exact; round to nearest even on the way down) ---------------------

SALT_HD float bits_to_float(uint32_t b) {
  union { uint32_t u; float f; } v{b};
  return v.f;
}
SALT_HD uint32_t float_to_bits(float f) {
  union { float f; uint32_t u; } v{f};
  return v.u;
}
SALT_HD float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }
SALT_HD uint16_t float_to_bf16(float f) {
  const uint32_t b = float_to_bits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40u);  // quiet NaN
  return uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
SALT_HD float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  // Shift exponent and mantissa into place and rebias by 2^112; subnormals come out right too.
  float f = bits_to_float(em << 13) * bits_to_float(0x77800000u);
  uint32_t b = float_to_bits(f);
  if (em >= 0x7c00u) b |= 0x7f800000u;  // inf / NaN
  return bits_to_float(b | sign);
}
SALT_HD uint16_t float_to_half(float f) {
  uint32_t b = float_to_bits(f);
  const uint32_t sign = b & 0x80000000u;
  b ^= sign;
  uint32_t o;
  if (b >= (143u << 23)) {  // overflow, inf or NaN
    o = b > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (b < (113u << 23)) {  // subnormal half (or zero): let the FPU round
    const float denorm_magic = bits_to_float(((127u - 15u) + (23u - 10u) + 1u) << 23);
    o = float_to_bits(bits_to_float(b) + denorm_magic) - float_to_bits(denorm_magic);
  } else {
    const uint32_t mant_odd = (b >> 13) & 1u;
    b += (uint32_t(15 - 127) << 23) + 0xfffu;
    b += mant_odd;
    o = b >> 13;
  }
  return uint16_t(o | (sign >> 16));
}

}  // namespace salt
