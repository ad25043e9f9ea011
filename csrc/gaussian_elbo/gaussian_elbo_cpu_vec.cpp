// Per-sample loops of the Gaussian ELBO op, compiled once per instruction set
// (cmake/ManifoldExtCpuIsa.cmake; MANIFOLD_EXT_CPU_NS names this copy's
// namespace), over the element math of gaussian_elbo.h.
//
// Pixels: plain loops that the compiler vectorises at the copy's width (the
// float-to-double conversions and the eight double partial sums of a sample,
// two doubles per SSE2 register, eight per AVX-512 one). The partial sums are
// independent lanes added in a fixed order, so every copy adds the same terms
// in the same order.
//
// Latents: each needs an exp, which a plain loop leaves to libm one element
// at a time (for the 8-latent digits model that was more than half of a
// call). They run on KernelVec lanes with the vector exp of cpu_vec_math.h,
// as one stream over blocks of whole samples (a sample has few latents), so
// lanes stay full; an element's term does not depend on its lane, so results
// do not depend on how threads split the batch. The vector exp differs from
// libm's by at most an ulp, and the copies' exps by as much (FMA or not).
#include "common/cpu_vec_math.h"  // before the family header: vector hd_* overloads

#include <algorithm>
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

// Latent elements per block of the latent loops (whole samples when they fit).
constexpr int64_t kLatentBlock = 1024;

// Twice-KL terms of `count` consecutive latents, SIMD-wide, into terms[0..count).
template <typename scalar_t>
void latent_terms(const scalar_t* mu, const scalar_t* logvar, int64_t count, scalar_t* terms) {
  using V = KernelVec<scalar_t>;
  for_each_vector<V>(count, [&](int64_t i, auto lanes) {
    kl_term(V::loadu(mu + i, lanes), V::loadu(logvar + i, lanes)).store(terms + i, lanes);
  });
}

// Writes sample b's kl and elbo from its twice-KL sum (the pixels are summed here).
template <typename scalar_t>
void finish_sample(const ElboRows<scalar_t>& r, int64_t b, double twice_kl) {
  const scalar_t inv_decoder_var = static_cast<scalar_t>(r.inv_decoder_var);
  const scalar_t* xs = r.x + b * r.pixels;
  const scalar_t* ms = r.x_mean + b * r.pixels;
  // Terms in the input precision, sums in double: sum_i (x_i - x_mean_i)^2 / sigma_x^2
  const double residual_sum = lane_sum(r.pixels, [&](int64_t i) {
    return static_cast<double>(squared_residual<scalar_t>(xs[i], ms[i], inv_decoder_var));
  });
  const double kl_b = 0.5 * twice_kl;
  r.kl[b] = static_cast<scalar_t>(kl_b);
  r.elbo[b] = static_cast<scalar_t>(log_likelihood<double>(residual_sum, r.pixels, r.decoder_logvar) - kl_b);
}

template <typename scalar_t>
void elbo_rows_impl(const ElboRows<scalar_t>& r) {
  alignas(64) scalar_t terms[kLatentBlock];
  double earlier_pieces = 0.0;  // samples with more latents than a block: the sum of their earlier pieces
  for_each_row_block<kLatentBlock>(r.rows, r.latents, [&](const RowBlock& block) {
    const int64_t offset = block.first_row * r.latents + block.begin;
    latent_terms(r.mu + offset, r.logvar + offset, block.count, terms);
    const int64_t per_row = std::min(r.latents, block.count);
    for (int64_t k = 0; k < block.rows; ++k) {
      const double part = lane_sum(per_row, [&](int64_t j) { return static_cast<double>(terms[k * per_row + j]); });
      const double twice_kl = (block.begin == 0 ? 0.0 : earlier_pieces) + part;
      if (block.begin + block.count < r.latents) {  // a piece of a long sample, not its last
        earlier_pieces = twice_kl;
        continue;
      }
      finish_sample(r, block.first_row + k, twice_kl);
    }
  });
}

template <typename scalar_t>
void elbo_grad_rows_impl(const ElboGradRows<scalar_t>& r) {
  using V = KernelVec<scalar_t>;
  const scalar_t inv_decoder_var = static_cast<scalar_t>(r.inv_decoder_var);
  for (int64_t b = 0; b < r.rows; ++b) {
    const int64_t p0 = b * r.pixels;
    const scalar_t grad_elbo_b = r.grad_elbo[b];
    for (int64_t i = 0; i < r.pixels; ++i) {  // vectorised: no reduction
      const scalar_t gx = grad_x_of_pixel<scalar_t>(grad_elbo_b, r.x[p0 + i], r.x_mean[p0 + i], inv_decoder_var);
      r.grad_x[p0 + i] = gx;
      r.grad_x_mean[p0 + i] = -gx;
    }
  }
  // Latents: each sample's weight of the KL derivative, kl_weight = grad_kl - grad_elbo, spread over its
  // elements, then one SIMD stream over the block.
  alignas(64) scalar_t weights[kLatentBlock];
  for_each_row_block<kLatentBlock>(r.rows, r.latents, [&](const RowBlock& block) {
    spread_per_row(block, r.latents, weights, [&](int64_t b) { return r.grad_kl[b] - r.grad_elbo[b]; });
    const int64_t offset = block.first_row * r.latents + block.begin;
    for_each_vector<V>(block.count, [&](int64_t i, auto lanes) {
      const LatentGrads<V> lg = latent_grads(V::loadu(weights + i, lanes), V::loadu(r.mu + offset + i, lanes),
                                             V::loadu(r.logvar + offset + i, lanes));
      lg.mu.store(r.grad_mu + offset + i, lanes);
      lg.logvar.store(r.grad_logvar + offset + i, lanes);
    });
  });
}

}  // namespace

void elbo_rows(const ElboRows<float>& r) { elbo_rows_impl(r); }
void elbo_rows(const ElboRows<double>& r) { elbo_rows_impl(r); }
void elbo_grad_rows(const ElboGradRows<float>& r) { elbo_grad_rows_impl(r); }
void elbo_grad_rows(const ElboGradRows<double>& r) { elbo_grad_rows_impl(r); }

}  // namespace MANIFOLD_EXT_CPU_NS
}  // namespace gaussian_elbo
}  // namespace manifold_ext
