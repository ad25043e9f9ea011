// Scalar math shared by CPU and CUDA kernels.
//
// Op-family headers write their element math once, as templates over a value
// type T, calling only the hd_* functions below and + - * /. The CPU kernels
// instantiate them with T = float/double (scalar tails) and with
// T = at::vec::Vectorized<float/double> (see cpu_vec_math.h, which adds the
// vector overloads); CUDA kernels with T = float/double (the accumulation type,
// so half/bfloat16 inputs are computed in float).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MANIFOLD_EXT_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced: the per-element math is small and called in the innermost loops; in
// the baseline-ISA copy GCC otherwise leaves some of it as calls that pass
// vectors through the stack.
#define MANIFOLD_EXT_HD inline __attribute__((always_inline))
#else
#define MANIFOLD_EXT_HD inline
#endif

namespace manifold_ext {

MANIFOLD_EXT_HD float hd_exp(float v) { return ::expf(v); }
MANIFOLD_EXT_HD double hd_exp(double v) { return ::exp(v); }

MANIFOLD_EXT_HD float hd_log(float v) { return ::logf(v); }
MANIFOLD_EXT_HD double hd_log(double v) { return ::log(v); }

MANIFOLD_EXT_HD float hd_sqrt(float v) { return ::sqrtf(v); }
MANIFOLD_EXT_HD double hd_sqrt(double v) { return ::sqrt(v); }

MANIFOLD_EXT_HD float hd_log1p(float v) { return ::log1pf(v); }
MANIFOLD_EXT_HD double hd_log1p(double v) { return ::log1p(v); }

MANIFOLD_EXT_HD float hd_tanh(float v) { return ::tanhf(v); }
MANIFOLD_EXT_HD double hd_tanh(double v) { return ::tanh(v); }

MANIFOLD_EXT_HD float hd_abs(float v) { return ::fabsf(v); }
MANIFOLD_EXT_HD double hd_abs(double v) { return ::fabs(v); }

// Round to the nearest integer, ties to even (as torch.round).
MANIFOLD_EXT_HD float hd_round(float v) { return ::nearbyintf(v); }
MANIFOLD_EXT_HD double hd_round(double v) { return ::nearbyint(v); }

MANIFOLD_EXT_HD float hd_min(float a, float b) { return a < b ? a : b; }
MANIFOLD_EXT_HD double hd_min(double a, double b) { return a < b ? a : b; }

// a * b + c, fused where the instruction set has FMA. The CPU kernels are built
// with -ffp-contract=off, so every ISA copy evaluates the header formulas as the
// same sequence of IEEE operations (an overflow gives the same inf or NaN on
// each); polynomial series, whose terms are bounded, ask for the fused form
// here explicitly. cpu_vec_math.h adds the vector overload (at::vec::fmadd).
MANIFOLD_EXT_HD float hd_fmadd(float a, float b, float c) {
#if defined(__CUDA_ARCH__) || defined(__FMA__)
  return ::fmaf(a, b, c);
#else
  return a * b + c;
#endif
}
MANIFOLD_EXT_HD double hd_fmadd(double a, double b, double c) {
#if defined(__CUDA_ARCH__) || defined(__FMA__)
  return ::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// a * b + c with two roundings (the product, then the sum), never fused into
// one FMA: the rounding every backend must agree on where results are compared
// bit for bit (the grid centres of closest_centre_kl against each other and
// against torch's separate mul and add). nvcc fuses a * b + c by default
// (--fmad=true) but never __fmul_rn/__fadd_rn; the CPU kernels are built with
// -ffp-contract=off, so the plain operators (scalar or at::vec) round twice.
MANIFOLD_EXT_HD float hd_mul_then_add(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(a, b), c);
#else
  return a * b + c;
#endif
}
MANIFOLD_EXT_HD double hd_mul_then_add(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(__dmul_rn(a, b), c);
#else
  return a * b + c;
#endif
}
template <typename V>  // CPU SIMD vectors (at::vec::Vectorized)
inline V hd_mul_then_add(const V& a, const V& b, const V& c) {
  return a * b + c;
}

// Comparisons: a bool for scalars, a lane mask for vectors (cpu_vec_math.h).
// Kernels compare through these rather than the operators so that the
// baseline-ISA CPU copy can supply fast vector versions.
template <typename T>
MANIFOLD_EXT_HD bool hd_lt(T a, T b) {
  return a < b;
}
template <typename T>
MANIFOLD_EXT_HD bool hd_le(T a, T b) {
  return a <= b;
}

// Branch-free select: `condition` is a bool for scalars, a lane mask for vectors.
template <typename T>
MANIFOLD_EXT_HD T hd_where(bool condition, T if_true, T if_false) {
  return condition ? if_true : if_false;
}

// x clipped to [low, ...] and to [..., high], NaN kept (as torch.clamp):
// x < low ? low : x and high < x ? high : x. cpu_vec_math.h gives vectors
// one max / min instruction each.
template <typename T>
MANIFOLD_EXT_HD T hd_clip_below(T x, T low) {
  return hd_where(hd_lt(x, low), low, x);
}
template <typename T>
MANIFOLD_EXT_HD T hd_clip_above(T x, T high) {
  return hd_where(hd_lt(high, x), high, x);
}

// The scalar type behind T (T itself for scalars; cpu_vec_math.h adds the
// vector case), so generic code can pick a float- or double-accurate formula.
template <typename T>
struct HdScalarOf {
  using type = T;
};
template <typename T>
inline constexpr bool hd_is_double_v = std::is_same_v<typename HdScalarOf<T>::type, double>;

// ---------------------------------------------------------------------------
// Range-specialised functions. General-purpose log1p and tanh (libm, Sleef)
// handle every input and cost several times an exp; the kernels only need
// them on known ranges, where a short, exact-coefficient series or a single
// expm1 is as accurate (a few ulp in float) and much cheaper. float64 keeps
// the library functions.
// ---------------------------------------------------------------------------

// log(1 + e) for e in [0, 1] (log-sigmoid needs it for e = exp(-|z|)).
// log(1 + e) = 2 atanh(w) with w = e / (2 + e) in [0, 1/3], and
// atanh(w) = w (1 + w^2/3 + w^4/5 + ...); with w^2 <= 1/9 the terms up to
// w^13 leave a relative truncation error below 2e-8, under float's half-ulp.
template <typename T>
MANIFOLD_EXT_HD T log1p_unit_interval(T e) {
  if constexpr (hd_is_double_v<T>) {
    return hd_log1p(e);
  } else {
    const T w = e / (T(2) + e);
    const T w2 = w * w;
    T series = T(1.0f / 13.0f);
    series = hd_fmadd(series, w2, T(1.0f / 11.0f));
    series = hd_fmadd(series, w2, T(1.0f / 9.0f));
    series = hd_fmadd(series, w2, T(1.0f / 7.0f));
    series = hd_fmadd(series, w2, T(1.0f / 5.0f));
    series = hd_fmadd(series, w2, T(1.0f / 3.0f));
    series = hd_fmadd(series, w2, T(1.0f));
    return T(2) * w * series;
  }
}

// tanh(a) from one exp: for |a| >= 0.45, tanh|a| = (1 - e) / (1 + e) with
// e = exp(-2|a|) <= 0.41, so 1 - e has no cancellation; below 0.45 the odd
// Taylor series a (1 - a^2/3 + 2a^4/15 - ...) through a^15 is exact to 2e-9
// relative. Both are computed and the right one is selected per lane.
template <typename T>
MANIFOLD_EXT_HD T tanh_series_or_exp(T a) {
  if constexpr (hd_is_double_v<T>) {
    return hd_tanh(a);
  } else {
    const T abs_a = hd_abs(a);
    const T e = hd_exp(T(-2) * abs_a);
    const T from_exp = (T(1) - e) / (T(1) + e);
    const T a2 = abs_a * abs_a;
    T series = T(-929569.0f / 638512875.0f);
    series = hd_fmadd(series, a2, T(21844.0f / 6081075.0f));
    series = hd_fmadd(series, a2, T(-1382.0f / 155925.0f));
    series = hd_fmadd(series, a2, T(62.0f / 2835.0f));
    series = hd_fmadd(series, a2, T(-17.0f / 315.0f));
    series = hd_fmadd(series, a2, T(2.0f / 15.0f));
    series = hd_fmadd(series, a2, T(-1.0f / 3.0f));
    series = hd_fmadd(series, a2, T(1.0f));
    const T magnitude = hd_where(hd_lt(abs_a, T(0.45f)), abs_a * series, from_exp);
    return hd_where(hd_lt(a, T(0)), -magnitude, magnitude);
  }
}

}  // namespace manifold_ext
