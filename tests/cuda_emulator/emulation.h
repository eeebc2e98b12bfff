// Host emulation of the CUDA features csrc/cuda/rows_kernel.cuh uses, for tests on machines
// without a GPU (emulate.cpp beside this file builds it with the host compiler;
// tests/cuda_emulator/__init__.py compiles and runs it).
//
// Every CUDA thread of a launch group (one block, or the blocks of one cluster) is a fiber
// (ucontext) on the calling OS thread, scheduled round robin; a fiber runs until it waits on a
// barrier. __syncthreads, warp shuffles (all 32 lanes must take part) and the cluster barrier
// are real barriers, so a missing or mismatched one shows up as stale data (shared memory starts
// as NaN bytes) or as a reported deadlock. Every global load and store made through __ldg,
// __ldcs and __stcs is checked for natural alignment (a 16-byte vector load needs a 16-byte
// aligned address on the GPU) and against the regions the test declares readable or writable.
//
// Not emulated: timing, ex2.approx's rounding (exp2f is used), and memory-model subtleties
// beyond barriers (the kernel communicates only through barriers).
#pragma once

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <stddef.h>
#include <ucontext.h>

#include <memory>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline EmuDim3 threadIdx;  // set by the scheduler whenever it switches fibers
inline EmuDim3 blockIdx;

namespace salt_emu {

inline std::string g_error;  // first problem found, empty when none
inline void report(const std::string& what) {
  if (g_error.empty()) g_error = what;
}

// ex2.approx.ftz.f32 stand-in: exp2f with a relative error of +-2^-21 (sign from a hash of the
// argument; about twice the hardware's ~2 ulp), so the float64 comparisons of the tests also
// cover the approximation. Subnormal results flush to zero as with .ftz.
inline float approx_exp2(float x) {
  const float y = exp2f(x);
  if (!(y >= 1.17549435e-38f)) return y != y ? y : 0.f;  // NaN stays NaN; ftz
  if (y == INFINITY) return y;
  uint32_t b;
  memcpy(&b, &x, 4);
  const float e = ((b * 2654435761u) >> 31) ? 4.76837158e-7f : -4.76837158e-7f;
  return y * (1.f + e);
}

// ---- memory regions and access checks ------------------------------------------------------------

struct Region {
  uintptr_t base;
  int64_t stride;     // bytes between rows (0: a single row)
  int64_t row_bytes;  // accessible bytes at the start of each row
  int64_t rows;
  bool writable;
};
inline std::vector<Region> g_regions;

inline bool access_ok(const void* p, size_t bytes, bool write) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a % bytes != 0) {
    char buf[160];
    snprintf(buf, sizeof buf, "misaligned %zu-byte %s at %p (block %u, thread %u)", bytes,
             write ? "store" : "load", p, blockIdx.x, threadIdx.x);
    report(buf);
    return false;
  }
  for (const Region& r : g_regions) {
    if (a < r.base || (write && !r.writable)) continue;
    const uint64_t off = a - r.base;
    const int64_t row = r.stride > 0 ? int64_t(off / uint64_t(r.stride)) : 0;
    const int64_t in_row = int64_t(off) - row * r.stride;
    if (row < r.rows && in_row + int64_t(bytes) <= r.row_bytes) return true;
  }
  char buf[160];
  snprintf(buf, sizeof buf, "out-of-bounds %zu-byte %s at %p (block %u, thread %u)", bytes,
           write ? "store" : "load", p, blockIdx.x, threadIdx.x);
  report(buf);
  return false;
}

// ---- fibers and barriers ---------------------------------------------------------------------------

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;  // uninitialized: pages are touched only as used
  unsigned block = 0, thread = 0;  // blockIdx.x, threadIdx.x
  int block_in_group = 0;
  size_t shared_cursor = 0;
  uint64_t cluster_token = 0;
  bool done = false;
};

struct Barrier {
  int expected = 0;
  int count = 0;
  uint64_t generation = 0;
};

struct Group {
  int nblocks = 1, block_threads = 0, warps = 0;
  std::vector<Barrier> block_bar;    // per block
  std::vector<Barrier> warp_bar;     // per block * warp
  std::vector<uint32_t> shfl;        // per block * warp: two buffers of 32 lanes
  std::vector<uint64_t> shfl_phase;  // per block * warp * lane
  Barrier cluster_bar;
  std::vector<std::vector<unsigned char>> arena;  // per block: its shared memory
  std::vector<int> threads_done;                  // per block; at block_threads its memory is gone
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  uint64_t progress = 0;  // bumped whenever a barrier opens or a fiber ends
};
inline Group* g_group = nullptr;
constexpr size_t kSharedBytes = 48 * 1024;  // a block's static shared memory limit

inline Fiber& me() { return *g_group->current; }

inline void yield() { swapcontext(&me().ctx, &g_group->scheduler); }

inline uint64_t arrive(Barrier& b) {
  const uint64_t gen = b.generation;
  if (++b.count == b.expected) {
    b.count = 0;
    ++b.generation;
    ++g_group->progress;
  }
  return gen;
}
inline void wait(Barrier& b, uint64_t gen) {
  while (b.generation == gen && g_error.empty()) yield();
}
inline void arrive_and_wait(Barrier& b) { wait(b, arrive(b)); }

template <typename T>
T* shared_array(size_t count) {
  Fiber& f = me();
  size_t at = (f.shared_cursor + alignof(T) - 1) / alignof(T) * alignof(T);
  if (at + count * sizeof(T) > kSharedBytes) {
    report("emulated shared memory exhausted");
    at = 0;
  }
  f.shared_cursor = at + count * sizeof(T);
  return reinterpret_cast<T*>(g_group->arena[f.block_in_group].data() + at);
}

}  // namespace salt_emu

inline void __syncthreads() {
  salt_emu::arrive_and_wait(salt_emu::g_group->block_bar[salt_emu::me().block_in_group]);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int offset) {
  static_assert(sizeof(T) == 4, "32-bit shuffles only");
  using namespace salt_emu;
  if (mask != 0xffffffffu) report("shuffle with a partial mask");
  Group& g = *g_group;
  const int lane = int(threadIdx.x % 32);
  const int warp = me().block_in_group * g.warps + int(threadIdx.x / 32);
  // Double buffering: a lane writing for shuffle k + 2 has passed the barrier of shuffle k + 1,
  // so every lane has finished reading shuffle k's buffer.
  const uint64_t phase = g.shfl_phase[size_t(warp) * 32 + lane]++;
  uint32_t* buf = &g.shfl[(size_t(warp) * 2 + phase % 2) * 32];
  memcpy(&buf[lane], &value, 4);
  arrive_and_wait(g.warp_bar[warp]);
  T out;
  memcpy(&out, &buf[lane ^ (offset & 31)], 4);
  return out;
}

// Atomics: the fibers of a group run one at a time and switch only at barriers, so a plain
// read-modify-write is atomic here.
inline unsigned atomicOr(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p = old | v;
  return old;
}

template <typename T>
T __ldg(const T* p) {
  return salt_emu::access_ok(p, sizeof(T), false) ? *p : T{};
}
template <typename T>
T __ldcs(const T* p) {
  return salt_emu::access_ok(p, sizeof(T), false) ? *p : T{};
}
template <typename T>
void __stcs(T* p, T v) {
  if (salt_emu::access_ok(p, sizeof(T), true)) *p = v;
}

namespace cooperative_groups {
struct cluster_group {
  void sync() const { salt_emu::arrive_and_wait(salt_emu::g_group->cluster_bar); }
  template <typename T>
  T* map_shared_rank(T* p, int rank) const {
    using namespace salt_emu;
    Group& g = *g_group;
    const unsigned char* own = g.arena[me().block_in_group].data();
    const ptrdiff_t off = reinterpret_cast<unsigned char*>(p) - own;
    if (off < 0 || size_t(off) >= kSharedBytes || rank < 0 || rank >= g.nblocks) {
      report("map_shared_rank outside the cluster's shared memory");
      return p;
    }
    return reinterpret_cast<T*>(g.arena[rank].data() + off);
  }
  void barrier_arrive() const {
    salt_emu::me().cluster_token = salt_emu::arrive(salt_emu::g_group->cluster_bar);
  }
  void barrier_wait() const {
    salt_emu::wait(salt_emu::g_group->cluster_bar, salt_emu::me().cluster_token);
  }
};
inline cluster_group this_cluster() { return cluster_group{}; }
}  // namespace cooperative_groups
