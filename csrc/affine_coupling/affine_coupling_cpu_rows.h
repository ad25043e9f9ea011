// Interface between the CPU entry points (affine_coupling_cpu.cpp, compiled
// once) and the vectorised loops (affine_coupling_cpu_vec.cpp, compiled once
// per instruction set into namespaces cpu_default / cpu_avx2 / cpu_avx512).
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

// One call's tensors, all contiguous, walked as rows (see RowGeometry).
template <typename scalar_t>
struct CouplingData {
  const scalar_t* x;  // [B, C, *spatial] active half
  const scalar_t* h;  // [B, 2C, *spatial] shifts and raw scales
  scalar_t* y;        // [B, C, *spatial] output
  RowGeometry geometry;
};

template <typename scalar_t>
struct CouplingGradData {
  const scalar_t* grad_y;       // [B, C, *spatial]
  const scalar_t* grad_logdet;  // [B] upstream gradient of each sample's logdet
  const scalar_t* x;            // [B, C, *spatial]
  const scalar_t* h;            // [B, 2C, *spatial]
  scalar_t* grad_x;             // [B, C, *spatial]
  scalar_t* grad_h;             // [B, 2C, *spatial]
  RowGeometry geometry;
};

// A unit of work: global rows [first_row, first_row + rows), each restricted to
// its elements [begin, begin + len) (the whole row, begin = 0 and len =
// row_len, unless one long row is cut into pieces).
struct RowRun {
  int64_t first_row;
  int64_t rows;
  int64_t begin;
  int64_t len;
};

// Declares the loops of one instruction-set namespace. forward_run writes y
// over the run and sums[k] = the run's share of the logdet of sample
// first_row / rows_per_sample + k (summed in a fixed order within the run).
#define MANIFOLD_EXT_DECLARE_COUPLING_ROWS(ns)                                                              \
  namespace ns {                                                                                            \
  void forward_run(const CouplingData<float>& data, const RowRun& run, const RowMode& mode, double* sums);  \
  void forward_run(const CouplingData<double>& data, const RowRun& run, const RowMode& mode, double* sums); \
  void backward_run(const CouplingGradData<float>& data, const RowRun& run, const RowMode& mode);           \
  void backward_run(const CouplingGradData<double>& data, const RowRun& run, const RowMode& mode);          \
  }

MANIFOLD_EXT_FOR_EACH_CPU_ISA(MANIFOLD_EXT_DECLARE_COUPLING_ROWS)

}  // namespace affine_coupling
}  // namespace manifold_ext
