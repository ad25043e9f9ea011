// CUDA kernels of the Gaussian ELBO op. Element math: gaussian_elbo.h (shared
// with the CPU kernels), computed in at::opmath_type (float for half/bfloat16).
//
// Forward, by the size of a sample: up to kWarpRowLen pixels (and latents) one
// warp per sample; larger samples are cut into chunks of kChunkLen pixels, one
// block each, plus one block for the sample's latents, each block's sum in its
// own slot, then a deterministic per-sample sum of the slots (no atomics). The
// element terms are computed in the compute dtype and every sum in double, as
// the CPU kernel does, and log_lik and kl are formed in double from the sums.
// Backward: one grid-stride elementwise pass over the pixels followed by the
// latents (32-bit index math below 2^31 elements).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/registration.h"
#include "gaussian_elbo/gaussian_elbo.h"
#include "gaussian_elbo/gaussian_elbo_host.h"

namespace manifold_ext {
namespace gaussian_elbo {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunkLen = 4096;    // pixels per block for large samples
constexpr int64_t kWarpRowLen = 1024;  // samples with at most this many pixels and latents: one warp each

template <typename scalar_t>
struct ElboInputs {
  const scalar_t* x;       // [B, pixels]
  const scalar_t* x_mean;  // [B, pixels]
  const scalar_t* mu;      // [B, latents]
  const scalar_t* logvar;  // [B, latents]
  int64_t pixels;
  int64_t latents;
  at::opmath_type<scalar_t> inv_decoder_var;
};

// sum over pixels [begin, end) of sample b of the squared residuals / sigma_x^2,
// this thread's share (first = its first pixel, stride = threads sharing the range).
template <typename scalar_t>
__device__ __forceinline__ double residual_share(const ElboInputs<scalar_t>& in, int64_t b, int64_t first, int64_t end,
                                                 int64_t stride) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* xs = in.x + b * in.pixels;
  const scalar_t* ms = in.x_mean + b * in.pixels;
  double sum = 0;
  for (int64_t i = first; i < end; i += stride) {
    sum += static_cast<double>(
        squared_residual<acc_t>(static_cast<acc_t>(xs[i]), static_cast<acc_t>(ms[i]), in.inv_decoder_var));
  }
  return sum;
}

// 2 KL of sample b, this thread's share.
template <typename scalar_t>
__device__ __forceinline__ double kl_share(const ElboInputs<scalar_t>& in, int64_t b, int64_t first, int64_t stride) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* mus = in.mu + b * in.latents;
  const scalar_t* lvs = in.logvar + b * in.latents;
  double sum = 0;
  for (int64_t j = first; j < in.latents; j += stride) {
    sum += static_cast<double>(kl_term<acc_t>(static_cast<acc_t>(mus[j]), static_cast<acc_t>(lvs[j])));
  }
  return sum;
}

// elbo and kl of one sample from its sums (Eq. 21), in double as on the CPU.
template <typename out_t>
__device__ __forceinline__ void write_sample(out_t* elbo, out_t* kl, int64_t b, double residual_sum, double kl_sum,
                                             int64_t pixels, double decoder_logvar) {
  const double kl_b = 0.5 * kl_sum;
  kl[b] = static_cast<out_t>(kl_b);
  elbo[b] = static_cast<out_t>(log_likelihood<double>(residual_sum, pixels, decoder_logvar) - kl_b);
}

// One sample per warp. Every lane of a warp walks the same samples, so the
// shuffles see all 32 lanes.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) elbo_warp_rows_kernel(ElboInputs<scalar_t> in,
                                                                  at::opmath_type<scalar_t>* __restrict__ elbo,  // [B]
                                                                  at::opmath_type<scalar_t>* __restrict__ kl,    // [B]
                                                                  int64_t batch, double decoder_logvar) {
  constexpr int kWarpsPerBlock = kThreads / cuda::kWarpSize;
  const int lane = threadIdx.x % cuda::kWarpSize;
  for (int64_t b = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / cuda::kWarpSize; b < batch;
       b += int64_t(gridDim.x) * kWarpsPerBlock) {
    const double residual_sum = cuda::warp_sum(residual_share(in, b, lane, in.pixels, cuda::kWarpSize));
    const double kl_sum = cuda::warp_sum(kl_share(in, b, lane, cuda::kWarpSize));
    if (lane == 0) write_sample(elbo, kl, b, residual_sum, kl_sum, in.pixels, decoder_logvar);
  }
}

// One block per chunk of a sample: chunks 0 .. pixel_chunks - 1 cover its
// pixels, chunk pixel_chunks its latents; slots[b, chunk] gets the chunk's sum.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    elbo_chunks_kernel(ElboInputs<scalar_t> in, double* __restrict__ slots, int64_t pixel_chunks) {
  const int64_t chunks_per_sample = pixel_chunks + 1;
  const int64_t slot = blockIdx.x;
  const int64_t b = slot / chunks_per_sample;
  const int64_t chunk = slot % chunks_per_sample;
  double sum;
  if (chunk < pixel_chunks) {
    const int64_t begin = chunk * kChunkLen;
    const int64_t end = begin + kChunkLen < in.pixels ? begin + kChunkLen : in.pixels;
    sum = residual_share(in, b, begin + threadIdx.x, end, kThreads);
  } else {
    sum = kl_share(in, b, threadIdx.x, kThreads);
  }
  sum = cuda::block_sum<kThreads>(sum);
  if (threadIdx.x == 0) slots[slot] = sum;
}

template <typename out_t>
__global__ void elbo_finish_kernel(const double* __restrict__ slots, out_t* __restrict__ elbo, out_t* __restrict__ kl,
                                   int64_t batch, int64_t pixel_chunks, int64_t pixels, double decoder_logvar) {
  const int64_t chunks_per_sample = pixel_chunks + 1;
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < batch; b += int64_t(gridDim.x) * blockDim.x) {
    const double* sample_slots = slots + b * chunks_per_sample;
    double residual_sum = 0;
    for (int64_t k = 0; k < pixel_chunks; ++k) residual_sum += sample_slots[k];
    write_sample(elbo, kl, b, residual_sum, sample_slots[pixel_chunks], pixels, decoder_logvar);
  }
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    elbo_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_elbo,               // [B]
                         const at::opmath_type<scalar_t>* __restrict__ grad_kl,                 // [B]
                         const scalar_t* __restrict__ x, const scalar_t* __restrict__ x_mean,   // [B, pixels]
                         const scalar_t* __restrict__ mu, const scalar_t* __restrict__ logvar,  // [B, latents]
                         scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_x_mean,     // [B, pixels]
                         scalar_t* __restrict__ grad_mu, scalar_t* __restrict__ grad_logvar,    // [B, latents]
                         index_t batch, index_t pixels, index_t latents, at::opmath_type<scalar_t> inv_decoder_var) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t pixel_items = batch * pixels;
  const index_t total = pixel_items + batch * latents;
  for (index_t idx = cuda::grid_stride_begin<index_t>(); idx < total; idx += cuda::grid_stride_step<index_t>()) {
    if (idx < pixel_items) {
      const acc_t gx = grad_x_of_pixel<acc_t>(grad_elbo[idx / pixels], static_cast<acc_t>(x[idx]),
                                              static_cast<acc_t>(x_mean[idx]), inv_decoder_var);
      grad_x[idx] = static_cast<scalar_t>(gx);
      grad_x_mean[idx] = static_cast<scalar_t>(-gx);
    } else {
      const index_t j = idx - pixel_items;
      const index_t b = j / latents;
      const LatentGrads<acc_t> lg =
          latent_grads<acc_t>(grad_kl[b] - grad_elbo[b], static_cast<acc_t>(mu[j]), static_cast<acc_t>(logvar[j]));
      grad_mu[j] = static_cast<scalar_t>(lg.mu);
      grad_logvar[j] = static_cast<scalar_t>(lg.logvar);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> gaussian_elbo_cuda(const at::Tensor& x_in, const at::Tensor& x_mean_in,
                                                      const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                      double decoder_logvar) {
  const ElboGeometry g = check_inputs(x_in, x_mean_in, mu_in, logvar_in, decoder_logvar, "gaussian_elbo");
  check_cuda(x_in, "gaussian_elbo");
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor x_mean = x_mean_in.contiguous();
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor logvar = logvar_in.contiguous();
  const auto out_options = x.options().dtype(output_dtype(x.scalar_type()));
  at::Tensor elbo = at::empty({g.batch}, out_options);  // [B]
  at::Tensor kl = at::empty({g.batch}, out_options);    // [B]
  if (g.batch > 0) {
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_elbo_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const ElboInputs<scalar_t> in{x.const_data_ptr<scalar_t>(),
                                    x_mean.const_data_ptr<scalar_t>(),
                                    mu.const_data_ptr<scalar_t>(),
                                    logvar.const_data_ptr<scalar_t>(),
                                    g.pixels,
                                    g.latents,
                                    static_cast<acc_t>(std::exp(-decoder_logvar))};
      if (g.pixels <= kWarpRowLen && g.latents <= kWarpRowLen) {
        elbo_warp_rows_kernel<scalar_t>
            <<<cuda::grid_stride_blocks(g.batch * cuda::kWarpSize, kThreads), kThreads, 0, stream>>>(
                in, elbo.mutable_data_ptr<acc_t>(), kl.mutable_data_ptr<acc_t>(), g.batch, decoder_logvar);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        const int64_t pixel_chunks = (g.pixels + kChunkLen - 1) / kChunkLen;
        const int64_t slots_count = g.batch * (pixel_chunks + 1);
        TORCH_CHECK(slots_count <= std::numeric_limits<int>::max(), "gaussian_elbo: input too large for one launch");
        at::Tensor slots = at::empty({slots_count}, x.options().dtype(at::kDouble));  // [B, pixel_chunks + 1]
        elbo_chunks_kernel<scalar_t>
            <<<slots_count, kThreads, 0, stream>>>(in, slots.mutable_data_ptr<double>(), pixel_chunks);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        elbo_finish_kernel<acc_t><<<cuda::grid_stride_blocks(g.batch, kThreads), kThreads, 0, stream>>>(
            slots.const_data_ptr<double>(), elbo.mutable_data_ptr<acc_t>(), kl.mutable_data_ptr<acc_t>(), g.batch,
            pixel_chunks, g.pixels, decoder_logvar);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return {elbo, kl};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_elbo_backward_cuda(
    const at::Tensor& grad_elbo_in, const at::Tensor& grad_kl_in, const at::Tensor& x_in, const at::Tensor& x_mean_in,
    const at::Tensor& mu_in, const at::Tensor& logvar_in, double decoder_logvar) {
  const char* op = "gaussian_elbo_backward";
  const ElboGeometry g = check_inputs(x_in, x_mean_in, mu_in, logvar_in, decoder_logvar, op);
  check_backward_inputs(grad_elbo_in, grad_kl_in, x_in, op);
  check_cuda(x_in, op);
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor x_mean = x_mean_in.contiguous();
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor logvar = logvar_in.contiguous();
  const at::ScalarType acc_dtype = output_dtype(x.scalar_type());
  const at::Tensor grad_elbo = grad_elbo_in.to(acc_dtype).contiguous();
  const at::Tensor grad_kl = grad_kl_in.to(acc_dtype).contiguous();
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_x_mean = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_mu = at::empty_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor grad_logvar = at::empty_like(mu, at::MemoryFormat::Contiguous);
  const int64_t total = g.batch * (g.pixels + g.latents);
  if (total > 0) {
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_elbo_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      cuda::dispatch_index_type(total, [&](auto index_zero) {
        using index_t = decltype(index_zero);
        elbo_backward_kernel<scalar_t, index_t><<<cuda::grid_stride_blocks(total, kThreads), kThreads, 0, stream>>>(
            grad_elbo.const_data_ptr<acc_t>(), grad_kl.const_data_ptr<acc_t>(), x.const_data_ptr<scalar_t>(),
            x_mean.const_data_ptr<scalar_t>(), mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(),
            grad_x.mutable_data_ptr<scalar_t>(), grad_x_mean.mutable_data_ptr<scalar_t>(),
            grad_mu.mutable_data_ptr<scalar_t>(), grad_logvar.mutable_data_ptr<scalar_t>(),
            static_cast<index_t>(g.batch), static_cast<index_t>(g.pixels), static_cast<index_t>(g.latents),
            static_cast<acc_t>(std::exp(-decoder_logvar)));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {grad_x, grad_x_mean, grad_mu, grad_logvar};
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CUDA, m) { MANIFOLD_EXT_GAUSSIAN_ELBO_OPS(MANIFOLD_EXT_IMPL_CUDA) }

}  // namespace gaussian_elbo
}  // namespace manifold_ext
