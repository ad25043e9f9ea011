// Input checks shared by every op family's entry points: one home for each,
// every message naming the op and stating expected vs got. The family-specific
// checks (shapes of a family's arguments, schedules, modes) live in
// csrc/<family>/<family>_host.h and are built from these.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace manifold_ext {

// A CUDA kernel's main input is on a GPU (the dispatcher picks the CUDA kernel
// when any argument is a CUDA tensor, so the CPU ones are refused here, before
// a CUDA guard would be made for them).
inline void check_cuda(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": expected CUDA tensors, got ", x.device());
}

// A CPU kernel's input is on the CPU.
inline void check_cpu_device(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": expected CPU tensors, got ", x.device());
}

// ... and is float32 or float64 (the CPU kernels' floating dtypes).
inline void check_cpu(const at::Tensor& x, const char* op) {
  check_cpu_device(x, op);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": the CPU kernel supports float32 and float64, got ", x.scalar_type(),
              " (float16/bfloat16 are supported on CUDA)");
}

inline void check_floating(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected a floating-point dtype for ", name, ", got ",
              x.scalar_type());
}

// `other` is on the device of `x`.
inline void check_same_device(const at::Tensor& other, const at::Tensor& x, const char* op, const char* name,
                              const char* x_name) {
  TORCH_CHECK(other.device() == x.device(), op, ": ", name, " must be on the device of ", x_name, " (", x.device(),
              "), got ", other.device());
}

// `other` matches `x` in shape, device and dtype.
inline void check_like(const at::Tensor& other, const at::Tensor& x, const char* op, const char* name,
                       const char* x_name) {
  TORCH_CHECK(other.sizes() == x.sizes(), op, ": ", name, " must have the shape of ", x_name, " ", x.sizes(), ", got ",
              other.sizes());
  check_same_device(other, x, op, name, x_name);
  TORCH_CHECK(other.scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of ", x_name, " (",
              x.scalar_type(), "), got ", other.scalar_type());
}

}  // namespace manifold_ext
