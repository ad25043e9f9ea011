// Scalar math shared by CPU and CUDA kernels.
//
// Op-family headers write their element math once, as templates over a value
// type T, calling only the hd_* functions below and + - * /. The CPU kernels
// instantiate them with T = float/double (scalar tails) and with
// T = at::vec::Vectorized<float/double> (see cpu_vec_math.h, which adds the
// vector overloads); CUDA kernels with T = float/double (the accumulation type,
// so half/bfloat16 inputs are computed in float).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ME_HD __host__ __device__ __forceinline__
#define ME_HOST_DEVICE __host__ __device__
#else
#define ME_HD inline
#define ME_HOST_DEVICE
#endif

namespace manifold_ext {

ME_HD float hd_exp(float v) { return ::expf(v); }
ME_HD double hd_exp(double v) { return ::exp(v); }

ME_HD float hd_log1p(float v) { return ::log1pf(v); }
ME_HD double hd_log1p(double v) { return ::log1p(v); }

ME_HD float hd_tanh(float v) { return ::tanhf(v); }
ME_HD double hd_tanh(double v) { return ::tanh(v); }

ME_HD float hd_abs(float v) { return ::fabsf(v); }
ME_HD double hd_abs(double v) { return ::fabs(v); }

ME_HD float hd_min(float a, float b) { return a < b ? a : b; }
ME_HD double hd_min(double a, double b) { return a < b ? a : b; }

// Branch-free select: `condition` is a bool for scalars, a lane mask for vectors.
template <typename T>
ME_HD T hd_where(bool condition, T if_true, T if_false) {
  return condition ? if_true : if_false;
}

}  // namespace manifold_ext
