// Which copy of the per-ISA CPU kernels to run (see cmake/ManifoldExtCpuIsa.cmake).
#pragma once

namespace manifold_ext {

enum class CpuIsa { Default, Avx2, Avx512 };

// The widest instruction set that is both compiled into this build and chosen
// by torch for its own kernels (so ATEN_CPU_CAPABILITY=default|avx2|avx512
// steers manifold_ext exactly as it steers ATen). Computed once.
CpuIsa cpu_isa();

const char* cpu_isa_name(CpuIsa isa);

}  // namespace manifold_ext

// The ISA copies of the vectorised row loops (each <family>_cpu_vec.cpp is compiled once per
// copy, into its namespace): DECLARE(ns) once per copy, e.g.
// MANIFOLD_EXT_FOR_EACH_CPU_ISA(MANIFOLD_EXT_DECLARE_COUPLING_ROWS) declares the coupling rows of all three.
#define MANIFOLD_EXT_FOR_EACH_CPU_ISA(DECLARE) DECLARE(cpu_default) DECLARE(cpu_avx2) DECLARE(cpu_avx512)

// Expands to a call of `ns::function(args...)` for the namespace of the
// chosen ISA copy (cpu_default / cpu_avx2 / cpu_avx512).
#if defined(MANIFOLD_EXT_HAVE_CPU_AVX512) && defined(MANIFOLD_EXT_HAVE_CPU_AVX2)
#define MANIFOLD_EXT_CALL_CPU_ISA(isa, function, ...)                          \
  ((isa) == ::manifold_ext::CpuIsa::Avx512 ? cpu_avx512::function(__VA_ARGS__) \
   : (isa) == ::manifold_ext::CpuIsa::Avx2 ? cpu_avx2::function(__VA_ARGS__)   \
                                           : cpu_default::function(__VA_ARGS__))
#else
#define MANIFOLD_EXT_CALL_CPU_ISA(isa, function, ...) cpu_default::function(__VA_ARGS__)
#endif
