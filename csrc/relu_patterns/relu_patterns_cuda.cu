// CUDA kernels of the ReLU pattern ops (op family 5). Bit math:
// relu_patterns.h (shared with the CPU kernels).
//
// activation_patterns: each layer is one cuBLAS GEMM (at::addmm), then one
// thread per (row, word) ORs the layer's sign bits into its word and applies
// the ReLU to the units of that word (a word belongs to one thread per launch,
// launches are ordered on the stream, so no atomics).
// hamming_distance: references word-major; a block of threads covers
// consecutive references (coalesced loads) for a group of queries whose words
// sit in shared memory. hamming_topk: the references are dealt out to S
// "splits" (split s takes references s, s + S, s + 2S, ...), one thread per
// (query, split) keeps the split's bounded top-k heap, so consecutive threads
// read consecutive references (coalesced) and a single query still fills the
// GPU; a second pass merges each query's S heaps (ties by the smaller index,
// so the result does not depend on S). With S = 1 the first pass writes the
// output directly. The [Nq, Nr] matrix is never formed.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/registration.h"
#include "relu_patterns/relu_patterns_host.h"

namespace manifold_ext {
namespace relu_patterns {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pack_layer_and_relu_kernel(scalar_t* __restrict__ pre,    // [N, units]
                               int64_t* __restrict__ packed,  // [N, words]
                               int64_t rows, int64_t units, int64_t words, int64_t layer_offset, int64_t first_word,
                               int64_t layer_words, bool apply_relu) {
  const int64_t total = rows * layer_words;
  for (int64_t item = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; item < total;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = item / layer_words;
    const int64_t w = first_word + item % layer_words;
    scalar_t* pre_row = pre + n * units;
    packed[n * words + w] |= static_cast<int64_t>(layer_bits_of_word(pre_row, layer_offset, units, w));
    if (apply_relu) {
      const int64_t word_begin = w * kBitsPerWord;
      const int64_t word_end = word_begin + kBitsPerWord;
      const int64_t unit_begin = (word_begin > layer_offset ? word_begin : layer_offset) - layer_offset;
      const int64_t unit_end = (word_end < layer_offset + units ? word_end : layer_offset + units) - layer_offset;
      for (int64_t u = unit_begin; u < unit_end; ++u) {
        if (!preactivation_is_active(pre_row[u])) pre_row[u] = scalar_t(0);  // Eq. 2
      }
    }
  }
}

at::Tensor activation_patterns_cuda(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  constexpr const char* op = "activation_patterns";
  const NetworkShape shape = check_network(weights, biases, static_cast<int64_t>(weights.size()), op);
  check_inputs_x(x, weights, shape, op);
  check_cuda(x, op);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t rows = x.size(0);
  at::Tensor packed = at::zeros({rows, shape.words}, x.options().dtype(at::kLong));  // [N, words]
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor layer_input = x;
  int64_t offset = 0;
  for (size_t j = 0; j < weights.size(); ++j) {
    at::Tensor pre = at::addmm(biases[j], layer_input, weights[j].t());  // [N, h_j]
    const int64_t units = weights[j].size(0);
    if (units > 0 && rows > 0) {
      const int64_t first_word = offset / kBitsPerWord;
      const int64_t layer_words = (offset + units - 1) / kBitsPerWord - first_word + 1;
      const bool apply_relu = j + 1 < weights.size();
      const int64_t blocks = cuda::grid_stride_blocks(rows * layer_words, kThreads);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "activation_patterns_cuda", [&] {
        pack_layer_and_relu_kernel<scalar_t>
            <<<blocks, kThreads, 0, stream>>>(pre.mutable_data_ptr<scalar_t>(), packed.mutable_data_ptr<int64_t>(),
                                              rows, units, shape.words, offset, first_word, layer_words, apply_relu);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    offset += units;
    layer_input = pre;
  }
  return packed;
}

template <typename index_t>
__global__ void __launch_bounds__(kThreads) unpack_kernel(const int64_t* __restrict__ packed,  // [N, words]
                                                          bool* __restrict__ bits,             // [N, H]
                                                          index_t total, index_t units, int64_t words) {
  for (index_t item = cuda::grid_stride_begin<index_t>(); item < total; item += cuda::grid_stride_step<index_t>()) {
    const index_t n = item / units;
    bits[item] = unit_is_active(packed + int64_t(n) * words, item - n * units);
  }
}

at::Tensor unpack_patterns_cuda(const at::Tensor& packed_in, int64_t num_units) {
  check_unpack(packed_in, num_units);
  check_cuda(packed_in, "unpack_patterns");
  const c10::cuda::CUDAGuard device_guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous();
  const int64_t rows = packed.size(0);
  at::Tensor bits = at::empty({rows, num_units}, packed.options().dtype(at::kBool));
  const int64_t total = rows * num_units;
  if (total == 0) return bits;
  cuda::dispatch_index_type(total, [&](auto index_zero) {
    using index_t = decltype(index_zero);
    unpack_kernel<index_t>
        <<<cuda::grid_stride_blocks(total, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            packed.const_data_ptr<int64_t>(), bits.mutable_data_ptr<bool>(), static_cast<index_t>(total),
            static_cast<index_t>(num_units), packed.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return bits;
}

__global__ void __launch_bounds__(kThreads) pack_kernel(const bool* __restrict__ bits,  // [N, H]
                                                        int64_t* __restrict__ packed,   // [N, words]
                                                        int64_t rows, int64_t units, int64_t words) {
  const int64_t total = rows * words;
  for (int64_t item = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; item < total;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = item / words;
    packed[item] = static_cast<int64_t>(layer_bits_of_word(bits + n * units, 0, units, item % words));
  }
}

at::Tensor pack_patterns_cuda(const at::Tensor& bits_in) {
  check_pack(bits_in);
  check_cuda(bits_in, "pack_patterns");
  const c10::cuda::CUDAGuard device_guard(bits_in.device());
  const at::Tensor bits = bits_in.contiguous();
  const int64_t rows = bits.size(0);
  const int64_t words = words_for_units(bits.size(1));
  at::Tensor packed = at::empty({rows, words}, bits.options().dtype(at::kLong));
  const int64_t total = rows * words;
  if (total == 0) return packed;
  pack_kernel<<<cuda::grid_stride_blocks(total, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      bits.const_data_ptr<bool>(), packed.mutable_data_ptr<int64_t>(), rows, bits.size(1), words);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return packed;
}

// Queries per block of the distance kernel and words of them staged per pass.
constexpr int kDistanceQueries = 8;
constexpr int kStagedWords = 64;

__global__ void __launch_bounds__(kThreads)
    hamming_distance_kernel(const int64_t* __restrict__ a,             // [Na, words]
                            const int64_t* __restrict__ b_word_major,  // [words, Nb]
                            int32_t* __restrict__ dist,                // [Na, Nb]
                            int64_t num_a, int64_t num_b, int64_t words) {
  __shared__ int64_t staged[kDistanceQueries][kStagedWords];
  const int64_t r = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const int64_t q_begin = blockIdx.y * int64_t(kDistanceQueries);
  int32_t acc[kDistanceQueries];
#pragma unroll
  for (int qi = 0; qi < kDistanceQueries; ++qi) acc[qi] = 0;
  for (int64_t w_begin = 0; w_begin < words; w_begin += kStagedWords) {
    const int64_t remaining = words - w_begin;
    const int64_t chunk = remaining < kStagedWords ? remaining : int64_t(kStagedWords);
    for (int i = threadIdx.x; i < kDistanceQueries * kStagedWords; i += kThreads) {
      const int qi = i / kStagedWords;
      const int wi = i % kStagedWords;
      const int64_t q = q_begin + qi;
      staged[qi][wi] = (q < num_a && wi < chunk) ? a[q * words + w_begin + wi] : 0;
    }
    __syncthreads();
    if (r < num_b) {
      for (int64_t wi = 0; wi < chunk; ++wi) {
        const uint64_t ref_word = static_cast<uint64_t>(b_word_major[(w_begin + wi) * num_b + r]);
#pragma unroll
        for (int qi = 0; qi < kDistanceQueries; ++qi) {
          acc[qi] += popcount64(ref_word ^ static_cast<uint64_t>(staged[qi][wi]));
        }
      }
    }
    __syncthreads();
  }
  if (r < num_b) {
#pragma unroll
    for (int qi = 0; qi < kDistanceQueries; ++qi) {
      if (q_begin + qi < num_a) dist[(q_begin + qi) * num_b + r] = acc[qi];
    }
  }
}

at::Tensor hamming_distance_cuda(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_hamming_pair(a_in, b_in, "a", "b", "hamming_distance");
  check_cuda(a_in, "hamming_distance");
  const c10::cuda::CUDAGuard device_guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b_word_major = b_in.t().contiguous();
  const int64_t num_a = a.size(0);
  const int64_t num_b = b_in.size(0);
  at::Tensor dist = at::empty({num_a, num_b}, a.options().dtype(at::kInt));
  if (num_a == 0 || num_b == 0) return dist;
  const int64_t query_groups = (num_a + kDistanceQueries - 1) / kDistanceQueries;
  TORCH_CHECK(query_groups <= 65535 * int64_t(1024), "hamming_distance: too many query patterns for one launch");
  const int64_t ref_blocks = (num_b + kThreads - 1) / kThreads;
  // gridDim.y is limited to 65535: launch query groups in slices.
  for (int64_t group_begin = 0; group_begin < query_groups; group_begin += 65535) {
    const int64_t groups = std::min<int64_t>(65535, query_groups - group_begin);
    const int64_t q_offset = group_begin * kDistanceQueries;
    const dim3 grid(static_cast<unsigned>(ref_blocks), static_cast<unsigned>(groups));
    hamming_distance_kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        a.const_data_ptr<int64_t>() + q_offset * a.size(1), b_word_major.const_data_ptr<int64_t>(),
        dist.mutable_data_ptr<int32_t>() + q_offset * num_b, num_a - q_offset, num_b, a.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return dist;
}

// Query words held in registers when the pattern is at most this many words (1,024 units).
constexpr int kRegisterWords = 16;
constexpr int kTopkThreads = 128;
// A split scans at least this many references (so its heap upkeep stays small
// next to the scan), and a query is cut into at most this many splits (the
// merge pass reads splits * k candidates per query on one thread).
constexpr int64_t kMinRefsPerSplit = 64;
constexpr int64_t kMaxSplits = 1024;
// Candidate storage of the split pass: at most this many bytes.
constexpr int64_t kMaxCandidateBytes = int64_t(512) << 20;

// Pass 1: thread (q, s) offers references s, s + splits, ... (increasing index
// order, so an equal distance never displaces a kept one) to a heap of
// capacity k at heap_dist/heap_index + (q * splits + s) * k. Unused entries
// get index -1. With splits == 1 the heap is sorted in place: it is the answer.
template <bool kInRegisters>
__global__ void __launch_bounds__(kTopkThreads)
    hamming_topk_split_kernel(const int64_t* __restrict__ query,           // [Nq, words]
                              const int64_t* __restrict__ ref_word_major,  // [words, Nr]
                              int32_t* __restrict__ heap_dist,             // [Nq, splits, k]
                              int64_t* __restrict__ heap_index,            // [Nq, splits, k]
                              int64_t num_query, int64_t num_ref, int64_t words, int64_t k, int64_t splits) {
  const int64_t item = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (item >= num_query * splits) return;
  const int64_t q = item / splits;
  const int64_t split = item - q * splits;
  const int64_t* query_row = query + q * words;
  uint64_t query_words[kInRegisters ? kRegisterWords : 1];
  if (kInRegisters) {
#pragma unroll
    for (int w = 0; w < kRegisterWords; ++w) query_words[w] = w < words ? static_cast<uint64_t>(query_row[w]) : 0;
  }
  int32_t* dist = heap_dist + item * k;
  int64_t* index = heap_index + item * k;
  int64_t size = 0;
  int32_t worst = 0;
  for (int64_t r = split; r < num_ref; r += splits) {
    int32_t d = 0;
    if (kInRegisters) {
#pragma unroll
      for (int w = 0; w < kRegisterWords; ++w) {
        if (w < words) d += popcount64(query_words[w] ^ static_cast<uint64_t>(ref_word_major[w * num_ref + r]));
      }
    } else {
      for (int64_t w = 0; w < words; ++w) {
        d += popcount64(static_cast<uint64_t>(query_row[w]) ^ static_cast<uint64_t>(ref_word_major[w * num_ref + r]));
      }
    }
    if (size == k && d >= worst) continue;
    size = heap_offer(dist, index, k, size, d, r);
    worst = dist[0];
  }
  if (splits == 1) {
    heap_sort_ascending(dist, index, size);
  } else {
    for (int64_t e = size; e < k; ++e) index[e] = -1;
  }
}

// Pass 2: one thread per query merges its splits * k candidates (skipping
// unused entries) into the output heap, then sorts it. heap_offer orders by
// (distance, index), so the arrival order of candidates does not matter.
__global__ void __launch_bounds__(kTopkThreads)
    hamming_topk_merge_kernel(const int32_t* __restrict__ cand_dist,   // [Nq, splits * k]
                              const int64_t* __restrict__ cand_index,  // [Nq, splits * k]
                              int32_t* __restrict__ top_dist,          // [Nq, k]
                              int64_t* __restrict__ top_index,         // [Nq, k]
                              int64_t num_query, int64_t k, int64_t candidates_per_query) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (q >= num_query) return;
  const int32_t* dist_in = cand_dist + q * candidates_per_query;
  const int64_t* index_in = cand_index + q * candidates_per_query;
  int32_t* dist = top_dist + q * k;
  int64_t* index = top_index + q * k;
  int64_t size = 0;
  for (int64_t c = 0; c < candidates_per_query; ++c) {
    if (index_in[c] < 0) continue;
    size = heap_offer(dist, index, k, size, dist_in[c], index_in[c]);
  }
  heap_sort_ascending(dist, index, size);
}

// Splits per query: enough (query, split) threads to fill the device, each
// split at least kMinRefsPerSplit references, at most kMaxSplits, and the
// candidates within kMaxCandidateBytes; 1 (no merge pass) when one thread per
// query already fills the device.
int64_t topk_splits(int64_t num_query, int64_t num_ref, int64_t k) {
  const int64_t filling = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 2048;
  int64_t splits = (filling + num_query - 1) / num_query;
  splits = std::min(splits, std::max<int64_t>(1, num_ref / kMinRefsPerSplit));
  splits = std::min(splits, kMaxSplits);
  const int64_t bytes_per_split = num_query * k * int64_t(sizeof(int32_t) + sizeof(int64_t));
  splits = std::min(splits, std::max<int64_t>(1, kMaxCandidateBytes / std::max<int64_t>(1, bytes_per_split)));
  return std::max<int64_t>(1, splits);
}

template <bool kInRegisters>
void launch_topk_split(const at::Tensor& query, const at::Tensor& ref_word_major, int32_t* dist, int64_t* index,
                       int64_t num_ref, int64_t k, int64_t splits, cudaStream_t stream) {
  const int64_t num_query = query.size(0);
  const int64_t blocks = (num_query * splits + kTopkThreads - 1) / kTopkThreads;
  hamming_topk_split_kernel<kInRegisters>
      <<<blocks, kTopkThreads, 0, stream>>>(query.const_data_ptr<int64_t>(), ref_word_major.const_data_ptr<int64_t>(),
                                            dist, index, num_query, num_ref, query.size(1), k, splits);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> hamming_topk_cuda(const at::Tensor& query_in, const at::Tensor& ref_in, int64_t k) {
  check_topk(query_in, ref_in, k);
  check_cuda(query_in, "hamming_topk");
  const c10::cuda::CUDAGuard device_guard(query_in.device());
  const at::Tensor query = query_in.contiguous();
  const at::Tensor ref_word_major = ref_in.t().contiguous();
  const int64_t num_query = query.size(0);
  const int64_t num_ref = ref_in.size(0);
  at::Tensor top_dist = at::empty({num_query, k}, query.options().dtype(at::kInt));
  at::Tensor top_index = at::empty({num_query, k}, query.options().dtype(at::kLong));
  if (num_query == 0 || k == 0) return {top_dist, top_index};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool in_registers = query.size(1) <= kRegisterWords;
  const int64_t splits = topk_splits(num_query, num_ref, k);
  TORCH_CHECK((num_query * splits + kTopkThreads - 1) / kTopkThreads <= std::numeric_limits<int>::max(),
              "hamming_topk: too many query patterns for one launch");
  if (splits == 1) {  // one thread per query fills the device: its heap is the output row
    if (in_registers) {
      launch_topk_split<true>(query, ref_word_major, top_dist.mutable_data_ptr<int32_t>(),
                              top_index.mutable_data_ptr<int64_t>(), num_ref, k, 1, stream);
    } else {
      launch_topk_split<false>(query, ref_word_major, top_dist.mutable_data_ptr<int32_t>(),
                               top_index.mutable_data_ptr<int64_t>(), num_ref, k, 1, stream);
    }
    return {top_dist, top_index};
  }
  at::Tensor cand_dist = at::empty({num_query, splits * k}, query.options().dtype(at::kInt));
  at::Tensor cand_index = at::empty({num_query, splits * k}, query.options().dtype(at::kLong));
  if (in_registers) {
    launch_topk_split<true>(query, ref_word_major, cand_dist.mutable_data_ptr<int32_t>(),
                            cand_index.mutable_data_ptr<int64_t>(), num_ref, k, splits, stream);
  } else {
    launch_topk_split<false>(query, ref_word_major, cand_dist.mutable_data_ptr<int32_t>(),
                             cand_index.mutable_data_ptr<int64_t>(), num_ref, k, splits, stream);
  }
  hamming_topk_merge_kernel<<<(num_query + kTopkThreads - 1) / kTopkThreads, kTopkThreads, 0, stream>>>(
      cand_dist.const_data_ptr<int32_t>(), cand_index.const_data_ptr<int64_t>(), top_dist.mutable_data_ptr<int32_t>(),
      top_index.mutable_data_ptr<int64_t>(), num_query, k, splits * k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {top_dist, top_index};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> region_system_cuda(at::TensorList weights,
                                                                              at::TensorList biases,
                                                                              const at::Tensor& patterns) {
  TORCH_CHECK_VALUE(!weights.empty(),
                    "region_system: weights must list the hidden layers followed by the output layer");
  check_cuda(weights[0], "region_system");
  const c10::cuda::CUDAGuard device_guard(weights[0].device());
  return region_system_impl(weights, biases, patterns);
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CUDA, m) { MANIFOLD_EXT_RELU_PATTERNS_OPS(MANIFOLD_EXT_IMPL_CUDA) }

}  // namespace relu_patterns
}  // namespace manifold_ext
