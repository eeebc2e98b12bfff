// Host side of the CUDA backend: launch configuration, device selection, dispatch on the student
// dtype and error reporting. The kernels live in rows_kernel.cuh (instantiated per student dtype
// in salt_cuda_{f32,bf16,f16}.cu).
#include <stdio.h>

#include <mutex>
#include <string>

#include "rows_kernel.cuh"
#include "salt_cuda.h"
#include "topk_kernel.cuh"

namespace salt {
namespace cuda {

namespace {

int64_t round_pow2(double x) {
  // Nearest power of two (in log scale) of x >= 1.
  int64_t p = 1;
  while (double(p) * 1.4142135623730951 < x) p *= 2;
  return p;
}

thread_local std::string g_error;

const char* fail(const char* what, cudaError_t err) {
  g_error = std::string("salt_kernels cuda backend: ") + what;
  if (err != cudaSuccess) {
    g_error += ": ";
    g_error += cudaGetErrorName(err);
    g_error += " (";
    g_error += cudaGetErrorString(err);
    g_error += ")";
  }
  return g_error.c_str();
}

// Thread-block clusters need compute capability 9.0; cached per device ordinal.
constexpr int kMaxDevices = 64;
int g_major[kMaxDevices] = {};
std::mutex g_major_mutex;

int device_major(int device, cudaError_t* err) {
  *err = cudaSuccess;
  if (device < 0 || device >= kMaxDevices) return 0;
  std::lock_guard<std::mutex> lock(g_major_mutex);
  if (g_major[device] == 0) {
    int major = 0;
    *err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (*err != cudaSuccess) return 0;
    g_major[device] = major;
  }
  return g_major[device];
}

// The driver's current context is per host thread and shared with torch's own CUDA runtime:
// `device` is made current only for a launch and the previous one restored, as torch's device
// guards do. error: nullptr, or the message of a failed switch.
struct DeviceScope {
  int previous = -1, device;
  const char* error = nullptr;
  explicit DeviceScope(int d) : device(d) {
    cudaError_t err = cudaGetDevice(&previous);
    if (err != cudaSuccess) {
      error = fail("cudaGetDevice failed", err);
      previous = -1;
    } else if (previous != device && (err = cudaSetDevice(device)) != cudaSuccess) {
      error = fail("cudaSetDevice failed", err);
    }
  }
  ~DeviceScope() {
    if (previous != device && previous >= 0) cudaSetDevice(previous);
  }
};

}  // namespace

LaunchConfig choose_config(int64_t vocab, int32_t student_dtype, int32_t teacher_dtype,
                           int32_t block_override, int32_t cluster_override) {
  const int64_t zsize = student_dtype == kFloat32 ? 4 : 2;
  const int64_t usize = teacher_dtype < 0 ? 0 : (teacher_dtype == kFloat32 ? 4 : 2);
  const int64_t groups = vocab / (16 / zsize);
  const int64_t row_bytes = vocab * (zsize + usize);
  // Threads per row. A Hopper SM keeps about 1024 of these threads resident (64 registers
  // each), so the rows in flight hold about 132 * 1024 / tpr * row_bytes bytes; row_bytes / 256
  // threads per row keeps that near 35 MB, inside the 50 MB L2, so that the gradient pass
  // re-reads the row from L2 rather than HBM. Each thread keeps at least 8 groups of work.
  // These are design-time choices, not measured on a GPU; block_override and cluster_override
  // (SALT_CUDA_BLOCK / SALT_CUDA_CLUSTER from Python) exist to tune them.
  int64_t tpr = row_bytes / 256;
  if (tpr > groups / 8) tpr = groups / 8;
  LaunchConfig c;
  if (tpr <= 64) {
    c.mode = kModeWarp;
    c.block = 256;
    c.cluster = 1;
  } else if (tpr <= 256) {
    c.block = 256;
  } else {
    c.block = 512;
    const int64_t cl = round_pow2(double(tpr) / 512.0);
    c.cluster = int32_t(cl > 8 ? 8 : cl);
  }
  if (block_override == 32) {
    c.mode = kModeWarp;
    c.block = 256;
    c.cluster = 1;
  } else if (block_override > 0) {
    c.mode = kModeBlock;
    c.block = block_override <= 256 ? 256 : 512;
  }
  if (cluster_override > 0 && c.mode == kModeBlock) {
    c.cluster = cluster_override >= 8 ? 8 : int32_t(round_pow2(double(cluster_override)));
  }
  if (c.mode == kModeWarp) c.cluster = 1;
  return c;
}

int32_t device_count(const char** error) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it
    *error = fail("cannot start the CUDA runtime", err);
    return -1;
  }
  *error = nullptr;
  return n;
}

const char* rows_cuda(const RowsArgs& args, int32_t device, const LaunchConfig& config) {
  if (args.n_rows <= 0) return nullptr;
  if (args.vocab < 1 || args.vocab > (int64_t(1) << 30))
    return fail("vocab must be in [1, 2^30]", cudaSuccess);
  if (args.n_rows > int64_t(0x7fffffff))
    return fail("more than 2^31 - 1 rows in one call; split the rows", cudaSuccess);

  DeviceScope scope(device);
  if (scope.error) return scope.error;
  cudaError_t err = cudaSuccess;

  LaunchConfig cfg = config;
  if (cfg.mode == kModeWarp) {
    cfg.cluster = 1;
  } else {
    cfg.block = cfg.block <= 256 ? 256 : 512;
    if (cfg.cluster < 1) cfg.cluster = 1;
    if (cfg.cluster > 8) cfg.cluster = 8;
    while (cfg.cluster > 1 && args.n_rows * cfg.cluster > int64_t(0x7fffffff)) cfg.cluster /= 2;
    if (cfg.cluster > 1) {
      const int major = device_major(device, &err);
      if (err != cudaSuccess) return fail("cannot query the device's compute capability", err);
      if (major < 9) cfg.cluster = 1;  // clusters need sm_90 or newer
    }
  }

  auto launch = [&](const LaunchConfig& c) -> cudaError_t {
    switch (args.student_dtype) {
      case kBFloat16: return launch_student_bf16(args, c);
      case kFloat16: return launch_student_f16(args, c);
      default: return launch_student_f32(args, c);
    }
  };
  err = launch(cfg);
  if (err != cudaSuccess && cfg.cluster > 1) {
    // A cluster that cannot be scheduled (resources, MPS/MIG limits): retry without clusters.
    cudaGetLastError();
    LaunchConfig plain = cfg;
    plain.cluster = 1;
    err = launch(plain);
  }
  if (err != cudaSuccess) return fail("kernel launch failed", err);
  return nullptr;
}

const char* topk_rows_cuda(const TopkArgs& args, int32_t device) {
  if (args.rows.n_rows <= 0) return nullptr;
  if (args.rows.vocab < 1 || args.rows.vocab > kTopkMaxVocab)
    return fail("the top-k kernel takes vocabularies of 1 to 262144 entries (backend=\"triton\" has no such limit)",
                cudaSuccess);
  if (args.rows.n_rows > int64_t(0x7fffffff))
    return fail("more than 2^31 - 1 rows in one call; split the rows", cudaSuccess);
  DeviceScope scope(device);
  if (scope.error) return scope.error;
  const cudaError_t err = launch_topk(args);
  if (err != cudaSuccess) return fail("kernel launch failed", err);
  return nullptr;
}

}  // namespace cuda
}  // namespace salt
