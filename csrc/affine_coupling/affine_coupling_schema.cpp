// Schema of op family 1, fused affine coupling: a fragment of the manifold_ext
// library, so the family lives entirely in csrc/affine_coupling/ (kernels attach per
// backend in affine_coupling_cpu.cpp and affine_coupling_cuda.cu; fake kernels and autograd
// in manifold_ext/ops/).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(manifold_ext, m) {
  // ---- Op family 1: fused affine coupling (paper 000 §2.1; Glow/RealNVP) ----
  // x: [B, C, *spatial] active half; h: [B, 2C, *spatial] coupling-net output.
  // Returns y: [B, C, *spatial] and logdet: [B] (+sum log s, or -sum log s when
  // reverse). logdet is float32 for float16/bfloat16 inputs.
  m.def(
      "affine_coupling(Tensor x, Tensor h, str scale, str layout, float clamp, bool reverse)"
      " -> (Tensor y, Tensor logdet)");
  // Vector-Jacobian product of affine_coupling w.r.t. (x, h).
  m.def(
      "affine_coupling_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor h, str scale,"
      " str layout, float clamp, bool reverse) -> (Tensor grad_x, Tensor grad_h)");
}
