// Per-sample loops of the Gaussian ELBO op, compiled once per instruction set
// (cmake/ManifoldExtCpuIsa.cmake; MANIFOLD_EXT_CPU_NS names this copy's
// namespace). They are plain loops over the element math of gaussian_elbo.h:
// the compiler vectorises them at the copy's width (the float-to-double
// conversions and the eight double partial sums of a sample, two doubles per
// SSE2 register, eight per AVX-512 one). The partial sums are independent
// lanes added in a fixed order, so every copy gives the same bits.
#include <cmath>

#include "gaussian_elbo/gaussian_elbo.h"
#include "gaussian_elbo/gaussian_elbo_cpu_rows.h"

#ifndef MANIFOLD_EXT_CPU_NS
#error "compile this file through manifold_ext_add_cpu_vec_kernels (MANIFOLD_EXT_CPU_NS unset)"
#endif

namespace manifold_ext {
namespace gaussian_elbo {
namespace MANIFOLD_EXT_CPU_NS {
namespace {

// Independent partial sums, so the per-sample reductions pipeline (and
// vectorise) instead of waiting on one dependent chain of double adds; their
// fixed combination order keeps the result deterministic.
constexpr int kLanes = 8;

template <typename TermFn>
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

template <typename scalar_t>
void elbo_rows_impl(const ElboRows<scalar_t>& r) {
  const scalar_t inv_decoder_var = static_cast<scalar_t>(r.inv_decoder_var);
  for (int64_t b = 0; b < r.rows; ++b) {
    const scalar_t* xs = r.x + b * r.pixels;
    const scalar_t* ms = r.x_mean + b * r.pixels;
    // Terms in the input precision (float exp is several times cheaper than
    // double), sums in double: sum_i (x_i - x_mean_i)^2 / sigma_x^2
    const double residual_sum = lane_sum(r.pixels, [&](int64_t i) {
      return static_cast<double>(squared_residual<scalar_t>(xs[i], ms[i], inv_decoder_var));
    });
    const scalar_t* mus = r.mu + b * r.latents;
    const scalar_t* lvs = r.logvar + b * r.latents;
    const double kl_sum =
        lane_sum(r.latents, [&](int64_t j) { return static_cast<double>(kl_term<scalar_t>(mus[j], lvs[j])); });  // 2 KL
    const double kl_b = 0.5 * kl_sum;
    r.kl[b] = static_cast<scalar_t>(kl_b);
    r.elbo[b] = static_cast<scalar_t>(log_likelihood<double>(residual_sum, r.pixels, r.decoder_logvar) - kl_b);
  }
}

template <typename scalar_t>
void elbo_grad_rows_impl(const ElboGradRows<scalar_t>& r) {
  const scalar_t inv_decoder_var = static_cast<scalar_t>(r.inv_decoder_var);
  for (int64_t b = 0; b < r.rows; ++b) {
    const int64_t p0 = b * r.pixels;
    const scalar_t grad_elbo_b = r.grad_elbo[b];
    for (int64_t i = 0; i < r.pixels; ++i) {  // vectorised: no reduction
      const scalar_t gx = grad_x_of_pixel<scalar_t>(grad_elbo_b, r.x[p0 + i], r.x_mean[p0 + i], inv_decoder_var);
      r.grad_x[p0 + i] = gx;
      r.grad_x_mean[p0 + i] = -gx;
    }
    const int64_t l0 = b * r.latents;
    const scalar_t kl_weight = r.grad_kl[b] - grad_elbo_b;
    for (int64_t j = 0; j < r.latents; ++j) {
      const LatentGrads<scalar_t> lg = latent_grads<scalar_t>(kl_weight, r.mu[l0 + j], r.logvar[l0 + j]);
      r.grad_mu[l0 + j] = lg.mu;
      r.grad_logvar[l0 + j] = lg.logvar;
    }
  }
}

}  // namespace

void elbo_rows(const ElboRows<float>& r) { elbo_rows_impl(r); }
void elbo_rows(const ElboRows<double>& r) { elbo_rows_impl(r); }
void elbo_grad_rows(const ElboGradRows<float>& r) { elbo_grad_rows_impl(r); }
void elbo_grad_rows(const ElboGradRows<double>& r) { elbo_grad_rows_impl(r); }

}  // namespace MANIFOLD_EXT_CPU_NS
}  // namespace gaussian_elbo
}  // namespace manifold_ext
