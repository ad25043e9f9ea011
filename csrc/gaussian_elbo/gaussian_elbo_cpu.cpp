// CPU kernels of the Gaussian ELBO op: validation, output allocation and a
// parallel walk over samples. Element math: gaussian_elbo.h (shared with the
// CUDA kernels).
//
// Determinism: each sample's sums run sequentially in one task, in double, so
// results do not depend on the number of threads. The per-sample loops are in
// gaussian_elbo_cpu_vec.cpp (one copy per CPU ISA).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common/checks.h"
#include "common/registration.h"
#include "gaussian_elbo/gaussian_elbo.h"
#include "gaussian_elbo/gaussian_elbo_cpu_rows.h"
#include "gaussian_elbo/gaussian_elbo_host.h"

namespace manifold_ext {
namespace gaussian_elbo {
namespace {

// Minimum work per parallel task, in elements.
constexpr int64_t kGrainElems = 32768;

int64_t sample_grain(const ElboGeometry& g) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, g.pixels + g.latents));
}

std::tuple<at::Tensor, at::Tensor> gaussian_elbo_cpu(const at::Tensor& x_in, const at::Tensor& x_mean_in,
                                                     const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                     double decoder_logvar) {
  const ElboGeometry g = check_inputs(x_in, x_mean_in, mu_in, logvar_in, decoder_logvar, "gaussian_elbo");
  check_cpu(x_in, "gaussian_elbo");
  const at::Tensor x = x_in.contiguous();               // [B, pixels]
  const at::Tensor x_mean = x_mean_in.contiguous();     // [B, pixels]
  const at::Tensor mu = mu_in.contiguous();             // [B, latents]
  const at::Tensor logvar = logvar_in.contiguous();     // [B, latents]
  at::Tensor elbo = at::empty({g.batch}, x.options());  // [B]
  at::Tensor kl = at::empty({g.batch}, x.options());    // [B]
  const double inv_decoder_var = std::exp(-decoder_logvar);

  const CpuIsa isa = cpu_isa();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gaussian_elbo_cpu", [&] {
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* x_mean_data = x_mean.const_data_ptr<scalar_t>();
    const scalar_t* mu_data = mu.const_data_ptr<scalar_t>();
    const scalar_t* logvar_data = logvar.const_data_ptr<scalar_t>();
    scalar_t* elbo_data = elbo.mutable_data_ptr<scalar_t>();
    scalar_t* kl_data = kl.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch, sample_grain(g), [&](int64_t first, int64_t last) {
      const ElboRows<scalar_t> rows{x_data + first * g.pixels,
                                    x_mean_data + first * g.pixels,
                                    mu_data + first * g.latents,
                                    logvar_data + first * g.latents,
                                    elbo_data + first,
                                    kl_data + first,
                                    last - first,
                                    g.pixels,
                                    g.latents,
                                    decoder_logvar,
                                    inv_decoder_var};
      MANIFOLD_EXT_CALL_CPU_ISA(isa, elbo_rows, rows);
    });
  });
  return {elbo, kl};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_elbo_backward_cpu(
    const at::Tensor& grad_elbo_in, const at::Tensor& grad_kl_in, const at::Tensor& x_in, const at::Tensor& x_mean_in,
    const at::Tensor& mu_in, const at::Tensor& logvar_in, double decoder_logvar) {
  const char* op = "gaussian_elbo_backward";
  const ElboGeometry g = check_inputs(x_in, x_mean_in, mu_in, logvar_in, decoder_logvar, op);
  check_backward_inputs(grad_elbo_in, grad_kl_in, x_in, op);
  check_cpu(x_in, op);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor x_mean = x_mean_in.contiguous();
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor logvar = logvar_in.contiguous();
  const at::Tensor grad_elbo = grad_elbo_in.to(x.scalar_type()).contiguous();  // [B]
  const at::Tensor grad_kl = grad_kl_in.to(x.scalar_type()).contiguous();      // [B]
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_x_mean = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_mu = at::empty_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor grad_logvar = at::empty_like(mu, at::MemoryFormat::Contiguous);
  const double inv_decoder_var = std::exp(-decoder_logvar);

  const CpuIsa isa = cpu_isa();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gaussian_elbo_backward_cpu", [&] {
    const scalar_t* ge = grad_elbo.const_data_ptr<scalar_t>();
    const scalar_t* gk = grad_kl.const_data_ptr<scalar_t>();
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* x_mean_data = x_mean.const_data_ptr<scalar_t>();
    const scalar_t* mu_data = mu.const_data_ptr<scalar_t>();
    const scalar_t* logvar_data = logvar.const_data_ptr<scalar_t>();
    scalar_t* gx_data = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* gm_data = grad_x_mean.mutable_data_ptr<scalar_t>();
    scalar_t* gmu_data = grad_mu.mutable_data_ptr<scalar_t>();
    scalar_t* glv_data = grad_logvar.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch, sample_grain(g), [&](int64_t first, int64_t last) {
      const int64_t p0 = first * g.pixels;
      const int64_t l0 = first * g.latents;
      const ElboGradRows<scalar_t> rows{ge + first,       gk + first,   x_data + p0,  x_mean_data + p0, mu_data + l0,
                                        logvar_data + l0, gx_data + p0, gm_data + p0, gmu_data + l0,    glv_data + l0,
                                        last - first,     g.pixels,     g.latents,    inv_decoder_var};
      MANIFOLD_EXT_CALL_CPU_ISA(isa, elbo_grad_rows, rows);
    });
  });
  return {grad_x, grad_x_mean, grad_mu, grad_logvar};
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CPU, m) { MANIFOLD_EXT_GAUSSIAN_ELBO_OPS(MANIFOLD_EXT_IMPL_CPU) }

}  // namespace gaussian_elbo
}  // namespace manifold_ext
