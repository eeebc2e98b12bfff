// Instantiations of the row kernel for student dtype kBFloat16 (one translation unit per student
// dtype, so that nvcc builds them in parallel).
#include "rows_kernel.cuh"

namespace salt {
namespace cuda {
cudaError_t launch_student_bf16(const RowsArgs& a, const LaunchConfig& cfg) {
  return launch_student<kBFloat16>(a, cfg);
}
}  // namespace cuda
}  // namespace salt
