// Instantiations and launch of the top-k teacher kernel (topk_kernel.cuh), a translation unit of
// its own so that nvcc builds it next to the full-teacher ones.
#include "topk_kernel.cuh"

namespace salt {
namespace cuda {

cudaError_t launch_topk(const TopkArgs& a) {
  pick_topk(a)<<<unsigned(a.rows.n_rows), kTopkBlock, 0, static_cast<cudaStream_t>(a.rows.stream)>>>(a);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace salt
