// Interface between the CPU entry points (relu_patterns_cpu.cpp, compiled
// once) and the popcount loops (relu_patterns_cpu_vec.cpp, compiled once per
// instruction set into namespaces cpu_default / cpu_avx2 / cpu_avx512, where
// popcount is one instruction, and 8 lanes wide with AVX512-VPOPCNTDQ).
// Only raw pointers cross this boundary.
#pragma once

#include <cstdint>

#include "common/cpu_capability.h"

namespace manifold_ext {
namespace relu_patterns {

// Distances from one packed query row to `count` consecutive reference
// patterns stored word-major: word w of reference r is
// refs_word_major[w * ref_stride + r]. Writes dist[0..count).
#define MANIFOLD_EXT_DECLARE_HAMMING_ROWS(ns)                                                                \
  namespace ns {                                                                                             \
  void hamming_tile(const int64_t* query, const int64_t* refs_word_major, int64_t ref_stride, int64_t words, \
                    int64_t count, int32_t* dist);                                                           \
  }

MANIFOLD_EXT_FOR_EACH_CPU_ISA(MANIFOLD_EXT_DECLARE_HAMMING_ROWS)

}  // namespace relu_patterns
}  // namespace manifold_ext
