// Interface between the CPU entry points (affine_coupling_cpu.cpp, compiled
// once) and the vectorised row loops (affine_coupling_cpu_vec.cpp, compiled
// once per instruction set into namespaces cpu_default / cpu_avx2 / cpu_avx512).
// Only raw pointers cross this boundary.
#pragma once

#include <cstdint>

#include "affine_coupling/affine_coupling.h"
#include "common/cpu_capability.h"

namespace manifold_ext {
namespace affine_coupling {

struct RowMode {
  CouplingScale scale;
  bool reverse;
  double clamp;
};

template <typename scalar_t>
struct ForwardRow {
  const scalar_t* x;      // [n] active elements
  const scalar_t* shift;  // [n]
  const scalar_t* raw;    // [n] raw scales
  scalar_t* y;            // [n] output
  int64_t n;
};

template <typename scalar_t>
struct BackwardRow {
  const scalar_t* grad_y;  // [n]
  const scalar_t* x;       // [n]
  const scalar_t* shift;   // [n]
  const scalar_t* raw;     // [n]
  scalar_t* grad_x;        // [n]
  scalar_t* grad_shift;    // [n]
  scalar_t* grad_raw;      // [n]
  scalar_t grad_logdet;    // upstream gradient of this row's sample logdet
  int64_t n;
};

// Declares the row loops of one instruction-set namespace.
#define MANIFOLD_EXT_DECLARE_COUPLING_ROWS(ns)                            \
  namespace ns {                                                          \
  /* Writes y for the row and returns the sum of its logdet terms. */     \
  double forward_row(const ForwardRow<float>& row, const RowMode& mode);  \
  double forward_row(const ForwardRow<double>& row, const RowMode& mode); \
  void backward_row(const BackwardRow<float>& row, const RowMode& mode);  \
  void backward_row(const BackwardRow<double>& row, const RowMode& mode); \
  }

MANIFOLD_EXT_FOR_EACH_CPU_ISA(MANIFOLD_EXT_DECLARE_COUPLING_ROWS)

}  // namespace affine_coupling
}  // namespace manifold_ext
