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
// The divergence D of docs/design.md, "Distillation options" (p: teacher, q: student, at tau).
enum Divergence : int32_t { kForwardKL = 0, kReverseKL = 1, kJSD = 2 };

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
  // Distillation options (docs/design.md, "Distillation options"). Every default is "off" and
  // gives the plain loss of "The loss".
  int64_t kd_vocab = 0;           // KD over the first kd_vocab entries; 0: all `vocab`. Only the
                                  // first kd_vocab entries of a teacher row are ever read.
  float softcap = 0.f;            // student z <- c * tanh(z / c) before anything else; 0: off
  float teacher_softcap = 0.f;    // teacher u <- c_t * tanh(u / c_t); 0: off
  int32_t divergence = kForwardKL;
  float beta = 0.5f;              // JSD: weight of the teacher in m = beta p + (1 - beta) q
  float label_smoothing = 0.f;    // eps of torch's label smoothing
  float z_loss = 0.f;             // lam: loss += lam * lse_z^2
  float* accuracy = nullptr;      // optional output [n_rows]: 1 where argmax_j z_j == label, else 0
  int32_t num_threads = 1;  // CPU only
  void* stream = nullptr;   // CUDA only: cudaStream_t
};

// The offline top-k teacher (CPU and CUDA backends) (docs/design.md, "Top-k teacher"): the fields of `rows` that
// describe the student, the labels, the outputs and the options (teacher* and kd_vocab, teacher
// softcap and divergence are not used), plus the teacher's k slots per row. lse receives
// (lse_z, lse_zt, lse_rest), lse_rest the log-sum-exp of z / tau over the entries outside K.
struct TopkArgs {
  RowsArgs rows;
  const void* indices = nullptr;  // [n_rows, k], int64 or int32; negative: empty slot. Never read
                                  // when rows.kd_weight == 0.
  int64_t indices_row_stride = 0;
  int32_t indices_int64 = 1;
  const void* logprobs = nullptr;  // [n_rows, k] in a salt::Dtype, the teacher's log p at tau = 1
  int64_t logprobs_row_stride = 0;
  int32_t logprobs_dtype = kFloat32;
  int64_t k = 0;
  int32_t bucket = 1;  // 1: tail "bucket", 0: "renormalize"
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

// ---- distillation options (docs/design.md, "Distillation options") ---------------------------

// Logit soft-capping, c * tanh(x / c) (maps -inf to -c).
SALT_HD float softcap_value(float x, float c) { return c * tanhf(x / c); }

// Its derivative, written with the capped value y = c * tanh(x / c): 1 - (y / c)^2.
SALT_HD float softcap_grad_factor(float capped, float c) {
  const float t = capped / c;
  return 1.f - t * t;
}

// Cross-entropy with torch's label smoothing eps: (1 - eps) (lse - z[y]) + eps (lse - mean_j z_j).
SALT_HD float smoothed_ce_value(float lse_z, float z_label, float mean_z, float eps) {
  const float nll = lse_z - z_label;
  return eps == 0.f ? nll : (1.f - eps) * nll + eps * (lse_z - mean_z);
}

// z-loss term lam * lse_z^2; a zero weight drops it (so lse_z = inf gives no NaN).
SALT_HD float z_loss_value(float lse_z, float lam) { return lam == 0.f ? 0.f : lam * lse_z * lse_z; }

// Reverse KL, KL(q || p) = sum_j q_j r_j with r_j = log q_j - log p_j
// = (z_j - u_j) / tau - lse_zt + lse_u. Its accumulator b = sum_j exp(z_j/tau - m) (z_j - u_j)
// is rescaled with the state of z/tau (s_zt), as the forward KL's a is with the teacher's.
// q_j == 0 (student -inf) contributes 0; p_j == 0 where q_j > 0 gives +inf, the true value.
SALT_HD float reverse_kd_term(float z, float u, float e_zt) {
  if (z == -INFINITY) return 0.f;
  if (u == -INFINITY) return INFINITY;
  return e_zt * (z - u);
}

// KD = tau^2 * KL(q || p) = tau^2 * (b / (tau * s_zt) - lse_zt + lse_u).
SALT_HD float reverse_kd_value(float b, float s_zt, float lse_u, float lse_zt, float tau) {
  return tau * tau * (b / (tau * s_zt) - lse_zt + lse_u);
}

// JSD with m = beta p + (1 - beta) q, entry by entry once the normalizers are known (a second
// pass over the row): from log p_j and log q_j (differences of logits and log-sum-exps, so
// without cancellation), the entry's parts of KL(p || m) and KL(q || m), and log(q_j / m_j) for
// the gradient. A term of zero mass counts 0 (p_j == 0 at a teacher -inf, q_j == 0 at a student
// -inf), not 0 * inf.
SALT_HD float xlog_term(float a, float l) { return a == 0.f ? 0.f : a * l; }

SALT_HD void jsd_terms(float log_p, float log_q, float beta, float& kl_pm, float& kl_qm, float& log_q_over_m) {
  const float p = expf(log_p), q = expf(log_q);
  const float log_m = logf(beta * p + (1.f - beta) * q);
  kl_pm = xlog_term(p, log_p - log_m);
  log_q_over_m = log_q - log_m;
  kl_qm = xlog_term(q, log_q_over_m);
}

// KD = tau^2 * (beta KL(p || m) + (1 - beta) KL(q || m)).
SALT_HD float jsd_value(float kl_pm, float kl_qm, float beta, float tau) {
  return tau * tau * (beta * kl_pm + (1.f - beta) * kl_qm);
}

// dD / d(z_j / tau) of each divergence, the entry's part of the KD gradient (times w * tau):
//   forward KL: q_j - p_j
//   reverse KL: q_j (r_j - D)                                  (0 where q_j == 0)
//   JSD:        q_j (g_j - (1 - beta) KL(q || m)), g_j = (1 - beta) log(q_j / m_j)
//             = -(1 - beta) q_j (KL(q || m) - log(q_j / m_j))    (0 where q_j == 0)
SALT_HD float forward_kd_grad(float p, float q) { return q - p; }
SALT_HD float reverse_kd_grad(float q, float r, float d) { return q == 0.f ? 0.f : q * (r - d); }
SALT_HD float jsd_grad(float q, float log_q_over_m, float kl_qm, float beta) {
  return q == 0.f ? 0.f : -(1.f - beta) * q * (kl_qm - log_q_over_m);
}

// Gradient element with the options: scale * cap' * ((1 - w) (softmax(z)_j - (1 - eps) [j == y]
// - eps / V) + 2 lam lse_z softmax(z)_j + w tau kd_grad), where cap' is softcap_grad_factor (1
// without softcap), kd_grad one of the three above (0 past kd_vocab) and zl = 2 lam lse_z.
SALT_HD float grad_value_options(float p_z, float kd_grad, bool is_label, float w, float tau, float eps,
                                 float inv_vocab, float zl, float cap_factor, float scale) {
  float g = (1.f - w) * (p_z - (is_label ? 1.f - eps : 0.f) - eps * inv_vocab);
  if (zl != 0.f) g += zl * p_z;
  if (w > 0.f) g += w * tau * kd_grad;
  return scale * cap_factor * g;
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
