// Interface between the CPU entry points (diffusion_cpu.cpp, compiled once) and
// the vectorised row loops (diffusion_cpu_vec.cpp, compiled once per
// instruction set into namespaces cpu_default / cpu_avx2 / cpu_avx512).
// Only raw pointers cross this boundary.
//
// A "row" is a run of contiguous elements sharing one set of coefficients: a
// whole sample when the coefficients are per sample, or any run of elements
// when they are shared by the batch. Coefficient pointers advance by
// `coef_stride` (0: one set for all rows, 1: one set per row).
#pragma once

#include <cstdint>

#include "common/cpu_capability.h"
#include "diffusion/diffusion.h"

namespace manifold_ext {
namespace diffusion {

// out = x * c.x + eps * c.eps (+ noise * c.noise)
template <typename scalar_t>
struct LinearStepRows {
  const scalar_t* x;      // [rows * len]
  const scalar_t* eps;    // [rows * len]
  const scalar_t* noise;  // [rows * len] or nullptr (no noise term)
  scalar_t* out;          // [rows * len]
  const StepCoefficients<scalar_t>* coef;
  int64_t coef_stride;
  int64_t rows;
  int64_t len;
};

// The likelihood step's per-sample output, from the first sample of a span on:
// out[r] = in[r] + term_r, added in double and stored in the accumulator's
// dtype (float32 or float64, is_double).
struct AccumulatorSpan {
  const void* in;
  void* out;
  bool is_double;
};

// Per row r: its term len * log_norm + sum of nll_element(x_t, x_next, eps)
// over the row, added to the accumulator (acc); or, when `sums` is given (a
// piece of a longer sample), only the element sum, into sums[r]. When `noise`
// is given, also x_after = forward step of x_next (the fused variant).
template <typename scalar_t>
struct NllRows {
  const scalar_t* x_t;     // [rows * len]
  const scalar_t* x_next;  // [rows * len]
  const scalar_t* eps;     // [rows * len]
  const NllCoefficients<scalar_t>* coef;
  const scalar_t* noise;  // [rows * len] or nullptr
  scalar_t* x_after;      // [rows * len] or nullptr
  const StepCoefficients<scalar_t>* forward_coef;
  int64_t coef_stride;
  int64_t rows;
  int64_t len;
  AccumulatorSpan acc;  // rows [0, rows) of the accumulator, unless sums is given
  double* sums;         // [rows] or nullptr
};

// Gradients of the likelihood step for rows whose sample-term gradient is grad[r].
template <typename scalar_t>
struct NllBackwardRows {
  const scalar_t* grad;  // [rows], one upstream gradient per row
  const scalar_t* x_t;
  const scalar_t* x_next;
  const scalar_t* eps;
  const NllCoefficients<scalar_t>* coef;
  scalar_t* grad_x_t;
  scalar_t* grad_x_next;
  scalar_t* grad_eps;
  int64_t coef_stride;
  int64_t rows;
  int64_t len;
};

// out[i] = nll_coefficients(abar_t[i], abar_next[i]) for per-sample schedules,
// SIMD-wide: the gaps in double, Eq. 18-20 in scalar_t. nll_coefficient_span
// returns how many pairs are not likelihood_pair_clear (diffusion.h): for
// valid pairs, those whose float32 coefficients computed this way may be
// inexact (the caller recomputes them in double).
template <typename scalar_t>
struct NllCoefficientSpan {
  const double* abar_t;     // [n]
  const double* abar_next;  // [n]
  NllCoefficients<scalar_t>* out;
  int64_t n;
};

// Short samples with a per-sample schedule (e.g. 2-D points at mixed times), in
// one pass: each row's term len * log_norm_r + sum over row r of nll_element
// is added to the accumulator, with the coefficients computed SIMD-wide on the
// fly (no coefficient array in memory). nll_per_sample_rows returns how many
// rows have a pair (abar_t, abar_next) that is not likelihood_pair_clear
// (invalid, or so small that float32 SIMD coefficients may be inexact): the
// schedule is tested in the same pass, and only a call with such a pair is
// checked on the host (which raises if a pair is invalid) and computed again
// through the coefficient array (nll_coefficients_for). Rows of 3-8 elements
// stop at the first block with such a pair; 1-2 elements finish their pass.
template <typename scalar_t>
struct NllPerSampleRows {
  const scalar_t* x_t;      // [rows * len]
  const scalar_t* x_next;   // [rows * len]
  const scalar_t* eps;      // [rows * len]
  const double* abar_t;     // [rows]
  const double* abar_next;  // [rows]
  int64_t rows;
  int64_t len;
  AccumulatorSpan acc;  // rows [0, rows) of the accumulator
};

// out = x + h (k1 + 2 k2 + 2 k3 + k4) / 6 over n elements (x == nullptr: h = 1, no x).
template <typename scalar_t>
struct Rk4Span {
  const scalar_t* x;
  const scalar_t* k1;
  const scalar_t* k2;
  const scalar_t* k3;
  const scalar_t* k4;
  scalar_t* out;
  scalar_t h;
  int64_t n;
};

#define MANIFOLD_EXT_DECLARE_DIFFUSION_ROWS(ns)                      \
  namespace ns {                                                     \
  void linear_step_rows(const LinearStepRows<float>& r);             \
  void linear_step_rows(const LinearStepRows<double>& r);            \
  void nll_rows(const NllRows<float>& r);                            \
  void nll_rows(const NllRows<double>& r);                           \
  void nll_backward_rows(const NllBackwardRows<float>& r);           \
  void nll_backward_rows(const NllBackwardRows<double>& r);          \
  void rk4_span(const Rk4Span<float>& s);                            \
  void rk4_span(const Rk4Span<double>& s);                           \
  int64_t nll_coefficient_span(const NllCoefficientSpan<float>& s);  \
  int64_t nll_coefficient_span(const NllCoefficientSpan<double>& s); \
  int64_t nll_per_sample_rows(const NllPerSampleRows<float>& r);     \
  int64_t nll_per_sample_rows(const NllPerSampleRows<double>& r);    \
  }

MANIFOLD_EXT_FOR_EACH_CPU_ISA(MANIFOLD_EXT_DECLARE_DIFFUSION_ROWS)

}  // namespace diffusion
}  // namespace manifold_ext
