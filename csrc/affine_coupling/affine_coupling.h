// Fused affine coupling (Glow / RealNVP; paper 000 §2.1, slides 002 "affine
// coupling"): the math, written once for the CPU and CUDA kernels.
//
// The coupling network's output h holds, per active element x, a shift t and a
// raw scale r. The scale s = s(r) and
//   forward   glow:  y = (x + t) * s           exp / softclamp:  y = x * s + t
//   reverse   glow:  x = y / s - t             exp / softclamp:  x = (y - t) / s
// with log|det J| = sum log s (forward) or -sum log s (reverse) per sample.
//
// Every function is a template over the value type T (float, double, or a
// CPU SIMD vector of them); see common/hd_math.h.
#pragma once

#include <type_traits>

#include "common/hd_math.h"

namespace manifold_ext {
namespace affine_coupling {

enum class CouplingScale : int {
  Glow = 0,       // s = sigmoid(r + 2)                  (Glow, Kingma & Dhariwal 2018)
  Exp = 1,        // s = exp(r)                          (RealNVP)
  SoftClamp = 2,  // s = exp(c * tanh(r / c))            (bounded log-scale, |log s| < c)
};

// Glow shifts before scaling; the others scale then shift.
MANIFOLD_EXT_HD constexpr bool shifts_before_scaling(CouplingScale scale) { return scale == CouplingScale::Glow; }

template <typename T>
struct ScaleTerms {
  T scale;       // s
  T inv_scale;   // 1 / s
  T log_scale;   // log s           (computed only when asked for)
  T dlog_scale;  // d(log s) / d r
};

// s(r) and what the forward, reverse and backward passes need of it.
// kWantLog skips the log when only gradients are wanted.
template <CouplingScale kScale, bool kWantLog, typename T>
MANIFOLD_EXT_HD ScaleTerms<T> scale_terms(T raw, T clamp) {
  ScaleTerms<T> k;
  if constexpr (kScale == CouplingScale::Glow) {
    // sigmoid and log-sigmoid of z = r + 2 from one exp of -|z|, so neither
    // overflows: sigmoid(z) = {1, e}/(1 + e), log sigmoid(z) = min(z, 0) - log1p(e).
    const T z = raw + T(2);
    const T e = hd_exp(-hd_abs(z));
    const T one_plus_e = T(1) + e;
    const auto z_nonneg = hd_le(T(0), z);
    const T numerator = hd_where(z_nonneg, T(1), e);
    k.scale = numerator / one_plus_e;
    k.inv_scale = one_plus_e / numerator;
    k.dlog_scale = hd_where(z_nonneg, e, T(1)) / one_plus_e;  // 1 - sigmoid(z)
    if constexpr (kWantLog) k.log_scale = hd_min(z, T(0)) - log1p_unit_interval(e);
  } else if constexpr (kScale == CouplingScale::Exp) {
    k.scale = hd_exp(raw);
    k.inv_scale = T(1) / k.scale;
    k.dlog_scale = T(1);
    if constexpr (kWantLog) k.log_scale = raw;
  } else {  // SoftClamp: log s = c tanh(r / c), so |log s| < c
    const T th = tanh_series_or_exp(raw / clamp);
    const T log_scale = clamp * th;
    k.scale = hd_exp(log_scale);
    k.inv_scale = T(1) / k.scale;
    k.dlog_scale = T(1) - th * th;
    if constexpr (kWantLog) k.log_scale = log_scale;
  }
  return k;
}

template <typename T>
struct CouplingOutput {
  T y;       // transformed active element
  T logdet;  // its contribution to log|det J|: +log s forward, -log s reverse
};

template <CouplingScale kScale, bool kReverse, typename T>
MANIFOLD_EXT_HD CouplingOutput<T> coupling_forward(T x, T shift, T raw, T clamp) {
  const ScaleTerms<T> k = scale_terms<kScale, /*kWantLog=*/true>(raw, clamp);
  CouplingOutput<T> out;
  if constexpr (!kReverse) {
    out.y = shifts_before_scaling(kScale) ? (x + shift) * k.scale : x * k.scale + shift;
    out.logdet = k.log_scale;
  } else {
    out.y = shifts_before_scaling(kScale) ? x * k.inv_scale - shift : (x - shift) * k.inv_scale;
    out.logdet = -k.log_scale;
  }
  return out;
}

template <typename T>
struct CouplingGrads {
  T x;      // dL/dx
  T shift;  // dL/dt
  T raw;    // dL/dr
};

// Vector-Jacobian product of coupling_forward for one element, given the
// upstream gradients of y (grad_y) and of the sample's logdet (grad_logdet).
template <CouplingScale kScale, bool kReverse, typename T>
MANIFOLD_EXT_HD CouplingGrads<T> coupling_backward(T grad_y, T grad_logdet, T x, T shift, T raw, T clamp) {
  const ScaleTerms<T> k = scale_terms<kScale, /*kWantLog=*/false>(raw, clamp);
  CouplingGrads<T> g;
  if constexpr (!kReverse) {
    g.x = grad_y * k.scale;
    if constexpr (shifts_before_scaling(kScale)) {
      // y = (x + t) s:  dy/dt = s,  dy/dr = (x + t) s dlog
      g.shift = g.x;
      g.raw = (g.x * (x + shift) + grad_logdet) * k.dlog_scale;
    } else {
      // y = x s + t:    dy/dt = 1,  dy/dr = x s dlog
      g.shift = grad_y;
      g.raw = (g.x * x + grad_logdet) * k.dlog_scale;
    }
  } else {
    g.x = grad_y * k.inv_scale;
    if constexpr (shifts_before_scaling(kScale)) {
      // x' = y / s - t:   dx'/dt = -1,    dx'/dr = -(y / s) dlog
      g.shift = -grad_y;
      g.raw = -(g.x * x + grad_logdet) * k.dlog_scale;
    } else {
      // x' = (y - t) / s: dx'/dt = -1/s,  dx'/dr = -((y - t) / s) dlog
      g.shift = -g.x;
      g.raw = -(g.x * (x - shift) + grad_logdet) * k.dlog_scale;
    }
  }
  return g;
}

// Turns the run-time (scale, reverse) pair into compile-time constants so each
// kernel is instantiated branch-free: fn(scale_constant, reverse_constant).
template <typename Fn>
decltype(auto) dispatch_coupling_mode(CouplingScale scale, bool reverse, Fn&& fn) {
  using Glow = std::integral_constant<CouplingScale, CouplingScale::Glow>;
  using Exp = std::integral_constant<CouplingScale, CouplingScale::Exp>;
  using SoftClamp = std::integral_constant<CouplingScale, CouplingScale::SoftClamp>;
  using Forward = std::false_type;
  using Reverse = std::true_type;
  switch (scale) {
    case CouplingScale::Glow: return reverse ? fn(Glow{}, Reverse{}) : fn(Glow{}, Forward{});
    case CouplingScale::Exp: return reverse ? fn(Exp{}, Reverse{}) : fn(Exp{}, Forward{});
    default: return reverse ? fn(SoftClamp{}, Reverse{}) : fn(SoftClamp{}, Forward{});
  }
}

// ---------------------------------------------------------------------------
// Memory geometry. x is [B, C, *spatial] and h is [B, 2C, *spatial], both
// contiguous; S = prod(spatial). The kernels walk "rows": a row is a run of L
// contiguous active elements whose shifts and raw scales are also contiguous
// runs of h.
//   cross layout (t = h[:, 0::2], r = h[:, 1::2]): a row is one channel,
//       rows per sample = C, L = S; shifts of row q at h[2qL ..], raws at h[(2q+1)L ..]
//   split layout (t = h[:, :C], r = h[:, C:]): a row is the whole sample,
//       rows per sample = 1, L = C*S; the same offsets then hold.
// So one geometry serves both layouts: for global row q (= b*rows + row),
//   x[q*L + i],  t = h[2*q*L + i],  r = h[(2*q + 1)*L + i].
// ---------------------------------------------------------------------------
struct RowGeometry {
  int64_t batch;            // B
  int64_t rows_per_sample;  // C (cross) or 1 (split)
  int64_t row_len;          // S (cross) or C*S (split)
};

MANIFOLD_EXT_HD int64_t active_offset(int64_t row, int64_t row_len) { return row * row_len; }
MANIFOLD_EXT_HD int64_t shift_offset(int64_t row, int64_t row_len) { return 2 * row * row_len; }
MANIFOLD_EXT_HD int64_t raw_offset(int64_t row, int64_t row_len) { return (2 * row + 1) * row_len; }

}  // namespace affine_coupling
}  // namespace manifold_ext
