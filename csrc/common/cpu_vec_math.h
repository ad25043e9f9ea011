// Vector overloads of the hd_* functions for at::vec::Vectorized, so that the
// element math written once as templates over T (common/hd_math.h and the
// op-family headers) runs SIMD-wide in the CPU kernels.
//
// Include this first: the overloads are declared *before* hd_math.h and the
// family headers are parsed, because those templates find them by ordinary
// lookup (they live in our namespace, so argument-dependent lookup on
// at::vec types would not see them).
//
// Only the per-ISA *_cpu_vec.cpp files include this (they are compiled with
// CPU_CAPABILITY set, see cmake/ManifoldExtCpuIsa.cmake).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#if !defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512) && defined(__SSE2__)
// The default (baseline x86-64) copy: ATen's Vectorized<float> there computes
// exp and round one lane at a time through libm (a call per element, several
// times the cost of the rest of a kernel); SSE2, which every x86-64 CPU has,
// gives the polynomial below four lanes at a time.
#define MANIFOLD_EXT_SSE2_MATH 1
#include <emmintrin.h>
#endif

namespace manifold_ext {

template <typename T>
using Vec = at::vec::Vectorized<T>;

#if defined(MANIFOLD_EXT_SSE2_MATH)
namespace sse2 {

// exp(x), float, four lanes: n = round(x / ln 2), r = x - n ln 2 in two parts
// (Cody-Waite: n * 0.693359375 is exact), exp(r) by the degree-7 polynomial of
// Cephes' expf (relative error 3.7e-8 on the reduced range), times 2^n built in
// the exponent bits as 2^(n/2) * 2^(n - n/2) so that denormal results (x down to
// -103.97) and the top of the range (x up to 88.72) come out right. Measured
// max error 0.97 ulp over [-110, 90] against exp in double. exp(+inf) = +inf,
// exp(-inf) = 0, NaN stays NaN (the clamp keeps NaN: SSE min/max return their
// second operand when either is NaN).
inline __m128 exp_ps(__m128 x) {
  const __m128 clamped = _mm_min_ps(_mm_set1_ps(89.0f), _mm_max_ps(_mm_set1_ps(-104.0f), x));
  const __m128 magic = _mm_set1_ps(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer, ties to even
  const __m128 n_float = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(clamped, _mm_set1_ps(1.44269504088896341f)), magic), magic);
  const __m128 r = _mm_sub_ps(_mm_sub_ps(clamped, _mm_mul_ps(n_float, _mm_set1_ps(0.693359375f))),
                              _mm_mul_ps(n_float, _mm_set1_ps(-2.12194440e-4f)));
  __m128 p = _mm_set1_ps(1.9875691500e-4f);
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.3981999507e-3f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(8.3334519073e-3f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(4.1665795894e-2f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.6666665459e-1f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(5.0000001201e-1f));
  p = _mm_add_ps(_mm_add_ps(_mm_mul_ps(p, _mm_mul_ps(r, r)), r), _mm_set1_ps(1.0f));
  const __m128i n = _mm_cvtps_epi32(n_float);  // exact: n_float is an integer (NaN lanes: p is NaN anyway)
  const __m128i half = _mm_srai_epi32(n, 1);
  const __m128i bias = _mm_set1_epi32(127);
  const __m128 scale_a = _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(half, bias), 23));
  const __m128 scale_b = _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_sub_epi32(n, half), bias), 23));
  return _mm_mul_ps(_mm_mul_ps(p, scale_a), scale_b);
}

// Round to the nearest integer, ties to even (as nearbyint and torch.round):
// adding and subtracting 2^23 rounds |x| < 2^23 in the current (nearest) mode;
// larger floats are integers already; the sign is put back, so -0.4 -> -0.
inline __m128 round_ps(__m128 x) {
  const __m128 sign_mask = _mm_set1_ps(-0.0f);
  const __m128 two_23 = _mm_set1_ps(8388608.0f);
  const __m128 magnitude = _mm_andnot_ps(sign_mask, x);
  const __m128 rounded = _mm_or_ps(_mm_sub_ps(_mm_add_ps(magnitude, two_23), two_23), _mm_and_ps(sign_mask, x));
  const __m128 small = _mm_cmplt_ps(magnitude, two_23);  // false for NaN: NaN passes through
  return _mm_or_ps(_mm_and_ps(small, rounded), _mm_andnot_ps(small, x));
}

// Applies a four-lane function to each half of eight-lane default Vectorized<float>s.
template <typename Fn>
inline Vec<float> by_halves(const Vec<float>& v, Fn&& fn) {
  static_assert(Vec<float>::size() == 8, "the default Vectorized<float> holds 8 lanes");
  alignas(32) float out[8];
  const float* in = v;
  _mm_store_ps(out, fn(_mm_loadu_ps(in)));
  _mm_store_ps(out + 4, fn(_mm_loadu_ps(in + 4)));
  return Vec<float>::loadu(out);
}

template <typename Fn>
inline Vec<float> by_halves(const Vec<float>& a, const Vec<float>& b, Fn&& fn) {
  alignas(32) float out[8];
  const float *pa = a, *pb = b;
  _mm_store_ps(out, fn(_mm_loadu_ps(pa), _mm_loadu_ps(pb)));
  _mm_store_ps(out + 4, fn(_mm_loadu_ps(pa + 4), _mm_loadu_ps(pb + 4)));
  return Vec<float>::loadu(out);
}

}  // namespace sse2

// Non-template overloads, preferred to the generic ones below for float.
// ATen's default comparisons, blendv and minimum go lane by lane with branches
// (and are not inlined); masks are all-ones or all-zeros lanes, so bit
// operations select.
inline Vec<float> hd_exp(const Vec<float>& v) { return sse2::by_halves(v, sse2::exp_ps); }
inline Vec<float> hd_round(const Vec<float>& v) { return sse2::by_halves(v, sse2::round_ps); }
inline Vec<float> hd_abs(const Vec<float>& v) {
  return sse2::by_halves(v, [](__m128 x) { return _mm_andnot_ps(_mm_set1_ps(-0.0f), x); });
}
inline Vec<float> hd_lt(const Vec<float>& a, const Vec<float>& b) {
  return sse2::by_halves(a, b, [](__m128 x, __m128 y) { return _mm_cmplt_ps(x, y); });
}
inline Vec<float> hd_le(const Vec<float>& a, const Vec<float>& b) {
  return sse2::by_halves(a, b, [](__m128 x, __m128 y) { return _mm_cmple_ps(x, y); });
}
// a < b ? a : b, as the scalar hd_min (SSE's min returns its second operand when either is NaN).
inline Vec<float> hd_min(const Vec<float>& a, const Vec<float>& b) {
  return sse2::by_halves(a, b, [](__m128 x, __m128 y) { return _mm_min_ps(x, y); });
}
inline Vec<float> hd_where(const Vec<float>& mask, const Vec<float>& if_true, const Vec<float>& if_false) {
  alignas(32) float out[8];
  const float *m = mask, *a = if_true, *b = if_false;
  for (int half = 0; half < 8; half += 4) {
    const __m128 mv = _mm_loadu_ps(m + half);
    _mm_store_ps(out + half,
                 _mm_or_ps(_mm_and_ps(mv, _mm_loadu_ps(a + half)), _mm_andnot_ps(mv, _mm_loadu_ps(b + half))));
  }
  return Vec<float>::loadu(out);
}
#endif

template <typename T>
inline Vec<T> hd_exp(const Vec<T>& v) {
  return v.exp();
}
template <typename T>
inline Vec<T> hd_log(const Vec<T>& v) {
  return v.log();
}
template <typename T>
inline Vec<T> hd_sqrt(const Vec<T>& v) {
  return v.sqrt();
}
template <typename T>
inline Vec<T> hd_log1p(const Vec<T>& v) {
  return v.log1p();
}
template <typename T>
inline Vec<T> hd_tanh(const Vec<T>& v) {
  return v.tanh();
}
template <typename T>
inline Vec<T> hd_abs(const Vec<T>& v) {
  return v.abs();
}
template <typename T>
inline Vec<T> hd_round(const Vec<T>& v) {
  return v.round();
}  // ties to even
template <typename T>
inline Vec<T> hd_min(const Vec<T>& a, const Vec<T>& b) {
  return at::vec::minimum(a, b);
}
template <typename T>
inline Vec<T> hd_fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
  return at::vec::fmadd(a, b, c);
}

template <typename T>
inline Vec<T> hd_lt(const Vec<T>& a, const Vec<T>& b) {
  return a < b;
}
template <typename T>
inline Vec<T> hd_le(const Vec<T>& a, const Vec<T>& b) {
  return a <= b;
}

// `mask` comes from a lane-wise comparison (all bits set where true).
template <typename T>
inline Vec<T> hd_where(const Vec<T>& mask, const Vec<T>& if_true, const Vec<T>& if_false) {
  return Vec<T>::blendv(if_false, if_true, mask);
}

// Horizontal sum of the lanes.
template <typename T>
inline T hd_lane_sum(const Vec<T>& v) {
  return at::vec::vec_reduce_all<T>([](Vec<T>& a, Vec<T>& b) { return a + b; }, v);
}

template <typename T>
struct HdScalarOf;
template <typename T>
struct HdScalarOf<at::vec::Vectorized<T>> {
  using type = T;
};

}  // namespace manifold_ext

#include "common/hd_math.h"
