// ReLU activation patterns (op family 5; paper 001, Liu et al., Eq. 3-5):
// the bit math shared by the CPU and CUDA kernels.
//
// Packing convention (every op of the family): the pattern of a sample is the
// sign bit of every hidden pre-activation, hidden layers concatenated in order
// (Eq. 4), stored in int64 words: hidden unit g is bit (g % 64) of word
// (g / 64), least significant bit first. Bits past the last unit are 0.
// Tie rule (Eq. 3): a unit is active (bit 1) iff its pre-activation is > 0;
// exactly 0 gives 0. NaN rule: a NaN pre-activation has no sign, so its bit is
// undefined; the host refuses it (check_preactivations in relu_patterns_host.h)
// before any bit is packed.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/hd_math.h"

namespace manifold_ext {
namespace relu_patterns {

constexpr int64_t kBitsPerWord = 64;

MANIFOLD_EXT_HD int64_t words_for_units(int64_t units) { return (units + kBitsPerWord - 1) / kBitsPerWord; }

MANIFOLD_EXT_HD int popcount64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return __popcll(v);
#else
  return __builtin_popcountll(v);
#endif
}

// Bit of hidden unit g in a packed pattern row.
MANIFOLD_EXT_HD bool unit_is_active(const int64_t* words, int64_t unit) {
  return (static_cast<uint64_t>(words[unit / kBitsPerWord]) >> (unit % kBitsPerWord)) & 1u;
}

// Eq. 3: s = 1 iff the pre-activation is > 0. float16/bfloat16 (and bool, for packing
// given bits) compare as float; double as double.
template <typename T>
MANIFOLD_EXT_HD bool preactivation_is_active(T pre) {
  if constexpr (std::is_same_v<T, double>) {
    return pre > 0.0;
  } else {
    return static_cast<float>(pre) > 0.0f;
  }
}

// The bits that word `word` of a pattern row receives from one layer whose
// units occupy global unit indices [layer_offset, layer_offset + layer_units);
// `pre` is that layer's pre-activation row. Units of other layers contribute 0,
// so the words of a row are the OR over layers.
template <typename T>
MANIFOLD_EXT_HD uint64_t layer_bits_of_word(const T* pre, int64_t layer_offset, int64_t layer_units, int64_t word) {
  const int64_t word_first = word * kBitsPerWord;
  const int64_t first = word_first > layer_offset ? word_first : layer_offset;
  const int64_t word_end = word_first + kBitsPerWord;
  const int64_t layer_end = layer_offset + layer_units;
  const int64_t end = word_end < layer_end ? word_end : layer_end;
  uint64_t bits = 0;
  for (int64_t unit = first; unit < end; ++unit) {
    bits |= static_cast<uint64_t>(preactivation_is_active(pre[unit - layer_offset])) << (unit - word_first);
  }
  return bits;
}

// Hamming distance between two packed rows: popcount of the XOR.
MANIFOLD_EXT_HD int32_t hamming_words(const int64_t* a, const int64_t* b, int64_t words) {
  int32_t distance = 0;
  for (int64_t w = 0; w < words; ++w) {
    distance += popcount64(static_cast<uint64_t>(a[w] ^ b[w]));
  }
  return distance;
}

// ---------------------------------------------------------------------------
// Top-k by (distance, index): a bounded max-heap whose root is the worst kept
// neighbour. Ties in distance are broken by the smaller reference index, so
// the result is deterministic and independent of how references are tiled.
// ---------------------------------------------------------------------------
MANIFOLD_EXT_HD bool ranks_after(int32_t dist_a, int64_t index_a, int32_t dist_b, int64_t index_b) {
  return dist_a > dist_b || (dist_a == dist_b && index_a > index_b);
}

MANIFOLD_EXT_HD void heap_sift_down(int32_t* dist, int64_t* index, int64_t size, int64_t node) {
  while (true) {
    const int64_t left = 2 * node + 1;
    if (left >= size) return;
    int64_t worst = left;
    const int64_t right = left + 1;
    if (right < size && ranks_after(dist[right], index[right], dist[left], index[left])) worst = right;
    if (!ranks_after(dist[worst], index[worst], dist[node], index[node])) return;
    const int32_t d = dist[node];
    dist[node] = dist[worst];
    dist[worst] = d;
    const int64_t i = index[node];
    index[node] = index[worst];
    index[worst] = i;
    node = worst;
  }
}

// Offers (d, i) to a heap of capacity k holding `size` entries; returns the new size.
MANIFOLD_EXT_HD int64_t heap_offer(int32_t* dist, int64_t* index, int64_t k, int64_t size, int32_t d, int64_t i) {
  if (size < k) {
    int64_t node = size;
    dist[node] = d;
    index[node] = i;
    while (node > 0) {  // sift up
      const int64_t parent = (node - 1) / 2;
      if (!ranks_after(dist[node], index[node], dist[parent], index[parent])) break;
      const int32_t pd = dist[parent];
      dist[parent] = dist[node];
      dist[node] = pd;
      const int64_t pi = index[parent];
      index[parent] = index[node];
      index[node] = pi;
      node = parent;
    }
    return size + 1;
  }
  if (ranks_after(d, i, dist[0], index[0]) || (d == dist[0] && i == index[0])) return size;
  dist[0] = d;
  index[0] = i;
  heap_sift_down(dist, index, size, 0);
  return size;
}

// In-place heap sort: afterwards the k entries are in ascending (distance, index) order.
MANIFOLD_EXT_HD void heap_sort_ascending(int32_t* dist, int64_t* index, int64_t size) {
  for (int64_t end = size - 1; end > 0; --end) {
    const int32_t d = dist[0];
    dist[0] = dist[end];
    dist[end] = d;
    const int64_t i = index[0];
    index[0] = index[end];
    index[end] = i;
    heap_sift_down(dist, index, end, 0);
  }
}

}  // namespace relu_patterns
}  // namespace manifold_ext
