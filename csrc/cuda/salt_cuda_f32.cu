// Instantiations of the row kernel for student dtype kFloat32 (one translation unit per student
// dtype, so that nvcc builds them in parallel).
#include "rows_kernel.cuh"

namespace salt {
namespace cuda {
cudaError_t launch_student_f32(const RowsArgs& a, const LaunchConfig& cfg) {
  return launch_student<kFloat32>(a, cfg);
}
}  // namespace cuda
}  // namespace salt
