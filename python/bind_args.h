// The argument block of the pybind11 bindings (bind_cpu.cpp, bind_cuda.cpp): the fields of
// salt::RowsArgs and salt::TopkArgs (csrc/salt_math.h) as keyword arguments, under the names
// salt_kernels/backends/base.py passes (RowArgs.kernel_args, topk_kernel_args). Each binding adds
// its own launch fields (threads, or stream and device) after the rows fields.
#pragma once

#include <pybind11/pybind11.h>
#include <stdint.h>

#include "../csrc/salt_math.h"

namespace salt_bind {

template <typename T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

#define SALT_ROWS_PARAMS                                                                              \
  uintptr_t student, int64_t student_row_stride, int32_t student_dtype, uintptr_t teacher,            \
      int64_t teacher_row_stride, int32_t teacher_dtype, uintptr_t labels, int64_t labels_stride,     \
      bool labels_int64, int64_t n_rows, int64_t vocab, float kd_weight, float temperature,           \
      int64_t ignore_index, uintptr_t loss, uintptr_t ce, uintptr_t kd, uintptr_t lse, uintptr_t grad, \
      int64_t grad_row_stride, uintptr_t grad_scale, int64_t grad_scale_stride, int64_t kd_vocab,     \
      float softcap, float teacher_softcap, int32_t divergence, float beta, float label_smoothing,     \
      float z_loss, uintptr_t accuracy

#define SALT_ROWS_NAMES                                                                               \
  student, student_row_stride, student_dtype, teacher, teacher_row_stride, teacher_dtype, labels,     \
      labels_stride, labels_int64, n_rows, vocab, kd_weight, temperature, ignore_index, loss, ce, kd, \
      lse, grad, grad_row_stride, grad_scale, grad_scale_stride, kd_vocab, softcap, teacher_softcap,  \
      divergence, beta, label_smoothing, z_loss, accuracy

// pybind11::arg list of SALT_ROWS_PARAMS; the distillation options default to "off".
#define SALT_ROWS_PYARGS                                                                                   \
  pybind11::arg("student"), pybind11::arg("student_row_stride"), pybind11::arg("student_dtype"),           \
      pybind11::arg("teacher"), pybind11::arg("teacher_row_stride"), pybind11::arg("teacher_dtype"),       \
      pybind11::arg("labels"), pybind11::arg("labels_stride"), pybind11::arg("labels_int64"),              \
      pybind11::arg("n_rows"), pybind11::arg("vocab"), pybind11::arg("kd_weight"),                         \
      pybind11::arg("temperature"), pybind11::arg("ignore_index"), pybind11::arg("loss"),                  \
      pybind11::arg("ce"), pybind11::arg("kd"), pybind11::arg("lse"), pybind11::arg("grad"),               \
      pybind11::arg("grad_row_stride"), pybind11::arg("grad_scale"), pybind11::arg("grad_scale_stride"),   \
      pybind11::arg("kd_vocab") = int64_t(0), pybind11::arg("softcap") = 0.f,                              \
      pybind11::arg("teacher_softcap") = 0.f, pybind11::arg("divergence") = int32_t(0),                    \
      pybind11::arg("beta") = 0.5f, pybind11::arg("label_smoothing") = 0.f, pybind11::arg("z_loss") = 0.f, \
      pybind11::arg("accuracy") = uintptr_t(0)

// The top-k teacher's slots (salt::TopkArgs beyond its rows).
#define SALT_TOPK_PARAMS                                                                             \
  uintptr_t indices, int64_t indices_row_stride, bool indices_int64, uintptr_t logprobs,             \
      int64_t logprobs_row_stride, int32_t logprobs_dtype, int64_t k, bool bucket
#define SALT_TOPK_NAMES \
  indices, indices_row_stride, indices_int64, logprobs, logprobs_row_stride, logprobs_dtype, k, bucket
#define SALT_TOPK_PYARGS                                                                               \
  pybind11::arg("indices"), pybind11::arg("indices_row_stride"), pybind11::arg("indices_int64"),       \
      pybind11::arg("logprobs"), pybind11::arg("logprobs_row_stride"), pybind11::arg("logprobs_dtype"), \
      pybind11::arg("k"), pybind11::arg("bucket") = true

inline salt::RowsArgs rows_args(SALT_ROWS_PARAMS) {
  salt::RowsArgs a;
  a.student = as_ptr<const void>(student);
  a.student_row_stride = student_row_stride;
  a.student_dtype = student_dtype;
  a.teacher = as_ptr<const void>(teacher);
  a.teacher_row_stride = teacher_row_stride;
  a.teacher_dtype = teacher_dtype;
  a.labels = as_ptr<const void>(labels);
  a.labels_stride = labels_stride;
  a.labels_int64 = labels_int64 ? 1 : 0;
  a.n_rows = n_rows;
  a.vocab = vocab;
  a.kd_weight = kd_weight;
  a.temperature = temperature;
  a.ignore_index = ignore_index;
  a.loss = as_ptr<float>(loss);
  a.ce = as_ptr<float>(ce);
  a.kd = as_ptr<float>(kd);
  a.lse = as_ptr<float>(lse);
  a.grad = as_ptr<void>(grad);
  a.grad_row_stride = grad_row_stride;
  a.grad_scale = as_ptr<const float>(grad_scale);
  a.grad_scale_stride = grad_scale_stride;
  a.kd_vocab = kd_vocab;
  a.softcap = softcap;
  a.teacher_softcap = teacher_softcap;
  a.divergence = divergence;
  a.beta = beta;
  a.label_smoothing = label_smoothing;
  a.z_loss = z_loss;
  a.accuracy = as_ptr<float>(accuracy);
  return a;
}

// The slots join rows (whose teacher fields the top-k kernels do not read); kd_weight stays as
// given, so the slots are read when it is > 0 and k > 0.
inline salt::TopkArgs topk_args(const salt::RowsArgs& rows, SALT_TOPK_PARAMS) {
  salt::TopkArgs t;
  t.rows = rows;
  t.indices = as_ptr<const void>(indices);
  t.indices_row_stride = indices_row_stride;
  t.indices_int64 = indices_int64 ? 1 : 0;
  t.logprobs = as_ptr<const void>(logprobs);
  t.logprobs_row_stride = logprobs_row_stride;
  t.logprobs_dtype = logprobs_dtype;
  t.k = indices ? k : 0;
  t.bucket = bucket ? 1 : 0;
  return t;
}

}  // namespace salt_bind
