// CPU kernels of the Gaussian ELBO op: validation, output allocation and a
// parallel walk over samples. Element math: gaussian_elbo.h (shared with the
// CUDA kernels).
//
// Determinism: each sample's sums run sequentially in one task, in double, so
// results do not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common/checks.h"
#include "common/registration.h"
#include "gaussian_elbo/gaussian_elbo.h"
#include "gaussian_elbo/gaussian_elbo_host.h"

namespace manifold_ext {
namespace gaussian_elbo {
namespace {

// Minimum work per parallel task, in elements.
constexpr int64_t kGrainElems = 32768;

int64_t sample_grain(const ElboGeometry& g) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, g.pixels + g.latents));
}

// Independent partial sums, so the per-sample reductions pipeline (and
// vectorise) instead of waiting on one dependent chain of double adds; their
// fixed combination order keeps the result deterministic.
constexpr int kLanes = 8;

template <typename scalar_t, typename TermFn>
double lane_sum(int64_t n, TermFn term) {
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += term(i + l);
  }
  for (int l = 0; i < n; ++i, ++l) lanes[l] += term(i);
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

std::tuple<at::Tensor, at::Tensor> gaussian_elbo_cpu(const at::Tensor& x_in, const at::Tensor& x_mean_in,
                                                     const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                     double decoder_logvar) {
  const ElboGeometry g = check_inputs(x_in, x_mean_in, mu_in, logvar_in, decoder_logvar, "gaussian_elbo");
  check_cpu(x_in, "gaussian_elbo");
  const at::Tensor x = x_in.contiguous();               // [B, pixels]
  const at::Tensor x_mean = x_mean_in.contiguous();     // [B, pixels]
  const at::Tensor mu = mu_in.contiguous();             // [B, latents]
  const at::Tensor logvar = logvar_in.contiguous();     // [B, latents]
  at::Tensor elbo = at::empty({g.batch}, x.options());  // [B]
  at::Tensor kl = at::empty({g.batch}, x.options());    // [B]
  const double inv_decoder_var_d = std::exp(-decoder_logvar);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gaussian_elbo_cpu", [&] {
    const scalar_t inv_decoder_var = static_cast<scalar_t>(inv_decoder_var_d);
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* x_mean_data = x_mean.const_data_ptr<scalar_t>();
    const scalar_t* mu_data = mu.const_data_ptr<scalar_t>();
    const scalar_t* logvar_data = logvar.const_data_ptr<scalar_t>();
    scalar_t* elbo_data = elbo.mutable_data_ptr<scalar_t>();
    scalar_t* kl_data = kl.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch, sample_grain(g), [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        const scalar_t* xs = x_data + b * g.pixels;
        const scalar_t* ms = x_mean_data + b * g.pixels;
        // Terms in the input precision (float exp is several times cheaper
        // than double), sums in double.
        // sum_i (x_i - x_mean_i)^2 / sigma_x^2
        const double residual_sum = lane_sum<scalar_t>(g.pixels, [&](int64_t i) {
          return static_cast<double>(squared_residual<scalar_t>(xs[i], ms[i], inv_decoder_var));
        });
        const scalar_t* mus = mu_data + b * g.latents;
        const scalar_t* lvs = logvar_data + b * g.latents;
        const double kl_sum = lane_sum<scalar_t>(g.latents, [&](int64_t j) {  // 2 KL
          return static_cast<double>(kl_term<scalar_t>(mus[j], lvs[j]));
        });
        const double kl_b = 0.5 * kl_sum;
        kl_data[b] = static_cast<scalar_t>(kl_b);
        elbo_data[b] = static_cast<scalar_t>(log_likelihood<double>(residual_sum, g.pixels, decoder_logvar) - kl_b);
      }
    });
  });
  return {elbo, kl};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_elbo_backward_cpu(
    const at::Tensor& grad_elbo_in, const at::Tensor& grad_kl_in, const at::Tensor& x_in, const at::Tensor& x_mean_in,
    const at::Tensor& mu_in, const at::Tensor& logvar_in, double decoder_logvar) {
  const char* op = "gaussian_elbo_backward";
  const ElboGeometry g = check_inputs(x_in, x_mean_in, mu_in, logvar_in, decoder_logvar, op);
  check_backward_inputs(grad_elbo_in, grad_kl_in, x_in, op);
  check_cpu(x_in, op);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor x_mean = x_mean_in.contiguous();
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor logvar = logvar_in.contiguous();
  const at::Tensor grad_elbo = grad_elbo_in.to(x.scalar_type()).contiguous();  // [B]
  const at::Tensor grad_kl = grad_kl_in.to(x.scalar_type()).contiguous();      // [B]
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_x_mean = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_mu = at::empty_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor grad_logvar = at::empty_like(mu, at::MemoryFormat::Contiguous);
  const double inv_decoder_var_d = std::exp(-decoder_logvar);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gaussian_elbo_backward_cpu", [&] {
    const scalar_t inv_decoder_var = static_cast<scalar_t>(inv_decoder_var_d);
    const scalar_t* ge = grad_elbo.const_data_ptr<scalar_t>();
    const scalar_t* gk = grad_kl.const_data_ptr<scalar_t>();
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* x_mean_data = x_mean.const_data_ptr<scalar_t>();
    const scalar_t* mu_data = mu.const_data_ptr<scalar_t>();
    const scalar_t* logvar_data = logvar.const_data_ptr<scalar_t>();
    scalar_t* gx_data = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* gm_data = grad_x_mean.mutable_data_ptr<scalar_t>();
    scalar_t* gmu_data = grad_mu.mutable_data_ptr<scalar_t>();
    scalar_t* glv_data = grad_logvar.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch, sample_grain(g), [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        const int64_t p0 = b * g.pixels;
        const scalar_t grad_elbo_b = ge[b];
        for (int64_t i = 0; i < g.pixels; ++i) {  // auto-vectorised: no reduction
          const scalar_t gx =
              grad_x_of_pixel<scalar_t>(grad_elbo_b, x_data[p0 + i], x_mean_data[p0 + i], inv_decoder_var);
          gx_data[p0 + i] = gx;
          gm_data[p0 + i] = -gx;
        }
        const int64_t l0 = b * g.latents;
        const scalar_t kl_weight = gk[b] - grad_elbo_b;
        for (int64_t j = 0; j < g.latents; ++j) {
          const LatentGrads<scalar_t> lg = latent_grads<scalar_t>(kl_weight, mu_data[l0 + j], logvar_data[l0 + j]);
          gmu_data[l0 + j] = lg.mu;
          glv_data[l0 + j] = lg.logvar;
        }
      }
    });
  });
  return {grad_x, grad_x_mean, grad_mu, grad_logvar};
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CPU, m) { MANIFOLD_EXT_GAUSSIAN_ELBO_OPS(MANIFOLD_EXT_IMPL_CPU) }

}  // namespace gaussian_elbo
}  // namespace manifold_ext
