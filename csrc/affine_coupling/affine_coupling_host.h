// Host-side pieces of the affine coupling op shared by the CPU and CUDA entry
// points: parsing the mode arguments and validating inputs. Checks live here
// once so both backends raise the same errors.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>
#include <string_view>

#include "affine_coupling/affine_coupling.h"

// The ops of this family, listed once: the CPU and CUDA files register a
// kernel for each (common/registration.h); the schemas are in affine_coupling_schema.cpp.
#define MANIFOLD_EXT_AFFINE_COUPLING_OPS(X) \
  X(affine_coupling)                        \
  X(affine_coupling_backward)

namespace manifold_ext {
namespace affine_coupling {

struct CouplingMode {
  CouplingScale scale;
  bool cross_layout;  // true: t = h[:, 0::2], r = h[:, 1::2];  false: t = h[:, :C], r = h[:, C:]
  bool reverse;
  double clamp;
};

inline CouplingMode parse_mode(std::string_view scale, std::string_view layout, double clamp, bool reverse) {
  CouplingMode mode{};
  if (scale == "glow") {
    mode.scale = CouplingScale::Glow;
  } else if (scale == "exp") {
    mode.scale = CouplingScale::Exp;
  } else if (scale == "softclamp") {
    mode.scale = CouplingScale::SoftClamp;
  } else {
    TORCH_CHECK_VALUE(false, "affine_coupling: unknown scale '", std::string(scale),
                      "'; expected 'glow', 'exp' or 'softclamp'");
  }
  if (layout == "cross") {
    mode.cross_layout = true;
  } else if (layout == "split") {
    mode.cross_layout = false;
  } else {
    TORCH_CHECK_VALUE(false, "affine_coupling: unknown layout '", std::string(layout),
                      "'; expected 'cross' or 'split'");
  }
  if (mode.scale == CouplingScale::SoftClamp) {
    TORCH_CHECK_VALUE(std::isfinite(clamp) && clamp > 0,
                      "affine_coupling: clamp must be a finite number > 0 for scale='softclamp', got ", clamp);
  }
  mode.reverse = reverse;
  mode.clamp = clamp;
  return mode;
}

// Validates x [B, C, *spatial] and h [B, 2C, *spatial] and returns the row
// geometry (see affine_coupling.h).
inline RowGeometry check_inputs(const at::Tensor& x, const at::Tensor& h, const CouplingMode& mode) {
  TORCH_CHECK(x.dim() >= 2, "affine_coupling: x must have shape [B, C, *spatial] (rank >= 2), got rank ", x.dim(),
              " with shape ", x.sizes());
  TORCH_CHECK(h.dim() == x.dim(), "affine_coupling: h must have the same rank as x ([B, 2C, *spatial]); x has shape ",
              x.sizes(), " but h has shape ", h.sizes());
  TORCH_CHECK(x.device() == h.device(), "affine_coupling: x and h must be on the same device, got x on ", x.device(),
              " and h on ", h.device());
  TORCH_CHECK(x.scalar_type() == h.scalar_type(), "affine_coupling: x and h must have the same dtype, got x ",
              x.scalar_type(), " and h ", h.scalar_type());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "affine_coupling: expected a floating-point dtype, got ",
              x.scalar_type());
  const int64_t batch = x.size(0);
  const int64_t channels = x.size(1);
  TORCH_CHECK(h.size(0) == batch, "affine_coupling: x and h must have the same batch size, got ", batch, " and ",
              h.size(0));
  TORCH_CHECK(h.size(1) == 2 * channels, "affine_coupling: h must have 2*C = ", 2 * channels,
              " channels (a shift and a raw scale per active channel of x), got ", h.size(1), " (x has shape ",
              x.sizes(), ", h has shape ", h.sizes(), ")");
  int64_t spatial = 1;
  for (int64_t d = 2; d < x.dim(); ++d) {
    TORCH_CHECK(h.size(d) == x.size(d), "affine_coupling: x and h must have the same spatial size, got x ", x.sizes(),
                " and h ", h.sizes());
    spatial *= x.size(d);
  }
  RowGeometry geometry{};
  geometry.batch = batch;
  geometry.rows_per_sample = mode.cross_layout ? channels : 1;
  geometry.row_len = mode.cross_layout ? spatial : channels * spatial;
  return geometry;
}

inline void check_backward_inputs(const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x) {
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "affine_coupling_backward: grad_y must have the shape of x ", x.sizes(),
              ", got ", grad_y.sizes());
  TORCH_CHECK(grad_logdet.dim() == 1 && grad_logdet.size(0) == x.size(0),
              "affine_coupling_backward: grad_logdet must have shape [B] = [", x.size(0), "], got ",
              grad_logdet.sizes());
  TORCH_CHECK(grad_y.device() == x.device() && grad_logdet.device() == x.device(),
              "affine_coupling_backward: gradients must be on the device of x (", x.device(), ")");
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(), "affine_coupling_backward: grad_y must have the dtype of x (",
              x.scalar_type(), "), got ", grad_y.scalar_type());
}

// logdet is accumulated and returned in float32 for half/bfloat16 inputs.
inline at::ScalarType logdet_dtype(at::ScalarType input) {
  return (input == at::kHalf || input == at::kBFloat16) ? at::kFloat : input;
}

}  // namespace affine_coupling
}  // namespace manifold_ext
