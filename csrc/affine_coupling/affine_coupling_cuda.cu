// CUDA kernels of the affine coupling op. Element math: affine_coupling.h
// (shared with the CPU kernels), computed in at::opmath_type (float for
// half/bfloat16 inputs).
//
// Forward, by the length of a row: up to kShortRowLen elements (e.g. 2-D
// point data) one thread per row; up to kWarpRowLen one warp per row; longer
// rows one block per chunk of kChunkLen elements. Each thread maps its
// elements and adds their log-scales, each row or chunk sum lands in its own
// slot, and a deterministic sum over a sample's slots gives logdet (no
// atomics). Log-scales are computed in the compute dtype and summed in double,
// as on the CPU. Backward: a grid-stride elementwise pass (32-bit index math
// below 2^31 elements).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "affine_coupling/affine_coupling_host.h"
#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/registration.h"

namespace manifold_ext {
namespace affine_coupling {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunkLen = 4096;    // elements per block in the forward pass of long rows
constexpr int64_t kShortRowLen = 32;   // rows up to this length: one thread per row
constexpr int64_t kWarpRowLen = 1024;  // rows up to this length: one warp per row

template <typename scalar_t, CouplingScale kScale, bool kReverse>
__global__ void __launch_bounds__(kThreads)
    coupling_forward_chunks_kernel(const scalar_t* __restrict__ x,     // [B*rows*L]
                                   const scalar_t* __restrict__ h,     // [B*rows*2L]
                                   scalar_t* __restrict__ y,           // [B*rows*L]
                                   double* __restrict__ chunk_logdet,  // [B*rows*chunks_per_row]
                                   int64_t row_len, int64_t chunks_per_row, at::opmath_type<scalar_t> clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t chunk = blockIdx.x;
  const int64_t row = chunk / chunks_per_row;
  const int64_t begin = (chunk % chunks_per_row) * kChunkLen;
  const int64_t end = (begin + kChunkLen < row_len) ? begin + kChunkLen : row_len;
  const scalar_t* x_row = x + active_offset(row, row_len);
  const scalar_t* shift_row = h + shift_offset(row, row_len);
  const scalar_t* raw_row = h + raw_offset(row, row_len);
  scalar_t* y_row = y + active_offset(row, row_len);

  double logdet = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const CouplingOutput<acc_t> out = coupling_forward<kScale, kReverse, acc_t>(
        static_cast<acc_t>(x_row[i]), static_cast<acc_t>(shift_row[i]), static_cast<acc_t>(raw_row[i]), clamp);
    y_row[i] = static_cast<scalar_t>(out.y);
    logdet += static_cast<double>(out.logdet);
  }
  logdet = cuda::block_sum<kThreads>(logdet);
  if (threadIdx.x == 0) chunk_logdet[chunk] = logdet;
}

// One row per warp (medium rows: a whole block would leave most of its
// threads idle). Every lane of a warp walks the same rows, so the shuffles see
// all 32 lanes.
template <typename scalar_t, CouplingScale kScale, bool kReverse>
__global__ void __launch_bounds__(kThreads)
    coupling_forward_warp_rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ h,
                                      scalar_t* __restrict__ y,
                                      double* __restrict__ row_logdet,  // [B*rows]
                                      int64_t num_rows, int64_t row_len, at::opmath_type<scalar_t> clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kWarpsPerBlock = kThreads / cuda::kWarpSize;
  const int lane = threadIdx.x % cuda::kWarpSize;
  for (int64_t row = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / cuda::kWarpSize; row < num_rows;
       row += int64_t(gridDim.x) * kWarpsPerBlock) {
    const scalar_t* x_row = x + active_offset(row, row_len);
    const scalar_t* shift_row = h + shift_offset(row, row_len);
    const scalar_t* raw_row = h + raw_offset(row, row_len);
    scalar_t* y_row = y + active_offset(row, row_len);
    double logdet = 0;
    for (int64_t i = lane; i < row_len; i += cuda::kWarpSize) {
      const CouplingOutput<acc_t> out = coupling_forward<kScale, kReverse, acc_t>(
          static_cast<acc_t>(x_row[i]), static_cast<acc_t>(shift_row[i]), static_cast<acc_t>(raw_row[i]), clamp);
      y_row[i] = static_cast<scalar_t>(out.y);
      logdet += static_cast<double>(out.logdet);
    }
    logdet = cuda::warp_sum(logdet);
    if (lane == 0) row_logdet[row] = logdet;
  }
}

template <typename scalar_t, CouplingScale kScale, bool kReverse>
__global__ void __launch_bounds__(kThreads)
    coupling_forward_short_rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ h,
                                       scalar_t* __restrict__ y,
                                       double* __restrict__ row_logdet,  // [B*rows]
                                       int64_t num_rows, int64_t row_len, at::opmath_type<scalar_t> clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < num_rows;
       row += int64_t(gridDim.x) * blockDim.x) {
    double logdet = 0;
    for (int64_t i = 0; i < row_len; ++i) {
      const CouplingOutput<acc_t> out = coupling_forward<kScale, kReverse, acc_t>(
          static_cast<acc_t>(x[active_offset(row, row_len) + i]), static_cast<acc_t>(h[shift_offset(row, row_len) + i]),
          static_cast<acc_t>(h[raw_offset(row, row_len) + i]), clamp);
      y[active_offset(row, row_len) + i] = static_cast<scalar_t>(out.y);
      logdet += static_cast<double>(out.logdet);
    }
    row_logdet[row] = logdet;
  }
}

template <typename scalar_t, typename index_t, CouplingScale kScale, bool kReverse>
__global__ void __launch_bounds__(kThreads)
    coupling_backward_kernel(const scalar_t* __restrict__ grad_y,                        // [B*rows*L]
                             const at::opmath_type<scalar_t>* __restrict__ grad_logdet,  // [B]
                             const scalar_t* __restrict__ x,                             // [B*rows*L]
                             const scalar_t* __restrict__ h,                             // [B*rows*2L]
                             scalar_t* __restrict__ grad_x,                              // [B*rows*L]
                             scalar_t* __restrict__ grad_h,                              // [B*rows*2L]
                             index_t numel, index_t rows_per_sample, index_t row_len, at::opmath_type<scalar_t> clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t idx = cuda::grid_stride_begin<index_t>(); idx < numel; idx += cuda::grid_stride_step<index_t>()) {
    const index_t row = idx / row_len;
    const index_t i = idx - row * row_len;
    // h has 2 * numel < 2^32 elements on the 32-bit path, so these fit index_t too.
    const index_t t_idx = index_t(2) * row * row_len + i;        // shift_offset(row, row_len) + i
    const index_t r_idx = (index_t(2) * row + 1) * row_len + i;  // raw_offset(row, row_len) + i
    const CouplingGrads<acc_t> g = coupling_backward<kScale, kReverse, acc_t>(
        static_cast<acc_t>(grad_y[idx]), grad_logdet[row / rows_per_sample], static_cast<acc_t>(x[idx]),
        static_cast<acc_t>(h[t_idx]), static_cast<acc_t>(h[r_idx]), clamp);
    grad_x[idx] = static_cast<scalar_t>(g.x);
    grad_h[t_idx] = static_cast<scalar_t>(g.shift);
    grad_h[r_idx] = static_cast<scalar_t>(g.raw);
  }
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_cuda(const at::Tensor& x_in, const at::Tensor& h_in,
                                                        c10::string_view scale, c10::string_view layout, double clamp,
                                                        bool reverse) {
  const CouplingMode mode = parse_mode(scale, layout, clamp, reverse);
  const RowGeometry g = check_inputs(x_in, h_in, mode);
  check_cuda(x_in, "affine_coupling");
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();  // [B, C, *spatial]
  const at::Tensor h = h_in.contiguous();  // [B, 2C, *spatial]
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const at::ScalarType acc_dtype = logdet_dtype(x.scalar_type());

  const bool thread_rows = g.row_len <= kShortRowLen;
  const bool warp_rows = g.row_len <= kWarpRowLen;
  const int64_t num_rows = g.batch * g.rows_per_sample;
  const int64_t chunks_per_row = warp_rows ? 1 : (g.row_len + kChunkLen - 1) / kChunkLen;
  at::Tensor chunk_logdet =
      at::zeros({g.batch, g.rows_per_sample * chunks_per_row}, x.options().dtype(at::kDouble));  // [B, chunks]
  const int64_t total_chunks = num_rows * chunks_per_row;
  TORCH_CHECK(total_chunks <= std::numeric_limits<int>::max(), "affine_coupling: input too large for one launch");
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  if (total_chunks > 0 && g.row_len > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_coupling_mode(mode.scale, mode.reverse, [&](auto scale_c, auto reverse_c) {
        constexpr CouplingScale kScale = decltype(scale_c)::value;
        constexpr bool kReverse = decltype(reverse_c)::value;
        if (thread_rows) {
          coupling_forward_short_rows_kernel<scalar_t, kScale, kReverse>
              <<<cuda::grid_stride_blocks(num_rows, kThreads), kThreads, 0, stream>>>(
                  x.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                  chunk_logdet.mutable_data_ptr<double>(), num_rows, g.row_len, static_cast<acc_t>(mode.clamp));
        } else if (warp_rows) {
          coupling_forward_warp_rows_kernel<scalar_t, kScale, kReverse>
              <<<cuda::grid_stride_blocks(num_rows * cuda::kWarpSize, kThreads), kThreads, 0, stream>>>(
                  x.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                  chunk_logdet.mutable_data_ptr<double>(), num_rows, g.row_len, static_cast<acc_t>(mode.clamp));
        } else {
          coupling_forward_chunks_kernel<scalar_t, kScale, kReverse><<<total_chunks, kThreads, 0, stream>>>(
              x.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
              chunk_logdet.mutable_data_ptr<double>(), g.row_len, chunks_per_row, static_cast<acc_t>(mode.clamp));
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  // The per-sample sum of the slots in double (a deterministic reduction), then logdet's dtype.
  return {y, chunk_logdet.sum(1).to(acc_dtype)};
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_backward_cuda(const at::Tensor& grad_y_in,
                                                                 const at::Tensor& grad_logdet_in,
                                                                 const at::Tensor& x_in, const at::Tensor& h_in,
                                                                 c10::string_view scale, c10::string_view layout,
                                                                 double clamp, bool reverse) {
  const CouplingMode mode = parse_mode(scale, layout, clamp, reverse);
  const RowGeometry g = check_inputs(x_in, h_in, mode);
  check_backward_inputs(grad_y_in, grad_logdet_in, x_in);
  check_cuda(x_in, "affine_coupling_backward");
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor h = h_in.contiguous();
  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor grad_logdet = grad_logdet_in.to(logdet_dtype(x.scalar_type())).contiguous();
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_h = at::empty_like(h, at::MemoryFormat::Contiguous);
  const int64_t numel = x.numel();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  if (numel > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_coupling_mode(mode.scale, mode.reverse, [&](auto scale_c, auto reverse_c) {
        // h holds 2 * numel elements: the 32-bit path needs all of its indices to fit.
        cuda::dispatch_index_type(2 * numel, [&](auto index_zero) {
          using index_t = decltype(index_zero);
          coupling_backward_kernel<scalar_t, index_t, decltype(scale_c)::value, decltype(reverse_c)::value>
              <<<cuda::grid_stride_blocks(numel, kThreads), kThreads, 0, stream>>>(
                  grad_y.const_data_ptr<scalar_t>(), grad_logdet.const_data_ptr<acc_t>(), x.const_data_ptr<scalar_t>(),
                  h.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(),
                  grad_h.mutable_data_ptr<scalar_t>(), static_cast<index_t>(numel),
                  static_cast<index_t>(g.rows_per_sample), static_cast<index_t>(g.row_len),
                  static_cast<acc_t>(mode.clamp));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  }
  return {grad_x, grad_h};
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CUDA, m) { MANIFOLD_EXT_AFFINE_COUPLING_OPS(MANIFOLD_EXT_IMPL_CUDA) }

}  // namespace affine_coupling
}  // namespace manifold_ext
