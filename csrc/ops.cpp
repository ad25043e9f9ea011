// The schema of every manifold_ext operator, in one place. Kernels attach to
// these per backend (TORCH_LIBRARY_IMPL in csrc/<family>/<family>_cpu.cpp and
// _cuda.cu); fake kernels and autograd are registered from Python
// (manifold_ext/ops/). Loading this module (import manifold_ext._C) registers
// everything with the dispatcher.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "common/cpu_capability.h"
#include "diffusion/diffusion_device_checks.h"

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

  // ---- Op families 2 and 3: diffusion likelihood and sampler steps (paper 000 §2.2) ----
  // x_t, x_next, eps, noise: [B, *] (same shape); acc: [B] float32/float64.
  // Every abar argument is a 0-dim tensor (one value for the batch; the Python
  // wrappers turn floats into these) or a per-sample [B] tensor.
  // acc + log q(x_next | x_t) - log p_theta(x_t | x_next), summed per sample (Eq. 15-20).
  m.def(
      "diffusion_nll_step(Tensor acc, Tensor x_t, Tensor x_next, Tensor eps, Tensor abar_t, Tensor abar_next)"
      " -> Tensor");
  m.def(
      "diffusion_nll_step_backward(Tensor grad_acc, Tensor x_t, Tensor x_next, Tensor eps, Tensor abar_t,"
      " Tensor abar_next) -> (Tensor grad_x_t, Tensor grad_x_next, Tensor grad_eps)");
  // The step above fused with the forward draw of the state after x_next (Eq. 17).
  m.def(
      "diffusion_nll_step_and_forward(Tensor acc, Tensor x_t, Tensor x_next, Tensor eps, Tensor noise,"
      " Tensor abar_t, Tensor abar_next, Tensor abar_after) -> (Tensor acc_new, Tensor x_after)");
  // x_next = sqrt(abar_next / abar_t) x_t + sqrt(1 - abar_next / abar_t) noise (Eq. 17).
  m.def("diffusion_forward_step(Tensor x_t, Tensor noise, Tensor abar_t, Tensor abar_next) -> Tensor");
  // Backward sampler steps from t to prev (noise=None: the step's mean).
  m.def("ddpm_step(Tensor x_t, Tensor eps, Tensor abar_t, Tensor abar_prev, Tensor? noise) -> Tensor");
  m.def("ddim_step(Tensor x_t, Tensor eps, Tensor abar_t, Tensor abar_prev, float eta, Tensor? noise) -> Tensor");
  m.def("large_step(Tensor x_t, Tensor eps, Tensor abar_t, Tensor abar_prev, Tensor? noise) -> Tensor");
  // Vector-Jacobian product of the linear steps above (step: forward|ddpm|ddim|large_step).
  m.def(
      "diffusion_step_backward(Tensor grad, str step, Tensor abar_a, Tensor abar_b, float eta)"
      " -> (Tensor grad_x, Tensor grad_eps, Tensor grad_noise)");
  // (k1 + 2 k2 + 2 k3 + k4) / 6 (Eq. 39) and x + h (k1 + 2 k2 + 2 k3 + k4) / 6 (Eq. 33).
  m.def("rk4_combine(Tensor k1, Tensor k2, Tensor k3, Tensor k4) -> Tensor");
  m.def("rk4_update(Tensor x, Tensor k1, Tensor k2, Tensor k3, Tensor k4, float h) -> Tensor");

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
  m.def(
      "_set_deferred_schedule_checks",
      [](bool deferred) { return manifold_ext::diffusion::deferred_schedule_checks_flag().exchange(deferred); },
      "Check per-sample diffusion schedules on CUDA inside the kernels (True) or before the launch (False); "
      "returns the previous setting. Use manifold_ext.ops.deferred_schedule_checks().");
}
