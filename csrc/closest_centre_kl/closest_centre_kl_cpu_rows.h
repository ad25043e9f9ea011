// Interface between the CPU entry points (closest_centre_kl_cpu.cpp, compiled
// once) and the vectorised loops (closest_centre_kl_cpu_vec.cpp, compiled once
// per instruction set into namespaces cpu_default / cpu_avx2 / cpu_avx512).
// Only raw pointers cross this boundary. All arrays are contiguous, row-major
// [rows, n] unless said otherwise.
#pragma once

#include <cstdint>

#include "closest_centre_kl/closest_centre_kl.h"
#include "common/cpu_capability.h"

namespace manifold_ext {
namespace closest_centre_kl {

// The options of one call (closest_centre_kl.h), in double: the loops convert
// them to their element type once.
using KlParams = ClosestCentreOptions;

template <typename scalar_t>
struct ForwardRows {
  const scalar_t* mu;      // [rows, n]
  const scalar_t* logvar;  // [rows, n]
  const scalar_t* target;  // [rows, n] centres given (Target / Masked), else null
  const bool* mask;        // guided elements (Masked), else null: [rows, n], or [n] when mask_per_dimension
  scalar_t* centre;        // [rows, n] chosen centres (output), or null when not wanted
  scalar_t* kl;            // [rows] output
  int64_t rows;
  int64_t n;
  bool mask_per_dimension = false;  // one mask row for every sample (mask of shape [n])
};

template <typename scalar_t>
struct BackwardRows {
  const scalar_t* grad_kl;  // [rows] upstream gradient of each sample's KL
  const scalar_t* mu;       // [rows, n]
  const scalar_t* logvar;   // [rows, n]
  const scalar_t* centre;   // [rows, n] the centres the forward chose
  scalar_t* grad_mu;        // [rows, n] output
  scalar_t* grad_logvar;    // [rows, n] output
  int64_t rows;
  int64_t n;
};

template <typename scalar_t>
struct NearestRows {
  const scalar_t* mu;              // [rows, n]
  const scalar_t* centres_by_dim;  // [n, padded_centres]: centres transposed, padding columns +inf
  int64_t num_centres;             // K
  int64_t padded_centres;          // K rounded up to the loops' block of centres
  int64_t* index;                  // [rows] output: argmin_k |mu - c_k|^2 (first on ties)
  int64_t rows;
  int64_t n;
};

// Declares the loops of one instruction-set namespace. centre_block() is the
// lane count of that copy's vectors of centres in nearest_rows: the transposed
// centre table must be padded to a multiple of it.
#define MANIFOLD_EXT_DECLARE_CENTRE_KL_ROWS(ns)                                 \
  namespace ns {                                                                \
  void forward_rows(const ForwardRows<float>& rows, const KlParams& params);    \
  void forward_rows(const ForwardRows<double>& rows, const KlParams& params);   \
  void backward_rows(const BackwardRows<float>& rows, const KlParams& params);  \
  void backward_rows(const BackwardRows<double>& rows, const KlParams& params); \
  void nearest_rows(const NearestRows<float>& rows);                            \
  void nearest_rows(const NearestRows<double>& rows);                           \
  int64_t centre_block(bool is_double);                                         \
  }

MANIFOLD_EXT_FOR_EACH_CPU_ISA(MANIFOLD_EXT_DECLARE_CENTRE_KL_ROWS)

}  // namespace closest_centre_kl
}  // namespace manifold_ext
