// Schema of op family 4, closest-centre Gaussian KL: a fragment of the manifold_ext
// library, so the family lives entirely in csrc/closest_centre_kl/ (kernels attach per
// backend in closest_centre_kl_cpu.cpp and closest_centre_kl_cuda.cu; fake kernels and autograd
// in manifold_ext/ops/).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(manifold_ext, m) {
  // ---- Op family 4: closest-centre Gaussian KL (paper 000 §4.2, Eq. 27) ----
  // mu, logvar: [B, n] posterior N(mu, diag(exp(logvar))); prior component N(c, sigma0^2 I).
  // Centre c: the grid point offset + spacing*round((mu - offset)/spacing) clipped to
  // [low, high]; or target [B, n] (guided); or target where mask ([n] or [B, n] bool)
  // is set and the grid point elsewhere (partially guided). Returns kl: [B] (float32
  // for float16/bfloat16) and centre: [B, n] (no gradient through the choice).
  m.def(
      "closest_centre_kl(Tensor mu, Tensor logvar, Tensor? target, Tensor? mask, float sigma0, float spacing,"
      " float offset, float? low, float? high) -> (Tensor kl, Tensor centre)");
  // Vector-Jacobian product of closest_centre_kl w.r.t. (mu, logvar), given its centres.
  m.def(
      "closest_centre_kl_backward(Tensor grad_kl, Tensor mu, Tensor logvar, Tensor centre, float sigma0)"
      " -> (Tensor grad_mu, Tensor grad_logvar)");
  // The same KL against the nearest row (Euclidean) of a centre set centres: [K, n]
  // (a GMM's means, a codebook). Returns kl: [B] and index: [B] int64 (first on ties).
  m.def("nearest_centre_kl(Tensor mu, Tensor logvar, Tensor centres, float sigma0) -> (Tensor kl, Tensor index)");
  m.def(
      "nearest_centre_kl_backward(Tensor grad_kl, Tensor mu, Tensor logvar, Tensor centres, Tensor index,"
      " float sigma0) -> (Tensor grad_mu, Tensor grad_logvar)");
}
