// CPU row kernel: the body in rows_impl.inc is compiled once per instruction set (generic,
// AVX2, AVX-512) and the widest one the processor supports is chosen at run time, so one build
// runs on any x86-64 machine and uses AVX-512 where it exists.
#include "salt_cpu.h"

#include <cstring>
#include <functional>
#include <thread>
#include <vector>

namespace salt {
namespace isa_generic {
#include "rows_impl.inc"
}  // namespace isa_generic
}  // namespace salt

#if defined(__x86_64__) && defined(__GNUC__)
#define SALT_HAVE_X86_CLONES 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace salt {
namespace isa_avx2 {
#include "rows_impl.inc"
}  // namespace isa_avx2
}  // namespace salt
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
namespace salt {
namespace isa_avx512 {
#include "rows_impl.inc"
}  // namespace isa_avx512
}  // namespace salt
#pragma GCC pop_options
#endif

namespace salt {

const char* cpu_isa() {
#if SALT_HAVE_X86_CLONES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
#endif
  return "generic";
}

void rows_cpu(const RowsArgs& args) {
  const char* isa = cpu_isa();
#if SALT_HAVE_X86_CLONES
  if (isa[4] == '5') return isa_avx512::run_rows(args);
  if (isa[3] == '2') return isa_avx2::run_rows(args);
#endif
  (void)isa;
  isa_generic::run_rows(args);
}

}  // namespace salt
