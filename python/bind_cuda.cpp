// pybind11 binding of the CUDA kernel. Compiled by the host compiler (no CUDA headers needed) and
// linked with the nvcc-built objects of csrc/cuda and a static CUDA runtime, so the module imports
// on machines without a GPU or a CUDA-enabled torch. The Python launcher
// (salt_kernels/backends/cuda.py) validates everything and passes raw device addresses, sizes,
// strides, dtype codes, the device ordinal and the cudaStream_t of torch's current stream.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "../csrc/cuda/salt_cuda.h"

namespace py = pybind11;

namespace {

template <typename T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

salt::cuda::LaunchConfig config_of(int64_t vocab, int32_t student_dtype, int32_t teacher_dtype,
                                   int32_t block, int32_t cluster) {
  return salt::cuda::choose_config(vocab, student_dtype, teacher_dtype, block, cluster);
}

void rows(uintptr_t student, int64_t student_row_stride, int32_t student_dtype, uintptr_t teacher,
          int64_t teacher_row_stride, int32_t teacher_dtype, uintptr_t labels,
          int64_t labels_stride, bool labels_int64, int64_t n_rows, int64_t vocab, float kd_weight,
          float temperature, int64_t ignore_index, uintptr_t loss, uintptr_t ce, uintptr_t kd,
          uintptr_t lse, uintptr_t grad, int64_t grad_row_stride, uintptr_t grad_scale,
          int64_t grad_scale_stride, uintptr_t stream, int32_t device, int32_t block,
          int32_t cluster, int64_t kd_vocab, float softcap, float teacher_softcap, int32_t divergence,
          float beta, float label_smoothing, float z_loss, uintptr_t accuracy) {
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
  a.kd_weight = a.teacher ? kd_weight : 0.f;
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
  a.stream = as_ptr<void>(stream);
  a.kd_vocab = kd_vocab;
  a.softcap = softcap;
  a.teacher_softcap = teacher_softcap;
  a.divergence = divergence;
  a.beta = beta;
  a.label_smoothing = label_smoothing;
  a.z_loss = z_loss;
  a.accuracy = as_ptr<float>(accuracy);
  const bool uses_teacher = a.teacher != nullptr && a.kd_weight != 0.f;
  const salt::cuda::LaunchConfig cfg =
      config_of(vocab, student_dtype, uses_teacher ? teacher_dtype : -1, block, cluster);
  const char* error = salt::cuda::rows_cuda(a, device, cfg);
  if (error != nullptr) throw std::runtime_error(error);
}

void topk_rows(uintptr_t student, int64_t student_row_stride, int32_t student_dtype, uintptr_t labels,
               int64_t labels_stride, bool labels_int64, int64_t n_rows, int64_t vocab, float kd_weight,
               float temperature, int64_t ignore_index, uintptr_t loss, uintptr_t ce, uintptr_t kd, uintptr_t lse,
               uintptr_t grad, int64_t grad_row_stride, uintptr_t grad_scale, int64_t grad_scale_stride,
               uintptr_t stream, int32_t device, float softcap, float label_smoothing, float z_loss,
               uintptr_t accuracy, uintptr_t indices, int64_t indices_row_stride, bool indices_int64,
               uintptr_t logprobs, int64_t logprobs_row_stride, int32_t logprobs_dtype, int64_t k, bool bucket) {
  salt::TopkArgs t;
  salt::RowsArgs& a = t.rows;
  a.student = as_ptr<const void>(student);
  a.student_row_stride = student_row_stride;
  a.student_dtype = student_dtype;
  a.labels = as_ptr<const void>(labels);
  a.labels_stride = labels_stride;
  a.labels_int64 = labels_int64 ? 1 : 0;
  a.n_rows = n_rows;
  a.vocab = vocab;
  a.kd_weight = indices ? kd_weight : 0.f;
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
  a.stream = as_ptr<void>(stream);
  a.softcap = softcap;
  a.label_smoothing = label_smoothing;
  a.z_loss = z_loss;
  a.accuracy = as_ptr<float>(accuracy);
  t.indices = as_ptr<const void>(indices);
  t.indices_row_stride = indices_row_stride;
  t.indices_int64 = indices_int64 ? 1 : 0;
  t.logprobs = as_ptr<const void>(logprobs);
  t.logprobs_row_stride = logprobs_row_stride;
  t.logprobs_dtype = logprobs_dtype;
  t.k = indices ? k : 0;
  t.bucket = bucket ? 1 : 0;
  const char* error = salt::cuda::topk_rows_cuda(t, device);
  if (error != nullptr) throw std::runtime_error(error);
}

py::tuple launch_config(int64_t vocab, int32_t student_dtype, int32_t teacher_dtype, int32_t block,
                        int32_t cluster) {
  const salt::cuda::LaunchConfig c = config_of(vocab, student_dtype, teacher_dtype, block, cluster);
  const char* mode = c.mode == salt::cuda::kModeWarp ? "warp" : "block";
  return py::make_tuple(mode, c.mode == salt::cuda::kModeWarp ? 32 : c.block, c.cluster);
}

int device_count() {
  const char* error = nullptr;
  const int n = salt::cuda::device_count(&error);
  if (n < 0) throw std::runtime_error(error);
  return n;
}

}  // namespace

PYBIND11_MODULE(_salt_cuda, m) {
  m.doc() = "SALT loss CUDA kernel (see salt_kernels/backends/cuda.py for the Python launcher)";
  m.def("rows", &rows, py::call_guard<py::gil_scoped_release>(), py::arg("student"),
        py::arg("student_row_stride"), py::arg("student_dtype"), py::arg("teacher"),
        py::arg("teacher_row_stride"), py::arg("teacher_dtype"), py::arg("labels"),
        py::arg("labels_stride"), py::arg("labels_int64"), py::arg("n_rows"), py::arg("vocab"),
        py::arg("kd_weight"), py::arg("temperature"), py::arg("ignore_index"), py::arg("loss"),
        py::arg("ce"), py::arg("kd"), py::arg("lse"), py::arg("grad"),
        py::arg("grad_row_stride"), py::arg("grad_scale"), py::arg("grad_scale_stride"),
        py::arg("stream"), py::arg("device"), py::arg("block") = 0, py::arg("cluster") = 0,
        // distillation options (salt::RowsArgs): the defaults are "off"
        py::arg("kd_vocab") = int64_t(0), py::arg("softcap") = 0.f, py::arg("teacher_softcap") = 0.f,
        py::arg("divergence") = int32_t(0), py::arg("beta") = 0.5f, py::arg("label_smoothing") = 0.f,
        py::arg("z_loss") = 0.f, py::arg("accuracy") = uintptr_t(0));
  m.def("launch_config", &launch_config, py::arg("vocab"), py::arg("student_dtype"),
        py::arg("teacher_dtype") = -1, py::arg("block") = 0, py::arg("cluster") = 0,
        "(mode, threads per row group, cluster) the launcher picks: mode 'warp' (a warp per row) "
        "or 'block' (a block, or a cluster of `cluster` blocks, per row); teacher_dtype -1 means "
        "no teacher");
  m.def("topk_rows", &topk_rows, py::call_guard<py::gil_scoped_release>(), py::arg("student"),
        py::arg("student_row_stride"), py::arg("student_dtype"), py::arg("labels"), py::arg("labels_stride"),
        py::arg("labels_int64"), py::arg("n_rows"), py::arg("vocab"), py::arg("kd_weight"),
        py::arg("temperature"), py::arg("ignore_index"), py::arg("loss"), py::arg("ce"), py::arg("kd"),
        py::arg("lse"), py::arg("grad"), py::arg("grad_row_stride"), py::arg("grad_scale"),
        py::arg("grad_scale_stride"), py::arg("stream"), py::arg("device"), py::arg("softcap") = 0.f,
        py::arg("label_smoothing") = 0.f, py::arg("z_loss") = 0.f, py::arg("accuracy") = uintptr_t(0),
        py::arg("indices"), py::arg("indices_row_stride"), py::arg("indices_int64"), py::arg("logprobs"),
        py::arg("logprobs_row_stride"), py::arg("logprobs_dtype"), py::arg("k"), py::arg("bucket") = true,
        "the top-k teacher kernel (csrc/cuda/topk_kernel.cuh), a block per row");
  m.attr("topk_max_vocab") = salt::cuda::kTopkMaxVocab;
  m.def("device_count", &device_count, "CUDA devices seen by this module's (static) runtime");
}
