// Fused Gaussian ELBO of a VAE (paper 000 §3.1, Eq. 21-22; Kingma & Welling
// 2014): the math, written once for the CPU and CUDA kernels.
//
// Per sample b, with decoder p(x|z) = N(x_mean, exp(s) I) (s = decoder_logvar,
// a constant) and encoder q(z|x) = N(mu, diag exp(logvar)), prior N(0, I):
//   log_lik[b] = -1/2 sum_i [ (x_i - x_mean_i)^2 exp(-s) + s + log 2 pi ]
//   kl[b]      =  1/2 sum_j [ mu_j^2 + exp(logvar_j) - logvar_j - 1 ]
//   elbo[b]    = log_lik[b] - kl[b]
// (one reparameterised sample: x_mean = decoder(mu + exp(logvar/2) eps)).
//
// Every function is a template over the value type T (float or double; the
// accumulation type of the kernels); see common/hd_math.h.
#pragma once

#include <cstdint>

#include "common/hd_math.h"

namespace manifold_ext {
namespace gaussian_elbo {

constexpr double kLog2Pi = 1.8378770664093454835606594728112;

// (x - x_mean)^2 / sigma_x^2: one pixel's share of -2 log_lik (Eq. 21, first term).
template <typename T>
MANIFOLD_EXT_HD T squared_residual(T x, T x_mean, T inv_decoder_var) {
  const T residual = x - x_mean;
  return residual * residual * inv_decoder_var;
}

// mu^2 + exp(logvar) - logvar - 1: one latent's share of 2 KL (closed form, Eq. 21 second term).
template <typename T>
MANIFOLD_EXT_HD T kl_term(T mu, T logvar) {
  return mu * mu + hd_exp(logvar) - logvar - T(1);
}

// log_lik from the per-sample sum of squared residuals over `pixels` pixels.
template <typename T>
MANIFOLD_EXT_HD T log_likelihood(T residual_sum, int64_t pixels, T decoder_logvar) {
  return T(-0.5) * (residual_sum + T(pixels) * (decoder_logvar + T(kLog2Pi)));
}

// Backward, one pixel: d elbo / d x = -(x - x_mean) / sigma_x^2 (and the
// opposite for x_mean); kl does not depend on the pixels.
template <typename T>
MANIFOLD_EXT_HD T grad_x_of_pixel(T grad_elbo, T x, T x_mean, T inv_decoder_var) {
  return -grad_elbo * (x - x_mean) * inv_decoder_var;
}

template <typename T>
struct LatentGrads {
  T mu;      // dL/dmu
  T logvar;  // dL/dlogvar
};

// Backward, one latent: elbo = log_lik - kl, so the upstream weight of kl's
// derivative is kl_weight = grad_kl - grad_elbo.
//   d kl / d mu = mu,   d kl / d logvar = (exp(logvar) - 1) / 2
template <typename T>
MANIFOLD_EXT_HD LatentGrads<T> latent_grads(T kl_weight, T mu, T logvar) {
  LatentGrads<T> g;
  g.mu = kl_weight * mu;
  g.logvar = kl_weight * T(0.5) * (hd_exp(logvar) - T(1));
  return g;
}

}  // namespace gaussian_elbo
}  // namespace manifold_ext
