// Schema of op family 6, exact 2-D region geometry (paper 001, Liu et al., Eq. 5-8 for
// input dimension 2), registered as a fragment of the manifold_ext library so the family
// lives entirely in csrc/region_clip/ (the op is CPU only: no region_clip_cuda.cu).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(manifold_ext, m) {
  // A: [P, H, 2] float64 and c: [P, H], the systems A x <= c of P regions (region_system);
  // ignore: [P, H] bool, rows to leave out (zero rows, decided by the caller); box: [2, 2]
  // float64 (rows lo, hi) or None for all of R^2; tol: the distance tolerance.
  // Returns facet_of [P, H] int64 (-1, or for a facet row the row representing its facet
  // group), the Chebyshev centre [P, 2] and radius [P] (within the box; capped at 1 without
  // one; <= tol: the region is empty), bounded [P] bool (without a box), and ok [P] bool
  // (false: rounding made the polygon inconsistent; use the LP path for that region).
  m.def(
      "region_clip_2d(Tensor A, Tensor c, Tensor ignore, Tensor? box, float tol)"
      " -> (Tensor facet_of, Tensor centre, Tensor radius, Tensor bounded, Tensor ok)");
}
