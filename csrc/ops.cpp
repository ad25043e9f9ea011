// The schema of every manifold_ext operator, in one place. Kernels attach to
// these per backend (TORCH_LIBRARY_IMPL in csrc/<family>/<family>_cpu.cpp and
// _cuda.cu); fake kernels and autograd are registered from Python
// (manifold_ext/ops/). Loading this module (import manifold_ext._C) registers
// everything with the dispatcher.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "common/cpu_capability.h"

TORCH_LIBRARY(manifold_ext, m) {
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

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = MANIFOLD_EXT_TORCH_VERSION;
#if defined(MANIFOLD_EXT_WITH_CUDA)
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  pybind11::list isas;
  isas.append("default");
#if defined(MANIFOLD_EXT_HAVE_CPU_AVX2)
  isas.append("avx2");
#endif
#if defined(MANIFOLD_EXT_HAVE_CPU_AVX512)
  isas.append("avx512");
#endif
  info["cpu_isas_compiled"] = isas;
  info["cpu_isa_in_use"] = manifold_ext::cpu_isa_name(manifold_ext::cpu_isa());
#if defined(__clang__)
  info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = "gcc " __VERSION__;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "manifold_ext compiled operators (registered as torch.ops.manifold_ext.*)";
  m.def("build_info", &build_info,
        "How this build was made: torch version it was compiled against, CUDA kernels, CPU instruction sets.");
}
