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

// Set bits of one XORed word. The AVX2 / AVX-512 copies inline popcount64
// into POPCNT targets: one instruction. Baseline x86-64 has no POPCNT, where
// __builtin_popcountll is a libgcc call per word that also keeps the loop
// scalar (4.4x slower than the AVX2 copy at H = 1024); there the SWAR count
// below uses only 64-bit shifts, ands and adds, which SSE2 has, so the loop
// over references vectorises two words per register.
__attribute__((always_inline)) inline int word_bit_count(uint64_t x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  return popcount64(x);
#else
  x = x - ((x >> 1) & 0x5555555555555555ULL);                            // 2-bit counts
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);  // 4-bit counts
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;                            // byte counts
  x += x >> 8;                                                           // no 64-bit multiply in SSE2:
  x += x >> 16;                                                          // fold the bytes with shifts
  x += x >> 32;
  return static_cast<int>(x & 0x7F);
#endif
}

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
      dist[r] += static_cast<int32_t>(word_bit_count(q ^ static_cast<uint64_t>(column[r])));
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
