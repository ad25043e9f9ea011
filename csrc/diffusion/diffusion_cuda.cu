// CUDA kernels of the diffusion ops (families 2 and 3). Element math:
// diffusion.h (shared with the CPU kernels), computed in at::opmath_type
// (float for half/bfloat16 inputs). Step coefficients are computed in double:
// on the host when one abar pair serves the batch (passed by value), or by a
// small kernel into a [B] array when abar is per sample (which also checks the
// pairs when the check is deferred: diffusion_device_checks.h).
//
// Likelihood step, by the length of a sample: up to kShortRowLen elements
// (e.g. 2-D points) one thread per sample; up to kWarpRowLen one warp per
// sample; longer samples one block per chunk of kChunkLen elements, each
// block's sum in its own slot, and a deterministic per-sample sum of the slots
// (no atomics). Every sum is accumulated in double, as on the CPU, so float32
// inputs give the CPU's answer to float32 rounding of the element terms.
//
// Elementwise kernels index in 32 bits when the tensor has fewer than 2^31
// elements (cuda::dispatch_index_type).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdio>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/registration.h"
#include "diffusion/diffusion_device_checks.h"
#include "diffusion/diffusion_host.h"

namespace manifold_ext {
namespace diffusion {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunkLen = 4096;    // elements per block in the long-row likelihood kernel
constexpr int64_t kShortRowLen = 32;   // samples up to this size: one thread per sample
constexpr int64_t kWarpRowLen = 1024;  // samples up to this size: one warp per sample

int64_t per_sample_len(const at::Tensor& x) { return x.size(0) == 0 ? 0 : x.numel() / x.size(0); }

// ---------------------------------------------------------------------------
// Calls that belong to the CPU kernel. A 0-dim abar is read on the host, so it
// may be a tensor on any device, but the dispatcher picks this CUDA kernel
// whenever any argument is a CUDA tensor: a 0-dim CUDA abar next to CPU inputs
// lands here. Such calls (every call whose main input is not on a GPU) are
// handed to the CPU kernel with the 0-dim abars read as CPU tensors; a CUDA
// tensor among the data inputs then meets the CPU kernel's device checks and
// their message ("acc must be on the device of x_t ...") instead of a CUDA
// guard's error.
// ---------------------------------------------------------------------------
at::Tensor scalar_on_host(const at::Tensor& abar) { return abar.dim() == 0 ? abar.cpu() : abar; }

template <typename Signature, typename... Args>
auto call_cpu_kernel(const char* name, Args&&... args) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>().redispatch(
      c10::DispatchKeySet(c10::DispatchKey::CPU), std::forward<Args>(args)...);
}

// ---------------------------------------------------------------------------
// Per-sample schedules (see diffusion_device_checks.h)
// ---------------------------------------------------------------------------
struct DeviceScheduleCheck {
  bool enabled;  // check each pair in the coefficient kernel (deferred mode)
  ScheduleRule rule;
};

bool defer_schedule_checks() {
  return deferred_schedule_checks_flag().load(std::memory_order_relaxed) ||
         c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// The abar pair of a CUDA call. Immediate mode (and shared values) go through
// read_abar_pair, which raises a clear error before any launch; deferred mode
// only checks the arguments' shapes, dtypes and devices here and leaves the
// values to the coefficient kernel.
struct CudaAbarPair {
  AbarPair pair;
  DeviceScheduleCheck check;
};

CudaAbarPair read_abar_pair_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& x, ScheduleRule rule,
                                 const char* op, const char* name_a, const char* name_b) {
  CudaAbarPair out{};
  out.check = DeviceScheduleCheck{false, rule};
  const bool shared = a.dim() == 0 && b.dim() == 0;
  if (shared || !defer_schedule_checks()) {
    out.pair = read_abar_pair(a, b, x, rule, op, name_a, name_b);
    return out;
  }
  const int64_t batch = x.size(0);
  check_abar_tensor(a, batch, x, op, name_a);
  check_abar_tensor(b, batch, x, op, name_b);
  // A 0-dim CPU abar next to a per-sample one is filled in on the device (a
  // copy from pageable host memory would synchronise, and is not allowed
  // while a graph is being captured).
  const auto options = x.options().dtype(at::kDouble);
  const auto per_sample_values = [&](const at::Tensor& abar) {
    return abar.dim() == 0 && abar.is_cpu() ? at::full({batch}, abar.item<double>(), options)
                                            : abar.to(options).expand({batch}).contiguous();
  };
  out.pair.per_sample = true;
  out.pair.a_values = per_sample_values(a);
  out.pair.b_values = per_sample_values(b);
  out.check.enabled = true;
  return out;
}

// The inequalities of schedule_ok (diffusion_host.h, host code), for the
// deferred check on the device. NaN fails every comparison, so it is refused.
__device__ __forceinline__ bool pair_valid(ScheduleRule rule, double a, double b) {
  switch (rule) {
    case ScheduleRule::Likelihood: return b > 0 && b < a && a <= 1;
    case ScheduleRule::Forward: return b > 0 && b <= a && a <= 1;
    default: return a > 0 && a < 1 && a <= b && b <= 1;
  }
}

template <typename T>
__device__ __forceinline__ bool all_finite(const StepCoefficients<T>& c) {
  return isfinite(c.x) && isfinite(c.eps) && isfinite(c.noise);
}

template <typename T>
__device__ __forceinline__ bool all_finite(const NllCoefficients<T>& c) {
  return isfinite(c.s) && isfinite(c.kq) && isfinite(c.cx) && isfinite(c.ce) && isfinite(c.kp) && isfinite(c.log_norm);
}

// Stops the kernel with a device-side assert after printing what is wrong
// (the deferred check's error: there is no host to raise a Python error).
__device__ __noinline__ void report_bad_pair(ScheduleRule rule, int64_t sample, double a, double b, bool valid) {
  const char* requirement = rule == ScheduleRule::Likelihood ? "need 0 < b < a <= 1 (Eq. 17-20)"
                            : rule == ScheduleRule::Forward  ? "need 0 < b <= a <= 1 (Eq. 17)"
                                                             : "need 0 < a < 1 and a <= b <= 1 (a backward step)";
  printf("manifold_ext: invalid per-sample diffusion schedule at sample %lld: (a, b) = (%.17g, %.17g); %s\n",
         static_cast<long long>(sample), a, b,
         valid ? "its step coefficients overflow float32: use float64 inputs or a less extreme schedule" : requirement);
  CUDA_KERNEL_ASSERT(false && "manifold_ext: invalid per-sample diffusion schedule (deferred check, see above)");
}

// Coefficients of one step for a batch: a value shared by all samples, or a
// device array with one entry per sample.
template <typename Coef>
struct CoefSource {
  Coef shared;
  const Coef* per_sample;  // nullptr: use `shared`
  __device__ __forceinline__ Coef at(int64_t b) const { return per_sample ? per_sample[b] : shared; }
  // The coefficients of element i of samples of `len` elements (the division
  // only where they differ per sample).
  template <typename index_t>
  __device__ __forceinline__ Coef of_element(index_t i, index_t len) const {
    return per_sample ? per_sample[i / len] : shared;
  }
};

// Device array of per-sample coefficients (kept alive by `storage`).
template <typename Coef>
struct CoefArray {
  at::Tensor storage;
  Coef* data;
};

template <typename Coef, typename acc_t>
CoefArray<Coef> allocate_coefficients(int64_t batch, const at::Tensor& like) {
  static_assert(sizeof(Coef) % sizeof(acc_t) == 0, "coefficient struct of acc_t fields");
  CoefArray<Coef> array;
  constexpr int64_t kFields = static_cast<int64_t>(sizeof(Coef) / sizeof(acc_t));
  const at::ScalarType dtype = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
  at::Tensor storage = at::empty({batch * kFields}, like.options().dtype(dtype));
  array.data = reinterpret_cast<Coef*>(storage.mutable_data_ptr<acc_t>());
  array.storage = storage;
  return array;
}

template <typename acc_t>
__global__ void step_coefficients_kernel(const double* __restrict__ a, const double* __restrict__ b,
                                         StepCoefficients<acc_t>* __restrict__ out, int64_t batch, StepKind kind,
                                         double eta, DeviceScheduleCheck check) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < batch; i += int64_t(gridDim.x) * blockDim.x) {
    const StepCoefficients<acc_t> c = cast_coefficients<acc_t>(step_coefficients(kind, a[i], b[i], eta));
    if (check.enabled) {
      const bool valid = pair_valid(check.rule, a[i], b[i]);
      if (!valid || !all_finite(c)) report_bad_pair(check.rule, i, a[i], b[i], valid);
    }
    out[i] = c;
  }
}

template <typename acc_t>
__global__ void nll_coefficients_kernel(const double* __restrict__ a, const double* __restrict__ b,
                                        NllCoefficients<acc_t>* __restrict__ out, int64_t batch,
                                        DeviceScheduleCheck check) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < batch; i += int64_t(gridDim.x) * blockDim.x) {
    const NllCoefficients<acc_t> c = cast_coefficients<acc_t>(nll_coefficients(a[i], b[i]));
    if (check.enabled) {
      const bool valid = pair_valid(check.rule, a[i], b[i]);
      if (!valid || !all_finite(c)) report_bad_pair(check.rule, i, a[i], b[i], valid);
    }
    out[i] = c;
  }
}

template <typename acc_t>
CoefSource<StepCoefficients<acc_t>> step_coefficient_source(const CudaAbarPair& abar, StepKind kind, double eta,
                                                            const at::Tensor& like, at::Tensor& keep_alive) {
  const AbarPair& pair = abar.pair;
  CoefSource<StepCoefficients<acc_t>> source{cast_coefficients<acc_t>(StepCoefficients<double>{0, 0, 0}), nullptr};
  if (!pair.per_sample) {
    source.shared = cast_coefficients<acc_t>(step_coefficients(kind, pair.a, pair.b, eta));
    return source;
  }
  const int64_t batch = pair.a_values.size(0);
  auto array = allocate_coefficients<StepCoefficients<acc_t>, acc_t>(batch, like);
  keep_alive = array.storage;
  if (batch > 0) {
    step_coefficients_kernel<acc_t>
        <<<cuda::grid_stride_blocks(batch, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            pair.a_values.const_data_ptr<double>(), pair.b_values.const_data_ptr<double>(), array.data, batch, kind,
            eta, abar.check);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  source.per_sample = array.data;
  return source;
}

template <typename acc_t>
CoefSource<NllCoefficients<acc_t>> nll_coefficient_source(const CudaAbarPair& abar, const at::Tensor& like,
                                                          at::Tensor& keep_alive) {
  const AbarPair& pair = abar.pair;
  CoefSource<NllCoefficients<acc_t>> source{};
  source.per_sample = nullptr;
  if (!pair.per_sample) {
    source.shared = cast_coefficients<acc_t>(nll_coefficients(pair.a, pair.b));
    return source;
  }
  const int64_t batch = pair.a_values.size(0);
  auto array = allocate_coefficients<NllCoefficients<acc_t>, acc_t>(batch, like);
  keep_alive = array.storage;
  if (batch > 0) {
    nll_coefficients_kernel<acc_t>
        <<<cuda::grid_stride_blocks(batch, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            pair.a_values.const_data_ptr<double>(), pair.b_values.const_data_ptr<double>(), array.data, batch,
            abar.check);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  source.per_sample = array.data;
  return source;
}

// ---------------------------------------------------------------------------
// Linear steps
// ---------------------------------------------------------------------------
template <typename scalar_t, typename index_t, bool kNoise>
__global__ void __launch_bounds__(kThreads)
    linear_step_kernel(const scalar_t* __restrict__ x,      // [B*D]
                       const scalar_t* __restrict__ eps,    // [B*D]
                       const scalar_t* __restrict__ noise,  // [B*D] or nullptr
                       scalar_t* __restrict__ out,          // [B*D]
                       CoefSource<StepCoefficients<at::opmath_type<scalar_t>>> coef, index_t numel, index_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t i = cuda::grid_stride_begin<index_t>(); i < numel; i += cuda::grid_stride_step<index_t>()) {
    const StepCoefficients<acc_t> c = coef.of_element(i, len);
    const acc_t xi = static_cast<acc_t>(x[i]);
    const acc_t ei = static_cast<acc_t>(eps[i]);
    out[i] = static_cast<scalar_t>(kNoise ? linear_step(xi, ei, static_cast<acc_t>(noise[i]), c)
                                          : linear_step_without_noise(xi, ei, c));
  }
}

at::Tensor linear_step_cuda(const char* op, StepKind kind, const at::Tensor& x_in, const at::Tensor& eps_in,
                            const std::optional<at::Tensor>& noise_in, const at::Tensor& abar_a,
                            const at::Tensor& abar_b, double eta, const char* x_name, const char* eps_name,
                            const char* name_a, const char* name_b) {
  check_batched(x_in, op, x_name);
  check_like(eps_in, x_in, op, eps_name, x_name);
  if (noise_in) check_like(*noise_in, x_in, op, "noise", x_name);
  check_cuda(x_in, op);
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const CudaAbarPair pair = read_abar_pair_cuda(abar_a, abar_b, x_in, step_rule(kind), op, name_a, name_b);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor eps = eps_in.contiguous();
  const at::Tensor noise = noise_in ? noise_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t numel = x.numel();
  const int64_t len = per_sample_len(x);
  if (numel == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "diffusion_linear_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor keep_alive;
    const auto coef = step_coefficient_source<acc_t>(pair, kind, eta, x, keep_alive);
    const int blocks = static_cast<int>(cuda::grid_stride_blocks(numel, kThreads));
    cuda::dispatch_index_type(numel, [&](auto index_zero) {
      using index_t = decltype(index_zero);
      if (noise.defined()) {
        linear_step_kernel<scalar_t, index_t, true><<<blocks, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), eps.const_data_ptr<scalar_t>(), noise.const_data_ptr<scalar_t>(),
            out.mutable_data_ptr<scalar_t>(), coef, static_cast<index_t>(numel), static_cast<index_t>(len));
      } else {
        linear_step_kernel<scalar_t, index_t, false><<<blocks, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), eps.const_data_ptr<scalar_t>(), nullptr, out.mutable_data_ptr<scalar_t>(),
            coef, static_cast<index_t>(numel), static_cast<index_t>(len));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor diffusion_forward_step_cuda(const at::Tensor& x_t, const at::Tensor& noise, const at::Tensor& abar_t,
                                       const at::Tensor& abar_next) {
  if (!x_t.is_cuda()) {
    return call_cpu_kernel<decltype(diffusion_forward_step_cuda)>("manifold_ext::diffusion_forward_step", x_t, noise,
                                                                  scalar_on_host(abar_t), scalar_on_host(abar_next));
  }
  return linear_step_cuda("diffusion_forward_step", StepKind::Forward, x_t, noise, std::nullopt, abar_t, abar_next, 0.0,
                          "x_t", "noise", "abar_t", "abar_next");
}

at::Tensor ddpm_step_cuda(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& abar_t,
                          const at::Tensor& abar_prev, const std::optional<at::Tensor>& noise) {
  if (!x_t.is_cuda()) {
    return call_cpu_kernel<decltype(ddpm_step_cuda)>("manifold_ext::ddpm_step", x_t, eps, scalar_on_host(abar_t),
                                                     scalar_on_host(abar_prev), noise);
  }
  return linear_step_cuda("ddpm_step", StepKind::Ddpm, x_t, eps, noise, abar_t, abar_prev, 0.0, "x_t", "eps", "abar_t",
                          "abar_prev");
}

at::Tensor ddim_step_cuda(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& abar_t,
                          const at::Tensor& abar_prev, double eta, const std::optional<at::Tensor>& noise) {
  if (!x_t.is_cuda()) {
    return call_cpu_kernel<decltype(ddim_step_cuda)>("manifold_ext::ddim_step", x_t, eps, scalar_on_host(abar_t),
                                                     scalar_on_host(abar_prev), eta, noise);
  }
  check_eta(eta, "ddim_step");
  return linear_step_cuda("ddim_step", StepKind::Ddim, x_t, eps, noise, abar_t, abar_prev, eta, "x_t", "eps", "abar_t",
                          "abar_prev");
}

at::Tensor large_step_cuda(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& abar_t,
                           const at::Tensor& abar_prev, const std::optional<at::Tensor>& noise) {
  if (!x_t.is_cuda()) {
    return call_cpu_kernel<decltype(large_step_cuda)>("manifold_ext::large_step", x_t, eps, scalar_on_host(abar_t),
                                                      scalar_on_host(abar_prev), noise);
  }
  return linear_step_cuda("large_step", StepKind::Large, x_t, eps, noise, abar_t, abar_prev, 0.0, "x_t", "eps",
                          "abar_t", "abar_prev");
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    step_backward_kernel(const scalar_t* __restrict__ grad, scalar_t* __restrict__ grad_x,
                         scalar_t* __restrict__ grad_eps, scalar_t* __restrict__ grad_noise,
                         CoefSource<StepCoefficients<at::opmath_type<scalar_t>>> coef, index_t numel, index_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t i = cuda::grid_stride_begin<index_t>(); i < numel; i += cuda::grid_stride_step<index_t>()) {
    const StepCoefficients<acc_t> c = coef.of_element(i, len);
    const acc_t g = static_cast<acc_t>(grad[i]);
    grad_x[i] = static_cast<scalar_t>(c.x * g);
    grad_eps[i] = static_cast<scalar_t>(c.eps * g);
    grad_noise[i] = static_cast<scalar_t>(c.noise * g);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> diffusion_step_backward_cuda(const at::Tensor& grad_in,
                                                                            c10::string_view step,
                                                                            const at::Tensor& abar_a,
                                                                            const at::Tensor& abar_b, double eta) {
  if (!grad_in.is_cuda()) {
    return call_cpu_kernel<decltype(diffusion_step_backward_cuda)>(
        "manifold_ext::diffusion_step_backward", grad_in, step, scalar_on_host(abar_a), scalar_on_host(abar_b), eta);
  }
  const char* op = "diffusion_step_backward";
  const StepKind kind = parse_step(step);
  if (kind == StepKind::Ddim) check_eta(eta, op);
  check_batched(grad_in, op, "grad");
  const c10::cuda::CUDAGuard device_guard(grad_in.device());
  const CudaAbarPair pair = read_abar_pair_cuda(abar_a, abar_b, grad_in, step_rule(kind), op, "abar_a", "abar_b");
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor grad_x = at::empty_like(grad, at::MemoryFormat::Contiguous);
  at::Tensor grad_eps = at::empty_like(grad, at::MemoryFormat::Contiguous);
  at::Tensor grad_noise = at::empty_like(grad, at::MemoryFormat::Contiguous);
  const int64_t numel = grad.numel();
  if (numel == 0) return {grad_x, grad_eps, grad_noise};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "diffusion_step_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor keep_alive;
    const auto coef = step_coefficient_source<acc_t>(pair, kind, eta, grad, keep_alive);
    cuda::dispatch_index_type(numel, [&](auto index_zero) {
      using index_t = decltype(index_zero);
      step_backward_kernel<scalar_t, index_t>
          <<<cuda::grid_stride_blocks(numel, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              grad.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(),
              grad_eps.mutable_data_ptr<scalar_t>(), grad_noise.mutable_data_ptr<scalar_t>(), coef,
              static_cast<index_t>(numel), static_cast<index_t>(per_sample_len(grad)));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_x, grad_eps, grad_noise};
}

// ---------------------------------------------------------------------------
// Likelihood step
// ---------------------------------------------------------------------------
template <typename scalar_t>
struct NllPointers {
  const scalar_t* x_t;
  const scalar_t* x_next;
  const scalar_t* eps;
  const scalar_t* noise;  // fused variant only
  scalar_t* x_after;      // fused variant only
};

// One element's term (added to the running sum in double), and the fused
// forward step of x_next into x_after.
template <bool kFused, typename scalar_t, typename acc_t>
__device__ __forceinline__ double nll_element_at(const NllPointers<scalar_t>& p, int64_t i,
                                                 const NllCoefficients<acc_t>& c, const StepCoefficients<acc_t>& fc) {
  const acc_t xn = static_cast<acc_t>(p.x_next[i]);
  if constexpr (kFused) {
    p.x_after[i] = static_cast<scalar_t>(linear_step_without_noise(xn, static_cast<acc_t>(p.noise[i]), fc));
  }
  return static_cast<double>(nll_element(static_cast<acc_t>(p.x_t[i]), xn, static_cast<acc_t>(p.eps[i]), c));
}

// acc + (D * log_norm + sum), in double, in the CPU kernel's order.
template <typename accum_t, typename acc_t>
__device__ __forceinline__ accum_t finish_sample(accum_t acc, int64_t len, acc_t log_norm, double sum) {
  return static_cast<accum_t>(static_cast<double>(acc) + (double(len) * double(log_norm) + sum));
}

// One sample per thread (short samples); writes acc_new directly.
template <typename scalar_t, typename accum_t, bool kFused>
__global__ void __launch_bounds__(kThreads)
    nll_thread_rows_kernel(NllPointers<scalar_t> p, const accum_t* __restrict__ acc, accum_t* __restrict__ acc_new,
                           CoefSource<NllCoefficients<at::opmath_type<scalar_t>>> coef,
                           CoefSource<StepCoefficients<at::opmath_type<scalar_t>>> forward_coef, int64_t batch,
                           int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < batch; b += int64_t(gridDim.x) * blockDim.x) {
    const NllCoefficients<acc_t> c = coef.at(b);
    StepCoefficients<acc_t> fc{};
    if constexpr (kFused) fc = forward_coef.at(b);
    double sum = 0;
    for (int64_t i = b * len; i < (b + 1) * len; ++i) sum += nll_element_at<kFused>(p, i, c, fc);
    acc_new[b] = finish_sample(acc[b], len, c.log_norm, sum);
  }
}

// One sample per warp (medium samples, kShortRowLen < len <= kWarpRowLen: a
// whole block would leave most of its threads idle). Every lane of a warp
// walks the same samples, so the shuffles see all 32 lanes.
template <typename scalar_t, typename accum_t, bool kFused>
__global__ void __launch_bounds__(kThreads)
    nll_warp_rows_kernel(NllPointers<scalar_t> p, const accum_t* __restrict__ acc, accum_t* __restrict__ acc_new,
                         CoefSource<NllCoefficients<at::opmath_type<scalar_t>>> coef,
                         CoefSource<StepCoefficients<at::opmath_type<scalar_t>>> forward_coef, int64_t batch,
                         int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kWarpsPerBlock = kThreads / cuda::kWarpSize;
  const int lane = threadIdx.x % cuda::kWarpSize;
  for (int64_t b = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / cuda::kWarpSize; b < batch;
       b += int64_t(gridDim.x) * kWarpsPerBlock) {
    const NllCoefficients<acc_t> c = coef.at(b);
    StepCoefficients<acc_t> fc{};
    if constexpr (kFused) fc = forward_coef.at(b);
    double sum = 0;
    for (int64_t i = b * len + lane; i < (b + 1) * len; i += cuda::kWarpSize)
      sum += nll_element_at<kFused>(p, i, c, fc);
    sum = cuda::warp_sum(sum);
    if (lane == 0) acc_new[b] = finish_sample(acc[b], len, c.log_norm, sum);
  }
}

// One block per chunk of a sample (long samples); the block's sum lands in slots[chunk].
template <typename scalar_t, bool kFused>
__global__ void __launch_bounds__(kThreads)
    nll_chunks_kernel(NllPointers<scalar_t> p, double* __restrict__ slots,
                      CoefSource<NllCoefficients<at::opmath_type<scalar_t>>> coef,
                      CoefSource<StepCoefficients<at::opmath_type<scalar_t>>> forward_coef, int64_t len,
                      int64_t chunks_per_sample) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t chunk = blockIdx.x;
  const int64_t b = chunk / chunks_per_sample;
  const int64_t begin = b * len + (chunk % chunks_per_sample) * kChunkLen;
  const int64_t sample_end = (b + 1) * len;
  const int64_t end = begin + kChunkLen < sample_end ? begin + kChunkLen : sample_end;
  const NllCoefficients<acc_t> c = coef.at(b);
  StepCoefficients<acc_t> fc{};
  if constexpr (kFused) fc = forward_coef.at(b);
  double sum = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) sum += nll_element_at<kFused>(p, i, c, fc);
  sum = cuda::block_sum<kThreads>(sum);
  if (threadIdx.x == 0) slots[chunk] = sum;
}

template <typename scalar_t, typename accum_t>
__global__ void nll_finish_kernel(const double* __restrict__ slots, const accum_t* __restrict__ acc,
                                  accum_t* __restrict__ acc_new,
                                  CoefSource<NllCoefficients<at::opmath_type<scalar_t>>> coef, int64_t batch,
                                  int64_t len, int64_t chunks_per_sample) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < batch; b += int64_t(gridDim.x) * blockDim.x) {
    double sum = 0;
    for (int64_t k = 0; k < chunks_per_sample; ++k) sum += slots[b * chunks_per_sample + k];
    acc_new[b] = finish_sample(acc[b], len, coef.at(b).log_norm, sum);
  }
}

struct NllInputs {
  at::Tensor acc, x_t, x_next, eps;
  CudaAbarPair pair;
};

// Checks (all of them before the CUDA guard, so a CPU tensor among the inputs
// gets the op's device error), then contiguous inputs and the schedule.
NllInputs prepare_nll(const char* op, const at::Tensor& acc, const at::Tensor& x_t, const at::Tensor& x_next,
                      const at::Tensor& eps, const at::Tensor& abar_t, const at::Tensor& abar_next) {
  check_batched(x_t, op, "x_t");
  check_like(x_next, x_t, op, "x_next", "x_t");
  check_like(eps, x_t, op, "eps", "x_t");
  check_accumulator(acc, x_t, op);
  check_cuda(x_t, op);
  NllInputs in;
  in.pair = read_abar_pair_cuda(abar_t, abar_next, x_t, ScheduleRule::Likelihood, op, "abar_t", "abar_next");
  in.acc = acc.contiguous();
  in.x_t = x_t.contiguous();
  in.x_next = x_next.contiguous();
  in.eps = eps.contiguous();
  return in;
}

template <typename input_t, typename accum_t, bool kFused>
void launch_nll(const NllPointers<input_t>& p, const accum_t* acc, accum_t* out,
                const CoefSource<NllCoefficients<at::opmath_type<input_t>>>& coef,
                const CoefSource<StepCoefficients<at::opmath_type<input_t>>>& forward_coef, int64_t batch, int64_t len,
                const at::Tensor& like, cudaStream_t stream) {
  if (len <= kShortRowLen) {
    nll_thread_rows_kernel<input_t, accum_t, kFused>
        <<<cuda::grid_stride_blocks(batch, kThreads), kThreads, 0, stream>>>(p, acc, out, coef, forward_coef, batch,
                                                                             len);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (len <= kWarpRowLen) {
    nll_warp_rows_kernel<input_t, accum_t, kFused>
        <<<cuda::grid_stride_blocks(batch * cuda::kWarpSize, kThreads), kThreads, 0, stream>>>(
            p, acc, out, coef, forward_coef, batch, len);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const int64_t chunks_per_sample = (len + kChunkLen - 1) / kChunkLen;
    const int64_t chunks = batch * chunks_per_sample;
    TORCH_CHECK(chunks <= std::numeric_limits<int>::max(), "diffusion_nll_step: input too large for one launch");
    at::Tensor slots = at::empty({chunks}, like.options().dtype(at::kDouble));
    nll_chunks_kernel<input_t, kFused><<<chunks, kThreads, 0, stream>>>(p, slots.mutable_data_ptr<double>(), coef,
                                                                        forward_coef, len, chunks_per_sample);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    nll_finish_kernel<input_t, accum_t><<<cuda::grid_stride_blocks(batch, kThreads), kThreads, 0, stream>>>(
        slots.const_data_ptr<double>(), acc, out, coef, batch, len, chunks_per_sample);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Shared by the plain and the fused likelihood step.
std::tuple<at::Tensor, at::Tensor> nll_step_cuda(const NllInputs& in, const at::Tensor* noise,
                                                 const CudaAbarPair* forward_pair) {
  const int64_t batch = in.x_t.size(0);
  const int64_t len = per_sample_len(in.x_t);
  at::Tensor acc_new = at::empty_like(in.acc, at::MemoryFormat::Contiguous);
  at::Tensor x_after = noise ? at::empty_like(in.x_next, at::MemoryFormat::Contiguous) : at::Tensor();
  if (batch == 0) return {acc_new, x_after};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x_t.scalar_type(), "diffusion_nll_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using input_t = scalar_t;
    at::Tensor keep_nll, keep_forward;
    const auto coef = nll_coefficient_source<acc_t>(in.pair, in.x_t, keep_nll);
    CoefSource<StepCoefficients<acc_t>> forward_coef{};
    forward_coef.per_sample = nullptr;
    if (forward_pair)
      forward_coef = step_coefficient_source<acc_t>(*forward_pair, StepKind::Forward, 0.0, in.x_t, keep_forward);
    const NllPointers<input_t> p{in.x_t.const_data_ptr<input_t>(), in.x_next.const_data_ptr<input_t>(),
                                 in.eps.const_data_ptr<input_t>(), noise ? noise->const_data_ptr<input_t>() : nullptr,
                                 noise ? x_after.mutable_data_ptr<input_t>() : nullptr};
    AT_DISPATCH_FLOATING_TYPES(in.acc.scalar_type(), "diffusion_nll_step_cuda_acc", [&] {
      using accum_t = scalar_t;
      const accum_t* acc = in.acc.const_data_ptr<accum_t>();
      accum_t* out = acc_new.mutable_data_ptr<accum_t>();
      if (noise) {
        launch_nll<input_t, accum_t, true>(p, acc, out, coef, forward_coef, batch, len, in.x_t, stream);
      } else {
        launch_nll<input_t, accum_t, false>(p, acc, out, coef, forward_coef, batch, len, in.x_t, stream);
      }
    });
  });
  return {acc_new, x_after};
}

at::Tensor diffusion_nll_step_cuda(const at::Tensor& acc, const at::Tensor& x_t, const at::Tensor& x_next,
                                   const at::Tensor& eps, const at::Tensor& abar_t, const at::Tensor& abar_next) {
  if (!x_t.is_cuda()) {
    return call_cpu_kernel<decltype(diffusion_nll_step_cuda)>("manifold_ext::diffusion_nll_step", acc, x_t, x_next, eps,
                                                              scalar_on_host(abar_t), scalar_on_host(abar_next));
  }
  const c10::cuda::CUDAGuard device_guard(x_t.device());
  const NllInputs in = prepare_nll("diffusion_nll_step", acc, x_t, x_next, eps, abar_t, abar_next);
  return std::get<0>(nll_step_cuda(in, nullptr, nullptr));
}

std::tuple<at::Tensor, at::Tensor> diffusion_nll_step_and_forward_cuda(
    const at::Tensor& acc, const at::Tensor& x_t, const at::Tensor& x_next, const at::Tensor& eps,
    const at::Tensor& noise_in, const at::Tensor& abar_t, const at::Tensor& abar_next, const at::Tensor& abar_after) {
  if (!x_t.is_cuda()) {
    return call_cpu_kernel<decltype(diffusion_nll_step_and_forward_cuda)>(
        "manifold_ext::diffusion_nll_step_and_forward", acc, x_t, x_next, eps, noise_in, scalar_on_host(abar_t),
        scalar_on_host(abar_next), scalar_on_host(abar_after));
  }
  const char* op = "diffusion_nll_step_and_forward";
  check_like(noise_in, x_t, op, "noise", "x_t");
  const c10::cuda::CUDAGuard device_guard(x_t.device());
  const NllInputs in = prepare_nll(op, acc, x_t, x_next, eps, abar_t, abar_next);
  const CudaAbarPair forward_pair =
      read_abar_pair_cuda(abar_next, abar_after, x_t, ScheduleRule::Forward, op, "abar_next", "abar_after");
  const at::Tensor noise = noise_in.contiguous();
  return nll_step_cuda(in, &noise, &forward_pair);
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    nll_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad,  // [B]
                        const scalar_t* __restrict__ x_t, const scalar_t* __restrict__ x_next,
                        const scalar_t* __restrict__ eps, scalar_t* __restrict__ grad_x_t,
                        scalar_t* __restrict__ grad_x_next, scalar_t* __restrict__ grad_eps,
                        CoefSource<NllCoefficients<at::opmath_type<scalar_t>>> coef, index_t numel, index_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t i = cuda::grid_stride_begin<index_t>(); i < numel; i += cuda::grid_stride_step<index_t>()) {
    const index_t b = i / len;
    const NllElementGrads<acc_t> g = nll_element_backward(
        grad[b], static_cast<acc_t>(x_t[i]), static_cast<acc_t>(x_next[i]), static_cast<acc_t>(eps[i]), coef.at(b));
    grad_x_t[i] = static_cast<scalar_t>(g.x_t);
    grad_x_next[i] = static_cast<scalar_t>(g.x_next);
    grad_eps[i] = static_cast<scalar_t>(g.eps);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> diffusion_nll_step_backward_cuda(
    const at::Tensor& grad_acc, const at::Tensor& x_t, const at::Tensor& x_next, const at::Tensor& eps,
    const at::Tensor& abar_t, const at::Tensor& abar_next) {
  if (!x_t.is_cuda()) {
    return call_cpu_kernel<decltype(diffusion_nll_step_backward_cuda)>(
        "manifold_ext::diffusion_nll_step_backward", grad_acc, x_t, x_next, eps, scalar_on_host(abar_t),
        scalar_on_host(abar_next));
  }
  const char* op = "diffusion_nll_step_backward";
  TORCH_CHECK(grad_acc.dim() == 1 && grad_acc.size(0) == x_t.size(0), op, ": grad_acc must have shape [B] = [",
              x_t.size(0), "], got ", grad_acc.sizes());
  const c10::cuda::CUDAGuard device_guard(x_t.device());
  const NllInputs in = prepare_nll(op, grad_acc.to(at::kDouble), x_t, x_next, eps, abar_t, abar_next);
  at::Tensor grad_x_t = at::empty_like(in.x_t, at::MemoryFormat::Contiguous);
  at::Tensor grad_x_next = at::empty_like(in.x_t, at::MemoryFormat::Contiguous);
  at::Tensor grad_eps = at::empty_like(in.x_t, at::MemoryFormat::Contiguous);
  const int64_t numel = in.x_t.numel();
  if (numel == 0) return {grad_x_t, grad_x_next, grad_eps};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x_t.scalar_type(), "diffusion_nll_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor keep_alive;
    const auto coef = nll_coefficient_source<acc_t>(in.pair, in.x_t, keep_alive);
    const at::Tensor grad = in.acc.to(std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat).contiguous();
    cuda::dispatch_index_type(numel, [&](auto index_zero) {
      using index_t = decltype(index_zero);
      nll_backward_kernel<scalar_t, index_t>
          <<<cuda::grid_stride_blocks(numel, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              grad.const_data_ptr<acc_t>(), in.x_t.const_data_ptr<scalar_t>(), in.x_next.const_data_ptr<scalar_t>(),
              in.eps.const_data_ptr<scalar_t>(), grad_x_t.mutable_data_ptr<scalar_t>(),
              grad_x_next.mutable_data_ptr<scalar_t>(), grad_eps.mutable_data_ptr<scalar_t>(), coef,
              static_cast<index_t>(numel), static_cast<index_t>(per_sample_len(in.x_t)));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_x_t, grad_x_next, grad_eps};
}

// ---------------------------------------------------------------------------
// Runge-Kutta combination
// ---------------------------------------------------------------------------
template <typename scalar_t, bool kWithX>
__global__ void __launch_bounds__(kThreads)
    rk4_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ k1, const scalar_t* __restrict__ k2,
               const scalar_t* __restrict__ k3, const scalar_t* __restrict__ k4, scalar_t* __restrict__ out,
               at::opmath_type<scalar_t> h, int64_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel; i += int64_t(gridDim.x) * blockDim.x) {
    const acc_t a = static_cast<acc_t>(k1[i]), b = static_cast<acc_t>(k2[i]), c = static_cast<acc_t>(k3[i]),
                d = static_cast<acc_t>(k4[i]);
    out[i] = static_cast<scalar_t>(kWithX ? rk4_update_element(static_cast<acc_t>(x[i]), a, b, c, d, h)
                                          : rk4_mean_slope(a, b, c, d));
  }
}

at::Tensor rk4_cuda(const char* op, const at::Tensor* x_in, const at::Tensor& k1_in, const at::Tensor& k2_in,
                    const at::Tensor& k3_in, const at::Tensor& k4_in, double h) {
  const at::Tensor& like = x_in ? *x_in : k1_in;
  const char* like_name = x_in ? "x" : "k1";
  check_floating(like, op, like_name);
  if (x_in) check_like(k1_in, like, op, "k1", like_name);
  check_like(k2_in, like, op, "k2", like_name);
  check_like(k3_in, like, op, "k3", like_name);
  check_like(k4_in, like, op, "k4", like_name);
  TORCH_CHECK_VALUE(std::isfinite(h), op, ": the step h must be finite, got ", h);
  check_cuda(like, op);
  const c10::cuda::CUDAGuard device_guard(like.device());
  const at::Tensor x = x_in ? x_in->contiguous() : at::Tensor();
  const at::Tensor k1 = k1_in.contiguous(), k2 = k2_in.contiguous(), k3 = k3_in.contiguous(), k4 = k4_in.contiguous();
  at::Tensor out = at::empty_like(k1, at::MemoryFormat::Contiguous);
  const int64_t numel = k1.numel();
  if (numel == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k1.scalar_type(), "rk4_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int blocks = static_cast<int>(cuda::grid_stride_blocks(numel, kThreads));
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    if (x.defined()) {
      rk4_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), k1.const_data_ptr<scalar_t>(), k2.const_data_ptr<scalar_t>(),
          k3.const_data_ptr<scalar_t>(), k4.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          static_cast<acc_t>(h), numel);
    } else {
      rk4_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
          nullptr, k1.const_data_ptr<scalar_t>(), k2.const_data_ptr<scalar_t>(), k3.const_data_ptr<scalar_t>(),
          k4.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), static_cast<acc_t>(h), numel);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor rk4_combine_cuda(const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& k3, const at::Tensor& k4) {
  return rk4_cuda("rk4_combine", nullptr, k1, k2, k3, k4, 1.0);
}

at::Tensor rk4_update_cuda(const at::Tensor& x, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& k3,
                           const at::Tensor& k4, double h) {
  return rk4_cuda("rk4_update", &x, k1, k2, k3, k4, h);
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CUDA, m) { MANIFOLD_EXT_DIFFUSION_OPS(MANIFOLD_EXT_IMPL_CUDA) }

}  // namespace diffusion
}  // namespace manifold_ext
