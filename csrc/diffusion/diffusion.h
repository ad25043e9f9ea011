// Diffusion log-likelihood accumulation (op family 2) and sampler steps (op
// family 3): the math, written once for the CPU and CUDA kernels.
// Paper 000 §2.2 (Def. 2.1, Eq. 12, 15-20) and appendix (Eq. 33-43).
//
// Notation: abar = cumulative product of the alphas (abar_0 = 1 for clean
// data). Every step between two times reduces to per-sample *coefficients*,
// computed once in double from the two abar values (by the *_coefficients
// functions below), and a cheap per-element map that uses them:
//
//   sampler / forward steps   out = c.x * x + c.eps * eps + c.noise * noise
//   likelihood step           term = -kq (x_next - s x_t)^2 + kp (x_t - mu_p)^2
//                             mu_p = cx x_next + ce eps
//
// The element functions are templates over T (float, double, or a CPU SIMD
// vector of them); see common/hd_math.h.
#pragma once

#include <cmath>

#include "common/hd_math.h"

namespace manifold_ext {
namespace diffusion {

// Which inequality a pair (a, b) of abar values must satisfy.
enum class ScheduleRule {
  Likelihood,  // (abar_t, abar_next):  0 < abar_next < abar_t <= 1   (Eq. 17-20)
  Forward,     // (abar_t, abar_next):  0 < abar_next <= abar_t <= 1  (Eq. 17)
  Backward,    // (abar_t, abar_prev):  0 < abar_t < 1, abar_t <= abar_prev <= 1  (Eq. 12, DDPM, DDIM)
};

// False for NaN as well.
MANIFOLD_EXT_HD bool schedule_ok(ScheduleRule rule, double a, double b) {
  switch (rule) {
    case ScheduleRule::Likelihood: return b > 0 && b < a && a <= 1;
    case ScheduleRule::Forward: return b > 0 && b <= a && a <= 1;
    default: return a > 0 && a < 1 && a <= b && b <= 1;
  }
}

// The per-sample CPU paths compute the likelihood coefficients SIMD-wide in
// the inputs' precision (nll_coefficients_from_gaps). In float32 that is exact
// to rounding while abar_t * abar_next * (1 - abar_next) stays a normal float32
// (>= 1.2e-38), which abar_t > abar_next >= 1e-18 ensures. Below it the float32
// products underflow (abar_next = 5e-77 became 0 and the step inf / NaN, though
// its coefficients fit float32): such schedules get coefficients in double.
constexpr double kFloat32SimdCoefficientAbar = 1e-18;

// A likelihood pair that needs no check on the host: valid (schedule_ok) and
// within the SIMD coefficients' float32 range (so far above the level where
// any coefficient could overflow float32, diffusion_host.h). The
// CPU one-pass path counts the pairs that are not clear while it computes; the
// host looks again only if any is not.
MANIFOLD_EXT_HD bool likelihood_pair_clear(double abar_t, double abar_next) {
  return schedule_ok(ScheduleRule::Likelihood, abar_t, abar_next) && abar_next >= kFloat32SimdCoefficientAbar;
}

// ---------------------------------------------------------------------------
// Sampler and forward steps: out = x * cx + eps * ce + noise * cn
// ---------------------------------------------------------------------------
template <typename T>
struct StepCoefficients {
  T x;      // multiplies x_t
  T eps;    // multiplies the second input (eps_theta; the noise for the forward step)
  T noise;  // multiplies the noise (0 where the step is deterministic)
};

template <typename To, typename From>
MANIFOLD_EXT_HD StepCoefficients<To> cast_coefficients(const StepCoefficients<From>& c) {
  return {static_cast<To>(c.x), static_cast<To>(c.eps), static_cast<To>(c.noise)};
}

// Eq. 17: x_next = sqrt(abar_next / abar_t) x_t + sqrt(1 - abar_next / abar_t) noise.
// 1 - abar_next / abar_t is formed as (abar_t - abar_next) / abar_t, which keeps
// its relative precision when the two are close (small steps).
MANIFOLD_EXT_HD StepCoefficients<double> forward_step_coefficients(double abar_t, double abar_next) {
  return {::sqrt(abar_next / abar_t), ::sqrt((abar_t - abar_next) / abar_t), 0.0};
}

// Mean of every backward step from t to prev < t (Def. 2.1, Eq. 12, and Eq. 19
// with t -> prev, t + dt -> t): x0 is estimated by Eq. 31,
// f = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), and substituted into the
// posterior mean of Eq. 28, which simplifies to
//   mu = sqrt(abar_prev / abar_t) x_t
//        - (abar_prev - abar_t) / (sqrt(abar_t abar_prev) sqrt(1 - abar_t)) eps.
// (Eq. 12 as printed has (1 - abar_t) without the square root in the eps
// coefficient; Eq. 19, Eq. 28 + 31 and DDPM's mean at dt = 1 all have it.)
struct BackwardMean {
  double x;
  double eps;
};

MANIFOLD_EXT_HD BackwardMean backward_mean_coefficients(double abar_t, double abar_prev) {
  return {::sqrt(abar_prev / abar_t), -(abar_prev - abar_t) / (::sqrt(abar_t * abar_prev) * ::sqrt(1.0 - abar_t))};
}

// Eq. 12 / Eq. 20: the posterior variance of x_prev given x_t and x0,
// (abar_prev - abar_t)(1 - abar_prev) / (abar_prev (1 - abar_t)). It is 0 for
// prev = 0 (abar_prev = 1): the last sampling step is deterministic.
MANIFOLD_EXT_HD double posterior_variance(double abar_t, double abar_prev) {
  return (abar_prev - abar_t) * (1.0 - abar_prev) / (abar_prev * (1.0 - abar_t));
}

// Large-step non-Markovian Gaussian step (Def. 2.1, Eq. 12):
// x_prev = mu + sqrt(posterior variance) noise.
MANIFOLD_EXT_HD StepCoefficients<double> large_step_coefficients(double abar_t, double abar_prev) {
  const BackwardMean mean = backward_mean_coefficients(abar_t, abar_prev);
  return {mean.x, mean.eps, ::sqrt(posterior_variance(abar_t, abar_prev))};
}

// DDPM ancestral step (Ho et al. 2020, Algorithm 2), between any two times:
// alpha = abar_t / abar_prev, x_prev = (x_t - (1 - alpha) / sqrt(1 - abar_t) eps) / sqrt(alpha)
// + sqrt(1 - alpha) noise. The mean is that of Eq. 12; the variance is DDPM's
// sigma^2 = beta = 1 - alpha (the forward variance of the jump) instead of the
// posterior variance. (Ho et al. use no noise on the final step; the sampler
// passes none there.)
MANIFOLD_EXT_HD StepCoefficients<double> ddpm_step_coefficients(double abar_t, double abar_prev) {
  const BackwardMean mean = backward_mean_coefficients(abar_t, abar_prev);
  return {mean.x, mean.eps, ::sqrt((abar_prev - abar_t) / abar_prev)};
}

// DDIM step (Song et al. 2021, Eq. 12): with x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t),
// sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev),
// x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise.
// eta = 0 is deterministic DDIM; eta = 1 equals the large step of Eq. 12.
MANIFOLD_EXT_HD StepCoefficients<double> ddim_step_coefficients(double abar_t, double abar_prev, double eta) {
  const double variance = eta * eta * posterior_variance(abar_t, abar_prev);
  const double sqrt_ratio = ::sqrt(abar_prev / abar_t);
  const double direction = ::sqrt(::fmax(1.0 - abar_prev - variance, 0.0));
  return {sqrt_ratio, direction - sqrt_ratio * ::sqrt(1.0 - abar_t), ::sqrt(variance)};
}

// The step kinds by name (the shared backward op takes one).
enum class StepKind { Forward, Ddpm, Ddim, Large };

MANIFOLD_EXT_HD StepCoefficients<double> step_coefficients(StepKind kind, double a, double b, double eta) {
  switch (kind) {
    case StepKind::Forward: return forward_step_coefficients(a, b);
    case StepKind::Ddpm: return ddpm_step_coefficients(a, b);
    case StepKind::Ddim: return ddim_step_coefficients(a, b, eta);
    default: return large_step_coefficients(a, b);
  }
}

template <typename T>
MANIFOLD_EXT_HD T linear_step(T x, T eps, T noise, const StepCoefficients<T>& c) {
  return x * c.x + eps * c.eps + noise * c.noise;
}

template <typename T>
MANIFOLD_EXT_HD T linear_step_without_noise(T x, T eps, const StepCoefficients<T>& c) {
  return x * c.x + eps * c.eps;
}

// ---------------------------------------------------------------------------
// Log-likelihood step (Eq. 15-20): per pair (t, t + dt),
//   log q(x_next | x_t) - log p_theta(x_t | x_next)
// with Gaussian log-densities (Eq. 16) over the D elements of a sample:
//   log q  = -1/2 sum[log 2 pi + log var_q + (x_next - s x_t)^2 / var_q]        (Eq. 18)
//   -log p = +1/2 sum[log 2 pi + log var_p + (x_t - mu_p)^2 / var_p]            (Eq. 19, 20)
// The log 2 pi terms cancel, so per sample
//   term = D * log_norm + sum_i [-kq (x_next - s x_t)^2 + kp (x_t - mu_p)^2]
// with kq = 1 / (2 var_q), kp = 1 / (2 var_p), log_norm = (log var_p - log var_q) / 2.
//
// t = 0 convention: with abar_t = 1, Eq. 20's var_p is 0 and log p_theta(x_0 | x_dt)
// is undefined. There var_p is set to the forward variance of the same jump,
// var_q = 1 - abar_next (DDPM's Sigma = beta choice, Ho et al. §3.2, for the
// decoder step): the rule is the same for every dt, and log_norm is then 0.
// ---------------------------------------------------------------------------
template <typename T>
struct NllCoefficients {
  T s;   // Eq. 18 mean scale: sqrt(abar_next / abar_t)
  T kq;  // 1 / (2 var_q), var_q = 1 - abar_next / abar_t   (Eq. 18)
  T cx;  // Eq. 19 mean: cx x_next + ce eps
  T ce;
  T kp;        // 1 / (2 var_p)                                   (Eq. 20)
  T log_norm;  // (log var_p - log var_q) / 2, per element
};

template <typename To, typename From>
MANIFOLD_EXT_HD NllCoefficients<To> cast_coefficients(const NllCoefficients<From>& c) {
  return {static_cast<To>(c.s),  static_cast<To>(c.kq), static_cast<To>(c.cx),
          static_cast<To>(c.ce), static_cast<To>(c.kp), static_cast<To>(c.log_norm)};
}

// The coefficients from abar_t, abar_next and the three gaps jump = abar_t -
// abar_next, keep_next = 1 - abar_next, keep_t = 1 - abar_t. The gaps are
// formed in double by the callers (exact for the small differences of nearby
// times), so T may be float: the CPU kernels evaluate this SIMD-wide for
// per-sample schedules in the inputs' precision (five divisions, two square
// roots and one log per pair would otherwise cost more than the memory pass).
// keep_t = 0 (abar_t = 1) is the t = 0 convention, taken by a select.
template <typename T>
MANIFOLD_EXT_HD NllCoefficients<T> nll_coefficients_from_gaps(T abar_t, T abar_next, T jump, T keep_next, T keep_t) {
  const T one(1), half(0.5), zero(0);
  NllCoefficients<T> c;
  c.s = hd_sqrt(abar_next / abar_t);  // Eq. 18 mean
  c.kq = half * abar_t / jump;        // var_q = jump / abar_t          (Eq. 18)
  // Eq. 19 mean: the coefficient of x_next, [(1 - abar_t) sqrt(abar_next) + jump / sqrt(abar_next)]
  // / (sqrt(abar_t)(1 - abar_next)), simplifies to sqrt(abar_t / abar_next); that of eps
  // is -jump / (sqrt(abar_t abar_next) sqrt(1 - abar_next)) (backward_mean_coefficients).
  c.cx = one / c.s;
  c.ce = -jump / hd_sqrt(abar_t * abar_next * keep_next);
  // Eq. 20 over Eq. 18: var_p / var_q = (1 - abar_t) / (1 - abar_next); 1 under the t = 0 convention.
  const T variance_ratio = hd_where(hd_lt(zero, keep_t), keep_t / keep_next, one);
  c.kp = c.kq / variance_ratio;
  c.log_norm = half * hd_log(variance_ratio);
  return c;
}

// In double from the two abar values (host, device, and the shared-schedule CPU path).
MANIFOLD_EXT_HD NllCoefficients<double> nll_coefficients(double abar_t, double abar_next) {
  return nll_coefficients_from_gaps(abar_t, abar_next, abar_t - abar_next, 1.0 - abar_next, 1.0 - abar_t);
}

// One element's share of the step's term (without the D * log_norm constant).
template <typename T>
MANIFOLD_EXT_HD T nll_element(T x_t, T x_next, T eps, const NllCoefficients<T>& c) {
  const T forward_residual = x_next - c.s * x_t;                   // Eq. 18
  const T backward_residual = x_t - (c.cx * x_next + c.ce * eps);  // Eq. 19
  return c.kp * backward_residual * backward_residual - c.kq * forward_residual * forward_residual;
}

template <typename T>
struct NllElementGrads {
  T x_t;
  T x_next;
  T eps;
};

// Gradient of nll_element, scaled by the upstream gradient of the sample's term.
template <typename T>
MANIFOLD_EXT_HD NllElementGrads<T> nll_element_backward(T grad, T x_t, T x_next, T eps, const NllCoefficients<T>& c) {
  const T forward_residual = x_next - c.s * x_t;
  const T backward_residual = x_t - (c.cx * x_next + c.ce * eps);
  const T gq = T(2) * grad * c.kq * forward_residual;   // d/d(forward residual) of -kq r^2, negated
  const T gp = T(2) * grad * c.kp * backward_residual;  // d/d(backward residual) of kp r^2
  NllElementGrads<T> g;
  g.x_t = gp + gq * c.s;
  g.x_next = -gq - gp * c.cx;
  g.eps = -gp * c.ce;
  return g;
}

// ---------------------------------------------------------------------------
// Runge-Kutta (Eq. 33, Eq. 39): (k1 + 2 k2 + 2 k3 + k4) / 6, and x + h * that.
// ---------------------------------------------------------------------------
template <typename T>
MANIFOLD_EXT_HD T rk4_mean_slope(T k1, T k2, T k3, T k4) {
  return (k1 + k4 + T(2) * (k2 + k3)) * T(1.0 / 6.0);
}

template <typename T>
MANIFOLD_EXT_HD T rk4_update_element(T x, T k1, T k2, T k3, T k4, T h) {
  return x + h * rk4_mean_slope(k1, k2, k3, k4);
}

}  // namespace diffusion
}  // namespace manifold_ext
