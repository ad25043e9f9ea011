// CPU kernel of region_clip_2d: the facets (Eq. 6), Chebyshev centre and radius (Eq. 7-8) and
// boundedness of a batch of regions of a network with 2-D input, without a linear program.
//
// Per region (one at::parallel_for task per block of regions), with the rows flagged `ignore`
// (zero rows: the caller decides them) left out:
//  1. rows normalised to unit normals; rows with the same normal (max-abs within
//     kSameHyperplaneTol) are grouped: the tightest ones (same offset) form one facet group
//     represented by its first row, looser parallel rows are redundant (the same rule as
//     manifold_ext.relu_geometry.lp.normalise_system);
//  2. P = the box (or, for all of R^2, a square B_R holding every vertex any subset of the rows
//     can have: R = 2 (1 + the largest |coordinate| of a pairwise intersection)) clipped by
//     every representative;
//  3. Chebyshev radius over P's edge lines (capped at 1 without a box, as the LP path); radius
//     <= tol: empty, no facets;
//  4. a representative whose slack is positive at every vertex of P does not touch P, so by
//     convexity max u_i . x over P_{-i} <= e_i: redundant. Each other one is tested exactly:
//     facet iff max over the vertices of P_{-i} (= the box or B_R clipped by all other
//     representatives) exceeds e_i + tol, or, without a box, P_{-i} is unbounded along u_i (an
//     edge of P_{-i} runs out to B_R in a direction with u_i . d > 0);
//  5. without a box, P is bounded iff none of its edges lies on B_R.
// Anything rounding makes inconsistent (a polygon too small to hold its region, no feasible
// Chebyshev triple) sets ok = false for that region; the Python layer then uses the LP path.
//
// CPU only, by design: a region is a few hundred branchy flops on a few dozen rows, the
// traversal that produces the batches and deduplicates their neighbours runs on the host, and
// the systems come from region_system in float64 on the CPU; one GPU launch per batch would
// cost more than the work.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#include "region_clip/region_clip.h"

namespace manifold_ext {
namespace region_clip {
namespace {

constexpr double kInteriorRadiusCap = 1.0;  // lp.INTERIOR_RADIUS_CAP: the Chebyshev radius cap without a box
// Regions per parallel task: a region costs tens of microseconds, so a batch of the enumeration's
// default size (256) runs on one thread (its parallelism comes from worker processes, and threads
// woken for less work than this only wait on a busy machine); larger calls split.
constexpr int64_t kRegionsPerTask = 256;

struct RowLine {
  Line line;
  int64_t row;  // original row index
};

// Per-thread buffers, sized once per task for H rows.
struct Workspace {
  std::vector<RowLine> rows;
  std::vector<int64_t> order, parent;
  std::vector<char> done;
  std::vector<Line> lines;           // representatives, then the four box lines
  std::vector<int64_t> rep_row;      // original row of each representative
  std::vector<int64_t> group_start;  // members of representative k: group_rows[group_start[k]..group_start[k+1])
  std::vector<int64_t> group_rows;
  std::vector<Vertex> base, poly, sub, scratch;
  std::vector<int32_t> edge_set;

  explicit Workspace(int64_t H) {
    rows.reserve(H);
    order.reserve(H);
    parent.reserve(H);
    lines.reserve(H + 4);
    rep_row.reserve(H);
    group_start.reserve(H + 1);
    group_rows.reserve(H);
    const size_t capacity = 2 * static_cast<size_t>(H) + 16;
    base.resize(4);
    poly.resize(capacity);
    sub.resize(capacity);
    scratch.resize(capacity);
    edge_set.reserve(H + 4);
  }
};

struct RegionResult {
  bool ok = true;
  double cx = 0, cy = 0, radius = 0;
  bool bounded = true;
};

int64_t find_root(std::vector<int64_t>& parent, int64_t i) {
  while (parent[i] != i) {
    parent[i] = parent[parent[i]];
    i = parent[i];
  }
  return i;
}

// Step 1: unit rows, facet groups of identical hyperplanes, looser parallel rows dropped.
// Returns false when a zero-normal row that is not ignored makes the region empty.
bool normalise_and_group(const double* A, const double* c, const bool* ignore, int64_t H, Workspace& ws) {
  ws.rows.clear();
  for (int64_t i = 0; i < H; ++i) {
    if (ignore[i]) continue;
    const double norm = std::hypot(A[2 * i], A[2 * i + 1]);
    if (norm == 0.0) {  // an exactly constant row the caller did not flag: 0 <= c_i
      if (c[i] < 0) return false;
      continue;
    }
    ws.rows.push_back(RowLine{Line{A[2 * i] / norm, A[2 * i + 1] / norm, c[i] / norm}, i});
  }
  const int64_t m = static_cast<int64_t>(ws.rows.size());
  // Same normal => close projections on a fixed generic direction: sort, compare within runs.
  constexpr double probe_x = 0.6, probe_y = 0.8;
  const double window = kSameHyperplaneTol * (std::sqrt(2.0) + 1.0);
  auto key = [&](int64_t k) { return ws.rows[k].line.ux * probe_x + ws.rows[k].line.uy * probe_y; };
  ws.order.resize(m);
  std::iota(ws.order.begin(), ws.order.end(), 0);
  std::stable_sort(ws.order.begin(), ws.order.end(), [&](int64_t a, int64_t b) { return key(a) < key(b); });
  ws.parent.resize(m);
  std::iota(ws.parent.begin(), ws.parent.end(), 0);
  bool any_pair = false;
  int64_t run_start = 0;
  for (int64_t pos = 1; pos <= m; ++pos) {
    if (pos < m && key(ws.order[pos]) - key(ws.order[pos - 1]) <= window) continue;
    for (int64_t a = run_start; a < pos; ++a) {
      for (int64_t b = a + 1; b < pos; ++b) {
        const Line& la = ws.rows[ws.order[a]].line;
        const Line& lb = ws.rows[ws.order[b]].line;
        if (std::max(std::abs(la.ux - lb.ux), std::abs(la.uy - lb.uy)) <= kSameHyperplaneTol) {
          ws.parent[find_root(ws.parent, ws.order[b])] = find_root(ws.parent, ws.order[a]);
          any_pair = true;
        }
      }
    }
    run_start = pos;
  }
  ws.lines.clear();
  ws.rep_row.clear();
  ws.group_start.assign(1, 0);
  ws.group_rows.clear();
  if (!any_pair) {  // the usual case: every row is its own group
    for (int64_t k = 0; k < m; ++k) {
      ws.lines.push_back(ws.rows[k].line);
      ws.rep_row.push_back(ws.rows[k].row);
      ws.group_rows.push_back(ws.rows[k].row);
      ws.group_start.push_back(static_cast<int64_t>(ws.group_rows.size()));
    }
    return true;
  }
  // Each cluster once, from its first row (rows are in original order).
  ws.done.assign(m, 0);
  for (int64_t k = 0; k < m; ++k) {
    const int64_t root = find_root(ws.parent, k);
    if (ws.done[root]) continue;
    ws.done[root] = 1;
    double tightest = std::numeric_limits<double>::infinity();
    for (int64_t j = k; j < m; ++j) {
      if (find_root(ws.parent, j) == root) tightest = std::min(tightest, ws.rows[j].line.e);
    }
    int64_t representative = -1;
    for (int64_t j = k; j < m; ++j) {
      if (find_root(ws.parent, j) != root) continue;
      if (std::abs(ws.rows[j].line.e - tightest) <= kSameHyperplaneTol * (1.0 + std::abs(tightest))) {
        if (representative < 0) representative = j;
        ws.group_rows.push_back(ws.rows[j].row);
      }
    }
    ws.lines.push_back(ws.rows[representative].line);
    ws.rep_row.push_back(ws.rows[representative].row);
    ws.group_start.push_back(static_cast<int64_t>(ws.group_rows.size()));
  }
  return true;
}

// The square B_R of step 2: every intersection of two representatives lies strictly inside.
double enclosing_half_width(const std::vector<Line>& lines, int64_t m) {
  double reach = 0.0;
  for (int64_t a = 0; a < m; ++a) {
    reach = std::max(reach, std::abs(lines[a].e));
    for (int64_t b = a + 1; b < m; ++b) {
      double x, y;
      if (intersect(lines[a], lines[b], x, y)) reach = std::max({reach, std::abs(x), std::abs(y)});
    }
  }
  return 2.0 * (1.0 + reach);
}

// The base polygon clipped by every representative except `skip` (-1: none) into `out`.
// Returns the vertex count (< 3: no interior), or -1 when a buffer would overflow.
int clip_all(Workspace& ws, int64_t m, int64_t skip, std::vector<Vertex>& out) {
  const int capacity = static_cast<int>(out.size());
  std::copy(ws.base.begin(), ws.base.end(), ws.scratch.begin());
  int n = 4;
  Vertex* src = ws.scratch.data();
  Vertex* dst = out.data();
  for (int64_t k = 0; k < m; ++k) {
    if (k == skip) continue;
    n = clip(src, n, ws.lines.data(), static_cast<int32_t>(k), dst, capacity);
    if (n < 0) return -1;
    std::swap(src, dst);
    if (n < 3) break;
  }
  if (src != out.data()) std::copy(src, src + std::max(n, 0), out.data());
  return n;
}

// Without a box: whether the polygon (clipped to B_R) runs out to B_R along a representative's
// edge in a direction d with u . d > 0, i.e. the region is unbounded along u.
bool unbounded_along(const Vertex* poly, int n, int64_t m, const Line& u) {
  bool any_real_edge = false;
  for (int j = 0; j < n; ++j) {
    if (poly[j].edge >= m) continue;
    any_real_edge = true;
    const Vertex& p = poly[j];
    const Vertex& q = poly[(j + 1) % n];
    const bool p_far = poly[(j + n - 1) % n].edge >= m;  // p is where an edge on B_R ends
    const bool q_far = q.edge >= m;
    if (!p_far && !q_far) continue;
    const double dx = q.x - p.x, dy = q.y - p.y;
    const double len = std::hypot(dx, dy);
    if (len == 0.0) continue;
    const double slope = (u.ux * dx + u.uy * dy) / len;
    if ((q_far && slope > kSlopeTol) || (p_far && -slope > kSlopeTol)) return true;
  }
  return !any_real_edge;
}

// Steps 2-5 for one region. facet_of[H] is filled with -1 or the row of the facet's representative.
RegionResult analyse_region(const double* A, const double* c, const bool* ignore, int64_t H, const double* box,
                            double tol, Workspace& ws, int64_t* facet_of) {
  RegionResult out;
  std::fill(facet_of, facet_of + H, int64_t{-1});
  if (!normalise_and_group(A, c, ignore, H, ws)) {
    out.radius = -std::numeric_limits<double>::infinity();
    return out;
  }
  const int64_t m = static_cast<int64_t>(ws.lines.size());
  const bool in_box = box != nullptr;
  ws.lines.resize(m + 4);
  if (in_box) {
    rectangle(box[0], box[1], box[2], box[3], ws.lines.data(), static_cast<int32_t>(m), ws.base.data());
  } else {
    const double R = enclosing_half_width(ws.lines, m);
    rectangle(-R, -R, R, R, ws.lines.data(), static_cast<int32_t>(m), ws.base.data());
  }
  const int n = clip_all(ws, m, -1, ws.poly);
  if (n < 0) {
    out.ok = false;
    return out;
  }
  if (n < 3) {  // no interior
    out.radius = 0.0;
    return out;
  }
  // Step 3: Chebyshev over P's edge lines (B_R's are not constraints).
  ws.edge_set.clear();
  bool on_enclosure = false;
  for (int j = 0; j < n; ++j) {
    const int32_t label = ws.poly[j].edge;
    if (!in_box && label >= m) {
      on_enclosure = true;
      continue;
    }
    if (std::find(ws.edge_set.begin(), ws.edge_set.end(), label) == ws.edge_set.end()) ws.edge_set.push_back(label);
  }
  out.bounded = in_box || !on_enclosure;
  const int k = static_cast<int>(ws.edge_set.size());
  bool spans = in_box;
  for (int a = 0; a < k && !spans; ++a) {
    for (int b = a + 1; b < k && !spans; ++b) {
      const Line& la = ws.lines[ws.edge_set[a]];
      const Line& lb = ws.lines[ws.edge_set[b]];
      spans = std::abs(la.ux * lb.uy - la.uy * lb.ux) >= kParallelDet;
    }
  }
  if (spans) {
    if (!chebyshev(ws.lines.data(), ws.edge_set.data(), k, kInteriorRadiusCap, !in_box, out.cx, out.cy, out.radius)) {
      out.ok = false;
      return out;
    }
  } else if (k == 0) {  // all of R^2
    out.radius = kInteriorRadiusCap;
  } else if (k == 1) {  // a half-plane: a capped ball at distance cap inside
    const Line& l = ws.lines[ws.edge_set[0]];
    out.radius = kInteriorRadiusCap;
    out.cx = (l.e - kInteriorRadiusCap) * l.ux;
    out.cy = (l.e - kInteriorRadiusCap) * l.uy;
  } else {  // a strip between two opposite lines: u.x in [-e2, e1]
    const Line& l1 = ws.lines[ws.edge_set[0]];
    const Line& l2 = ws.lines[ws.edge_set[1]];
    out.radius = std::min(kInteriorRadiusCap, 0.5 * (l1.e + l2.e));
    const double mid = 0.5 * (l1.e - l2.e);
    out.cx = mid * l1.ux;
    out.cy = mid * l1.uy;
  }
  if (!(out.radius > tol)) return out;  // empty: no interior ball wider than tol
  // Step 4: exact redundancy test of the representatives that touch P (within rounding of each vertex).
  for (int64_t i = 0; i < m; ++i) {
    const Line& li = ws.lines[i];
    bool touches = false;
    for (int j = 0; j < n && !touches; ++j) {
      const Vertex& v = ws.poly[j];
      touches = -line_value(li, v.x, v.y) <= kTouchSlack * (1.0 + std::abs(li.e) + std::abs(v.x) + std::abs(v.y));
    }
    if (!touches) continue;  // positive slack at every vertex: P never meets the line, redundant
    const int ns = clip_all(ws, m, i, ws.sub);
    if (ns < 3) {  // P_{-i} contains P, which has an interior: only rounding gets here
      out.ok = false;
      return out;
    }
    double best = -std::numeric_limits<double>::infinity();
    for (int j = 0; j < ns; ++j) best = std::max(best, li.ux * ws.sub[j].x + li.uy * ws.sub[j].y);
    const bool facet = best > li.e + tol || (!in_box && unbounded_along(ws.sub.data(), ns, m, li));
    if (facet) {
      for (int64_t g = ws.group_start[i]; g < ws.group_start[i + 1]; ++g) facet_of[ws.group_rows[g]] = ws.rep_row[i];
    }
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> region_clip_2d_cpu(
    const at::Tensor& A, const at::Tensor& c, const at::Tensor& ignore, const std::optional<at::Tensor>& box,
    double tol) {
  const char* op = "region_clip_2d";
  for (const at::Tensor* t : {&A, &c, &ignore}) {
    TORCH_CHECK_VALUE(t->device().is_cpu(), op,
                      ": all tensors must be on one CPU device (the op is CPU only); A is on ", A.device(), ", c on ",
                      c.device(), ", ignore on ", ignore.device());
  }
  TORCH_CHECK_VALUE(A.dim() == 3 && A.size(2) == 2, op, ": A must have shape [P, H, 2] (2-D input), got ", A.sizes());
  TORCH_CHECK_VALUE(A.scalar_type() == at::kDouble, op, ": A must be float64, got ", A.scalar_type());
  TORCH_CHECK_VALUE(c.scalar_type() == at::kDouble, op, ": c must be float64, got ", c.scalar_type());
  TORCH_CHECK_VALUE(c.dim() == 2 && c.size(0) == A.size(0) && c.size(1) == A.size(1), op, ": c must have shape [",
                    A.size(0), ", ", A.size(1), "] to match A of shape ", A.sizes(), ", got ", c.sizes());
  TORCH_CHECK_VALUE(ignore.scalar_type() == at::kBool, op, ": ignore must be bool, got ", ignore.scalar_type());
  TORCH_CHECK_VALUE(ignore.sizes() == c.sizes(), op, ": ignore must have shape ", c.sizes(), ", got ", ignore.sizes());
  TORCH_CHECK_VALUE(std::isfinite(tol) && tol > 0, op, ": tol must be a finite number > 0, got ", tol);
  at::Tensor box_c;
  if (box.has_value()) {
    TORCH_CHECK_VALUE(box->device().is_cpu(), op,
                      ": all tensors must be on one CPU device (the op is CPU only); "
                      "box is on ",
                      box->device());
    TORCH_CHECK_VALUE(box->scalar_type() == at::kDouble && box->dim() == 2 && box->size(0) == 2 && box->size(1) == 2,
                      op, ": box must be float64 [2, 2] (rows lo, hi), got ", box->scalar_type(), " ", box->sizes());
    box_c = box->contiguous();
    const double* b = box_c.data_ptr<double>();
    TORCH_CHECK_VALUE(std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) && std::isfinite(b[3]) &&
                          b[0] < b[2] && b[1] < b[3],
                      op, ": box needs finite bounds with lo < hi, got lo = (", b[0], ", ", b[1], "), hi = (", b[2],
                      ", ", b[3], ")");
  }
  const at::Tensor A_c = A.contiguous();
  const at::Tensor c_c = c.contiguous();
  const at::Tensor ignore_c = ignore.contiguous();
  const int64_t P = A.size(0);
  const int64_t H = A.size(1);
  TORCH_CHECK_VALUE(H < (int64_t{1} << 30), op, ": at most 2^30 rows per region, got ", H);
  const double* a_data = A_c.data_ptr<double>();
  const double* c_data = c_c.data_ptr<double>();
  const bool* ignore_data = ignore_c.data_ptr<bool>();
  for (int64_t i = 0; i < P * H; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(a_data[2 * i]) && std::isfinite(a_data[2 * i + 1]) && std::isfinite(c_data[i]), op,
                      ": A and c must be finite; region ", i / H, ", row ", i % H, " is not");
  }
  at::Tensor facet_of = at::empty({P, H}, A.options().dtype(at::kLong));
  at::Tensor centre = at::empty({P, 2}, A.options());
  at::Tensor radius = at::empty({P}, A.options());
  at::Tensor bounded = at::empty({P}, A.options().dtype(at::kBool));
  at::Tensor ok = at::empty({P}, A.options().dtype(at::kBool));
  const double* box_data = box.has_value() ? box_c.data_ptr<double>() : nullptr;
  // box_c is [[lo0, lo1], [hi0, hi1]]: the order rectangle() reads.
  int64_t* facet_data = facet_of.data_ptr<int64_t>();
  double* centre_data = centre.data_ptr<double>();
  double* radius_data = radius.data_ptr<double>();
  bool* bounded_data = bounded.data_ptr<bool>();
  bool* ok_data = ok.data_ptr<bool>();
  at::parallel_for(0, P, kRegionsPerTask, [&](int64_t begin, int64_t end) {
    Workspace ws(H);
    for (int64_t p = begin; p < end; ++p) {
      const RegionResult r = analyse_region(a_data + p * H * 2, c_data + p * H, ignore_data + p * H, H, box_data, tol,
                                            ws, facet_data + p * H);
      centre_data[2 * p] = r.cx;
      centre_data[2 * p + 1] = r.cy;
      radius_data[p] = r.radius;
      bounded_data[p] = r.bounded;
      ok_data[p] = r.ok;
    }
  });
  return {facet_of, centre, radius, bounded, ok};
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CPU, m) { m.impl("region_clip_2d", &region_clip_2d_cpu); }

}  // namespace region_clip
}  // namespace manifold_ext
