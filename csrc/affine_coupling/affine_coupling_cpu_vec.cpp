// Vectorised loops of the affine coupling op. Compiled once per instruction
// set (cmake/ManifoldExtCpuIsa.cmake); MANIFOLD_EXT_CPU_NS names this copy's
// namespace. The element math comes from affine_coupling.h, run on
// at::vec::Vectorized lanes; the last partial vector of a row is a masked load
// and store of the same vector code (no scalar tail).
//
// Two walks over a run of rows (RowGeometry: row q holds x[qL ..], its shifts
// at h[2qL ..] and raw scales at h[(2q+1)L ..]):
//   rows of at least one vector: row by row, straight from the tensors;
//   shorter rows (vector data [B, C] in the cross layout has L = 1, tiny
//   images L = H*W): the shifts and raw scales of a block of rows are first
//   gathered into contiguous buffers (for L = 1 one deinterleave of h), so
//   the element math runs on full vectors across row and sample boundaries;
//   each element's log-scale goes to a buffer that is then summed per sample.
#include "common/cpu_vec_math.h"  // before the family header: vector hd_* overloads

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "affine_coupling/affine_coupling_cpu_rows.h"

#ifndef MANIFOLD_EXT_CPU_NS
#error "compile this file through manifold_ext_add_cpu_vec_kernels (MANIFOLD_EXT_CPU_NS unset)"
#endif

namespace manifold_ext {
namespace affine_coupling {
namespace MANIFOLD_EXT_CPU_NS {
namespace {

// Elements per block of the gathered walk: its buffers (a few KiB each) stay in L1.
constexpr int64_t kBlock = 1024;

// ---------------------------------------------------------------------------
// Gather / scatter of the shifts and raw scales of `rows` short rows of L
// elements starting at h (row k: shifts h[2kL ..], raws h[(2k+1)L ..]).
// ---------------------------------------------------------------------------
template <typename scalar_t>
void gather_shift_raw(const scalar_t* h, int64_t L, int64_t rows, scalar_t* shift, scalar_t* raw) {
  using V = Vec<scalar_t>;
  if (L == 1) {  // h = t0 r0 t1 r1 ...
    int64_t i = 0;
    for (; i + V::size() <= rows; i += V::size()) {
      const auto tr = at::vec::deinterleave2(V::loadu(h + 2 * i), V::loadu(h + 2 * i + V::size()));
      tr.first.store(shift + i);
      tr.second.store(raw + i);
    }
    for (; i < rows; ++i) {
      shift[i] = h[2 * i];
      raw[i] = h[2 * i + 1];
    }
    return;
  }
  for (int64_t k = 0; k < rows; ++k) {
    std::memcpy(shift + k * L, h + 2 * k * L, L * sizeof(scalar_t));
    std::memcpy(raw + k * L, h + (2 * k + 1) * L, L * sizeof(scalar_t));
  }
}

template <typename scalar_t>
void scatter_shift_raw(const scalar_t* shift, const scalar_t* raw, int64_t L, int64_t rows, scalar_t* h) {
  using V = Vec<scalar_t>;
  if (L == 1) {
    int64_t i = 0;
    for (; i + V::size() <= rows; i += V::size()) {
      const auto th = at::vec::interleave2(V::loadu(shift + i), V::loadu(raw + i));
      th.first.store(h + 2 * i);
      th.second.store(h + 2 * i + V::size());
    }
    for (; i < rows; ++i) {
      h[2 * i] = shift[i];
      h[2 * i + 1] = raw[i];
    }
    return;
  }
  for (int64_t k = 0; k < rows; ++k) {
    std::memcpy(h + 2 * k * L, shift + k * L, L * sizeof(scalar_t));
    std::memcpy(h + (2 * k + 1) * L, raw + k * L, L * sizeof(scalar_t));
  }
}

// Sum of n consecutive values in the lanes of V (an overlapping masked last vector).
template <typename scalar_t>
scalar_t sum_run(const scalar_t* values, int64_t n) {
  using V = Vec<scalar_t>;
  V acc(scalar_t(0));
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) acc += V::loadu(values + i);
  if (i < n) acc += V::loadu(values + i, n - i);
  return hd_lane_sum(acc);
}

// sums[s - first_sample] += the terms of elements [e0, e0 + n) (global element
// indices; samples are runs of sample_len elements).
template <typename scalar_t>
void add_sample_sums(const scalar_t* terms, int64_t e0, int64_t n, int64_t sample_len, int64_t first_sample,
                     double* sums) {
  if (sample_len == 1) {
    for (int64_t k = 0; k < n; ++k) sums[e0 + k - first_sample] += terms[k];
    return;
  }
  int64_t sample = e0 / sample_len;
  for (int64_t e = e0; e < e0 + n; ++sample) {
    const int64_t stop = std::min(e0 + n, (sample + 1) * sample_len);
    sums[sample - first_sample] += sum_run(terms + (e - e0), stop - e);
    e = stop;
  }
}

// out[k] = grad_logdet of the sample of element e0 + k, for k < n.
template <typename scalar_t>
void spread_sample_values(const scalar_t* per_sample, int64_t e0, int64_t n, int64_t sample_len, scalar_t* out) {
  if (sample_len == 1) {
    std::memcpy(out, per_sample + e0, n * sizeof(scalar_t));
    return;
  }
  int64_t sample = e0 / sample_len;
  for (int64_t e = e0; e < e0 + n; ++sample) {
    const int64_t stop = std::min(e0 + n, (sample + 1) * sample_len);
    std::fill(out + (e - e0), out + (stop - e0), per_sample[sample]);
    e = stop;
  }
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------
template <CouplingScale kScale, bool kReverse, typename scalar_t>
void forward_rows_direct(const CouplingData<scalar_t>& d, const RowRun& run, scalar_t clamp, double* sums) {
  using V = Vec<scalar_t>;
  const V clamp_v(clamp);
  const int64_t L = d.geometry.row_len;
  const int64_t first_sample = run.first_row / d.geometry.rows_per_sample;
  for (int64_t q = run.first_row; q < run.first_row + run.rows; ++q) {
    const scalar_t* x = d.x + active_offset(q, L) + run.begin;
    const scalar_t* shift = d.h + shift_offset(q, L) + run.begin;
    const scalar_t* raw = d.h + raw_offset(q, L) + run.begin;
    scalar_t* y = d.y + active_offset(q, L) + run.begin;
    V logdet_v(scalar_t(0));
    int64_t i = 0;
    for (; i + V::size() <= run.len; i += V::size()) {
      const CouplingOutput<V> out =
          coupling_forward<kScale, kReverse>(V::loadu(x + i), V::loadu(shift + i), V::loadu(raw + i), clamp_v);
      out.y.store(y + i);
      logdet_v += out.logdet;
    }
    if (i < run.len) {
      const int64_t count = run.len - i;
      const CouplingOutput<V> out = coupling_forward<kScale, kReverse>(
          V::loadu(x + i, count), V::loadu(shift + i, count), V::loadu(raw + i, count), clamp_v);
      out.y.store(y + i, count);
      logdet_v += first_lanes(out.logdet, count);
    }
    sums[q / d.geometry.rows_per_sample - first_sample] += hd_lane_sum(logdet_v);
  }
}

template <CouplingScale kScale, bool kReverse, typename scalar_t>
void forward_rows_gathered(const CouplingData<scalar_t>& d, const RowRun& run, scalar_t clamp, double* sums) {
  using V = Vec<scalar_t>;
  alignas(64) scalar_t shift[kBlock];
  alignas(64) scalar_t raw[kBlock];
  alignas(64) scalar_t log_scale[kBlock];
  const V clamp_v(clamp);
  const int64_t L = d.geometry.row_len;
  const int64_t sample_len = d.geometry.rows_per_sample * L;
  const int64_t first_sample = run.first_row / d.geometry.rows_per_sample;
  const int64_t rows_per_block = kBlock / L;
  for (int64_t q0 = run.first_row; q0 < run.first_row + run.rows; q0 += rows_per_block) {
    const int64_t rows = std::min(rows_per_block, run.first_row + run.rows - q0);
    const int64_t n = rows * L;
    gather_shift_raw(d.h + shift_offset(q0, L), L, rows, shift, raw);
    const scalar_t* x = d.x + active_offset(q0, L);
    scalar_t* y = d.y + active_offset(q0, L);
    for_each_vector<V>(n, [&](int64_t i, auto count) {
      const CouplingOutput<V> out = coupling_forward<kScale, kReverse>(
          V::loadu(x + i, count), V::loadu(shift + i, count), V::loadu(raw + i, count), clamp_v);
      out.y.store(y + i, count);
      out.logdet.store(log_scale + i, count);
    });
    add_sample_sums(log_scale, active_offset(q0, L), n, sample_len, first_sample, sums);
  }
}

template <CouplingScale kScale, bool kReverse, typename scalar_t>
void forward_run_impl(const CouplingData<scalar_t>& d, const RowRun& run, scalar_t clamp, double* sums) {
  const int64_t R = d.geometry.rows_per_sample;
  const int64_t samples = (run.first_row + run.rows - 1) / R - run.first_row / R + 1;
  std::fill(sums, sums + samples, 0.0);
  if (run.len < Vec<scalar_t>::size() && run.len == d.geometry.row_len) {
    forward_rows_gathered<kScale, kReverse>(d, run, clamp, sums);
  } else {
    forward_rows_direct<kScale, kReverse>(d, run, clamp, sums);
  }
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------
template <CouplingScale kScale, bool kReverse, typename scalar_t>
void backward_rows_direct(const CouplingGradData<scalar_t>& d, const RowRun& run, scalar_t clamp) {
  using V = Vec<scalar_t>;
  const V clamp_v(clamp);
  const int64_t L = d.geometry.row_len;
  for (int64_t q = run.first_row; q < run.first_row + run.rows; ++q) {
    // Local pointers: stores through the outputs could alias `d` in the compiler's view.
    const int64_t a = active_offset(q, L) + run.begin;
    const int64_t t = shift_offset(q, L) + run.begin;
    const int64_t r = raw_offset(q, L) + run.begin;
    const scalar_t *grad_y = d.grad_y + a, *x = d.x + a, *shift = d.h + t, *raw = d.h + r;
    scalar_t *grad_x = d.grad_x + a, *grad_shift = d.grad_h + t, *grad_raw = d.grad_h + r;
    const V grad_logdet(d.grad_logdet[q / d.geometry.rows_per_sample]);
    for_each_vector<V>(run.len, [&](int64_t i, auto count) {
      const CouplingGrads<V> g =
          coupling_backward<kScale, kReverse>(V::loadu(grad_y + i, count), grad_logdet, V::loadu(x + i, count),
                                              V::loadu(shift + i, count), V::loadu(raw + i, count), clamp_v);
      g.x.store(grad_x + i, count);
      g.shift.store(grad_shift + i, count);
      g.raw.store(grad_raw + i, count);
    });
  }
}

template <CouplingScale kScale, bool kReverse, typename scalar_t>
void backward_rows_gathered(const CouplingGradData<scalar_t>& d, const RowRun& run, scalar_t clamp) {
  using V = Vec<scalar_t>;
  alignas(64) scalar_t shift[kBlock];
  alignas(64) scalar_t raw[kBlock];
  alignas(64) scalar_t grad_logdet[kBlock];  // each element's sample gradient
  const V clamp_v(clamp);
  const int64_t L = d.geometry.row_len;
  const int64_t sample_len = d.geometry.rows_per_sample * L;
  const int64_t rows_per_block = kBlock / L;
  for (int64_t q0 = run.first_row; q0 < run.first_row + run.rows; q0 += rows_per_block) {
    const int64_t rows = std::min(rows_per_block, run.first_row + run.rows - q0);
    const int64_t n = rows * L;
    const int64_t e0 = active_offset(q0, L);
    gather_shift_raw(d.h + shift_offset(q0, L), L, rows, shift, raw);
    spread_sample_values(d.grad_logdet, e0, n, sample_len, grad_logdet);
    const scalar_t *grad_y = d.grad_y + e0, *x = d.x + e0;
    scalar_t* grad_x = d.grad_x + e0;
    for_each_vector<V>(n, [&](int64_t i, auto count) {
      const CouplingGrads<V> g = coupling_backward<kScale, kReverse>(
          V::loadu(grad_y + i, count), V::loadu(grad_logdet + i, count), V::loadu(x + i, count),
          V::loadu(shift + i, count), V::loadu(raw + i, count), clamp_v);
      g.x.store(grad_x + i, count);
      g.shift.store(shift + i, count);  // the buffers now hold the gradients
      g.raw.store(raw + i, count);
    });
    scatter_shift_raw(shift, raw, L, rows, d.grad_h + shift_offset(q0, L));
  }
}

template <CouplingScale kScale, bool kReverse, typename scalar_t>
void backward_run_impl(const CouplingGradData<scalar_t>& d, const RowRun& run, scalar_t clamp) {
  if (run.len < Vec<scalar_t>::size() && run.len == d.geometry.row_len) {
    backward_rows_gathered<kScale, kReverse>(d, run, clamp);
  } else {
    backward_rows_direct<kScale, kReverse>(d, run, clamp);
  }
}

template <typename scalar_t>
void forward_run_any(const CouplingData<scalar_t>& d, const RowRun& run, const RowMode& mode, double* sums) {
  dispatch_coupling_mode(mode.scale, mode.reverse, [&](auto scale, auto reverse) {
    forward_run_impl<decltype(scale)::value, decltype(reverse)::value>(d, run, static_cast<scalar_t>(mode.clamp), sums);
  });
}

template <typename scalar_t>
void backward_run_any(const CouplingGradData<scalar_t>& d, const RowRun& run, const RowMode& mode) {
  dispatch_coupling_mode(mode.scale, mode.reverse, [&](auto scale, auto reverse) {
    backward_run_impl<decltype(scale)::value, decltype(reverse)::value>(d, run, static_cast<scalar_t>(mode.clamp));
  });
}

}  // namespace

void forward_run(const CouplingData<float>& d, const RowRun& run, const RowMode& mode, double* sums) {
  forward_run_any(d, run, mode, sums);
}
void forward_run(const CouplingData<double>& d, const RowRun& run, const RowMode& mode, double* sums) {
  forward_run_any(d, run, mode, sums);
}
void backward_run(const CouplingGradData<float>& d, const RowRun& run, const RowMode& mode) {
  backward_run_any(d, run, mode);
}
void backward_run(const CouplingGradData<double>& d, const RowRun& run, const RowMode& mode) {
  backward_run_any(d, run, mode);
}

}  // namespace MANIFOLD_EXT_CPU_NS
}  // namespace affine_coupling
}  // namespace manifold_ext
