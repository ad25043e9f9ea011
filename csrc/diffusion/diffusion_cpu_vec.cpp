// Vectorised row loops of the diffusion ops. Compiled once per instruction set
// (cmake/ManifoldExtCpuIsa.cmake); MANIFOLD_EXT_CPU_NS names this copy's
// namespace. The element math comes from diffusion.h, run on at::vec lanes for
// the body of each row and on scalars for its tail.
#include "common/cpu_vec_math.h"  // before the family header: vector hd_* overloads

#include "diffusion/diffusion_cpu_rows.h"

#ifndef MANIFOLD_EXT_CPU_NS
#error "compile this file through manifold_ext_add_cpu_vec_kernels (MANIFOLD_EXT_CPU_NS unset)"
#endif

namespace manifold_ext {
namespace diffusion {
namespace MANIFOLD_EXT_CPU_NS {
namespace {

template <typename V, typename scalar_t>
StepCoefficients<V> broadcast(const StepCoefficients<scalar_t>& c) {
  return {V(c.x), V(c.eps), V(c.noise)};
}

template <typename V, typename scalar_t>
NllCoefficients<V> broadcast(const NllCoefficients<scalar_t>& c) {
  return {V(c.s), V(c.kq), V(c.cx), V(c.ce), V(c.kp), V(c.log_norm)};
}

template <bool kNoise, typename scalar_t>
void linear_step_rows_impl(const LinearStepRows<scalar_t>& r) {
  using V = Vec<scalar_t>;
  for (int64_t row = 0; row < r.rows; ++row) {
    const StepCoefficients<scalar_t>& c = r.coef[row * r.coef_stride];
    const StepCoefficients<V> cv = broadcast<V>(c);
    const int64_t base = row * r.len;
    const scalar_t* x = r.x + base;
    const scalar_t* eps = r.eps + base;
    const scalar_t* noise = kNoise ? r.noise + base : nullptr;
    scalar_t* out = r.out + base;
    int64_t i = 0;
    for (; i + V::size() <= r.len; i += V::size()) {
      const V value = kNoise ? linear_step(V::loadu(x + i), V::loadu(eps + i), V::loadu(noise + i), cv)
                             : linear_step_without_noise(V::loadu(x + i), V::loadu(eps + i), cv);
      value.store(out + i);
    }
    for (; i < r.len; ++i) {
      out[i] = kNoise ? linear_step(x[i], eps[i], noise[i], c) : linear_step_without_noise(x[i], eps[i], c);
    }
  }
}

// Sum of nll_element over n elements (and the fused forward step of x_next).
template <bool kFused, typename scalar_t>
double nll_span(const scalar_t* x_t, const scalar_t* x_next, const scalar_t* eps, const scalar_t* noise,
                scalar_t* x_after, int64_t n, const NllCoefficients<scalar_t>& c,
                const StepCoefficients<scalar_t>& fc) {
  using V = Vec<scalar_t>;
  const NllCoefficients<V> cv = broadcast<V>(c);
  const StepCoefficients<V> fcv = broadcast<V>(fc);
  // Two lane accumulators halve the add latency chain.
  V sum0(scalar_t(0)), sum1(scalar_t(0));
  int64_t i = 0;
  for (; i + 2 * V::size() <= n; i += 2 * V::size()) {
    const V xn0 = V::loadu(x_next + i), xn1 = V::loadu(x_next + i + V::size());
    sum0 += nll_element(V::loadu(x_t + i), xn0, V::loadu(eps + i), cv);
    sum1 += nll_element(V::loadu(x_t + i + V::size()), xn1, V::loadu(eps + i + V::size()), cv);
    if constexpr (kFused) {
      linear_step_without_noise(xn0, V::loadu(noise + i), fcv).store(x_after + i);
      linear_step_without_noise(xn1, V::loadu(noise + i + V::size()), fcv).store(x_after + i + V::size());
    }
  }
  double sum = hd_lane_sum(sum0 + sum1);
  for (; i < n; ++i) {
    sum += nll_element(x_t[i], x_next[i], eps[i], c);
    if constexpr (kFused) x_after[i] = linear_step_without_noise(x_next[i], noise[i], fc);
  }
  return sum;
}

// Rows shorter than a few vectors with shared coefficients (e.g. 2-D points):
// the per-element terms of a block of whole rows are computed SIMD-wide into a
// buffer, then summed row by row.
template <bool kFused, typename scalar_t>
void nll_short_rows_shared(const NllRows<scalar_t>& r) {
  using V = Vec<scalar_t>;
  constexpr int64_t kBlock = 1024;
  scalar_t terms[kBlock];
  const NllCoefficients<scalar_t>& c = r.coef[0];
  const StepCoefficients<scalar_t> fc = kFused ? *r.forward_coef : StepCoefficients<scalar_t>{};
  const NllCoefficients<V> cv = broadcast<V>(c);
  const StepCoefficients<V> fcv = broadcast<V>(fc);
  const int64_t rows_per_block = kBlock / r.len;
  for (int64_t row0 = 0; row0 < r.rows; row0 += rows_per_block) {
    const int64_t rows = row0 + rows_per_block <= r.rows ? rows_per_block : r.rows - row0;
    const int64_t n = rows * r.len;
    const int64_t base = row0 * r.len;
    int64_t i = 0;
    for (; i + V::size() <= n; i += V::size()) {
      const V xn = V::loadu(r.x_next + base + i);
      nll_element(V::loadu(r.x_t + base + i), xn, V::loadu(r.eps + base + i), cv).store(terms + i);
      if constexpr (kFused)
        linear_step_without_noise(xn, V::loadu(r.noise + base + i), fcv).store(r.x_after + base + i);
    }
    for (; i < n; ++i) {
      terms[i] = nll_element(r.x_t[base + i], r.x_next[base + i], r.eps[base + i], c);
      if constexpr (kFused) r.x_after[base + i] = linear_step_without_noise(r.x_next[base + i], r.noise[base + i], fc);
    }
    for (int64_t row = 0; row < rows; ++row) {
      double sum = 0;
      for (int64_t k = 0; k < r.len; ++k) sum += terms[row * r.len + k];
      r.sums[row0 + row] = sum;
    }
  }
}

// Rows shorter than one vector with per-sample coefficients (e.g. 2-D points
// at mixed times): plain scalar loops, no per-row vector set-up.
template <bool kFused, typename scalar_t>
void nll_short_rows_per_sample(const NllRows<scalar_t>& r) {
  for (int64_t row = 0; row < r.rows; ++row) {
    const NllCoefficients<scalar_t>& c = r.coef[row];
    const int64_t base = row * r.len;
    double sum = 0;
    for (int64_t k = base; k < base + r.len; ++k) {
      sum += nll_element(r.x_t[k], r.x_next[k], r.eps[k], c);
      if constexpr (kFused) r.x_after[k] = linear_step_without_noise(r.x_next[k], r.noise[k], r.forward_coef[row]);
    }
    r.sums[row] = sum;
  }
}

template <bool kFused, typename scalar_t>
void nll_rows_impl(const NllRows<scalar_t>& r) {
  using V = Vec<scalar_t>;
  if (r.coef_stride == 0 && r.len < 4 * V::size() && r.len > 0) {
    nll_short_rows_shared<kFused>(r);
    return;
  }
  if (r.coef_stride == 1 && r.len < V::size()) {
    nll_short_rows_per_sample<kFused>(r);
    return;
  }
  const StepCoefficients<scalar_t> no_forward{};
  for (int64_t row = 0; row < r.rows; ++row) {
    const int64_t base = row * r.len;
    r.sums[row] = nll_span<kFused>(r.x_t + base, r.x_next + base, r.eps + base, kFused ? r.noise + base : nullptr,
                                   kFused ? r.x_after + base : nullptr, r.len, r.coef[row * r.coef_stride],
                                   kFused ? r.forward_coef[row * r.coef_stride] : no_forward);
  }
}

template <typename scalar_t>
void nll_backward_rows_impl(const NllBackwardRows<scalar_t>& r) {
  using V = Vec<scalar_t>;
  for (int64_t row = 0; row < r.rows; ++row) {
    const NllCoefficients<scalar_t>& c = r.coef[row * r.coef_stride];
    const NllCoefficients<V> cv = broadcast<V>(c);
    const scalar_t grad = r.grad[row];
    const V grad_v(grad);
    const int64_t base = row * r.len;
    int64_t i = base;
    const int64_t end = base + r.len;
    for (; i + V::size() <= end; i += V::size()) {
      const NllElementGrads<V> g =
          nll_element_backward(grad_v, V::loadu(r.x_t + i), V::loadu(r.x_next + i), V::loadu(r.eps + i), cv);
      g.x_t.store(r.grad_x_t + i);
      g.x_next.store(r.grad_x_next + i);
      g.eps.store(r.grad_eps + i);
    }
    for (; i < end; ++i) {
      const NllElementGrads<scalar_t> g = nll_element_backward(grad, r.x_t[i], r.x_next[i], r.eps[i], c);
      r.grad_x_t[i] = g.x_t;
      r.grad_x_next[i] = g.x_next;
      r.grad_eps[i] = g.eps;
    }
  }
}

template <bool kWithX, typename scalar_t>
void rk4_span_impl(const Rk4Span<scalar_t>& s) {
  using V = Vec<scalar_t>;
  const V h(s.h);
  int64_t i = 0;
  for (; i + V::size() <= s.n; i += V::size()) {
    const V k1 = V::loadu(s.k1 + i), k2 = V::loadu(s.k2 + i), k3 = V::loadu(s.k3 + i), k4 = V::loadu(s.k4 + i);
    const V value = kWithX ? rk4_update_element(V::loadu(s.x + i), k1, k2, k3, k4, h) : rk4_mean_slope(k1, k2, k3, k4);
    value.store(s.out + i);
  }
  for (; i < s.n; ++i) {
    s.out[i] = kWithX ? rk4_update_element(s.x[i], s.k1[i], s.k2[i], s.k3[i], s.k4[i], s.h)
                      : rk4_mean_slope(s.k1[i], s.k2[i], s.k3[i], s.k4[i]);
  }
}

// Per-sample coefficients, V::size() samples at a time. The last partial
// vector is padded with a valid schedule so every sample goes through the same
// (vector) code path: results do not depend on where chunk boundaries fall.
template <typename scalar_t>
void nll_coefficient_span_impl(const NllCoefficientSpan<scalar_t>& s) {
  using V = Vec<double>;
  constexpr int64_t kLanes = V::size();
  double a_pad[kLanes], b_pad[kLanes];
  double lanes[6][kLanes];
  for (int64_t i = 0; i < s.n; i += kLanes) {
    const int64_t count = s.n - i < kLanes ? s.n - i : kLanes;
    const double* a = s.abar_t + i;
    const double* b = s.abar_next + i;
    if (count < kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) {
        a_pad[k] = k < count ? a[k] : 0.5;
        b_pad[k] = k < count ? b[k] : 0.25;
      }
      a = a_pad;
      b = b_pad;
    }
    const NllCoefficients<V> c = nll_coefficients(V::loadu(a), V::loadu(b));
    c.s.store(lanes[0]);
    c.kq.store(lanes[1]);
    c.cx.store(lanes[2]);
    c.ce.store(lanes[3]);
    c.kp.store(lanes[4]);
    c.log_norm.store(lanes[5]);
    for (int64_t k = 0; k < count; ++k) {
      s.out[i + k] = cast_coefficients<scalar_t>(
          NllCoefficients<double>{lanes[0][k], lanes[1][k], lanes[2][k], lanes[3][k], lanes[4][k], lanes[5][k]});
    }
  }
}

// The coefficients of a block of samples are computed SIMD-wide into a small
// array that stays in L1, then each sample's elements are summed.
template <typename scalar_t>
void nll_per_sample_rows_impl(const NllPerSampleRows<scalar_t>& r) {
  constexpr int64_t kBlockRows = 128;
  NllCoefficients<scalar_t> coef[kBlockRows];
  for (int64_t row0 = 0; row0 < r.rows; row0 += kBlockRows) {
    const int64_t rows = r.rows - row0 < kBlockRows ? r.rows - row0 : kBlockRows;
    nll_coefficient_span_impl(NllCoefficientSpan<scalar_t>{r.abar_t + row0, r.abar_next + row0, coef, rows});
    for (int64_t k = 0; k < rows; ++k) {
      const NllCoefficients<scalar_t>& c = coef[k];
      const int64_t base = (row0 + k) * r.len;
      double sum = 0;
      for (int64_t i = base; i < base + r.len; ++i) sum += nll_element(r.x_t[i], r.x_next[i], r.eps[i], c);
      r.terms[row0 + k] = static_cast<double>(r.len) * static_cast<double>(c.log_norm) + sum;
    }
  }
}

}  // namespace

void nll_per_sample_rows(const NllPerSampleRows<float>& r) { nll_per_sample_rows_impl(r); }
void nll_per_sample_rows(const NllPerSampleRows<double>& r) { nll_per_sample_rows_impl(r); }
void nll_coefficient_span(const NllCoefficientSpan<float>& s) { nll_coefficient_span_impl(s); }
void nll_coefficient_span(const NllCoefficientSpan<double>& s) { nll_coefficient_span_impl(s); }

void linear_step_rows(const LinearStepRows<float>& r) {
  r.noise ? linear_step_rows_impl<true>(r) : linear_step_rows_impl<false>(r);
}
void linear_step_rows(const LinearStepRows<double>& r) {
  r.noise ? linear_step_rows_impl<true>(r) : linear_step_rows_impl<false>(r);
}
void nll_rows(const NllRows<float>& r) { r.noise ? nll_rows_impl<true>(r) : nll_rows_impl<false>(r); }
void nll_rows(const NllRows<double>& r) { r.noise ? nll_rows_impl<true>(r) : nll_rows_impl<false>(r); }
void nll_backward_rows(const NllBackwardRows<float>& r) { nll_backward_rows_impl(r); }
void nll_backward_rows(const NllBackwardRows<double>& r) { nll_backward_rows_impl(r); }
void rk4_span(const Rk4Span<float>& s) { s.x ? rk4_span_impl<true>(s) : rk4_span_impl<false>(s); }
void rk4_span(const Rk4Span<double>& s) { s.x ? rk4_span_impl<true>(s) : rk4_span_impl<false>(s); }

}  // namespace MANIFOLD_EXT_CPU_NS
}  // namespace diffusion
}  // namespace manifold_ext
