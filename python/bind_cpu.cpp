// pybind11 binding of the CPU kernel. It takes raw addresses, sizes and strides from the Python
// launcher (salt_kernels/backends/cpu.py), which has validated them; no PyTorch headers here, so
// one build serves every torch version.
#include <pybind11/pybind11.h>

#include "../csrc/cpu/salt_cpu.h"

namespace py = pybind11;

namespace {

template <typename T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

#define SALT_ROWS_PARAMS \
  uintptr_t student, int64_t student_row_stride, int32_t student_dtype, uintptr_t teacher, \
  int64_t teacher_row_stride, int32_t teacher_dtype, uintptr_t labels, int64_t labels_stride, \
  bool labels_int64, int64_t n_rows, int64_t vocab, float kd_weight, float temperature, \
  int64_t ignore_index, uintptr_t loss, uintptr_t ce, uintptr_t kd, uintptr_t lse, uintptr_t grad, \
  int64_t grad_row_stride, uintptr_t grad_scale, int64_t grad_scale_stride, int32_t num_threads, \
  int64_t kd_vocab, float softcap, float teacher_softcap, int32_t divergence, float beta, \
  float label_smoothing, float z_loss, uintptr_t accuracy

salt::RowsArgs rows_args(SALT_ROWS_PARAMS) {
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
  a.num_threads = num_threads;
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

#define SALT_ROWS_NAMES \
  student, student_row_stride, student_dtype, teacher, teacher_row_stride, teacher_dtype, labels, \
  labels_stride, labels_int64, n_rows, vocab, kd_weight, temperature, ignore_index, loss, ce, kd, lse, \
  grad, grad_row_stride, grad_scale, grad_scale_stride, num_threads, kd_vocab, softcap, \
  teacher_softcap, divergence, beta, label_smoothing, z_loss, accuracy

void rows(SALT_ROWS_PARAMS) { salt::rows_cpu(rows_args(SALT_ROWS_NAMES)); }

// The top-k teacher (salt::TopkArgs): the student side as in rows (teacher* ignored), plus the
// teacher's k slots per row.
void topk_rows(SALT_ROWS_PARAMS, uintptr_t indices, int64_t indices_row_stride, bool indices_int64,
               uintptr_t logprobs, int64_t logprobs_row_stride, int32_t logprobs_dtype, int64_t k, bool bucket) {
  salt::TopkArgs t;
  t.rows = rows_args(SALT_ROWS_NAMES);
  t.indices = as_ptr<const void>(indices);
  t.indices_row_stride = indices_row_stride;
  t.indices_int64 = indices_int64 ? 1 : 0;
  t.logprobs = as_ptr<const void>(logprobs);
  t.logprobs_row_stride = logprobs_row_stride;
  t.logprobs_dtype = logprobs_dtype;
  t.k = k;
  t.bucket = bucket ? 1 : 0;
  salt::topk_rows_cpu(t);
}

}  // namespace

PYBIND11_MODULE(_salt_cpu, m) {
  m.doc() = "SALT loss CPU kernel (see salt_kernels/backends/cpu.py for the Python launcher)";
#define SALT_ROWS_ARGS \
  py::arg("student"), py::arg("student_row_stride"), py::arg("student_dtype"), py::arg("teacher"), \
  py::arg("teacher_row_stride"), py::arg("teacher_dtype"), py::arg("labels"), py::arg("labels_stride"), \
  py::arg("labels_int64"), py::arg("n_rows"), py::arg("vocab"), py::arg("kd_weight"), \
  py::arg("temperature"), py::arg("ignore_index"), py::arg("loss"), py::arg("ce"), py::arg("kd"), \
  py::arg("lse"), py::arg("grad"), py::arg("grad_row_stride"), py::arg("grad_scale"), \
  py::arg("grad_scale_stride"), py::arg("num_threads"), py::arg("kd_vocab") = 0, \
  py::arg("softcap") = 0.f, py::arg("teacher_softcap") = 0.f, py::arg("divergence") = 0, \
  py::arg("beta") = 0.5f, py::arg("label_smoothing") = 0.f, py::arg("z_loss") = 0.f, \
  py::arg("accuracy") = uintptr_t(0)
  m.def("rows", &rows, py::call_guard<py::gil_scoped_release>(), SALT_ROWS_ARGS);
  m.def("topk_rows", &topk_rows, py::call_guard<py::gil_scoped_release>(), SALT_ROWS_ARGS,
        py::arg("indices"), py::arg("indices_row_stride"), py::arg("indices_int64"), py::arg("logprobs"),
        py::arg("logprobs_row_stride"), py::arg("logprobs_dtype"), py::arg("k"), py::arg("bucket") = true);
  m.def("isa", &salt::cpu_isa, "instruction set the kernel uses on this machine");
}
