// Closest-centre Gaussian KL (paper 000 §4.2, Eq. 26-27): the math, written
// once for the CPU and CUDA kernels.
//
// The posterior q(z|x) = N(mu, diag(exp(logvar))) is compared with the one
// prior component N(c, sigma0^2 I) it is assigned to:
//
//   KL = 1/2 sum_i [ log sigma0^2 - logvar_i - 1 + (exp(logvar_i) + (mu_i - c_i)^2) / sigma0^2 ]   (Eq. 27)
//
// With r_i = logvar_i - log sigma0^2 each summand is
//
//   exp(r_i) - 1 - r_i + (mu_i - c_i)^2 / sigma0^2,
//
// the form computed here: it is the same number, but it is exactly 0 when
// mu_i = c_i and logvar_i = log sigma0^2 (r_i = 0, exp(0) = 1), where Eq. 27
// as written leaves the rounding error of log sigma0^2 - log sigma0^2.
//
// The centre c is chosen per dimension (closest_centre_kl):
//   rounded  c_i = offset + spacing * round((mu_i - offset) / spacing), clipped to [low, high]
//   guided   c_i = target_i                                             (paper §4.2.2)
//   partial  c_i = target_i where mask_i, the rounded centre elsewhere
// or as the nearest row of a centre set [K, n] (nearest_centre_kl). The
// choice is piecewise constant in mu: no gradient flows through it.
//
// Every function is a template over the value type T (float, double, or a CPU
// SIMD vector of them); see common/hd_math.h.
#pragma once

#include <cstdint>

#include "common/hd_math.h"

namespace manifold_ext {
namespace closest_centre_kl {

// Where the centre of each element comes from.
enum class CentreSource : int {
  Rounded = 0,  // nearest grid point, clipped to the grid's range
  Target = 1,   // the given centre (guided; also the gathered row of nearest_centre_kl)
  Masked = 2,   // the given centre where the mask is set, the rounded one elsewhere (partially guided)
};

// The grid c = offset + spacing * k (k integer), limited to [low, high]
// (low = -inf / high = +inf when the grid is unbounded).
// inv_spacing is used only when reciprocal_exact: spacing = 2^k with 2^k and
// 2^-k both normal numbers, so x * inv_spacing and x / spacing are the same
// correctly rounded value for every x and the division (the slowest step of
// the centre, several cycles per SIMD lane) can be a multiplication without
// changing a single centre. Any other spacing divides.
template <typename T>
struct Grid {
  T offset;
  T spacing;
  T low;
  T high;
  T inv_spacing = T(0);
  bool reciprocal_exact = false;
};

// Nearest grid point of mu, ties to even (torch.round), then clipped. The
// comparisons keep a NaN mu NaN (torch.clamp propagates NaN too).
// offset + spacing * k is rounded after the product and after the sum on every
// backend (hd_mul_then_add), as torch's separate mul and add round it, so CPU,
// CUDA and the reference agree bit for bit for any spacing and offset.
template <typename T>
MANIFOLD_EXT_HD T grid_centre(T mu, const Grid<T>& grid) {
  const T from_offset = mu - grid.offset;
  const T steps = grid.reciprocal_exact ? from_offset * grid.inv_spacing : from_offset / grid.spacing;
  const T centre = hd_mul_then_add(grid.spacing, hd_round(steps), grid.offset);
  return hd_clip_above(hd_clip_below(centre, grid.low), grid.high);
}

// The scalars of one call, in double, as the host parses them (closest_centre_kl_host.h).
struct ClosestCentreOptions {
  CentreSource source;
  double log_prior_var;  // log sigma0^2
  double inv_prior_var;  // 1 / sigma0^2
  double offset;
  double spacing;
  double low;             // -inf when unbounded
  double high;            // +inf when unbounded
  double inv_spacing;     // 1 / spacing
  bool reciprocal_exact;  // spacing = 2^k, |k| <= 126: x * inv_spacing == x / spacing in float and double
};

// The prior component's variance sigma0^2, as the kernels use it.
template <typename T>
struct PriorVariance {
  T log_var;  // log sigma0^2
  T inv_var;  // 1 / sigma0^2
};

// Twice one dimension's contribution to the KL of Eq. 27 (the 1/2 is applied
// once per sample): exp(r) - 1 - r + (mu - c)^2 / sigma0^2, r = logvar - log sigma0^2.
template <typename T>
MANIFOLD_EXT_HD T twice_kl_term(T mu, T logvar, T centre, const PriorVariance<T>& prior) {
  const T r = logvar - prior.log_var;
  const T d = mu - centre;
  return (hd_exp(r) - T(1) - r) + d * d * prior.inv_var;
}

template <typename T>
struct KlGrads {
  T mu;      // dL/dmu
  T logvar;  // dL/dlogvar
};

// Vector-Jacobian product of one dimension's KL term (centre held fixed) for
// the upstream gradient grad_kl of its sample's KL:
//   dKL/dmu_i     = (mu_i - c_i) / sigma0^2
//   dKL/dlogvar_i = (exp(logvar_i) / sigma0^2 - 1) / 2 = (exp(r_i) - 1) / 2
template <typename T>
MANIFOLD_EXT_HD KlGrads<T> kl_term_grads(T grad_kl, T mu, T logvar, T centre, const PriorVariance<T>& prior) {
  KlGrads<T> g;
  g.mu = grad_kl * (mu - centre) * prior.inv_var;
  g.logvar = grad_kl * T(0.5) * (hd_exp(logvar - prior.log_var) - T(1));
  return g;
}

// Squared Euclidean distance contribution of one dimension (nearest_centre_kl
// assigns each sample to the centre row minimising the sum of these; exact
// differences, not the |mu|^2 - 2 mu.c + |c|^2 expansion, so near-ties are
// decided by the true distances).
template <typename T>
MANIFOLD_EXT_HD T squared_gap(T mu, T centre) {
  const T d = mu - centre;
  return d * d;
}

// NaN rule of the nearest-centre search (as torch.argmin): a NaN distance
// counts as nearer than any number, and among NaN distances the first centre
// wins. So a NaN in mu or in a centre is never skipped: it is chosen, and its
// KL is NaN. `is_nearer` is the running comparison of a search that visits
// centres in increasing index order (replacing only on "strictly nearer" keeps
// the first of equal distances); it is a bool for scalars, a lane mask for
// CPU vectors.
template <typename T>
MANIFOLD_EXT_HD auto is_nearer(T dist, T best) {
  return (dist < best) | ((dist != dist) & (best == best));
}

// The same order between two (distance, index) candidates found separately
// (search lanes or threads): NaN first, then the smaller distance, then the
// smaller index; two NaN distances tie, as two equal ones do. For scalars
// (int64 indices) a bool; for CPU vectors, whose indices are lanes of T, a
// lane mask (the search folds its lane vectors with it before a scalar pass
// over the lanes left). Bitwise, without branches: a search's running minimum
// is replaced at unpredictable places, and mispredicted branches here were
// most of the time of a small search.
template <typename T, typename Index>
MANIFOLD_EXT_HD auto ranks_before(T dist_a, Index index_a, T dist_b, Index index_b) {
  const auto tie = (dist_a == dist_b) | ((dist_a != dist_a) & (dist_b != dist_b));
  return is_nearer(dist_a, dist_b) | (tie & (index_a < index_b));
}

}  // namespace closest_centre_kl
}  // namespace manifold_ext
