// The manifold_ext library and its Python module. Each op family declares its
// schema in csrc/<family>/<family>_schema.cpp (TORCH_LIBRARY_FRAGMENT) and
// attaches kernels per backend (TORCH_LIBRARY_IMPL in <family>_cpu.cpp and
// <family>_cuda.cu); fake kernels and autograd are registered from Python
// (manifold_ext/ops/). Loading this module (import manifold_ext._C) registers
// everything with the dispatcher.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "common/cpu_capability.h"
#include "diffusion/diffusion_device_checks.h"

// The namespace is defined here, once; its operators come from the families' fragments.
TORCH_LIBRARY(manifold_ext, m) {}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = MANIFOLD_EXT_TORCH_VERSION;
#if defined(MANIFOLD_EXT_WITH_CUDA)
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  pybind11::list isas;
  isas.append("default");
#if defined(MANIFOLD_EXT_HAVE_CPU_AVX2)
  isas.append("avx2");
#endif
#if defined(MANIFOLD_EXT_HAVE_CPU_AVX512)
  isas.append("avx512");
#endif
  info["cpu_isas_compiled"] = isas;
  info["cpu_isa_in_use"] = manifold_ext::cpu_isa_name(manifold_ext::cpu_isa());
#if defined(__clang__)
  info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = "gcc " __VERSION__;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "manifold_ext compiled operators (registered as torch.ops.manifold_ext.*)";
  m.def("build_info", &build_info,
        "How this build was made: torch version it was compiled against, CUDA kernels, CPU instruction sets.");
  m.def(
      "_set_deferred_schedule_checks",
      [](bool deferred) { return manifold_ext::diffusion::deferred_schedule_checks_flag().exchange(deferred); },
      "Check per-sample diffusion schedules on CUDA inside the kernels (True) or before the launch (False); "
      "returns the previous setting. Use manifold_ext.ops.deferred_schedule_checks().");
}
