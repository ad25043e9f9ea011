// Popcount loops of the Hamming ops, compiled once per instruction set
// (cmake/ManifoldExtCpuIsa.cmake); MANIFOLD_EXT_CPU_NS names this copy's
// namespace. References are word-major so the loop over references is
// contiguous and the compiler vectorises XOR + popcount + add across them.
#include "relu_patterns/relu_patterns.h"
#include "relu_patterns/relu_patterns_cpu_rows.h"

#ifndef MANIFOLD_EXT_CPU_NS
#error "compile this file through manifold_ext_add_cpu_vec_kernels (MANIFOLD_EXT_CPU_NS unset)"
#endif

// Every x86 CPU with AVX2 has POPCNT, but -mavx2 does not enable it; without
// it __builtin_popcountll is a libgcc call.
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#define MANIFOLD_EXT_POPCNT_TARGET __attribute__((target("popcnt")))
#else
#define MANIFOLD_EXT_POPCNT_TARGET
#endif

namespace manifold_ext {
namespace relu_patterns {
namespace MANIFOLD_EXT_CPU_NS {
namespace {

// Body shared by the copies below (inlined into each, so each gets its own
// target's popcount instruction).
__attribute__((always_inline)) inline void hamming_tile_body(const int64_t* __restrict__ query,
                                                             const int64_t* __restrict__ refs_word_major,
                                                             int64_t ref_stride, int64_t words, int64_t count,
                                                             int32_t* __restrict__ dist) {
  for (int64_t r = 0; r < count; ++r) dist[r] = 0;
  for (int64_t w = 0; w < words; ++w) {
    const uint64_t q = static_cast<uint64_t>(query[w]);
    const int64_t* __restrict__ column = refs_word_major + w * ref_stride;
    for (int64_t r = 0; r < count; ++r) {
      dist[r] += static_cast<int32_t>(popcount64(q ^ static_cast<uint64_t>(column[r])));
    }
  }
}

MANIFOLD_EXT_POPCNT_TARGET void hamming_tile_scalar(const int64_t* query, const int64_t* refs_word_major,
                                                    int64_t ref_stride, int64_t words, int64_t count, int32_t* dist) {
  hamming_tile_body(query, refs_word_major, ref_stride, words, count, dist);
}

#if defined(CPU_CAPABILITY_AVX512)
// 8 popcounts per instruction where the CPU has AVX512-VPOPCNTDQ (Ice Lake, Zen 4 and later).
__attribute__((target("popcnt,avx512vpopcntdq"))) void hamming_tile_vpopcnt(const int64_t* query,
                                                                            const int64_t* refs_word_major,
                                                                            int64_t ref_stride, int64_t words,
                                                                            int64_t count, int32_t* dist) {
  hamming_tile_body(query, refs_word_major, ref_stride, words, count, dist);
}

bool cpu_has_vpopcntdq() {
  static const bool has = __builtin_cpu_supports("avx512vpopcntdq");
  return has;
}
#endif

}  // namespace

void hamming_tile(const int64_t* query, const int64_t* refs_word_major, int64_t ref_stride, int64_t words,
                  int64_t count, int32_t* dist) {
#if defined(CPU_CAPABILITY_AVX512)
  if (cpu_has_vpopcntdq()) {
    hamming_tile_vpopcnt(query, refs_word_major, ref_stride, words, count, dist);
    return;
  }
#endif
  hamming_tile_scalar(query, refs_word_major, ref_stride, words, count, dist);
}

}  // namespace MANIFOLD_EXT_CPU_NS
}  // namespace relu_patterns
}  // namespace manifold_ext
