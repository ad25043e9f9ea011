// Schema of op families 2 and 3, diffusion likelihood and sampler steps: a fragment of the manifold_ext
// library, so the family lives entirely in csrc/diffusion/ (kernels attach per
// backend in diffusion_cpu.cpp and diffusion_cuda.cu; fake kernels and autograd
// in manifold_ext/ops/).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(manifold_ext, m) {
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
}
