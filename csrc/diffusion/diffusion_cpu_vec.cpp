// Vectorised row loops of the diffusion ops. Compiled once per instruction set
// (cmake/ManifoldExtCpuIsa.cmake); MANIFOLD_EXT_CPU_NS names this copy's
// namespace. The element math comes from diffusion.h, run on KernelVec lanes
// (at::vec::Vectorized; the baseline copy's float: Float4); the per-sample
// coefficient and 2-D point loops, which need ATen's conversions and
// deinterleave, on at::vec::Vectorized.
#include "common/cpu_vec_math.h"  // before the family header: vector hd_* overloads

#include <algorithm>
#include <type_traits>

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

// acc.out[row] = acc.in[row] + term (added in double, stored in the accumulator's dtype).
inline void add_to_accumulator(const AccumulatorSpan& acc, int64_t row, double term) {
  if (acc.is_double) {
    static_cast<double*>(acc.out)[row] = static_cast<const double*>(acc.in)[row] + term;
  } else {
    static_cast<float*>(acc.out)[row] =
        static_cast<float>(static_cast<double>(static_cast<const float*>(acc.in)[row]) + term);
  }
}

// Where a row's result goes: its element sum into sums[row] (a piece of a
// longer sample), or its whole term, len * log_norm + the element sum, into the accumulator.
template <typename scalar_t>
inline void put_row(const NllRows<scalar_t>& r, int64_t row, double element_sum, scalar_t log_norm) {
  if (r.sums) {
    r.sums[row] = element_sum;
  } else {
    add_to_accumulator(r.acc, row, static_cast<double>(r.len) * static_cast<double>(log_norm) + element_sum);
  }
}

template <bool kNoise, typename scalar_t>
void linear_step_rows_impl(const LinearStepRows<scalar_t>& r) {
  using V = KernelVec<scalar_t>;
  for (int64_t row = 0; row < r.rows; ++row) {
    const StepCoefficients<scalar_t>& c = r.coef[row * r.coef_stride];
    const StepCoefficients<V> cv = broadcast<V>(c);
    const int64_t base = row * r.len;
    const scalar_t* x = r.x + base;
    const scalar_t* eps = r.eps + base;
    const scalar_t* noise = kNoise ? r.noise + base : nullptr;
    scalar_t* out = r.out + base;
    // The last partial vector goes through the same vector code (masked), so
    // every element is rounded alike whatever its position (the fused
    // likelihood-and-forward step computes the same numbers).
    for_each_vector<V>(r.len, [&](int64_t i, auto count) {
      const V value =
          kNoise ? linear_step(V::loadu(x + i, count), V::loadu(eps + i, count), V::loadu(noise + i, count), cv)
                 : linear_step_without_noise(V::loadu(x + i, count), V::loadu(eps + i, count), cv);
      value.store(out + i, count);
    });
  }
}

// Sum of nll_element over n elements (and the fused forward step of x_next).
template <bool kFused, typename scalar_t>
double nll_span(const scalar_t* x_t, const scalar_t* x_next, const scalar_t* eps, const scalar_t* noise,
                scalar_t* x_after, int64_t n, const NllCoefficients<scalar_t>& c,
                const StepCoefficients<scalar_t>& fc) {
  using V = KernelVec<scalar_t>;
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
  // The rest as masked vectors: every element through the same vector code.
  for_each_vector<V>(n - i, [&](int64_t j, auto count) {
    const int64_t k = i + j;
    const V xn = V::loadu(x_next + k, count);
    sum0 += first_lanes(nll_element(V::loadu(x_t + k, count), xn, V::loadu(eps + k, count), cv), count);
    if constexpr (kFused) linear_step_without_noise(xn, V::loadu(noise + k, count), fcv).store(x_after + k, count);
  });
  return hd_lane_sum(sum0 + sum1);
}

// Element terms of W consecutive samples of kLen (1 or 2) elements as lanes of
// V, element by element: 2-D points are deinterleaved (x, y, x, y, ...) into
// one vector of first and one of second coordinates, so every lane is a
// sample. Returns each lane's terms in `out[k][lane]`.
template <int kLen, typename V>
struct SampleLanes {
  V x_t[kLen], x_next[kLen], eps[kLen];
};

template <int kLen, typename scalar_t, typename Count>
SampleLanes<kLen, Vec<scalar_t>> load_sample_lanes(const scalar_t* x_t, const scalar_t* x_next, const scalar_t* eps,
                                                   Count count) {
  using V = Vec<scalar_t>;
  SampleLanes<kLen, V> lanes;
  if constexpr (kLen == 1) {
    lanes.x_t[0] = V::loadu(x_t, count);
    lanes.x_next[0] = V::loadu(x_next, count);
    lanes.eps[0] = V::loadu(eps, count);
  } else {
    static_assert(kLen == 2, "one or two elements per sample");
    const auto split = [&](const scalar_t* p, V* out) {
      // 2 * count values: the first vector full when count > W/2
      const int64_t n = 2 * static_cast<int64_t>(count);
      const V lo = V::loadu(p, std::min<int64_t>(n, V::size()));
      const V hi = n > V::size() ? V::loadu(p + V::size(), n - V::size()) : V(scalar_t(0));
      const auto pair = at::vec::deinterleave2(lo, hi);
      out[0] = pair.first;
      out[1] = pair.second;
    };
    split(x_t, lanes.x_t);
    split(x_next, lanes.x_next);
    split(eps, lanes.eps);
  }
  return lanes;
}

// Calls body(first_sample, count) for the vectors of samples covering [0, rows):
// full ones with a compile-time count (masked loads fold to plain ones), then the rest.
template <typename V, typename Body>
inline void for_each_sample_vector(int64_t rows, Body&& body) {
  int64_t r = 0;
  for (; r + V::size() <= rows; r += V::size()) body(r, std::integral_constant<int64_t, V::size()>{});
  if (r < rows) body(r, rows - r);
}

// sums[k] = the element terms of sample k, added in double (vectors of lane terms
// are stored, then widened by a loop the compiler vectorises).
template <int kLen, typename scalar_t>
void store_lane_sums(const Vec<scalar_t> (&terms)[kLen], int64_t count, double* sums) {
  using V = Vec<scalar_t>;
  alignas(64) scalar_t lane[kLen][V::size()];
  for (int e = 0; e < kLen; ++e) terms[e].store(lane[e]);
  for (int64_t k = 0; k < count; ++k) {
    double sum = lane[0][k];
    for (int e = 1; e < kLen; ++e) sum += lane[e][k];
    sums[k] = sum;
  }
}

// Samples of one or two elements with shared coefficients (2-D points): SIMD across samples.
template <int kLen, bool kFused, typename scalar_t>
void nll_tiny_rows_shared(const NllRows<scalar_t>& r) {
  using V = Vec<scalar_t>;
  const NllCoefficients<V> cv = broadcast<V>(r.coef[0]);
  const StepCoefficients<V> fcv = kFused ? broadcast<V>(*r.forward_coef) : StepCoefficients<V>{};
  for_each_sample_vector<V>(r.rows, [&](int64_t row, auto count) {
    const int64_t base = row * kLen;
    const SampleLanes<kLen, V> lanes = load_sample_lanes<kLen>(r.x_t + base, r.x_next + base, r.eps + base, count);
    V terms[kLen];
    for (int e = 0; e < kLen; ++e) terms[e] = nll_element(lanes.x_t[e], lanes.x_next[e], lanes.eps[e], cv);
    double sums[V::size()];
    store_lane_sums<kLen>(terms, count, sums);
    for (int64_t k = 0; k < count; ++k) put_row(r, row + k, sums[k], r.coef[0].log_norm);
    if constexpr (kFused) {  // x_after = forward step of x_next, elementwise on the interleaved data
      for_each_vector<V>(kLen * static_cast<int64_t>(count), [&](int64_t i, auto n) {
        linear_step_without_noise(V::loadu(r.x_next + base + i, n), V::loadu(r.noise + base + i, n), fcv)
            .store(r.x_after + base + i, n);
      });
    }
  });
}

// Rows shorter than a few vectors with shared coefficients: the per-element
// terms of a block of whole rows are computed SIMD-wide into a buffer, then
// summed row by row.
template <bool kFused, typename scalar_t>
void nll_short_rows_shared(const NllRows<scalar_t>& r) {
  using V = KernelVec<scalar_t>;
  if (r.len == 1) return nll_tiny_rows_shared<1, kFused>(r);
  if (r.len == 2) return nll_tiny_rows_shared<2, kFused>(r);
  constexpr int64_t kBlock = 1024;
  scalar_t terms[kBlock];
  const NllCoefficients<scalar_t>& c = r.coef[0];
  const NllCoefficients<V> cv = broadcast<V>(c);
  const StepCoefficients<V> fcv = kFused ? broadcast<V>(*r.forward_coef) : StepCoefficients<V>{};
  // r.len < 4 vectors here, so every block holds whole rows.
  for_each_row_block<kBlock>(r.rows, r.len, [&](const RowBlock& block) {
    const int64_t base = block.first_row * r.len;
    for_each_vector<V>(block.count, [&](int64_t i, auto count) {
      const V xn = V::loadu(r.x_next + base + i, count);
      nll_element(V::loadu(r.x_t + base + i, count), xn, V::loadu(r.eps + base + i, count), cv).store(terms + i, count);
      if constexpr (kFused) {
        linear_step_without_noise(xn, V::loadu(r.noise + base + i, count), fcv).store(r.x_after + base + i, count);
      }
    });
    for (int64_t row = 0; row < block.rows; ++row) {
      double sum = 0;
      for (int64_t k = 0; k < r.len; ++k) sum += terms[row * r.len + k];
      put_row(r, block.first_row + row, sum, c.log_norm);
    }
  });
}

// Rows shorter than one vector with per-sample coefficients (e.g. 2-D points
// at mixed times in the fused step): one masked vector per row.
template <bool kFused, typename scalar_t>
void nll_short_rows_per_sample(const NllRows<scalar_t>& r) {
  using V = KernelVec<scalar_t>;
  for (int64_t row = 0; row < r.rows; ++row) {
    const NllCoefficients<scalar_t>& c = r.coef[row];
    const int64_t base = row * r.len;
    const V xn = V::loadu(r.x_next + base, r.len);
    const V terms = nll_element(V::loadu(r.x_t + base, r.len), xn, V::loadu(r.eps + base, r.len), broadcast<V>(c));
    if constexpr (kFused) {
      linear_step_without_noise(xn, V::loadu(r.noise + base, r.len), broadcast<V>(r.forward_coef[row]))
          .store(r.x_after + base, r.len);
    }
    put_row(r, row, hd_lane_sum(first_lanes(terms, r.len)), c.log_norm);
  }
}

template <bool kFused, typename scalar_t>
void nll_rows_impl(const NllRows<scalar_t>& r) {
  using V = KernelVec<scalar_t>;
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
    const NllCoefficients<scalar_t>& c = r.coef[row * r.coef_stride];
    const double sum = nll_span<kFused>(r.x_t + base, r.x_next + base, r.eps + base, kFused ? r.noise + base : nullptr,
                                        kFused ? r.x_after + base : nullptr, r.len, c,
                                        kFused ? r.forward_coef[row * r.coef_stride] : no_forward);
    put_row(r, row, sum, c.log_norm);
  }
}

template <typename scalar_t>
void nll_backward_rows_impl(const NllBackwardRows<scalar_t>& r) {
  using V = KernelVec<scalar_t>;
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
  using V = KernelVec<scalar_t>;
  // Local copies: stores through `out` could alias the span in the compiler's view.
  const scalar_t *x = s.x, *k1 = s.k1, *k2 = s.k2, *k3 = s.k3, *k4 = s.k4;
  scalar_t* out = s.out;
  const int64_t n = s.n;
  const V h(s.h);
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    const V a = V::loadu(k1 + i), b = V::loadu(k2 + i), c = V::loadu(k3 + i), d = V::loadu(k4 + i);
    const V value = kWithX ? rk4_update_element(V::loadu(x + i), a, b, c, d, h) : rk4_mean_slope(a, b, c, d);
    value.store(out + i);
  }
  for (; i < n; ++i) {
    out[i] =
        kWithX ? rk4_update_element(x[i], k1[i], k2[i], k3[i], k4[i], s.h) : rk4_mean_slope(k1[i], k2[i], k3[i], k4[i]);
  }
}

// How many of the W pairs are not likelihood_pair_clear (diffusion.h), tested
// SIMD-wide in double: b >= kFloat32SimdCoefficientAbar (> 0), b < a, a <= 1,
// each false for NaN. zero_mask() marks the lanes whose all-ones "true" mask is 0.
template <int64_t W>
int64_t count_uncleared_pairs(const double* abar_t, const double* abar_next) {
  using D = Vec<double>;
  static_assert(W % D::size() == 0, "a float or double vector holds whole double vectors");
  const D safe(kFloat32SimdCoefficientAbar);
  const D one(1.0);
  int64_t uncleared = 0;
  for (int64_t k = 0; k < W; k += D::size()) {
    const D a = D::loadu(abar_t + k);
    const D b = D::loadu(abar_next + k);
    const D clear = (b >= safe) & (b < a) & (a <= one);
    uncleared += __builtin_popcount(static_cast<unsigned>(clear.zero_mask()));
  }
  return uncleared;
}

// The coefficients of `count` <= W consecutive samples as lanes of
// Vec<scalar_t>: the gaps abar_t - abar_next, 1 - abar_next, 1 - abar_t in
// double, then Eq. 18-20 in the inputs' precision (nll_coefficients_from_gaps).
// Lanes past `count` get a valid schedule so that every lane computes finite
// numbers (they are never stored).
template <typename scalar_t, typename Count>
NllCoefficients<Vec<scalar_t>> lane_coefficients(const double* abar_t, const double* abar_next, Count count,
                                                 int64_t* uncleared_pairs = nullptr) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  alignas(64) double a[W], b[W];
  const double* pa = abar_t;
  const double* pb = abar_next;
  if (count < W) {
    for (int64_t k = 0; k < W; ++k) {
      a[k] = k < count ? abar_t[k] : 0.5;
      b[k] = k < count ? abar_next[k] : 0.25;
    }
    pa = a;
    pb = b;
  }
  if (uncleared_pairs) *uncleared_pairs += count_uncleared_pairs<W>(pa, pb);
  alignas(64) scalar_t at[W], an[W], jump[W], keep_next[W], keep_t[W];
  for (int64_t k = 0; k < W; ++k) {  // vectorised by the compiler
    at[k] = static_cast<scalar_t>(pa[k]);
    an[k] = static_cast<scalar_t>(pb[k]);
    jump[k] = static_cast<scalar_t>(pa[k] - pb[k]);
    keep_next[k] = static_cast<scalar_t>(1.0 - pb[k]);
    keep_t[k] = static_cast<scalar_t>(1.0 - pa[k]);
  }
  return nll_coefficients_from_gaps(V::loadu(at), V::loadu(an), V::loadu(jump), V::loadu(keep_next), V::loadu(keep_t));
}

template <typename scalar_t>
void store_lane_coefficients(const NllCoefficients<Vec<scalar_t>>& c, int64_t count, NllCoefficients<scalar_t>* out) {
  using V = Vec<scalar_t>;
  alignas(64) scalar_t lanes[6][V::size()];
  c.s.store(lanes[0]);
  c.kq.store(lanes[1]);
  c.cx.store(lanes[2]);
  c.ce.store(lanes[3]);
  c.kp.store(lanes[4]);
  c.log_norm.store(lanes[5]);
  for (int64_t k = 0; k < count; ++k) {
    out[k] = NllCoefficients<scalar_t>{lanes[0][k], lanes[1][k], lanes[2][k], lanes[3][k], lanes[4][k], lanes[5][k]};
  }
}

// Per-sample coefficients into an array, V::size() samples at a time; every
// sample goes through the same vector code whatever the chunk boundaries.
// Returns how many pairs are not likelihood_pair_clear.
template <typename scalar_t>
int64_t nll_coefficient_span_impl(const NllCoefficientSpan<scalar_t>& s) {
  using V = Vec<scalar_t>;
  int64_t uncleared_pairs = 0;
  for_each_sample_vector<V>(s.n, [&](int64_t i, auto count) {
    store_lane_coefficients(lane_coefficients<scalar_t>(s.abar_t + i, s.abar_next + i, count, &uncleared_pairs), count,
                            s.out + i);
  });
  return uncleared_pairs;
}

// Samples of one or two elements with a per-sample schedule (2-D points at
// mixed times): coefficients and element terms SIMD-wide across samples, in one pass.
template <int kLen, typename scalar_t>
int64_t nll_per_sample_tiny_rows(const NllPerSampleRows<scalar_t>& r) {
  using V = Vec<scalar_t>;
  int64_t uncleared_pairs = 0;
  for_each_sample_vector<V>(r.rows, [&](int64_t row, auto count) {
    const NllCoefficients<V> c =
        lane_coefficients<scalar_t>(r.abar_t + row, r.abar_next + row, count, &uncleared_pairs);
    const int64_t base = row * kLen;
    const SampleLanes<kLen, V> lanes = load_sample_lanes<kLen>(r.x_t + base, r.x_next + base, r.eps + base, count);
    V terms[kLen + 1];
    for (int e = 0; e < kLen; ++e) terms[e] = nll_element(lanes.x_t[e], lanes.x_next[e], lanes.eps[e], c);
    terms[kLen] = V(scalar_t(kLen)) * c.log_norm;  // kLen * log_norm, exact for kLen = 1, 2
    double sums[V::size()];
    store_lane_sums<kLen + 1>(terms, count, sums);
    for (int64_t k = 0; k < count; ++k) add_to_accumulator(r.acc, row + k, sums[k]);
  });
  return uncleared_pairs;
}

// The coefficients of a block of samples are computed SIMD-wide into a small
// array that stays in L1, then each sample's elements are summed.
template <typename scalar_t>
int64_t nll_per_sample_rows_impl(const NllPerSampleRows<scalar_t>& r) {
  if (r.len == 1) return nll_per_sample_tiny_rows<1>(r);
  if (r.len == 2) return nll_per_sample_tiny_rows<2>(r);
  constexpr int64_t kBlockRows = 128;
  NllCoefficients<scalar_t> coef[kBlockRows];
  for (int64_t row0 = 0; row0 < r.rows; row0 += kBlockRows) {
    const int64_t rows = r.rows - row0 < kBlockRows ? r.rows - row0 : kBlockRows;
    const int64_t uncleared_pairs =
        nll_coefficient_span_impl(NllCoefficientSpan<scalar_t>{r.abar_t + row0, r.abar_next + row0, coef, rows});
    if (uncleared_pairs > 0) return uncleared_pairs;  // the caller checks, then computes the call again
    for (int64_t k = 0; k < rows; ++k) {
      const NllCoefficients<scalar_t>& c = coef[k];
      const int64_t base = (row0 + k) * r.len;
      double sum = 0;
      for (int64_t i = base; i < base + r.len; ++i) sum += nll_element(r.x_t[i], r.x_next[i], r.eps[i], c);
      add_to_accumulator(r.acc, row0 + k, static_cast<double>(r.len) * static_cast<double>(c.log_norm) + sum);
    }
  }
  return 0;
}

}  // namespace

int64_t nll_per_sample_rows(const NllPerSampleRows<float>& r) { return nll_per_sample_rows_impl(r); }
int64_t nll_per_sample_rows(const NllPerSampleRows<double>& r) { return nll_per_sample_rows_impl(r); }
int64_t nll_coefficient_span(const NllCoefficientSpan<float>& s) { return nll_coefficient_span_impl(s); }
int64_t nll_coefficient_span(const NllCoefficientSpan<double>& s) { return nll_coefficient_span_impl(s); }

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
