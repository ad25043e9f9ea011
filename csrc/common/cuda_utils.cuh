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
// never more than the items need.
inline int64_t grid_stride_blocks(int64_t n, int threads) {
  const int64_t needed = (n + threads - 1) / threads;
  const int64_t filling = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return std::max<int64_t>(1, std::min(needed, filling));
}

}  // namespace cuda
}  // namespace manifold_ext
