// Schema of op family 5, ReLU activation patterns: a fragment of the manifold_ext
// library, so the family lives entirely in csrc/relu_patterns/ (kernels attach per
// backend in relu_patterns_cpu.cpp and relu_patterns_cuda.cu; fake kernels and autograd
// in manifold_ext/ops/).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(manifold_ext, m) {
  // ---- Op family 5: ReLU activation patterns (paper 001, Liu et al., Eq. 3-5) ----
  // Packed patterns: int64 [N, ceil(H/64)]; hidden unit g is bit g % 64 of word
  // g / 64 (LSB first), hidden layers concatenated in order; bit = pre-activation > 0.
  // x: [N, d]; weights[j]: [h_j, h_{j-1}], biases[j]: [h_j], hidden layers only.
  m.def("activation_patterns(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor");
  // packed: [N, ceil(H/64)] -> bool [N, H], and back.
  m.def("unpack_patterns(Tensor packed, int num_units) -> Tensor");
  m.def("pack_patterns(Tensor bits) -> Tensor");
  // a: [Na, W], b: [Nb, W] -> int32 [Na, Nb] popcount(a_i XOR b_j).
  m.def("hamming_distance(Tensor a, Tensor b) -> Tensor");
  // query: [Nq, W], ref: [Nr, W] -> int32 dist [Nq, k], int64 index [Nq, k], ascending by
  // (distance, index); the [Nq, Nr] matrix is never materialised.
  m.def("hamming_topk(Tensor query, Tensor ref, int k) -> (Tensor dist, Tensor index)");
  // weights/biases: hidden layers followed by the output layer; patterns: [P, ceil(H/64)].
  // Returns A [P, H, d], c [P, H] (Eq. 5, one row per hidden unit in pattern order) and the
  // affine map of the network on each region, W_hat [P, n_out, d], b_hat [P, n_out].
  m.def(
      "region_system(Tensor[] weights, Tensor[] biases, Tensor patterns)"
      " -> (Tensor A, Tensor c, Tensor W_hat, Tensor b_hat)");
}
