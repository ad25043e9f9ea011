// Schema of the Gaussian ELBO of a VAE: a fragment of the manifold_ext
// library, so the family lives entirely in csrc/gaussian_elbo/ (kernels attach per
// backend in gaussian_elbo_cpu.cpp and gaussian_elbo_cuda.cu; fake kernels and autograd
// in manifold_ext/ops/).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(manifold_ext, m) {
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
