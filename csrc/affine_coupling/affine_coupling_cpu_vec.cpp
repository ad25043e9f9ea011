// Vectorised row loops of the affine coupling op. Compiled once per
// instruction set (cmake/ManifoldExtCpuIsa.cmake); MANIFOLD_EXT_CPU_NS names
// this copy's namespace. The element math comes from affine_coupling.h, run on
// at::vec::Vectorized lanes for the body of each row and on scalars for its tail.
#include "common/cpu_vec_math.h"  // before the family header: vector hd_* overloads

#include "affine_coupling/affine_coupling_cpu_rows.h"

#ifndef MANIFOLD_EXT_CPU_NS
#error "compile this file through manifold_ext_add_cpu_vec_kernels (MANIFOLD_EXT_CPU_NS unset)"
#endif

namespace manifold_ext {
namespace affine_coupling {
namespace MANIFOLD_EXT_CPU_NS {
namespace {

template <CouplingScale kScale, bool kReverse, typename scalar_t>
double forward_row_impl(const ForwardRow<scalar_t>& row, scalar_t clamp) {
  using V = Vec<scalar_t>;
  const V clamp_v(clamp);
  V logdet_v(scalar_t(0));
  int64_t i = 0;
  for (; i + V::size() <= row.n; i += V::size()) {
    const CouplingOutput<V> out = coupling_forward<kScale, kReverse>(V::loadu(row.x + i), V::loadu(row.shift + i),
                                                                     V::loadu(row.raw + i), clamp_v);
    out.y.store(row.y + i);
    logdet_v += out.logdet;
  }
  double logdet = hd_lane_sum(logdet_v);
  for (; i < row.n; ++i) {
    const CouplingOutput<scalar_t> out = coupling_forward<kScale, kReverse>(row.x[i], row.shift[i], row.raw[i], clamp);
    row.y[i] = out.y;
    logdet += out.logdet;
  }
  return logdet;
}

template <CouplingScale kScale, bool kReverse, typename scalar_t>
void backward_row_impl(const BackwardRow<scalar_t>& row, scalar_t clamp) {
  using V = Vec<scalar_t>;
  const V clamp_v(clamp);
  const V grad_logdet_v(row.grad_logdet);
  int64_t i = 0;
  for (; i + V::size() <= row.n; i += V::size()) {
    const CouplingGrads<V> g =
        coupling_backward<kScale, kReverse>(V::loadu(row.grad_y + i), grad_logdet_v, V::loadu(row.x + i),
                                            V::loadu(row.shift + i), V::loadu(row.raw + i), clamp_v);
    g.x.store(row.grad_x + i);
    g.shift.store(row.grad_shift + i);
    g.raw.store(row.grad_raw + i);
  }
  for (; i < row.n; ++i) {
    const CouplingGrads<scalar_t> g =
        coupling_backward<kScale, kReverse>(row.grad_y[i], row.grad_logdet, row.x[i], row.shift[i], row.raw[i], clamp);
    row.grad_x[i] = g.x;
    row.grad_shift[i] = g.shift;
    row.grad_raw[i] = g.raw;
  }
}

template <typename scalar_t>
double forward_row_any(const ForwardRow<scalar_t>& row, const RowMode& mode) {
  return dispatch_coupling_mode(mode.scale, mode.reverse, [&](auto scale, auto reverse) {
    return forward_row_impl<decltype(scale)::value, decltype(reverse)::value>(row, static_cast<scalar_t>(mode.clamp));
  });
}

template <typename scalar_t>
void backward_row_any(const BackwardRow<scalar_t>& row, const RowMode& mode) {
  dispatch_coupling_mode(mode.scale, mode.reverse, [&](auto scale, auto reverse) {
    backward_row_impl<decltype(scale)::value, decltype(reverse)::value>(row, static_cast<scalar_t>(mode.clamp));
  });
}

}  // namespace

double forward_row(const ForwardRow<float>& row, const RowMode& mode) { return forward_row_any(row, mode); }
double forward_row(const ForwardRow<double>& row, const RowMode& mode) { return forward_row_any(row, mode); }
void backward_row(const BackwardRow<float>& row, const RowMode& mode) { backward_row_any(row, mode); }
void backward_row(const BackwardRow<double>& row, const RowMode& mode) { backward_row_any(row, mode); }

}  // namespace MANIFOLD_EXT_CPU_NS
}  // namespace affine_coupling
}  // namespace manifold_ext
