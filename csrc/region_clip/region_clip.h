// Exact 2-D region geometry (paper 001, Liu et al.: Eq. 5-8 for input dimension 2): the math,
// written once.
//
// A region of a ReLU network with 2-D input is the polygon {x : u_i . x <= e_i} (Eq. 5, rows
// normalised to |u_i| = 1), cut to a box. Everything the linear programs of Eq. 6-8 answer is
// read off polygons built by clipping with one half-plane after another:
//   * the polygon P itself (Sutherland-Hodgman, with every new vertex computed as the exact
//     intersection of the two lines that define it, so its error does not grow with clipping);
//   * the Chebyshev radius (Eq. 7-8): a 3-variable LP max r s.t. u_l . x + r <= e_l over P's
//     edge lines, whose optimum is a vertex, i.e. a triple of tight constraints;
//   * redundancy of row i (Eq. 6): max u_i . x over P_{-i}, the polygon of all other rows, is
//     the maximum over P_{-i}'s vertices.
// Lines are stored by index ("label"): a vertex records the line its outgoing edge follows.
//
// Every function is __host__ __device__ (common/hd_math.h); the caller owns all buffers.
#pragma once

#include <cstdint>

#include "common/hd_math.h"

namespace manifold_ext {
namespace region_clip {

// Two unit normals closer than this (max-abs) are the same direction; with offsets this close
// (relative), the same hyperplane (manifold_ext.relu_geometry.lp.SAME_HYPERPLANE_TOL).
constexpr double kSameHyperplaneTol = 1e-9;
// Rows whose slack at some vertex of P is below this (relative) may touch P and get the exact
// redundancy test; every other row is redundant by convexity (see region_clip_cpu.cpp).
constexpr double kTouchSlack = 1e-9;
// |det| of two unit normals below this: parallel for the purpose of intersecting them.
constexpr double kParallelDet = 1e-13;
// Relative feasibility slack of a Chebyshev triple (Eq. 8's constraints, unit rows).
constexpr double kFeasibleRtol = 1e-10;
// A direction moves along a normal when their dot product exceeds this (unit vectors).
constexpr double kSlopeTol = 1e-12;

// The half-plane ux * x + uy * y <= e.
struct Line {
  double ux, uy, e;
};

// A polygon vertex; `edge` is the label of the line the edge from this vertex to the next follows.
struct Vertex {
  double x, y;
  int32_t edge;
};

MANIFOLD_EXT_HD double line_value(const Line& line, double x, double y) { return line.ux * x + line.uy * y - line.e; }

// Intersection of two lines; false when they are (numerically) parallel.
MANIFOLD_EXT_HD bool intersect(const Line& a, const Line& b, double& x, double& y) {
  const double det = a.ux * b.uy - a.uy * b.ux;
  if (hd_abs(det) < kParallelDet) return false;
  x = (a.e * b.uy - a.uy * b.e) / det;
  y = (a.ux * b.e - a.e * b.ux) / det;
  return true;
}

// Where the edge from p (on line `edge_line`) to q crosses `cut`, whose values at p and q are
// sp <= 0 < sq or sq <= 0 < sp. The exact intersection of the two lines, unless the lines are
// nearly parallel or rounding puts it off the segment: then the interpolation along p -> q.
MANIFOLD_EXT_HD void crossing(const Vertex& p, const Vertex& q, double sp, double sq, const Line& edge_line,
                              const Line& cut, double& x, double& y) {
  const double t = sp / (sp - sq);
  const double ix = p.x + t * (q.x - p.x);
  const double iy = p.y + t * (q.y - p.y);
  double ex, ey;
  if (intersect(edge_line, cut, ex, ey)) {
    const double dx = q.x - p.x, dy = q.y - p.y;
    const double len2 = dx * dx + dy * dy;
    const double s = len2 > 0 ? ((ex - p.x) * dx + (ey - p.y) * dy) / len2 : 0.0;
    if (s >= -1e-9 && s <= 1.0 + 1e-9) {
      x = ex;
      y = ey;
      return;
    }
  }
  x = ix;
  y = iy;
}

// Clips the convex polygon in[0..n) by line `cut_label` of `lines` (Sutherland-Hodgman).
// Writes at most `capacity` vertices to out; returns their number, or -1 when it would need
// more (only possible through rounding; the caller then falls back to the LP path).
MANIFOLD_EXT_HD int clip(const Vertex* in, int n, const Line* lines, int32_t cut_label, Vertex* out, int capacity) {
  const Line& cut = lines[cut_label];
  int count = 0;
  for (int j = 0; j < n; ++j) {
    const Vertex& p = in[j];
    const Vertex& q = in[(j + 1) % n];
    const double sp = line_value(cut, p.x, p.y);
    const double sq = line_value(cut, q.x, q.y);
    if (sp <= 0) {
      if (count >= capacity) return -1;
      out[count++] = p;
      if (sq > 0) {  // the edge leaves the half-plane: the cut line becomes an edge
        if (count >= capacity) return -1;
        Vertex w;
        crossing(p, q, sp, sq, lines[p.edge], cut, w.x, w.y);
        w.edge = cut_label;
        out[count++] = w;
      }
    } else if (sq <= 0) {  // the edge enters the half-plane
      if (count >= capacity) return -1;
      Vertex w;
      crossing(p, q, sp, sq, lines[p.edge], cut, w.x, w.y);
      w.edge = p.edge;
      out[count++] = w;
    }
  }
  return count;
}

// The rectangle [lo0, hi0] x [lo1, hi1] counter-clockwise; its four lines are lines[first..first+3].
MANIFOLD_EXT_HD void rectangle(double lo0, double lo1, double hi0, double hi1, Line* lines, int32_t first,
                               Vertex* out) {
  lines[first + 0] = Line{0.0, -1.0, -lo1};  // bottom: y >= lo1
  lines[first + 1] = Line{1.0, 0.0, hi0};    // right:  x <= hi0
  lines[first + 2] = Line{0.0, 1.0, hi1};    // top:    y <= hi1
  lines[first + 3] = Line{-1.0, 0.0, -lo0};  // left:   x >= lo0
  out[0] = Vertex{lo0, lo1, first + 0};
  out[1] = Vertex{hi0, lo1, first + 1};
  out[2] = Vertex{hi0, hi1, first + 2};
  out[3] = Vertex{lo0, hi1, first + 3};
}

// Solves [a.ux a.uy 1; b.ux b.uy 1; c.ux c.uy 1] (x, y, r) = (a.e, b.e, c.e), where a "line"
// with ux = uy = 0 stands for the cap r <= e. False when singular.
MANIFOLD_EXT_HD bool solve_triple(const Line& a, const Line& b, const Line& c, double& x, double& y, double& r) {
  // Cramer's rule on the 3x3 system (tiny and well scaled: unit normals, unit r column).
  const double m00 = a.ux, m01 = a.uy, m02 = 1.0;
  const double m10 = b.ux, m11 = b.uy, m12 = 1.0;
  const double m20 = c.ux, m21 = c.uy, m22 = 1.0;
  const double det = m00 * (m11 * m22 - m12 * m21) - m01 * (m10 * m22 - m12 * m20) + m02 * (m10 * m21 - m11 * m20);
  if (hd_abs(det) < kParallelDet) return false;
  const double r0 = a.e, r1 = b.e, r2 = c.e;
  x = (r0 * (m11 * m22 - m12 * m21) - m01 * (r1 * m22 - m12 * r2) + m02 * (r1 * m21 - m11 * r2)) / det;
  y = (m00 * (r1 * m22 - m12 * r2) - r0 * (m10 * m22 - m12 * m20) + m02 * (m10 * r2 - r1 * m20)) / det;
  r = (m00 * (m11 * r2 - r1 * m21) - m01 * (m10 * r2 - r1 * m20) + r0 * (m10 * m21 - m11 * m20)) / det;
  return true;
}

// Whether (x, y, r) satisfies u_l . x + r <= e_l for every line in `set` (and r <= cap).
MANIFOLD_EXT_HD bool chebyshev_feasible(const Line* lines, const int32_t* set, int k, double cap, bool capped, double x,
                                        double y, double r) {
  const double scale = 1.0 + hd_abs(x) + hd_abs(y) + hd_abs(r);
  if (capped && r > cap + kFeasibleRtol * scale) return false;
  for (int l = 0; l < k; ++l) {
    const Line& line = lines[set[l]];
    if (line.ux * x + line.uy * y + r > line.e + kFeasibleRtol * (scale + hd_abs(line.e))) return false;
  }
  return true;
}

// Eq. 7-8 on the lines lines[set[0..k)]: the largest r with a ball of radius r inside all of
// them (and r <= cap when capped), by the vertices of the 3-variable LP. The normals must span
// the plane (or capped must be set), so the LP has a vertex optimum. False when no triple is
// feasible (rounding); the caller then falls back to the LP path.
MANIFOLD_EXT_HD bool chebyshev(const Line* lines, const int32_t* set, int k, double cap, bool capped, double& cx,
                               double& cy, double& radius) {
  const Line cap_line{0.0, 0.0, cap};
  const int total = k + (capped ? 1 : 0);
  bool found = false;
  for (int a = 0; a < total; ++a) {
    const Line& la = a < k ? lines[set[a]] : cap_line;
    for (int b = a + 1; b < total; ++b) {
      const Line& lb = b < k ? lines[set[b]] : cap_line;
      for (int c = b + 1; c < total; ++c) {
        const Line& lc = c < k ? lines[set[c]] : cap_line;
        double x, y, r;
        if (!solve_triple(la, lb, lc, x, y, r)) continue;
        if ((!found || r > radius) && chebyshev_feasible(lines, set, k, cap, capped, x, y, r)) {
          found = true;
          cx = x;
          cy = y;
          radius = r;
        }
      }
    }
  }
  return found;
}

}  // namespace region_clip
}  // namespace manifold_ext
