// Host-side pieces of the closest-centre KL ops shared by the CPU and CUDA
// entry points: argument parsing and input validation, so both backends raise
// the same errors.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <limits>

#include "closest_centre_kl/closest_centre_kl.h"
#include "common/checks.h"
#include "common/repr.h"

// The ops of this family, listed once: the CPU and CUDA files register a
// kernel for each (common/registration.h); the schemas are in closest_centre_kl_schema.cpp.
#define MANIFOLD_EXT_CLOSEST_CENTRE_KL_OPS(X) \
  X(closest_centre_kl)                        \
  X(closest_centre_kl_backward)               \
  X(nearest_centre_kl)                        \
  X(nearest_centre_kl_backward)

namespace manifold_ext {
namespace closest_centre_kl {

// Whether spacing is a power of two whose reciprocal is a normal number in
// float32 too, so that multiplying by 1 / spacing rounds exactly as dividing
// by spacing (Grid in closest_centre_kl.h).
inline bool reciprocal_is_exact(double spacing) {
  int exponent = 0;
  const double mantissa = std::frexp(spacing, &exponent);  // spacing = mantissa * 2^exponent, mantissa in [0.5, 1)
  return mantissa == 0.5 && std::abs(exponent - 1) <= 126;
}

inline void check_sigma0(double sigma0, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(sigma0) && sigma0 > 0, op, ": sigma0 must be a finite number > 0, got ", sigma0);
}

// The kernels multiply by 1/sigma0^2 in the compute dtype (float32 for
// float32/float16/bfloat16 inputs). Below sqrt(1 / largest finite) that is inf,
// and a posterior sitting exactly on its centre would get 0 * inf = NaN
// instead of its KL; such a sigma0 is refused.
inline double smallest_sigma0(at::ScalarType dtype) {
  const double largest = dtype == at::kDouble ? std::numeric_limits<double>::max()
                                              : static_cast<double>(std::numeric_limits<float>::max());
  return std::nextafter(1.0 / std::sqrt(largest), std::numeric_limits<double>::infinity());
}

inline void check_sigma0_fits(double sigma0, at::ScalarType dtype, const char* op) {
  check_sigma0(sigma0, op);
  const double smallest = smallest_sigma0(dtype);
  TORCH_CHECK_VALUE(sigma0 >= smallest && std::isfinite(1.0 / (sigma0 * sigma0)), op, ": sigma0 = ", repr(sigma0),
                    " is too small: the kernels multiply by 1/sigma0^2 in ",
                    dtype == at::kDouble ? "float64" : "float32",
                    ", where it overflows; need sigma0 >= ", repr(smallest));
}

inline PriorVariance<double> prior_variance(double sigma0) { return {2.0 * std::log(sigma0), 1.0 / (sigma0 * sigma0)}; }

// mu and logvar: [B, n], same dtype (floating) and device.
inline void check_posterior(const at::Tensor& mu, const at::Tensor& logvar, const char* op) {
  TORCH_CHECK(mu.dim() == 2, op, ": mu must have shape [B, n], got shape ", mu.sizes());
  TORCH_CHECK(logvar.sizes() == mu.sizes(), op, ": logvar must have the shape of mu ", mu.sizes(), ", got ",
              logvar.sizes());
  TORCH_CHECK(logvar.device() == mu.device(), op, ": mu and logvar must be on the same device, got mu on ", mu.device(),
              " and logvar on ", logvar.device());
  TORCH_CHECK(logvar.scalar_type() == mu.scalar_type(), op, ": mu and logvar must have the same dtype, got mu ",
              mu.scalar_type(), " and logvar ", logvar.scalar_type());
  TORCH_CHECK(at::isFloatingType(mu.scalar_type()), op, ": expected a floating-point dtype, got ", mu.scalar_type());
}

inline ClosestCentreOptions parse_closest_centre(const at::Tensor& mu, const at::Tensor& logvar,
                                                 const c10::optional<at::Tensor>& target,
                                                 const c10::optional<at::Tensor>& mask, double sigma0, double spacing,
                                                 double offset, c10::optional<double> low, c10::optional<double> high) {
  constexpr const char* op = "closest_centre_kl";
  check_posterior(mu, logvar, op);
  check_sigma0_fits(sigma0, mu.scalar_type(), op);
  TORCH_CHECK_VALUE(std::isfinite(spacing) && spacing > 0, op, ": spacing must be a finite number > 0, got ", spacing);
  TORCH_CHECK_VALUE(std::isfinite(offset), op, ": offset must be finite, got ", offset);
  TORCH_CHECK_VALUE(!low.has_value() || !std::isnan(*low), op, ": low must not be NaN");
  TORCH_CHECK_VALUE(!high.has_value() || !std::isnan(*high), op, ": high must not be NaN");
  TORCH_CHECK_VALUE(!(low.has_value() && high.has_value()) || *low <= *high, op,
                    ": low must be <= high, got low = ", *low, " and high = ", *high);

  const bool has_target = target.has_value() && target->defined();
  const bool has_mask = mask.has_value() && mask->defined();
  TORCH_CHECK_VALUE(!has_mask || has_target, op,
                    ": a mask selects the dimensions guided by target; pass target as well (partially guided)");
  if (has_target) {
    check_like(*target, mu, op, "target", "mu");
  }
  if (has_mask) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, op, ": mask must be a bool tensor, got ", mask->scalar_type());
    const bool per_dimension = mask->dim() == 1 && mask->size(0) == mu.size(1);
    TORCH_CHECK(per_dimension || mask->sizes() == mu.sizes(), op, ": mask must have shape [n] = [", mu.size(1),
                "] or [B, n] = ", mu.sizes(), ", got ", mask->sizes());
    check_same_device(*mask, mu, op, "mask", "mu");
  }

  ClosestCentreOptions options{};
  options.source = has_mask ? CentreSource::Masked : has_target ? CentreSource::Target : CentreSource::Rounded;
  const PriorVariance<double> prior = prior_variance(sigma0);
  options.log_prior_var = prior.log_var;
  options.inv_prior_var = prior.inv_var;
  options.offset = offset;
  options.spacing = spacing;
  options.inv_spacing = 1.0 / spacing;
  options.reciprocal_exact = reciprocal_is_exact(spacing);
  options.low = low.has_value() ? *low : -std::numeric_limits<double>::infinity();
  options.high = high.has_value() ? *high : std::numeric_limits<double>::infinity();
  return options;
}

// The mask as a contiguous [B, n] bool tensor for the CUDA kernels (a
// per-dimension mask [n] is repeated for every sample: n bytes per row,
// against 2-8 bytes per element of each floating-point stream). The CPU loops
// take a per-dimension mask as it is and tile it themselves.
inline at::Tensor mask_per_element(const at::Tensor& mask, const at::Tensor& mu) {
  return mask.dim() == 1 ? mask.expand({mu.size(0), mu.size(1)}).contiguous() : mask.contiguous();
}

// grad_kl [B] and the centres [B, n] saved by the forward.
inline void check_closest_backward(const at::Tensor& grad_kl, const at::Tensor& mu, const at::Tensor& logvar,
                                   const at::Tensor& centre, double sigma0) {
  constexpr const char* op = "closest_centre_kl_backward";
  check_posterior(mu, logvar, op);
  check_sigma0_fits(sigma0, mu.scalar_type(), op);
  TORCH_CHECK(grad_kl.dim() == 1 && grad_kl.size(0) == mu.size(0), op, ": grad_kl must have shape [B] = [", mu.size(0),
              "], got ", grad_kl.sizes());
  TORCH_CHECK(centre.sizes() == mu.sizes(), op, ": centre must have the shape of mu ", mu.sizes(), ", got ",
              centre.sizes());
  TORCH_CHECK(grad_kl.device() == mu.device() && centre.device() == mu.device(), op,
              ": grad_kl and centre must be on the device of mu (", mu.device(), ")");
  TORCH_CHECK(centre.scalar_type() == mu.scalar_type(), op, ": centre must have the dtype of mu (", mu.scalar_type(),
              "), got ", centre.scalar_type());
  TORCH_CHECK(at::isFloatingType(grad_kl.scalar_type()), op, ": grad_kl must be floating point, got ",
              grad_kl.scalar_type());
}

// centres: [K, n], K >= 1, the dtype and device of mu.
inline void check_centres(const at::Tensor& mu, const at::Tensor& centres, const char* op) {
  TORCH_CHECK(centres.dim() == 2 && centres.size(1) == mu.size(1), op,
              ": centres must have shape [K, n] with n = ", mu.size(1), " (the latent size of mu), got ",
              centres.sizes());
  TORCH_CHECK(centres.size(0) >= 1, op, ": centres must hold at least one centre (K >= 1), got shape ",
              centres.sizes());
  check_same_device(centres, mu, op, "centres", "mu");
  TORCH_CHECK(centres.scalar_type() == mu.scalar_type(), op, ": centres must have the dtype of mu (", mu.scalar_type(),
              "), got ", centres.scalar_type());
}

inline void check_nearest(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& centres, double sigma0) {
  constexpr const char* op = "nearest_centre_kl";
  check_posterior(mu, logvar, op);
  check_sigma0_fits(sigma0, mu.scalar_type(), op);
  check_centres(mu, centres, op);
}

inline void check_nearest_backward(const at::Tensor& grad_kl, const at::Tensor& mu, const at::Tensor& logvar,
                                   const at::Tensor& centres, const at::Tensor& index, double sigma0) {
  constexpr const char* op = "nearest_centre_kl_backward";
  check_posterior(mu, logvar, op);
  check_sigma0_fits(sigma0, mu.scalar_type(), op);
  check_centres(mu, centres, op);
  TORCH_CHECK(grad_kl.dim() == 1 && grad_kl.size(0) == mu.size(0), op, ": grad_kl must have shape [B] = [", mu.size(0),
              "], got ", grad_kl.sizes());
  TORCH_CHECK(index.dim() == 1 && index.size(0) == mu.size(0), op, ": index must have shape [B] = [", mu.size(0),
              "], got ", index.sizes());
  TORCH_CHECK(index.scalar_type() == at::kLong, op, ": index must be int64, got ", index.scalar_type());
  TORCH_CHECK(grad_kl.device() == mu.device() && index.device() == mu.device(), op,
              ": grad_kl and index must be on the device of mu (", mu.device(), ")");
  TORCH_CHECK(at::isFloatingType(grad_kl.scalar_type()), op, ": grad_kl must be floating point, got ",
              grad_kl.scalar_type());
}

// KL is returned (and accumulated) in float32 for float16/bfloat16 inputs.
inline at::ScalarType kl_dtype(at::ScalarType input) {
  return (input == at::kHalf || input == at::kBFloat16) ? at::kFloat : input;
}

}  // namespace closest_centre_kl
}  // namespace manifold_ext
