// CUDA kernels of the Gaussian ELBO op. Element math: gaussian_elbo.h (shared
// with the CPU kernels), computed in at::opmath_type (float for half/bfloat16).
//
// Forward: one block per sample; its threads add the squared residuals and the
// KL terms, a block reduction gives the sample's sums (no atomics, so results
// are deterministic). Backward: one grid-stride elementwise pass over the
// pixels followed by the latents.
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

#include "common/cuda_utils.cuh"
#include "gaussian_elbo/gaussian_elbo.h"
#include "gaussian_elbo/gaussian_elbo_host.h"

namespace manifold_ext {
namespace gaussian_elbo {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) elbo_forward_kernel(
    const scalar_t* __restrict__ x,             // [B, pixels]
    const scalar_t* __restrict__ x_mean,        // [B, pixels]
    const scalar_t* __restrict__ mu,            // [B, latents]
    const scalar_t* __restrict__ logvar,        // [B, latents]
    at::opmath_type<scalar_t>* __restrict__ elbo,  // [B]
    at::opmath_type<scalar_t>* __restrict__ kl,    // [B]
    int64_t pixels, int64_t latents, at::opmath_type<scalar_t> decoder_logvar,
    at::opmath_type<scalar_t> inv_decoder_var) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x;
  const scalar_t* xs = x + b * pixels;
  const scalar_t* ms = x_mean + b * pixels;
  acc_t residual_sum = 0;
  for (int64_t i = threadIdx.x; i < pixels; i += kThreads) {
    residual_sum += squared_residual<acc_t>(static_cast<acc_t>(xs[i]), static_cast<acc_t>(ms[i]), inv_decoder_var);
  }
  const scalar_t* mus = mu + b * latents;
  const scalar_t* lvs = logvar + b * latents;
  acc_t kl_sum = 0;
  for (int64_t j = threadIdx.x; j < latents; j += kThreads) {
    kl_sum += kl_term<acc_t>(static_cast<acc_t>(mus[j]), static_cast<acc_t>(lvs[j]));
  }
  residual_sum = cuda::block_sum<kThreads>(residual_sum);
  __syncthreads();  // block_sum's shared scratch is reused by the second reduction
  kl_sum = cuda::block_sum<kThreads>(kl_sum);
  if (threadIdx.x == 0) {
    const acc_t kl_b = acc_t(0.5) * kl_sum;
    kl[b] = kl_b;
    elbo[b] = log_likelihood<acc_t>(residual_sum, pixels, decoder_logvar) - kl_b;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) elbo_backward_kernel(
    const at::opmath_type<scalar_t>* __restrict__ grad_elbo,  // [B]
    const at::opmath_type<scalar_t>* __restrict__ grad_kl,    // [B]
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ x_mean,   // [B, pixels]
    const scalar_t* __restrict__ mu, const scalar_t* __restrict__ logvar,  // [B, latents]
    scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_x_mean,     // [B, pixels]
    scalar_t* __restrict__ grad_mu, scalar_t* __restrict__ grad_logvar,    // [B, latents]
    int64_t batch, int64_t pixels, int64_t latents, at::opmath_type<scalar_t> inv_decoder_var) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pixel_items = batch * pixels;
  const int64_t total = pixel_items + batch * latents;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    if (idx < pixel_items) {
      const acc_t gx = grad_x_of_pixel<acc_t>(grad_elbo[idx / pixels], static_cast<acc_t>(x[idx]),
                                              static_cast<acc_t>(x_mean[idx]), inv_decoder_var);
      grad_x[idx] = static_cast<scalar_t>(gx);
      grad_x_mean[idx] = static_cast<scalar_t>(-gx);
    } else {
      const int64_t j = idx - pixel_items;
      const int64_t b = j / latents;
      const LatentGrads<acc_t> lg =
          latent_grads<acc_t>(grad_kl[b] - grad_elbo[b], static_cast<acc_t>(mu[j]), static_cast<acc_t>(logvar[j]));
      grad_mu[j] = static_cast<scalar_t>(lg.mu);
      grad_logvar[j] = static_cast<scalar_t>(lg.logvar);
    }
  }
}

void check_cuda(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": expected CUDA tensors, got ", x.device());
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
  TORCH_CHECK(g.batch <= std::numeric_limits<int>::max(), "gaussian_elbo: batch too large for one launch");
  if (g.batch > 0) {
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_elbo_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      elbo_forward_kernel<scalar_t><<<g.batch, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), x_mean.const_data_ptr<scalar_t>(), mu.const_data_ptr<scalar_t>(),
          logvar.const_data_ptr<scalar_t>(), elbo.mutable_data_ptr<acc_t>(), kl.mutable_data_ptr<acc_t>(), g.pixels,
          g.latents, static_cast<acc_t>(decoder_logvar), static_cast<acc_t>(std::exp(-decoder_logvar)));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {elbo, kl};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_elbo_backward_cuda(
    const at::Tensor& grad_elbo_in, const at::Tensor& grad_kl_in, const at::Tensor& x_in,
    const at::Tensor& x_mean_in, const at::Tensor& mu_in, const at::Tensor& logvar_in, double decoder_logvar) {
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
      elbo_backward_kernel<scalar_t><<<cuda::grid_stride_blocks(total, kThreads), kThreads, 0, stream>>>(
          grad_elbo.const_data_ptr<acc_t>(), grad_kl.const_data_ptr<acc_t>(), x.const_data_ptr<scalar_t>(),
          x_mean.const_data_ptr<scalar_t>(), mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(),
          grad_x.mutable_data_ptr<scalar_t>(), grad_x_mean.mutable_data_ptr<scalar_t>(),
          grad_mu.mutable_data_ptr<scalar_t>(), grad_logvar.mutable_data_ptr<scalar_t>(), g.batch, g.pixels,
          g.latents, static_cast<acc_t>(std::exp(-decoder_logvar)));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_x, grad_x_mean, grad_mu, grad_logvar};
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CUDA, m) {
  m.impl("gaussian_elbo", &gaussian_elbo_cuda);
  m.impl("gaussian_elbo_backward", &gaussian_elbo_backward_cuda);
}

}  // namespace gaussian_elbo
}  // namespace manifold_ext
