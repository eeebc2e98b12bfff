// pybind11 binding of the CUDA kernel. Compiled by the host compiler (no CUDA headers needed) and
// linked with the nvcc-built objects of csrc/cuda and a static CUDA runtime, so the module imports
// on machines without a GPU or a CUDA-enabled torch. The Python launcher
// (salt_kernels/backends/cuda.py) validates everything and passes raw device addresses, sizes,
// strides, dtype codes, the device ordinal and the cudaStream_t of torch's current stream.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "../csrc/cuda/salt_cuda.h"
#include "bind_args.h"

namespace py = pybind11;

namespace {

using salt_bind::as_ptr;

salt::cuda::LaunchConfig config_of(int64_t vocab, int32_t student_dtype, int32_t teacher_dtype,
                                   int32_t block, int32_t cluster) {
  return salt::cuda::choose_config(vocab, student_dtype, teacher_dtype, block, cluster);
}

void rows(SALT_ROWS_PARAMS, uintptr_t stream, int32_t device, int32_t block, int32_t cluster) {
  salt::RowsArgs a = salt_bind::rows_args(SALT_ROWS_NAMES);
  a.kd_weight = a.teacher ? kd_weight : 0.f;
  a.stream = as_ptr<void>(stream);
  const bool uses_teacher = a.teacher != nullptr && a.kd_weight != 0.f;
  const salt::cuda::LaunchConfig cfg =
      config_of(vocab, student_dtype, uses_teacher ? teacher_dtype : -1, block, cluster);
  const char* error = salt::cuda::rows_cuda(a, device, cfg);
  if (error != nullptr) throw std::runtime_error(error);
}

// The top-k teacher kernel (csrc/cuda/topk_kernel.cuh): the student side as in rows (teacher*
// ignored), plus the teacher's k slots per row.
void topk_rows(SALT_ROWS_PARAMS, uintptr_t stream, int32_t device, SALT_TOPK_PARAMS) {
  salt::RowsArgs a = salt_bind::rows_args(SALT_ROWS_NAMES);
  a.stream = as_ptr<void>(stream);
  const char* error = salt::cuda::topk_rows_cuda(salt_bind::topk_args(a, SALT_TOPK_NAMES), device);
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
  m.def("rows", &rows, py::call_guard<py::gil_scoped_release>(), SALT_ROWS_PYARGS, py::arg("stream"),
        py::arg("device"), py::arg("block") = 0, py::arg("cluster") = 0);
  m.def("topk_rows", &topk_rows, py::call_guard<py::gil_scoped_release>(), SALT_ROWS_PYARGS, py::arg("stream"),
        py::arg("device"), SALT_TOPK_PYARGS, "the top-k teacher kernel (csrc/cuda/topk_kernel.cuh), a block per row");
  m.attr("topk_max_vocab") = salt::cuda::kTopkMaxVocab;
  m.def("launch_config", &launch_config, py::arg("vocab"), py::arg("student_dtype"),
        py::arg("teacher_dtype") = -1, py::arg("block") = 0, py::arg("cluster") = 0,
        "(mode, threads per row group, cluster) the launcher picks: mode 'warp' (a warp per row) "
        "or 'block' (a block, or a cluster of `cluster` blocks, per row); teacher_dtype -1 means "
        "no teacher");
  m.def("device_count", &device_count, "CUDA devices seen by this module's (static) runtime");
}
