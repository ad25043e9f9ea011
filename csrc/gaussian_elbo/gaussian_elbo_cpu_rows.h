// Interface between the CPU entry points (gaussian_elbo_cpu.cpp, compiled once)
// and the per-sample loops (gaussian_elbo_cpu_vec.cpp, compiled once per
// instruction set into namespaces cpu_default / cpu_avx2 / cpu_avx512, so that
// the compiler vectorises the sums and the gradient loop at each ISA's width;
// the ops pick a copy at run time). Only raw pointers cross this boundary; all
// arrays are contiguous, row-major.
#pragma once

#include <cstdint>

#include "common/cpu_capability.h"

namespace manifold_ext {
namespace gaussian_elbo {

// Samples [0, rows) of one parallel task.
template <typename scalar_t>
struct ElboRows {
  const scalar_t* x;       // [rows, pixels]
  const scalar_t* x_mean;  // [rows, pixels]
  const scalar_t* mu;      // [rows, latents]
  const scalar_t* logvar;  // [rows, latents]
  scalar_t* elbo;          // [rows] output
  scalar_t* kl;            // [rows] output
  int64_t rows;
  int64_t pixels;
  int64_t latents;
  double decoder_logvar;
  double inv_decoder_var;  // exp(-decoder_logvar)
};

template <typename scalar_t>
struct ElboGradRows {
  const scalar_t* grad_elbo;  // [rows]
  const scalar_t* grad_kl;    // [rows]
  const scalar_t* x;          // [rows, pixels]
  const scalar_t* x_mean;     // [rows, pixels]
  const scalar_t* mu;         // [rows, latents]
  const scalar_t* logvar;     // [rows, latents]
  scalar_t* grad_x;           // [rows, pixels] output
  scalar_t* grad_x_mean;      // [rows, pixels] output
  scalar_t* grad_mu;          // [rows, latents] output
  scalar_t* grad_logvar;      // [rows, latents] output
  int64_t rows;
  int64_t pixels;
  int64_t latents;
  double inv_decoder_var;
};

#define MANIFOLD_EXT_DECLARE_ELBO_ROWS(ns)            \
  namespace ns {                                      \
  void elbo_rows(const ElboRows<float>& r);           \
  void elbo_rows(const ElboRows<double>& r);          \
  void elbo_grad_rows(const ElboGradRows<float>& r);  \
  void elbo_grad_rows(const ElboGradRows<double>& r); \
  }

MANIFOLD_EXT_FOR_EACH_CPU_ISA(MANIFOLD_EXT_DECLARE_ELBO_ROWS)

}  // namespace gaussian_elbo
}  // namespace manifold_ext
