#include "common/cpu_capability.h"

#include <ATen/Version.h>

#include <string>

namespace manifold_ext {
namespace {

CpuIsa detect_cpu_isa() {
  // at::get_cpu_capability() reports torch's choice: "AVX512", "AVX2",
  // "DEFAULT" or "NO AVX", honouring ATEN_CPU_CAPABILITY and the hardware.
  const std::string torch_choice = at::get_cpu_capability();
#if defined(MANIFOLD_EXT_HAVE_CPU_AVX512)
  if (torch_choice == "AVX512") return CpuIsa::Avx512;
#endif
#if defined(MANIFOLD_EXT_HAVE_CPU_AVX2)
  if (torch_choice == "AVX512" || torch_choice == "AVX2") return CpuIsa::Avx2;
#endif
  (void)torch_choice;
  return CpuIsa::Default;
}

}  // namespace

CpuIsa cpu_isa() {
  static const CpuIsa isa = detect_cpu_isa();
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx512: return "avx512";
    case CpuIsa::Avx2: return "avx2";
    default: return "default";
  }
}

}  // namespace manifold_ext
