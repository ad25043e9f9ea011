// Vector overloads of the hd_* functions for at::vec::Vectorized, so that the
// element math written once as templates over T (common/hd_math.h and the
// op-family headers) runs SIMD-wide in the CPU kernels.
//
// Include this first: the overloads are declared *before* hd_math.h and the
// family headers are parsed, because those templates find them by ordinary
// lookup (they live in our namespace, so argument-dependent lookup on
// at::vec types would not see them).
//
// Only the per-ISA *_cpu_vec.cpp files include this (they are compiled with
// CPU_CAPABILITY set, see cmake/ManifoldExtCpuIsa.cmake).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace manifold_ext {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> hd_exp(const Vec<T>& v) {
  return v.exp();
}
template <typename T>
inline Vec<T> hd_log(const Vec<T>& v) {
  return v.log();
}
template <typename T>
inline Vec<T> hd_sqrt(const Vec<T>& v) {
  return v.sqrt();
}
template <typename T>
inline Vec<T> hd_log1p(const Vec<T>& v) {
  return v.log1p();
}
template <typename T>
inline Vec<T> hd_tanh(const Vec<T>& v) {
  return v.tanh();
}
template <typename T>
inline Vec<T> hd_abs(const Vec<T>& v) {
  return v.abs();
}
template <typename T>
inline Vec<T> hd_round(const Vec<T>& v) {
  return v.round();
}  // ties to even
template <typename T>
inline Vec<T> hd_min(const Vec<T>& a, const Vec<T>& b) {
  return at::vec::minimum(a, b);
}
template <typename T>
inline Vec<T> hd_fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
  return at::vec::fmadd(a, b, c);
}

// `mask` comes from a lane-wise comparison (all bits set where true).
template <typename T>
inline Vec<T> hd_where(const Vec<T>& mask, const Vec<T>& if_true, const Vec<T>& if_false) {
  return Vec<T>::blendv(if_false, if_true, mask);
}

// Horizontal sum of the lanes.
template <typename T>
inline T hd_lane_sum(const Vec<T>& v) {
  return at::vec::vec_reduce_all<T>([](Vec<T>& a, Vec<T>& b) { return a + b; }, v);
}

template <typename T>
struct HdScalarOf;
template <typename T>
struct HdScalarOf<at::vec::Vectorized<T>> {
  using type = T;
};

}  // namespace manifold_ext

#include "common/hd_math.h"
