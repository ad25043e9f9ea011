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

  // ---- Gaussian ELBO of a VAE (paper 000 §3.1, Eq. 21-22: VAE-classifier
  // training and test-time purification) ----
  // x, x_mean: [B, *] input and decoder mean; mu, logvar: [B, *] encoder
  // statistics. Returns elbo: [B] = log N(x | x_mean, exp(decoder_logvar) I)
  // - KL(N(mu, exp(logvar)) || N(0, I)), and kl: [B]. Float32 outputs for
  // float16/bfloat16 inputs.
  m.def(
      "gaussian_elbo(Tensor x, Tensor x_mean, Tensor mu, Tensor logvar, float decoder_logvar)"
      " -> (Tensor elbo, Tensor kl)");
  // Vector-Jacobian product of gaussian_elbo w.r.t. (x, x_mean, mu, logvar).
  m.def(
      "gaussian_elbo_backward(Tensor grad_elbo, Tensor grad_kl, Tensor x, Tensor x_mean, Tensor mu,"
      " Tensor logvar, float decoder_logvar) -> (Tensor grad_x, Tensor grad_x_mean, Tensor grad_mu,"
      " Tensor grad_logvar)");
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
