// CPU kernels of the ReLU pattern ops (op family 5): activation patterns,
// pack/unpack, Hamming distance matrix and top-k, region systems.
//
// activation_patterns runs each layer as one BLAS matrix product over the
// whole batch and then, in one parallel pass per layer, packs the sign bits
// into the output words and applies the ReLU in place. The Hamming ops read
// the references word-major (one transposed copy) and walk them in tiles that
// stay in cache while a block of queries is compared against them; top-k keeps
// a bounded heap per query, so the [Nq, Nr] matrix is never materialised.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cpu_capability.h"
#include "common/registration.h"
#include "relu_patterns/relu_patterns_cpu_rows.h"
#include "relu_patterns/relu_patterns_host.h"

namespace manifold_ext {
namespace relu_patterns {
namespace {

// References per tile: 512 x (words * 8 bytes) stays in L1/L2 for the
// pattern lengths of interest (up to a few thousand units).
constexpr int64_t kRefTile = 512;
// Queries compared against one tile before moving on (the tile is reused from cache).
constexpr int64_t kQueryBlock = 16;
// Least work (XOR + popcount of one word pair) per parallel task: below it, waking
// threads costs more than the work (and, on an oversubscribed machine, a whole time slice).
constexpr int64_t kGrainWordPairs = 1 << 18;

int64_t query_block_grain(int64_t num_ref, int64_t words) {
  return std::max<int64_t>(1, kGrainWordPairs / std::max<int64_t>(1, kQueryBlock * num_ref * words));
}

// Packs one layer's sign bits into `packed` [N, words] (OR into the words the
// layer touches) and applies the ReLU to `pre` [N, units] in place.
template <typename scalar_t>
void pack_layer_and_relu(at::Tensor& pre, at::Tensor& packed, int64_t layer_offset, bool apply_relu) {
  const int64_t rows = pre.size(0);
  const int64_t units = pre.size(1);
  const int64_t words = packed.size(1);
  if (units == 0) return;
  scalar_t* pre_data = pre.mutable_data_ptr<scalar_t>();
  int64_t* packed_data = packed.mutable_data_ptr<int64_t>();
  const int64_t first_word = layer_offset / kBitsPerWord;
  const int64_t last_word = (layer_offset + units - 1) / kBitsPerWord;
  const int64_t grain = std::max<int64_t>(1, 65536 / units);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      scalar_t* pre_row = pre_data + n * units;
      int64_t* word_row = packed_data + n * words;
      for (int64_t w = first_word; w <= last_word; ++w) {
        word_row[w] |= static_cast<int64_t>(layer_bits_of_word(pre_row, layer_offset, units, w));
      }
      if (apply_relu) {
        for (int64_t u = 0; u < units; ++u) {
          pre_row[u] = preactivation_is_active(pre_row[u]) ? pre_row[u] : scalar_t(0);  // Eq. 2
        }
      }
    }
  });
}

at::Tensor activation_patterns_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  constexpr const char* op = "activation_patterns";
  const NetworkShape shape = check_network(weights, biases, static_cast<int64_t>(weights.size()), op);
  check_inputs_x(x, weights, shape, op);
  check_cpu(x, op);
  const int64_t rows = x.size(0);
  at::Tensor packed = at::zeros({rows, shape.words}, x.options().dtype(at::kLong));  // [N, words]
  at::Tensor layer_input = x;                                                        // [N, h_{j-1}]
  int64_t offset = 0;
  for (size_t j = 0; j < weights.size(); ++j) {
    at::Tensor pre = at::addmm(biases[j], layer_input, weights[j].t());  // [N, h_j], Eq. 2 pre-activation
    check_preactivations(pre, static_cast<int64_t>(j), offset, op);      // NaN rule: relu_patterns_host.h
    const bool last = j + 1 == weights.size();
    AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "activation_patterns_cpu",
                               [&] { pack_layer_and_relu<scalar_t>(pre, packed, offset, !last); });
    offset += weights[j].size(0);
    layer_input = pre;
  }
  return packed;
}

at::Tensor unpack_patterns_cpu(const at::Tensor& packed_in, int64_t num_units) {
  check_unpack(packed_in, num_units);
  check_cpu_device(packed_in, "unpack_patterns");
  const at::Tensor packed = packed_in.contiguous();  // [N, words]
  const int64_t rows = packed.size(0);
  const int64_t words = packed.size(1);
  at::Tensor bits = at::empty({rows, num_units}, packed.options().dtype(at::kBool));  // [N, H]
  const int64_t* packed_data = packed.const_data_ptr<int64_t>();
  bool* bits_data = bits.mutable_data_ptr<bool>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, num_units)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t n = begin; n < end; ++n) {
                       for (int64_t u = 0; u < num_units; ++u) {
                         bits_data[n * num_units + u] = unit_is_active(packed_data + n * words, u);
                       }
                     }
                   });
  return bits;
}

at::Tensor pack_patterns_cpu(const at::Tensor& bits_in) {
  check_pack(bits_in);
  check_cpu_device(bits_in, "pack_patterns");
  const at::Tensor bits = bits_in.contiguous();  // [N, H]
  const int64_t rows = bits.size(0);
  const int64_t units = bits.size(1);
  const int64_t words = words_for_units(units);
  at::Tensor packed = at::empty({rows, words}, bits.options().dtype(at::kLong));  // [N, words]
  const bool* bits_data = bits.const_data_ptr<bool>();
  int64_t* packed_data = packed.mutable_data_ptr<int64_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, units)), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t w = 0; w < words; ++w) {
        packed_data[n * words + w] = static_cast<int64_t>(layer_bits_of_word(bits_data + n * units, 0, units, w));
      }
    }
  });
  return packed;
}

at::Tensor hamming_distance_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_hamming_pair(a_in, b_in, "a", "b", "hamming_distance");
  check_cpu_device(a_in, "hamming_distance");
  const at::Tensor a = a_in.contiguous();                 // [Na, words]
  const at::Tensor b_word_major = b_in.t().contiguous();  // [words, Nb]
  const int64_t num_a = a.size(0);
  const int64_t num_b = b_in.size(0);
  const int64_t words = a.size(1);
  at::Tensor dist = at::empty({num_a, num_b}, a.options().dtype(at::kInt));  // [Na, Nb]
  if (num_a == 0 || num_b == 0) return dist;
  const int64_t* a_data = a.const_data_ptr<int64_t>();
  const int64_t* b_data = b_word_major.const_data_ptr<int64_t>();
  int32_t* dist_data = dist.mutable_data_ptr<int32_t>();
  const CpuIsa isa = cpu_isa();
  const int64_t query_blocks = (num_a + kQueryBlock - 1) / kQueryBlock;
  at::parallel_for(0, query_blocks, query_block_grain(num_b, words), [&](int64_t first_block, int64_t last_block) {
    for (int64_t block = first_block; block < last_block; ++block) {
      const int64_t q_begin = block * kQueryBlock;
      const int64_t q_end = std::min(num_a, q_begin + kQueryBlock);
      for (int64_t r_begin = 0; r_begin < num_b; r_begin += kRefTile) {
        const int64_t count = std::min(kRefTile, num_b - r_begin);
        for (int64_t q = q_begin; q < q_end; ++q) {
          MANIFOLD_EXT_CALL_CPU_ISA(isa, hamming_tile, a_data + q * words, b_data + r_begin, num_b, words, count,
                                    dist_data + q * num_b + r_begin);
        }
      }
    }
  });
  return dist;
}

std::tuple<at::Tensor, at::Tensor> hamming_topk_cpu(const at::Tensor& query_in, const at::Tensor& ref_in, int64_t k) {
  check_topk(query_in, ref_in, k);
  check_cpu_device(query_in, "hamming_topk");
  const at::Tensor query = query_in.contiguous();             // [Nq, words]
  const at::Tensor ref_word_major = ref_in.t().contiguous();  // [words, Nr]
  const int64_t num_query = query.size(0);
  const int64_t num_ref = ref_in.size(0);
  const int64_t words = query.size(1);
  at::Tensor top_dist = at::empty({num_query, k}, query.options().dtype(at::kInt));    // [Nq, k]
  at::Tensor top_index = at::empty({num_query, k}, query.options().dtype(at::kLong));  // [Nq, k]
  if (num_query == 0 || k == 0) return {top_dist, top_index};
  const int64_t* query_data = query.const_data_ptr<int64_t>();
  const int64_t* ref_data = ref_word_major.const_data_ptr<int64_t>();
  int32_t* top_dist_data = top_dist.mutable_data_ptr<int32_t>();
  int64_t* top_index_data = top_index.mutable_data_ptr<int64_t>();
  const CpuIsa isa = cpu_isa();
  const int64_t query_blocks = (num_query + kQueryBlock - 1) / kQueryBlock;
  at::parallel_for(0, query_blocks, query_block_grain(num_ref, words), [&](int64_t first_block, int64_t last_block) {
    std::vector<int32_t> tile_dist(static_cast<size_t>(kQueryBlock * kRefTile));
    int64_t heap_size[kQueryBlock];
    for (int64_t block = first_block; block < last_block; ++block) {
      const int64_t q_begin = block * kQueryBlock;
      const int64_t q_count = std::min(num_query, q_begin + kQueryBlock) - q_begin;
      std::fill(heap_size, heap_size + kQueryBlock, int64_t(0));
      for (int64_t r_begin = 0; r_begin < num_ref; r_begin += kRefTile) {
        const int64_t count = std::min(kRefTile, num_ref - r_begin);
        for (int64_t qi = 0; qi < q_count; ++qi) {
          int32_t* dist_row = tile_dist.data() + qi * kRefTile;
          MANIFOLD_EXT_CALL_CPU_ISA(isa, hamming_tile, query_data + (q_begin + qi) * words, ref_data + r_begin, num_ref,
                                    words, count, dist_row);
          int32_t* heap_dist = top_dist_data + (q_begin + qi) * k;
          int64_t* heap_index = top_index_data + (q_begin + qi) * k;
          int64_t size = heap_size[qi];
          for (int64_t r = 0; r < count; ++r) {
            // References arrive in increasing index order, so an equal distance never displaces.
            if (size == k && dist_row[r] >= heap_dist[0]) continue;
            size = heap_offer(heap_dist, heap_index, k, size, dist_row[r], r_begin + r);
          }
          heap_size[qi] = size;
        }
      }
      for (int64_t qi = 0; qi < q_count; ++qi) {
        heap_sort_ascending(top_dist_data + (q_begin + qi) * k, top_index_data + (q_begin + qi) * k, k);
      }
    }
  });
  return {top_dist, top_index};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> region_system_cpu(at::TensorList weights,
                                                                             at::TensorList biases,
                                                                             const at::Tensor& patterns) {
  TORCH_CHECK_VALUE(!weights.empty(),
                    "region_system: weights must list the hidden layers followed by the output layer");
  check_cpu(weights[0], "region_system");
  return region_system_impl(weights, biases, patterns);
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CPU, m) { MANIFOLD_EXT_RELU_PATTERNS_OPS(MANIFOLD_EXT_IMPL_CPU) }

}  // namespace relu_patterns
}  // namespace manifold_ext
