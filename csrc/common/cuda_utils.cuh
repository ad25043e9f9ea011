// Small CUDA helpers shared by the op families' kernels.
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>

namespace manifold_ext {
namespace cuda {

constexpr int kWarpSize = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

// Sum over a block of kThreads threads; the result is valid in thread 0.
template <int kThreads, typename T>
__device__ __forceinline__ T block_sum(T value) {
  static_assert(kThreads % kWarpSize == 0 && kThreads <= kWarpSize * kWarpSize, "block size");
  __shared__ T warp_partials[kThreads / kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  value = warp_sum(value);
  if (lane == 0) warp_partials[warp] = value;
  __syncthreads();
  value = (threadIdx.x < kThreads / kWarpSize) ? warp_partials[lane] : T(0);
  if (warp == 0) value = warp_sum(value);
  return value;
}

// Blocks for a grid-stride loop over `n` items: enough to fill the device,
// never more than the items need (at most 16 blocks per multiprocessor, so a
// grid-stride index plus one stride stays below 2^32 whenever n < 2^31: see
// dispatch_index_type).
inline int64_t grid_stride_blocks(int64_t n, int threads) {
  const int64_t needed = (n + threads - 1) / threads;
  const int64_t filling = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return std::max<int64_t>(1, std::min(needed, filling));
}

// Calls fn(index_t{}) with the index type of an elementwise kernel over `n`
// items: uint32_t when n < 2^31, else int64_t. The per-element index math
// (sample = i / len, i % len) is then 32-bit, several times cheaper than the
// 64-bit division the GPU emulates in software. With n < 2^31 and a grid of
// grid_stride_blocks (< 2^20 threads on any current GPU), i + stride < 2^32
// never wraps.
template <typename Fn>
void dispatch_index_type(int64_t n, Fn&& fn) {
  if (n < (int64_t(1) << 31)) {
    fn(uint32_t{0});
  } else {
    fn(int64_t{0});
  }
}

// First index and stride of a grid-stride loop, in the loop's index type.
template <typename index_t>
__device__ __forceinline__ index_t grid_stride_begin() {
  return index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x);
}
template <typename index_t>
__device__ __forceinline__ index_t grid_stride_step() {
  return index_t(gridDim.x) * index_t(blockDim.x);
}

}  // namespace cuda
}  // namespace manifold_ext
