// Host-side pieces of the Gaussian ELBO op shared by the CPU and CUDA entry
// points: input validation (one place, so both backends raise the same errors)
// and the per-sample geometry.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "common/repr.h"

// The ops of this family, listed once: the CPU and CUDA files register a
// kernel for each (common/registration.h); the schemas are in gaussian_elbo_schema.cpp.
#define MANIFOLD_EXT_GAUSSIAN_ELBO_OPS(X) \
  X(gaussian_elbo)                        \
  X(gaussian_elbo_backward)

namespace manifold_ext {
namespace gaussian_elbo {

inline double smallest_decoder_logvar(at::ScalarType dtype) {
  const double largest = dtype == at::kDouble ? std::numeric_limits<double>::max()
                                              : static_cast<double>(std::numeric_limits<float>::max());
  // the smallest s with exp(-s) <= largest, rounded up to a number that is safely inside
  return -std::floor(std::log(largest) * 1e6) / 1e6;
}

struct ElboGeometry {
  int64_t batch;    // B
  int64_t pixels;   // elements of one sample of x (prod of x.shape[1:])
  int64_t latents;  // elements of one sample of mu (prod of mu.shape[1:])
};

inline ElboGeometry check_inputs(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& mu,
                                 const at::Tensor& logvar, double decoder_logvar, const char* op) {
  TORCH_CHECK(x.dim() >= 2, op, ": x must have shape [B, *] (rank >= 2), got shape ", x.sizes());
  TORCH_CHECK(x_mean.sizes() == x.sizes(), op, ": x_mean must have the shape of x ", x.sizes(), ", got ",
              x_mean.sizes());
  TORCH_CHECK(mu.dim() >= 2, op, ": mu must have shape [B, *] (rank >= 2), got shape ", mu.sizes());
  TORCH_CHECK(logvar.sizes() == mu.sizes(), op, ": logvar must have the shape of mu ", mu.sizes(), ", got ",
              logvar.sizes());
  TORCH_CHECK(mu.size(0) == x.size(0), op, ": x and mu must have the same batch size, got ", x.size(0), " and ",
              mu.size(0));
  const auto device = x.device();
  TORCH_CHECK(x_mean.device() == device && mu.device() == device && logvar.device() == device, op,
              ": all inputs must be on the same device, got x on ", device, ", x_mean on ", x_mean.device(), ", mu on ",
              mu.device(), ", logvar on ", logvar.device());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(at::isFloatingType(dtype), op, ": expected a floating-point dtype, got ", dtype);
  TORCH_CHECK(x_mean.scalar_type() == dtype && mu.scalar_type() == dtype && logvar.scalar_type() == dtype, op,
              ": all inputs must have the same dtype, got x ", dtype, ", x_mean ", x_mean.scalar_type(), ", mu ",
              mu.scalar_type(), ", logvar ", logvar.scalar_type());
  TORCH_CHECK_VALUE(std::isfinite(decoder_logvar), op, ": decoder_logvar must be finite, got ", decoder_logvar);
  // The kernels multiply by exp(-decoder_logvar) in the compute dtype (float32
  // for float32/float16/bfloat16 inputs). Below -log(largest finite) that is
  // inf, and a pixel with x == x_mean would get 0 * inf = NaN instead of its
  // (large, finite) log-likelihood; such a decoder_logvar is refused.
  const double smallest = smallest_decoder_logvar(dtype);
  TORCH_CHECK_VALUE(decoder_logvar >= smallest, op, ": decoder_logvar = ", repr(decoder_logvar),
                    " is too small: the kernels multiply by exp(-decoder_logvar) in ",
                    dtype == at::kDouble ? "float64" : "float32",
                    ", where it overflows; need decoder_logvar >= ", repr(smallest));
  ElboGeometry g{};
  g.batch = x.size(0);
  g.pixels = 1;  // from the shape, so batch 0 still has per-sample sizes
  for (int64_t d = 1; d < x.dim(); ++d) g.pixels *= x.size(d);
  g.latents = 1;
  for (int64_t d = 1; d < mu.dim(); ++d) g.latents *= mu.size(d);
  return g;
}

inline void check_backward_inputs(const at::Tensor& grad_elbo, const at::Tensor& grad_kl, const at::Tensor& x,
                                  const char* op) {
  for (const at::Tensor* grad : {&grad_elbo, &grad_kl}) {
    TORCH_CHECK(grad->dim() == 1 && grad->size(0) == x.size(0), op, ": grad_elbo and grad_kl must have shape [B] = [",
                x.size(0), "], got ", grad->sizes());
    TORCH_CHECK(grad->device() == x.device(), op, ": gradients must be on the device of x (", x.device(), ")");
    TORCH_CHECK(at::isFloatingType(grad->scalar_type()), op, ": gradients must be floating point, got ",
                grad->scalar_type());
  }
}

// elbo and kl are returned (and accumulated) in float32 for half/bfloat16 inputs.
inline at::ScalarType output_dtype(at::ScalarType input) {
  return (input == at::kHalf || input == at::kBFloat16) ? at::kFloat : input;
}

}  // namespace gaussian_elbo
}  // namespace manifold_ext
