// Instantiations of the row kernel for student dtype kFloat16 (one translation unit per student
// dtype, so that nvcc builds them in parallel).
#include "rows_kernel.cuh"

namespace salt {
namespace cuda {
cudaError_t launch_student_f16(const RowsArgs& a, const LaunchConfig& cfg) {
  return launch_student<kFloat16>(a, cfg);
}
}  // namespace cuda
}  // namespace salt
