// CUDA backend of the SALT loss: host-side interface. Plain C++17 with no CUDA, Python or PyTorch
// headers, so the pybind11 binding (python/bind_cuda.cpp) compiles with the host compiler and
// only links against the nvcc-built objects. See salt_math.h for the argument block.
#pragma once

#include <stdint.h>

#include "../salt_math.h"

namespace salt {
namespace cuda {

// How rows are mapped onto the GPU.
enum Mode : int32_t {
  kModeWarp = 0,   // one warp per row, 8 rows per 256-thread block (small vocabularies)
  kModeBlock = 1,  // one block (`block` threads) per row, or a cluster of `cluster` blocks per row
};

struct LaunchConfig {
  int32_t mode = kModeBlock;
  int32_t block = 256;   // threads per block in kModeBlock: 256 or 512
  int32_t cluster = 1;   // blocks per row (thread-block cluster, sm_90+): 1, 2, 4 or 8
};

// The configuration the launcher picks for a row of `vocab` logits (dtype codes as in RowsArgs;
// teacher_dtype < 0: no teacher read). block_override / cluster_override > 0 replace the choice
// (for tuning and tests); the result is always a valid configuration.
LaunchConfig choose_config(int64_t vocab, int32_t student_dtype, int32_t teacher_dtype,
                           int32_t block_override, int32_t cluster_override);

// Queues the row kernel on args.stream of device `device` (the CUDA device ordinal of every
// pointer in args; all of them device memory). Returns nullptr on success or a message naming
// the CUDA error. Launch errors are caught here (cudaGetLastError); errors of the running kernel
// surface at the next synchronization, as for any CUDA kernel.
const char* rows_cuda(const RowsArgs& args, int32_t device, const LaunchConfig& config);

// The top-k teacher kernel's largest vocabulary: its bitmap of the teacher's slots, one bit per
// entry, lives in shared memory (32 KB).
constexpr int64_t kTopkMaxVocab = 262144;

// Queues the top-k teacher kernel (topk_kernel.cuh) on args.rows.stream of device `device`;
// nullptr on success or a message, as rows_cuda.
const char* topk_rows_cuda(const TopkArgs& args, int32_t device);

// Number of CUDA devices this module's runtime sees, or -1 with `error` set when the runtime
// cannot start (no driver).
int32_t device_count(const char** error);

}  // namespace cuda
}  // namespace salt
