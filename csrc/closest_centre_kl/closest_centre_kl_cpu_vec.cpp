// Vectorised loops of the closest-centre KL ops. Compiled once per instruction
// set (cmake/ManifoldExtCpuIsa.cmake); MANIFOLD_EXT_CPU_NS names this copy's
// namespace. The element math comes from closest_centre_kl.h, run on
// KernelVec lanes (at::vec::Vectorized; the baseline copy's float: Float4).
//
// Rows are short (n = 2 for the paper's 2-D grid, 40 for CelebA attributes),
// so the loops walk the elements of a block of whole rows flat, as one stream,
// and keep SIMD lanes full whatever n is: the forward writes each element's KL
// term to a small buffer (L1-resident) and then sums it row by row; the
// backward first spreads each row's upstream gradient over a buffer.
#include "common/cpu_vec_math.h"  // before the family header: vector hd_* overloads

#include <algorithm>
#include <limits>

#include "closest_centre_kl/closest_centre_kl_cpu_rows.h"

#ifndef MANIFOLD_EXT_CPU_NS
#error "compile this file through manifold_ext_add_cpu_vec_kernels (MANIFOLD_EXT_CPU_NS unset)"
#endif

namespace manifold_ext {
namespace closest_centre_kl {
namespace MANIFOLD_EXT_CPU_NS {
namespace {

// Elements per block: whole rows when n <= kBlock, else pieces of one row.
constexpr int64_t kBlock = 1024;

template <typename scalar_t>
struct LaneParams {
  Grid<scalar_t> grid;
  PriorVariance<scalar_t> prior;
};

template <typename T, typename scalar_t>
LaneParams<T> lane_params(const KlParams& p) {
  const auto s = [](double v) { return T(static_cast<scalar_t>(v)); };
  return {Grid<T>{s(p.offset), s(p.spacing), s(p.low), s(p.high), s(p.inv_spacing), p.reciprocal_exact},
          PriorVariance<T>{s(p.log_prior_var), s(p.inv_prior_var)}};
}

// The centre of one element (vector or scalar) for the compile-time source.
template <CentreSource kSource, typename T, typename Guided>
inline T choose_centre(const T& mu, const T& target, const Guided& guided, const Grid<T>& grid) {
  if constexpr (kSource == CentreSource::Target) {
    return target;
  } else if constexpr (kSource == CentreSource::Rounded) {
    return grid_centre(mu, grid);
  } else {
    return hd_where(guided, target, grid_centre(mu, grid));  // guided: lane mask (vector) or bool
  }
}

// The mask as 0/1 lanes of the element type, so that a lane-wise compare
// turns it into blend masks.
template <typename scalar_t>
void mask_as_lanes(const bool* mask, int64_t count, scalar_t* guided) {
  for (int64_t i = 0; i < count; ++i) guided[i] = mask[i] ? scalar_t(1) : scalar_t(0);
}

// Twice-KL terms of `count` consecutive elements into terms[0..count), and
// their centres into centre[0..count) when kStoreCentre. `guided` (Masked
// only): the elements' mask as 0/1 lanes.
template <CentreSource kSource, bool kStoreCentre, typename scalar_t>
void block_terms(const scalar_t* mu, const scalar_t* logvar, const scalar_t* target, const scalar_t* guided,
                 scalar_t* centre, scalar_t* terms, int64_t count, const KlParams& params) {
  using V = KernelVec<scalar_t>;
  const LaneParams<V> pv = lane_params<V, scalar_t>(params);
  // The last, partial vector goes through the same vector code (partial loads
  // and stores): a scalar tail would use libm's exp where the body uses the
  // vector exp, and which elements fall in a tail depends on where the thread
  // partition cuts the rows, so results would depend on the thread count.
  for_each_vector<V>(count, [&](int64_t i, auto lanes) {
    const V m = V::loadu(mu + i, lanes);
    V t(scalar_t(0));
    V g(scalar_t(0));
    if constexpr (kSource != CentreSource::Rounded) t = V::loadu(target + i, lanes);
    if constexpr (kSource == CentreSource::Masked) g = V::loadu(guided + i, lanes) != V(scalar_t(0));
    const V c = choose_centre<kSource>(m, t, g, pv.grid);
    if constexpr (kStoreCentre) c.store(centre + i, lanes);
    twice_kl_term(m, V::loadu(logvar + i, lanes), c, pv.prior).store(terms + i, lanes);
  });
}

// Sum of n consecutive values: full vectors, then the last partial vector as
// an overlapping load whose already-counted lanes are zeroed.
template <typename scalar_t>
scalar_t sum_run(const scalar_t* values, int64_t n) {
  using V = KernelVec<scalar_t>;
  if (n < V::size()) {
    scalar_t sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += values[i];
    return sum;
  }
  V acc = V::loadu(values);
  int64_t i = V::size();
  for (; i + V::size() <= n; i += V::size()) acc += V::loadu(values + i);
  if (i < n) acc += V::set(V::loadu(values + n - V::size()), V(scalar_t(0)), V::size() - (n - i));
  return hd_lane_sum(acc);
}

// out[r] = 1/2 * (sum of row r of terms) (Eq. 27's 1/2); the short rows of
// low-dimensional latents get loops with a compile-time length.
template <int kLen, typename scalar_t>
void sum_short_rows(const scalar_t* terms, int64_t rows, scalar_t* out) {
  for (int64_t r = 0; r < rows; ++r, terms += kLen) {
    scalar_t sum = terms[0];
    for (int i = 1; i < kLen; ++i) sum += terms[i];
    out[r] = scalar_t(0.5) * sum;
  }
}

template <typename scalar_t>
void sum_rows(const scalar_t* terms, int64_t rows, int64_t n, scalar_t* out) {
  switch (n) {
    case 1: return sum_short_rows<1>(terms, rows, out);
    case 2: return sum_short_rows<2>(terms, rows, out);
    case 3: return sum_short_rows<3>(terms, rows, out);
    case 4: return sum_short_rows<4>(terms, rows, out);
    default:
      for (int64_t r = 0; r < rows; ++r) out[r] = scalar_t(0.5) * sum_run(terms + r * n, n);
  }
}

template <CentreSource kSource, bool kStoreCentre, typename scalar_t>
void forward_rows_impl(const ForwardRows<scalar_t>& rows, const KlParams& params) {
  alignas(64) scalar_t terms[kBlock];
  alignas(64) scalar_t guided[kSource == CentreSource::Masked ? kBlock : 1];
  const int64_t n = rows.n;
  // A mask per dimension over blocks of whole rows: every block starts a row,
  // so one tiled copy serves them all.
  const bool tiled_mask = kSource == CentreSource::Masked && rows.mask_per_dimension && n > 0 && n <= kBlock;
  if (tiled_mask) {
    for (int64_t r = 0; r + n <= kBlock; r += n) mask_as_lanes(rows.mask, n, guided + r);
  }
  scalar_t long_row_sum = 0;  // rows longer than a block: running sum over its blocks
  for_each_row_block<kBlock>(rows.rows, n, [&](const RowBlock& span) {
    const int64_t offset = span.first_row * n + span.begin;
    if (kSource == CentreSource::Masked && !tiled_mask) {
      mask_as_lanes(rows.mask + (rows.mask_per_dimension ? span.begin : offset), span.count, guided);
    }
    block_terms<kSource, kStoreCentre>(rows.mu + offset, rows.logvar + offset,
                                       rows.target ? rows.target + offset : nullptr, guided,
                                       kStoreCentre ? rows.centre + offset : nullptr, terms, span.count, params);
    if (n <= kBlock) {
      sum_rows(terms, span.rows, n, rows.kl + span.first_row);
    } else {
      long_row_sum = (span.begin == 0 ? scalar_t(0) : long_row_sum) + sum_run(terms, span.count);
      if (span.begin + span.count == n) rows.kl[span.first_row] = scalar_t(0.5) * long_row_sum;
    }
  });
}

template <typename scalar_t>
void backward_rows_impl(const BackwardRows<scalar_t>& rows, const KlParams& params) {
  using V = KernelVec<scalar_t>;
  const PriorVariance<V> pv = lane_params<V, scalar_t>(params).prior;
  alignas(64) scalar_t grad[kBlock];  // each element's row gradient
  const int64_t n = rows.n;
  for_each_row_block<kBlock>(rows.rows, n, [&](const RowBlock& span) {
    spread_per_row(span, n, grad, [&](int64_t row) { return rows.grad_kl[row]; });
    const int64_t offset = span.first_row * n + span.begin;
    const scalar_t* mu = rows.mu + offset;
    const scalar_t* logvar = rows.logvar + offset;
    const scalar_t* centre = rows.centre + offset;
    scalar_t* grad_mu = rows.grad_mu + offset;
    scalar_t* grad_logvar = rows.grad_logvar + offset;
    for_each_vector<V>(span.count, [&](int64_t i, auto lanes) {  // the partial last vector too (see block_terms)
      const KlGrads<V> g = kl_term_grads(V::loadu(grad + i, lanes), V::loadu(mu + i, lanes),
                                         V::loadu(logvar + i, lanes), V::loadu(centre + i, lanes), pv);
      g.mu.store(grad_mu + i, lanes);
      g.logvar.store(grad_logvar + i, lanes);
    });
  });
}

// ---------------------------------------------------------------------------
// Nearest centre of a set: register-blocked over kSamples samples x kLaneVecs
// vectors of centres. For each block of centres, the squared distances are
// accumulated dimension by dimension from the transposed table (one load of a
// centre vector serves kSamples samples), then folded into a running per-lane
// minimum and its centre index (kept as a floating-point lane, exact for the
// K < 2^24 the host allows in float32). Lanes see their centres in increasing
// order (blocks of kLaneVecs vectors, then single vectors) and replace only on
// a strictly smaller distance, and the final lane
// reduction prefers the smallest index among equal minima: the first nearest
// centre wins, as torch.argmin. The table is padded to whole vectors, not
// whole blocks: the last block may be one vector (the 6 x 6 grid's 36 centres
// are 40 on AVX2, not 48).
// ---------------------------------------------------------------------------
constexpr int kLaneVecs = 2;

template <typename scalar_t>
constexpr int64_t centres_per_block() {
  return KernelVec<scalar_t>::size();  // the padding unit: one vector
}

// Folds the centres [k0, k0 + kVecs * kW) into the running minima of kSamples
// samples (the first kVecs of their kLaneVecs lanes vectors).
template <int kVecs, int kSamples, typename V, typename scalar_t>
inline void fold_centre_block(const NearestRows<scalar_t>& rows, const scalar_t* mu, int64_t k0,
                              V (&best)[kSamples][kLaneVecs], V (&best_index)[kSamples][kLaneVecs]) {
  constexpr int64_t kW = V::size();
  const int64_t n = rows.n;
  V dist[kSamples][kVecs];
  for (int s = 0; s < kSamples; ++s) {
    for (int v = 0; v < kVecs; ++v) dist[s][v] = V(scalar_t(0));
  }
  const scalar_t* column = rows.centres_by_dim + k0;
  for (int64_t i = 0; i < n; ++i, column += rows.padded_centres) {
    V c[kVecs];
    for (int v = 0; v < kVecs; ++v) c[v] = V::loadu(column + v * kW);
    for (int s = 0; s < kSamples; ++s) {
      const V m(mu[s * n + i]);
      for (int v = 0; v < kVecs; ++v) {
        const V d = m - c[v];
        dist[s][v] = hd_fmadd(d, d, dist[s][v]);  // += squared_gap(m, c)
      }
    }
  }
  for (int v = 0; v < kVecs; ++v) {
    const V lane_index = V::arange(static_cast<scalar_t>(k0 + v * kW), scalar_t(1));
    // Padding columns (+inf) are never nearer, not even when mu is inf and (inf - inf)^2 is NaN.
    const V real_centre = lane_index < V(static_cast<scalar_t>(rows.num_centres));
    for (int s = 0; s < kSamples; ++s) {
      const V closer = is_nearer(dist[s][v], best[s][v]) & real_centre;  // NaN rule: closest_centre_kl.h
      best[s][v] = hd_where(closer, dist[s][v], best[s][v]);
      best_index[s][v] = hd_where(closer, lane_index, best_index[s][v]);
    }
  }
}

template <int kSamples, typename scalar_t>
void nearest_samples(const NearestRows<scalar_t>& rows, int64_t first_row) {
  using V = KernelVec<scalar_t>;
  constexpr int64_t kW = V::size();
  const scalar_t* mu = rows.mu + first_row * rows.n;
  const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
  V best[kSamples][kLaneVecs];
  V best_index[kSamples][kLaneVecs];
  for (int s = 0; s < kSamples; ++s) {
    for (int v = 0; v < kLaneVecs; ++v) {
      best[s][v] = V(inf);
      best_index[s][v] = V(scalar_t(0));
    }
  }
  int64_t k0 = 0;
  for (; k0 + kLaneVecs * kW <= rows.padded_centres; k0 += kLaneVecs * kW) {
    fold_centre_block<kLaneVecs>(rows, mu, k0, best, best_index);
  }
  for (; k0 < rows.padded_centres; k0 += kW) fold_centre_block<1>(rows, mu, k0, best, best_index);
  for (int s = 0; s < kSamples; ++s) {
    // Fold the kLaneVecs vectors lane by lane, then the kW lanes one by one
    // (the scalar pass, branchy, was most of the time of a small search).
    V value = best[s][0];
    V index = best_index[s][0];
    for (int v = 1; v < kLaneVecs; ++v) {
      const auto first = ranks_before(best[s][v], best_index[s][v], value, index);
      value = hd_where(first, best[s][v], value);
      index = hd_where(first, best_index[s][v], index);
    }
    alignas(64) scalar_t values[kW];
    alignas(64) scalar_t indices[kW];
    value.store(values);
    index.store(indices);
    scalar_t min_value = values[0];
    scalar_t min_index = indices[0];
    for (int64_t l = 1; l < kW; ++l) {
      const bool first =
          ranks_before(values[l], static_cast<int64_t>(indices[l]), min_value, static_cast<int64_t>(min_index));
      min_value = first ? values[l] : min_value;  // selects, not branches
      min_index = first ? indices[l] : min_index;
    }
    rows.index[first_row + s] = static_cast<int64_t>(min_index);
  }
}

template <typename scalar_t>
void nearest_rows_impl(const NearestRows<scalar_t>& rows) {
  constexpr int kSamples = 4;
  int64_t r = 0;
  for (; r + kSamples <= rows.rows; r += kSamples) nearest_samples<kSamples>(rows, r);
  for (; r < rows.rows; ++r) nearest_samples<1>(rows, r);
}

template <typename scalar_t>
void forward_rows_any(const ForwardRows<scalar_t>& rows, const KlParams& params) {
  const bool store = rows.centre != nullptr;
  switch (params.source) {
    case CentreSource::Rounded:
      return store ? forward_rows_impl<CentreSource::Rounded, true>(rows, params)
                   : forward_rows_impl<CentreSource::Rounded, false>(rows, params);
    case CentreSource::Target:
      return store ? forward_rows_impl<CentreSource::Target, true>(rows, params)
                   : forward_rows_impl<CentreSource::Target, false>(rows, params);
    default:
      return store ? forward_rows_impl<CentreSource::Masked, true>(rows, params)
                   : forward_rows_impl<CentreSource::Masked, false>(rows, params);
  }
}

}  // namespace

void forward_rows(const ForwardRows<float>& rows, const KlParams& params) { forward_rows_any(rows, params); }
void forward_rows(const ForwardRows<double>& rows, const KlParams& params) { forward_rows_any(rows, params); }
void backward_rows(const BackwardRows<float>& rows, const KlParams& params) { backward_rows_impl(rows, params); }
void backward_rows(const BackwardRows<double>& rows, const KlParams& params) { backward_rows_impl(rows, params); }
void nearest_rows(const NearestRows<float>& rows) { nearest_rows_impl(rows); }
void nearest_rows(const NearestRows<double>& rows) { nearest_rows_impl(rows); }
int64_t centre_block(bool is_double) { return is_double ? centres_per_block<double>() : centres_per_block<float>(); }

}  // namespace MANIFOLD_EXT_CPU_NS
}  // namespace closest_centre_kl
}  // namespace manifold_ext
