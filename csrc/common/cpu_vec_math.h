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
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#if !defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512) && defined(__SSE2__)
// The default (baseline x86-64) copy: ATen's Vectorized<float> there computes
// exp and round one lane at a time through libm (a call per element, several
// times the cost of the rest of a kernel); SSE2, which every x86-64 CPU has,
// gives the polynomial below four lanes at a time.
#define MANIFOLD_EXT_SSE2_MATH 1
#include <emmintrin.h>
#endif

namespace manifold_ext {

// ---------------------------------------------------------------------------
// exp(x) for float lanes, written once over the register type of the copy:
// __m128 (baseline SSE2), __m256 (AVX2 + FMA), __m512 (AVX-512). It is Cephes'
// expf: n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite:
// n * 0.693359375 is exact), exp(r) by a degree-7 polynomial (relative error
// 3.7e-8 on the reduced range), times 2^n. exp(+inf) = +inf, exp(-inf) = 0,
// NaN stays NaN (x86 max/min return their second operand, x, when it is NaN).
// Checked against exp in double on every float: at most 1.0103 ulp with FMA
// (AVX2 / AVX-512, whose FMA rounds each step once), 0.990 ulp on SSE2;
// subnormal results within 0.75 of a subnormal step.
// test_vector_exp_within_one_ulp_on_every_isa_copy checks every copy.
//
// How 2^n is applied is where the copies differ, and where the time went
// (exp_ps below): AVX-512 has an instruction for it; SSE2 and AVX2 take a
// short path when all lanes are in the range where 2^n is a normal float.
// On this machine 0.33 -> 0.26 ns per element on AVX2, 0.16 -> 0.13 on
// AVX-512 (1 thread, a loop of exp over data in L1).
//
// Why not ATen's: its baseline Vectorized<float>::exp() calls libm one lane at
// a time, and its AVX2 / AVX-512 ones are out-of-line calls into Sleef that
// spill the kernel's live registers around every call; inlined, the
// closest-centre KL forward loop runs about 20 % faster on AVX-512.
// ---------------------------------------------------------------------------
namespace simd {

template <typename Ps>
struct Ops;

#if defined(MANIFOLD_EXT_SSE2_MATH)
template <>
struct Ops<__m128> {
  using Pi = __m128i;
  static __m128 set1(float v) { return _mm_set1_ps(v); }
  static __m128 max(__m128 a, __m128 b) { return _mm_max_ps(a, b); }
  static __m128 min(__m128 a, __m128 b) { return _mm_min_ps(a, b); }
  static __m128 mul(__m128 a, __m128 b) { return _mm_mul_ps(a, b); }
  static __m128 add(__m128 a, __m128 b) { return _mm_add_ps(a, b); }
  static __m128 sub(__m128 a, __m128 b) { return _mm_sub_ps(a, b); }
  static __m128 fmadd(__m128 a, __m128 b, __m128 c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }   // no FMA in SSE2
  static __m128 fnmadd(__m128 a, __m128 b, __m128 c) { return _mm_sub_ps(c, _mm_mul_ps(a, b)); }  // c - a * b
  static Pi to_int(__m128 x) { return _mm_cvtps_epi32(x); }
  static Pi add_int(Pi a, Pi b) { return _mm_add_epi32(a, b); }
  static Pi sub_int(Pi a, Pi b) { return _mm_sub_epi32(a, b); }
  static Pi set1_int(int v) { return _mm_set1_epi32(v); }
  static Pi half_int(Pi n) { return _mm_srai_epi32(n, 1); }
  static __m128 float_bits(Pi n) { return _mm_castsi128_ps(_mm_slli_epi32(n, 23)); }
  static __m128 exponent_bits_of_low_mantissa(__m128 x) { return float_bits(_mm_castps_si128(x)); }
};

// Whether low <= x <= high in every lane (false if any lane is NaN).
inline bool all_lanes_between(__m128 x, float low, float high) {
  const __m128 inside = _mm_and_ps(_mm_cmpge_ps(x, _mm_set1_ps(low)), _mm_cmple_ps(x, _mm_set1_ps(high)));
  return _mm_movemask_ps(inside) == 0xF;
}
#endif

// The AVX2 and AVX-512 registers, from one definition: P is the intrinsics'
// prefix (_mm256 / _mm512), BITS the integer-cast width.
#define MANIFOLD_EXT_SIMD_FLOAT_OPS(Ps, PiType, Pd, P, BITS)                                     \
  template <>                                                                                    \
  struct Ops<Ps> {                                                                               \
    using Pi = PiType;                                                                           \
    static Ps set1(float v) { return P##_set1_ps(v); }                                           \
    static Ps max(Ps a, Ps b) { return P##_max_ps(a, b); }                                       \
    static Ps min(Ps a, Ps b) { return P##_min_ps(a, b); }                                       \
    static Ps mul(Ps a, Ps b) { return P##_mul_ps(a, b); }                                       \
    static Ps add(Ps a, Ps b) { return P##_add_ps(a, b); }                                       \
    static Ps sub(Ps a, Ps b) { return P##_sub_ps(a, b); }                                       \
    static Ps fmadd(Ps a, Ps b, Ps c) { return P##_fmadd_ps(a, b, c); }                          \
    static Ps fnmadd(Ps a, Ps b, Ps c) { return P##_fnmadd_ps(a, b, c); }                        \
    static Pi to_int(Ps x) { return P##_cvtps_epi32(x); }                                        \
    static Pi add_int(Pi a, Pi b) { return P##_add_epi32(a, b); }                                \
    static Pi sub_int(Pi a, Pi b) { return P##_sub_epi32(a, b); }                                \
    static Pi set1_int(int v) { return P##_set1_epi32(v); }                                      \
    static Pi half_int(Pi n) { return P##_srai_epi32(n, 1); }                                    \
    static Ps float_bits(Pi n) { return P##_castsi##BITS##_ps(P##_slli_epi32(n, 23)); }          \
    static Ps exponent_bits_of_low_mantissa(Ps x) { return float_bits(P##_castps_si##BITS(x)); } \
  };                                                                                             \
  inline Ps max_of(Ps a, Ps b) { return P##_max_ps(a, b); }                                      \
  inline Pd max_of(Pd a, Pd b) { return P##_max_pd(a, b); }                                      \
  inline Ps min_of(Ps a, Ps b) { return P##_min_ps(a, b); }                                      \
  inline Pd min_of(Pd a, Pd b) { return P##_min_pd(a, b); }

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
MANIFOLD_EXT_SIMD_FLOAT_OPS(__m256, __m256i, __m256d, _mm256, 256)
inline bool all_lanes_between(__m256 x, float low, float high) {  // false if any lane is NaN
  const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(low), _CMP_GE_OQ),
                                      _mm256_cmp_ps(x, _mm256_set1_ps(high), _CMP_LE_OQ));
  return _mm256_movemask_ps(inside) == 0xFF;
}
#endif
#if defined(CPU_CAPABILITY_AVX512)
MANIFOLD_EXT_SIMD_FLOAT_OPS(__m512, __m512i, __m512d, _mm512, 512)
#endif
#undef MANIFOLD_EXT_SIMD_FLOAT_OPS

// n = round(x / ln 2) for |x| < 2^21: adding 1.5 * 2^23 + 127 (kExpShifter)
// to x / ln 2 (in one fused multiply-add; SSE2 multiplies, then adds) rounds
// it to an integer, ties to even, and leaves n + 127 in the low mantissa bits
// of the sum (`shifted`).
// Every path below rounds this way, so that a lane's n, and so its exp, never
// depends on which path its vector took (which depends on the other lanes).
constexpr float kExpShifter = 12582912.0f + 127.0f;

template <typename Ps>
inline Ps exp_shifted(Ps x) {
  using O = Ops<Ps>;
  return O::fmadd(x, O::set1(1.44269504088896341f), O::set1(kExpShifter));
}

// n as a float, from `shifted` (exact: both are integers below 2^24).
template <typename Ps>
inline Ps exp_n_float(Ps shifted) {
  using O = Ops<Ps>;
  return O::sub(shifted, O::set1(kExpShifter));
}

// x clamped to [-104, 89], where exp(x) goes from below the subnormals to
// +inf: keeps r finite for infinite x; NaN stays NaN (x86 max/min return
// their second operand, x, when it is NaN).
template <typename Ps>
inline Ps exp_clamped(Ps x) {
  using O = Ops<Ps>;
  return O::min(O::set1(89.0f), O::max(O::set1(-104.0f), x));
}

// exp(x) / 2^n for n_float = n: r = x - n ln 2 in two parts (Cody-Waite:
// n * 0.693359375 is exact), then the polynomial.
template <typename Ps>
inline Ps exp_reduced(Ps x, Ps n_float) {
  using O = Ops<Ps>;
  Ps r = O::fnmadd(n_float, O::set1(0.693359375f), x);
  r = O::fnmadd(n_float, O::set1(-2.12194440e-4f), r);
  Ps p = O::set1(1.9875691500e-4f);
  p = O::fmadd(p, r, O::set1(1.3981999507e-3f));
  p = O::fmadd(p, r, O::set1(8.3334519073e-3f));
  p = O::fmadd(p, r, O::set1(4.1665795894e-2f));
  p = O::fmadd(p, r, O::set1(1.6666665459e-1f));
  p = O::fmadd(p, r, O::set1(5.0000001201e-1f));
  return O::add(O::fmadd(p, O::mul(r, r), r), O::set1(1.0f));
}

// Any float: clamped, and 2^n applied in two halves, 2^(n/2) * 2^(n - n/2), so that results down in the subnormals
// (n to -150) and at overflow (n = 128, 129 give +inf) come out right. Where
// 2^n is a normal float the two multiplications round as the one of the short
// path below does (the first is exact), so both paths agree bit for bit.
template <typename Ps>
inline Ps exp_any_range(Ps x) {
  using O = Ops<Ps>;
  const Ps clamped = exp_clamped(x);
  const Ps n_float = exp_n_float(exp_shifted(clamped));
  const Ps p = exp_reduced(clamped, n_float);
  const auto n = O::to_int(n_float);  // exact: n_float is an integer (NaN lanes: p is NaN anyway)
  const auto half = O::half_int(n);
  const auto bias = O::set1_int(127);
  const Ps scale_a = O::float_bits(O::add_int(half, bias));
  const Ps scale_b = O::float_bits(O::add_int(O::sub_int(n, half), bias));
  return O::mul(O::mul(p, scale_a), scale_b);
}

#if defined(CPU_CAPABILITY_AVX512)
// AVX-512 scales by 2^n in one instruction (vscalefps), which rounds
// subnormal and overflowing results itself: no split scale, no branch.
inline __m512 exp_ps(__m512 x) {
  const __m512 clamped = exp_clamped(x);
  const __m512 n_float = exp_n_float(exp_shifted(clamped));
  return _mm512_scalef_ps(exp_reduced(clamped, n_float), n_float);
}
#endif

// SSE2 and AVX2: when every lane has -87 <= x <= 88, n + 127 is in [1, 254]
// and 2^n a normal float, whose bits are n + 127 shifted into the exponent
// field: a shift of `shifted` by 23 (its high bits shift out). Seven
// instructions fewer than exp_any_range, which a vector with any other lane
// (NaN, +-inf, large |x|) takes.
template <typename Ps>
inline Ps exp_ps(Ps x) {
  using O = Ops<Ps>;
  if (!all_lanes_between(x, -87.0f, 88.0f)) return exp_any_range(x);
  const Ps shifted = exp_shifted(x);
  const Ps p = exp_reduced(x, exp_n_float(shifted));
  return O::mul(p, O::exponent_bits_of_low_mantissa(shifted));
}

}  // namespace simd

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Calls body(i, count) for the vectors covering elements [0, n): full ones
// with count a compile-time V::size(), so masked loads and stores fold to
// plain ones, then the partial last one. (ATen's default, baseline copy of
// V::loadu(p, count) / store(p, count) copies through memcpy: with a run-time
// count that is a libc call per load and store even for whole vectors, which
// made that copy's loops several times slower.)
template <typename V, typename Body>
inline void for_each_vector(int64_t n, Body&& body) {
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) body(i, std::integral_constant<int64_t, V::size()>{});
  if (i < n) body(i, n - i);
}

// A block of the flat element stream of [rows, n] data: `rows` whole rows, or
// (rows == 1) the part [begin, begin + count) of one row longer than a block.
struct RowBlock {
  int64_t first_row;
  int64_t rows;
  int64_t begin;  // element offset inside the row (0 for whole rows)
  int64_t count;  // elements in the block
};

// Calls fn(block) for consecutive blocks of at most kBlock elements covering
// `rows` rows of n elements: whole rows when n <= kBlock, else pieces of one
// row. The loops over short rows (a few latents per sample) run SIMD-wide over
// a block as one stream, through a kBlock-element buffer that stays in L1, and
// a block always starts a row, so which rows share a block never changes a
// row's result.
template <int64_t kBlock, typename Fn>
inline void for_each_row_block(int64_t rows, int64_t n, Fn&& fn) {
  if (n <= kBlock) {
    const int64_t rows_per_block = n == 0 ? rows : kBlock / n;
    for (int64_t r = 0; r < rows; r += rows_per_block) {
      const int64_t block_rows = std::min(rows_per_block, rows - r);
      fn(RowBlock{r, block_rows, 0, block_rows * n});
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t begin = 0; begin < n; begin += kBlock) fn(RowBlock{r, 1, begin, std::min(kBlock, n - begin)});
    }
  }
}

// Fills buffer[0, block.count) with value_of(row) over the elements of each
// row of the block (a per-row factor as one value per element, so the element
// loop that reads it runs SIMD-wide across row boundaries).
template <typename T, typename ValueOf>
inline void spread_per_row(const RowBlock& block, int64_t n, T* buffer, ValueOf&& value_of) {
  const int64_t per_row = std::min(n, block.count);
  for (int64_t r = 0; r < block.rows; ++r) {
    std::fill(buffer + r * per_row, buffer + (r + 1) * per_row, value_of(block.first_row + r));
  }
}

// Lanes [0, count) of v, zeros elsewhere.
template <typename V>
inline V first_lanes(const V& v, int64_t count) {
  return count == V::size() ? v : V::set(V(0), v, count);
}

#if defined(MANIFOLD_EXT_SSE2_MATH)
namespace sse2 {

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
inline Vec<float> hd_exp(const Vec<float>& v) { return sse2::by_halves(v, simd::exp_ps<__m128>); }
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
// x < low ? low : x and high < x ? high : x (hd_math.h): SSE's max / min
// return their second operand, x, when either is NaN.
inline Vec<float> hd_clip_below(const Vec<float>& x, const Vec<float>& low) {
  return sse2::by_halves(low, x, [](__m128 lo, __m128 v) { return _mm_max_ps(lo, v); });
}
inline Vec<float> hd_clip_above(const Vec<float>& x, const Vec<float>& high) {
  return sse2::by_halves(high, x, [](__m128 hi, __m128 v) { return _mm_min_ps(hi, v); });
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

// Four float lanes in one SSE2 register, with the part of Vectorized<float>'s
// interface the KL, ELBO and diffusion kernels use. ATen's baseline
// Vectorized<float> is an array of eight floats whose operators the compiler
// vectorises one operation at a time (comparisons lane by lane with branches);
// in the nearest-centre search it spilled most of its running distances and
// ran 10x slower than the AVX2 copy, and the likelihood step on images ran
// 4.5x slower than on Float4. Lane masks are all-ones / all-zeros lanes, as
// ATen's. The lanes follow IEEE float arithmetic one operation at a time, as
// the other copies do (-ffp-contract=off), so only the lane count differs.
struct Float4 {
  using value_type = float;
  __m128 v;
  Float4() : v(_mm_setzero_ps()) {}
  Float4(__m128 x) : v(x) {}              // NOLINT(google-explicit-constructor): as Vectorized
  Float4(float s) : v(_mm_set1_ps(s)) {}  // NOLINT(google-explicit-constructor): broadcast, as Vectorized
  operator __m128() const { return v; }   // NOLINT(google-explicit-constructor)
  static constexpr int64_t size() { return 4; }
  static Float4 loadu(const void* p) { return _mm_loadu_ps(static_cast<const float*>(p)); }
  // The first `count` lanes from p, zeros after them.
  static Float4 loadu(const void* p, int64_t count) {
    if (count == size()) return loadu(p);
    alignas(16) float lanes[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    std::memcpy(lanes, p, static_cast<size_t>(count) * sizeof(float));
    return _mm_load_ps(lanes);
  }
  void store(void* p) const { _mm_storeu_ps(static_cast<float*>(p), v); }
  void store(void* p, int64_t count) const {
    if (count == size()) return store(p);
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, v);
    std::memcpy(p, lanes, static_cast<size_t>(count) * sizeof(float));
  }
  // Lanes [0, count) from b, the others from a (as Vectorized::set).
  static Float4 set(const Float4& a, const Float4& b, int64_t count) {
    alignas(16) float lanes[4];
    alignas(16) float from_b[4];
    _mm_store_ps(lanes, a.v);
    _mm_store_ps(from_b, b.v);
    for (int64_t i = 0; i < count && i < size(); ++i) lanes[i] = from_b[i];
    return _mm_load_ps(lanes);
  }
  static Float4 arange(float base, float step) {
    return _mm_setr_ps(base, base + step, base + 2.0f * step, base + 3.0f * step);
  }
  Float4& operator+=(const Float4& o) {
    v = _mm_add_ps(v, o.v);
    return *this;
  }
};

inline Float4 operator+(const Float4& a, const Float4& b) { return _mm_add_ps(a.v, b.v); }
inline Float4 operator-(const Float4& a, const Float4& b) { return _mm_sub_ps(a.v, b.v); }
inline Float4 operator-(const Float4& a) { return _mm_xor_ps(a.v, _mm_set1_ps(-0.0f)); }  // as scalar -x: the sign bit
inline Float4 operator*(const Float4& a, const Float4& b) { return _mm_mul_ps(a.v, b.v); }
inline Float4 operator/(const Float4& a, const Float4& b) { return _mm_div_ps(a.v, b.v); }
inline Float4 operator&(const Float4& a, const Float4& b) { return _mm_and_ps(a.v, b.v); }
inline Float4 operator|(const Float4& a, const Float4& b) { return _mm_or_ps(a.v, b.v); }
// Ordered comparisons are false on NaN, != is true on NaN (as ATen's).
inline Float4 operator<(const Float4& a, const Float4& b) { return _mm_cmplt_ps(a.v, b.v); }
inline Float4 operator<=(const Float4& a, const Float4& b) { return _mm_cmple_ps(a.v, b.v); }
inline Float4 operator==(const Float4& a, const Float4& b) { return _mm_cmpeq_ps(a.v, b.v); }
inline Float4 operator!=(const Float4& a, const Float4& b) { return _mm_cmpneq_ps(a.v, b.v); }

inline Float4 hd_exp(const Float4& x) { return simd::exp_ps<__m128>(x.v); }
inline Float4 hd_round(const Float4& x) { return sse2::round_ps(x.v); }
inline Float4 hd_fmadd(const Float4& a, const Float4& b, const Float4& c) { return a * b + c; }  // no FMA in SSE2
inline Float4 hd_lt(const Float4& a, const Float4& b) { return a < b; }
inline Float4 hd_le(const Float4& a, const Float4& b) { return a <= b; }
inline Float4 hd_where(const Float4& mask, const Float4& if_true, const Float4& if_false) {
  return _mm_or_ps(_mm_and_ps(mask.v, if_true.v), _mm_andnot_ps(mask.v, if_false.v));
}
// x < low ? low : x and high < x ? high : x: SSE's max / min return x when either is NaN.
inline Float4 hd_clip_below(const Float4& x, const Float4& low) { return _mm_max_ps(low.v, x.v); }
inline Float4 hd_clip_above(const Float4& x, const Float4& high) { return _mm_min_ps(high.v, x.v); }
inline float hd_lane_sum(const Float4& x) {  // (l0 + l2) + (l1 + l3)
  const __m128 pairs = _mm_add_ps(x.v, _mm_movehl_ps(x.v, x.v));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)));
}
#endif

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#if defined(CPU_CAPABILITY_AVX512)
inline Vec<float> hd_exp(const Vec<float>& v) { return Vec<float>(simd::exp_ps(__m512(v))); }
#else
inline Vec<float> hd_exp(const Vec<float>& v) { return Vec<float>(simd::exp_ps<__m256>(v)); }
#endif

// x < low ? low : x and high < x ? high : x (hd_math.h) in one instruction
// each: x86 max / min return their second operand, x, when either is NaN.
// (ATen's comparisons and blendv take three: compare, mask to vector, vector
// to mask.)
template <typename T>
inline Vec<T> hd_clip_below(const Vec<T>& x, const Vec<T>& low) {
  return Vec<T>(simd::max_of(low, x));
}
template <typename T>
inline Vec<T> hd_clip_above(const Vec<T>& x, const Vec<T>& high) {
  return Vec<T>(simd::min_of(high, x));
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
#if defined(MANIFOLD_EXT_SSE2_MATH)
template <>
struct HdScalarOf<Float4> {
  using type = float;
};
#endif

// The lanes a kernel runs on: Vec<T>, except the baseline copy's float, which
// gets Float4 (see above). Kernels that use only the shared interface opt in.
template <typename T>
struct KernelVecOf {
  using type = Vec<T>;
};
#if defined(MANIFOLD_EXT_SSE2_MATH)
template <>
struct KernelVecOf<float> {
  using type = Float4;
};
#endif
template <typename T>
using KernelVec = typename KernelVecOf<T>::type;

}  // namespace manifold_ext

#include "common/hd_math.h"
