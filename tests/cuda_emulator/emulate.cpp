// Test harness: runs the CUDA row kernel (csrc/cuda/rows_kernel.cuh, compiled by the host
// compiler with SALT_CUDA_EMULATION) on the CPU, one fiber per CUDA thread, with the launch
// geometry of the real launcher. Exposed as a C function for ctypes; tests/cuda_emulator/
// __init__.py builds it with g++ (no CUDA toolkit needed) and the tests compare its results with
// the float64 oracle. Test infrastructure only: no part of the package or its build.
//
// From the repository root (the kernel source comes from csrc/cuda, and rows_kernel.cuh finds
// emulation.h through the second -I):
//   g++ -O1 -std=c++17 -shared -fPIC -Icsrc/cuda -Itests/cuda_emulator
//       tests/cuda_emulator/emulate.cpp -o emu.so
#define SALT_CUDA_EMULATION 1
#include "rows_kernel.cuh"
#include "topk_kernel.cuh"

#include <stdint.h>

namespace {

using salt::RowsArgs;
using Kernel = void (*)(const RowsArgs, const int);

using namespace salt_emu;

Kernel g_kernel = nullptr;
RowsArgs g_args;
int g_cluster_arg = 1;
salt::cuda::TopkKernel g_topk_kernel = nullptr;  // set: the launch runs the top-k kernel
salt::TopkArgs g_topk_args;

void fiber_main() {
  Fiber& f = me();
  if (g_topk_kernel != nullptr)
    g_topk_kernel(g_topk_args);
  else
    g_kernel(g_args, g_cluster_arg);
  f.done = true;
  ++g_group->progress;
  // A block that has exited no longer owns shared memory: poison it (NaN bytes), so that another
  // block of the cluster reading it afterwards (a missing cluster barrier) gets garbage.
  Group& g = *g_group;
  if (++g.threads_done[f.block_in_group] == g.block_threads)
    memset(g.arena[f.block_in_group].data(), 0xff, kSharedBytes);
  // returning resumes uc_link: the scheduler
}

void switch_to(Group& g, Fiber& f) {
  g.current = &f;
  threadIdx.x = f.thread;
  blockIdx.x = f.block;
  swapcontext(&g.scheduler, &f.ctx);
}

// Runs blocks [first, first + nblocks) of `block_threads` threads each as one group (one cluster).
void run_group(Group& g, unsigned first, int nblocks, int block_threads) {
  g.nblocks = nblocks;
  g.block_threads = block_threads;
  g.warps = block_threads / 32;
  g.block_bar.assign(size_t(nblocks), Barrier{block_threads, 0, 0});
  g.warp_bar.assign(size_t(nblocks) * g.warps, Barrier{32, 0, 0});
  g.shfl.assign(size_t(nblocks) * g.warps * 64, 0xffffffffu);
  g.shfl_phase.assign(size_t(nblocks) * g.warps * 32, 0);
  g.cluster_bar = Barrier{nblocks * block_threads, 0, 0};
  g.arena.assign(size_t(nblocks), std::vector<unsigned char>(kSharedBytes, 0xff));  // NaN bytes
  g.threads_done.assign(size_t(nblocks), 0);
  const size_t n = size_t(nblocks) * block_threads;
  if (g.fibers.size() < n) g.fibers.resize(n);
  constexpr size_t kStack = 64 * 1024;
  for (size_t i = 0; i < n; ++i) {
    Fiber& f = g.fibers[i];
    if (!f.stack) f.stack.reset(new char[kStack]);
    f.block = first + unsigned(i / block_threads);
    f.thread = unsigned(i % block_threads);
    f.block_in_group = int(i / block_threads);
    f.shared_cursor = 0;
    f.cluster_token = 0;
    f.done = false;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &g.scheduler;
    makecontext(&f.ctx, fiber_main, 0);
  }
  // Block priority: the lowest block runs (its threads round robin) until none of its threads can
  // move, then the next block. A block thus runs ahead of the others of its cluster as far as
  // the barriers allow (and exits first when nothing holds it), which exposes a missing
  // cluster barrier; inside a block, round robin exposes a missing __syncthreads.
  for (;;) {
    const uint64_t round_start = g.progress;
    bool any = false;
    for (int b = 0; b < nblocks; ++b) {
      const size_t lo = size_t(b) * block_threads, hi = lo + block_threads;
      for (;;) {
        const uint64_t before = g.progress;
        for (size_t i = lo; i < hi; ++i) {
          if (g.fibers[i].done) continue;
          any = true;
          switch_to(g, g.fibers[i]);
        }
        if (g.progress == before) break;
      }
    }
    if (!any) break;
    if (g.progress == round_start) {
      report("deadlock: threads wait on a barrier that not every thread reaches");
      // Let every fiber run to its end (waits return at once once an error is set).
      for (size_t i = 0; i < n; ++i)
        while (!g.fibers[i].done) switch_to(g, g.fibers[i]);
      break;
    }
  }
}

template <int DZ, int DU, bool TEACHER>
Kernel pick_kernel(const RowsArgs& a, int mode, int block, bool options) {
  if (options) {  // as launch_typed_options: a warp per row or 256-thread blocks
    if (mode == salt::cuda::kModeWarp) return salt::cuda::rows_kernel_options<DZ, DU, TEACHER, 256, true>;
    return salt::cuda::rows_kernel_options<DZ, DU, TEACHER, 256, false>;
  }
  // as launch_typed: the same choice of alignment path and temperature mode
  return salt::cuda::pick_rows_kernel<DZ, DU, TEACHER>(a, mode == salt::cuda::kModeWarp, block);
}

template <int DZ>
Kernel pick_teacher(const RowsArgs& a, int mode, int block) {
  const bool o = salt::cuda::uses_options(a);
  if (a.teacher == nullptr || a.kd_weight == 0.f) return pick_kernel<DZ, salt::kFloat32, false>(a, mode, block, o);
  switch (a.teacher_dtype) {
    case salt::kBFloat16: return pick_kernel<DZ, salt::kBFloat16, true>(a, mode, block, o);
    case salt::kFloat16: return pick_kernel<DZ, salt::kFloat16, true>(a, mode, block, o);
    default: return pick_kernel<DZ, salt::kFloat32, true>(a, mode, block, o);
  }
}

}  // namespace

namespace {

// The RowsArgs fields of salt_emulate_rows' ia and fa (layout below).
RowsArgs rows_args(const int64_t* ia, const double* fa) {
  RowsArgs a;
  a.student = reinterpret_cast<const void*>(ia[0]);
  a.student_row_stride = ia[1];
  a.student_dtype = int32_t(ia[2]);
  a.teacher = reinterpret_cast<const void*>(ia[3]);
  a.teacher_row_stride = ia[4];
  a.teacher_dtype = int32_t(ia[5]);
  a.labels = reinterpret_cast<const void*>(ia[6]);
  a.labels_stride = ia[7];
  a.labels_int64 = int32_t(ia[8]);
  a.n_rows = ia[9];
  a.vocab = ia[10];
  a.ignore_index = ia[11];
  a.loss = reinterpret_cast<float*>(ia[12]);
  a.ce = reinterpret_cast<float*>(ia[13]);
  a.kd = reinterpret_cast<float*>(ia[14]);
  a.lse = reinterpret_cast<float*>(ia[15]);
  a.grad = reinterpret_cast<void*>(ia[16]);
  a.grad_row_stride = ia[17];
  a.grad_scale = reinterpret_cast<const float*>(ia[18]);
  a.grad_scale_stride = ia[19];
  a.kd_weight = a.teacher ? float(fa[0]) : 0.f;
  a.temperature = float(fa[1]);
  a.kd_vocab = ia[23];
  a.divergence = int32_t(ia[24]);
  a.accuracy = reinterpret_cast<float*>(ia[25]);
  a.softcap = float(fa[2]);
  a.teacher_softcap = float(fa[3]);
  a.beta = float(fa[4]);
  a.label_smoothing = float(fa[5]);
  a.z_loss = float(fa[6]);
  return a;
}

void set_regions(const int64_t* regions, int n_regions) {
  g_error.clear();
  g_regions.clear();
  for (int i = 0; i < n_regions; ++i) {
    const int64_t* r = regions + 5 * i;
    g_regions.push_back(Region{uintptr_t(r[0]), r[1], r[2], r[3], r[4] != 0});
  }
}

int finish(char* error, int error_len) {
  g_group = nullptr;
  g_topk_kernel = nullptr;
  if (!g_error.empty()) {
    snprintf(error, size_t(error_len), "%s", g_error.c_str());
    return 1;
  }
  return 0;
}

Group g_launch_group;  // fibers and stacks are reused between calls

}  // namespace

// ia (int64): student, student_row_stride, student_dtype, teacher, teacher_row_stride,
//   teacher_dtype, labels, labels_stride, labels_int64, n_rows, vocab, ignore_index, loss, ce, kd,
//   lse, grad, grad_row_stride, grad_scale, grad_scale_stride, mode, block, cluster, kd_vocab,
//   divergence, accuracy
// fa (double): kd_weight, temperature, softcap, teacher_softcap, beta, label_smoothing, z_loss
// regions (int64, n_regions x 5): base, row stride in bytes, row bytes, rows, writable
// Returns 0, or 1 with the first problem found (access, deadlock) in `error`.
extern "C" int salt_emulate_rows(const int64_t* ia, const double* fa, const int64_t* regions,
                                 int n_regions, char* error, int error_len) {
  RowsArgs a = rows_args(ia, fa);
  const int mode = int(ia[20]);
  const int block = ia[21] <= 256 ? 256 : 512;
  const int cluster = mode == salt::cuda::kModeWarp ? 1 : int(ia[22] < 1 ? 1 : ia[22]);

  set_regions(regions, n_regions);
  switch (a.student_dtype) {
    case salt::kBFloat16: g_kernel = pick_teacher<salt::kBFloat16>(a, mode, block); break;
    case salt::kFloat16: g_kernel = pick_teacher<salt::kFloat16>(a, mode, block); break;
    default: g_kernel = pick_teacher<salt::kFloat32>(a, mode, block); break;
  }
  g_args = a;
  g_cluster_arg = cluster;

  Group& group = g_launch_group;
  g_group = &group;
  if (a.n_rows > 0) {
    if (mode == salt::cuda::kModeWarp) {
      const int64_t blocks = (a.n_rows + 7) / 8;
      for (int64_t b = 0; b < blocks; ++b) run_group(group, unsigned(b), 1, 256);
    } else {
      const int64_t blocks = a.n_rows * cluster;
      for (int64_t b = 0; b < blocks; b += cluster) run_group(group, unsigned(b), cluster, block);
    }
  }
  return finish(error, error_len);
}

// The top-k teacher kernel (topk_kernel.cuh), a block of kTopkBlock threads per row as
// salt_cuda_topk.cu launches it. ia and fa as salt_emulate_rows (mode, block, cluster, kd_vocab
// and divergence unused; the teacher fields 0), then ta (int64): indices, indices_row_stride (in
// elements), indices_int64, logprobs, logprobs_row_stride (in elements), logprobs_dtype, k,
// bucket. The kd_weight of fa is kept as given (the slots are read when it is > 0 and k > 0).
extern "C" int salt_emulate_topk_rows(const int64_t* ia, const double* fa, const int64_t* ta,
                                      const int64_t* regions, int n_regions, char* error, int error_len) {
  salt::TopkArgs t;
  t.rows = rows_args(ia, fa);
  t.rows.kd_weight = float(fa[0]);
  t.indices = reinterpret_cast<const void*>(ta[0]);
  t.indices_row_stride = ta[1];
  t.indices_int64 = int32_t(ta[2]);
  t.logprobs = reinterpret_cast<const void*>(ta[3]);
  t.logprobs_row_stride = ta[4];
  t.logprobs_dtype = int32_t(ta[5]);
  t.k = ta[6];
  t.bucket = int32_t(ta[7]);
  set_regions(regions, n_regions);
  g_topk_kernel = salt::cuda::pick_topk(t);
  g_topk_args = t;
  g_group = &g_launch_group;
  for (int64_t r = 0; r < t.rows.n_rows; ++r) run_group(g_launch_group, unsigned(r), 1, salt::cuda::kTopkBlock);
  return finish(error, error_len);
}
