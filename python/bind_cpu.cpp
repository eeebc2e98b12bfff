// pybind11 binding of the CPU kernel. It takes raw addresses, sizes and strides from the Python
// launcher (salt_kernels/backends/cpu.py), which has validated them; no PyTorch headers here, so
// one build serves every torch version. The argument block is bind_args.h's.
#include <pybind11/pybind11.h>

#include "../csrc/cpu/salt_cpu.h"
#include "bind_args.h"

namespace py = pybind11;

namespace {

void rows(SALT_ROWS_PARAMS, int32_t num_threads) {
  salt::RowsArgs a = salt_bind::rows_args(SALT_ROWS_NAMES);
  a.num_threads = num_threads;
  salt::rows_cpu(a);
}

// The top-k teacher (salt::TopkArgs): the student side as in rows (teacher* ignored), plus the
// teacher's k slots per row.
void topk_rows(SALT_ROWS_PARAMS, int32_t num_threads, SALT_TOPK_PARAMS) {
  salt::RowsArgs a = salt_bind::rows_args(SALT_ROWS_NAMES);
  a.num_threads = num_threads;
  salt::topk_rows_cpu(salt_bind::topk_args(a, SALT_TOPK_NAMES));
}

}  // namespace

PYBIND11_MODULE(_salt_cpu, m) {
  m.doc() = "SALT loss CPU kernel (see salt_kernels/backends/cpu.py for the Python launcher)";
  m.def("rows", &rows, py::call_guard<py::gil_scoped_release>(), SALT_ROWS_PYARGS, py::arg("num_threads") = 1);
  m.def("topk_rows", &topk_rows, py::call_guard<py::gil_scoped_release>(), SALT_ROWS_PYARGS,
        py::arg("num_threads") = 1, SALT_TOPK_PYARGS);
  m.def("isa", &salt::cpu_isa, "instruction set the kernel uses on this machine");
}
