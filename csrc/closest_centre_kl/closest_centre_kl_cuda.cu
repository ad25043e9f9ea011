// CUDA kernels of the closest-centre KL ops. Element math: closest_centre_kl.h
// (shared with the CPU kernels), computed in at::opmath_type (float for
// half/bfloat16 inputs).
//
// Forward: one warp per sample when rows are long enough to fill a warp
// (n >= kWarpRowLen), else one thread per sample; each adds its elements' KL
// terms and reduces them in registers/shuffles (no atomics, deterministic).
// Backward: a grid-stride elementwise pass (32-bit index math below 2^31
// elements). nearest_centre_kl first finds each
// sample's nearest centre (one thread per sample, the centres read warp-uniformly
// through the cache), then runs the same forward/backward kernels with the
// chosen centre rows gathered on the fly.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "closest_centre_kl/closest_centre_kl_host.h"
#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/registration.h"

namespace manifold_ext {
namespace closest_centre_kl {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kWarpRowLen = 16;  // rows at least this long: one warp per row

// Where the given centres of row `row` start: a dense [B, n] tensor (guided /
// the forward's saved centres), or the rows of a centre set picked by index.
template <typename scalar_t>
struct DenseCentres {
  const scalar_t* data;  // [B, n] or null (Rounded)
  int64_t n;
  __device__ __forceinline__ const scalar_t* row(int64_t r) const { return data + r * n; }
};

template <typename scalar_t>
struct GatheredCentres {
  const scalar_t* centres;  // [K, n]
  const int64_t* index;     // [B]
  int64_t num_centres;      // K
  int64_t n;
  __device__ __forceinline__ const scalar_t* row(int64_t r) const {
    const int64_t k = index[r];
    CUDA_KERNEL_ASSERT(k >= 0 && k < num_centres && "nearest_centre_kl: centre index out of range");
    return centres + k * n;
  }
};

template <typename scalar_t>
struct ForwardArgs {
  const scalar_t* mu;             // [B, n]
  const scalar_t* logvar;         // [B, n]
  const bool* mask;               // [B, n] (Masked) or null
  scalar_t* centre;               // [B, n] output, or null
  at::opmath_type<scalar_t>* kl;  // [B] output
  int64_t batch;
  int64_t n;
  Grid<at::opmath_type<scalar_t>> grid;
  PriorVariance<at::opmath_type<scalar_t>> prior;
};

// Twice the KL term of element i of row r, storing its centre when asked.
template <CentreSource kSource, typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> element_term(const ForwardArgs<scalar_t>& a,
                                                                  const scalar_t* given_row, int64_t r, int64_t i) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = r * a.n + i;
  const acc_t mu = static_cast<acc_t>(a.mu[idx]);
  acc_t c;
  if constexpr (kSource == CentreSource::Target) {
    c = static_cast<acc_t>(given_row[i]);
  } else if constexpr (kSource == CentreSource::Rounded) {
    c = grid_centre(mu, a.grid);
  } else {
    c = a.mask[idx] ? static_cast<acc_t>(given_row[i]) : grid_centre(mu, a.grid);
  }
  // The KL uses the centre as stored (and as the backward will read it).
  const scalar_t c_stored = static_cast<scalar_t>(c);
  if (a.centre != nullptr) a.centre[idx] = c_stored;
  return twice_kl_term(mu, static_cast<acc_t>(a.logvar[idx]), static_cast<acc_t>(c_stored), a.prior);
}

template <CentreSource kSource, typename scalar_t, typename Centres>
__global__ void __launch_bounds__(kThreads) kl_forward_thread_rows_kernel(ForwardArgs<scalar_t> a, Centres given) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < a.batch; r += int64_t(gridDim.x) * blockDim.x) {
    const scalar_t* given_row = kSource == CentreSource::Rounded ? nullptr : given.row(r);
    acc_t sum = 0;
    for (int64_t i = 0; i < a.n; ++i) sum += element_term<kSource>(a, given_row, r, i);
    a.kl[r] = acc_t(0.5) * sum;  // Eq. 27's 1/2
  }
}

template <CentreSource kSource, typename scalar_t, typename Centres>
__global__ void __launch_bounds__(kThreads) kl_forward_warp_rows_kernel(ForwardArgs<scalar_t> a, Centres given) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kWarpsPerBlock = kThreads / cuda::kWarpSize;
  const int lane = threadIdx.x % cuda::kWarpSize;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / cuda::kWarpSize; r < a.batch;
       r += int64_t(gridDim.x) * kWarpsPerBlock) {
    const scalar_t* given_row = kSource == CentreSource::Rounded ? nullptr : given.row(r);
    acc_t sum = 0;
    for (int64_t i = lane; i < a.n; i += cuda::kWarpSize) sum += element_term<kSource>(a, given_row, r, i);
    sum = cuda::warp_sum(sum);
    if (lane == 0) a.kl[r] = acc_t(0.5) * sum;
  }
}

template <typename scalar_t, typename index_t, typename Centres>
__global__ void __launch_bounds__(kThreads)
    kl_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_kl,  // [B]
                       const scalar_t* __restrict__ mu,                        // [B, n]
                       const scalar_t* __restrict__ logvar,                    // [B, n]
                       Centres centres,                                        // row r -> its n centres
                       scalar_t* __restrict__ grad_mu,                         // [B, n]
                       scalar_t* __restrict__ grad_logvar,                     // [B, n]
                       index_t numel, index_t n, PriorVariance<at::opmath_type<scalar_t>> prior) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t idx = cuda::grid_stride_begin<index_t>(); idx < numel; idx += cuda::grid_stride_step<index_t>()) {
    const index_t r = idx / n;
    const index_t i = idx - r * n;
    const KlGrads<acc_t> g = kl_term_grads(grad_kl[r], static_cast<acc_t>(mu[idx]), static_cast<acc_t>(logvar[idx]),
                                           static_cast<acc_t>(centres.row(r)[i]), prior);
    grad_mu[idx] = static_cast<scalar_t>(g.mu);
    grad_logvar[idx] = static_cast<scalar_t>(g.logvar);
  }
}

// One thread per sample; all threads of a warp read the same centre at the
// same time (a broadcast), and a sample's own row stays in L1.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) nearest_centre_kernel(const scalar_t* __restrict__ mu,       // [B, n]
                                                                  const scalar_t* __restrict__ centres,  // [K, n]
                                                                  int64_t* __restrict__ index,           // [B]
                                                                  int64_t batch, int64_t num_centres, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < batch; r += int64_t(gridDim.x) * blockDim.x) {
    const scalar_t* mu_row = mu + r * n;
    acc_t best = std::numeric_limits<acc_t>::infinity();
    int64_t best_index = 0;
    for (int64_t k = 0; k < num_centres; ++k) {
      const scalar_t* centre = centres + k * n;
      acc_t dist = 0;
      for (int64_t i = 0; i < n; ++i) dist += squared_gap(static_cast<acc_t>(mu_row[i]), static_cast<acc_t>(centre[i]));
      if (is_nearer(dist, best)) {  // NaN rule of closest_centre_kl.h; strict: the first nearest centre wins
        best = dist;
        best_index = k;
      }
    }
    index[r] = best_index;
  }
}

template <CentreSource kSource, typename scalar_t, typename Centres>
void launch_forward(const ForwardArgs<scalar_t>& args, const Centres& given, cudaStream_t stream) {
  if (args.batch == 0) return;
  if (args.n >= kWarpRowLen) {
    const int64_t blocks = cuda::grid_stride_blocks(args.batch * cuda::kWarpSize, kThreads);
    kl_forward_warp_rows_kernel<kSource><<<blocks, kThreads, 0, stream>>>(args, given);
  } else {
    kl_forward_thread_rows_kernel<kSource>
        <<<cuda::grid_stride_blocks(args.batch, kThreads), kThreads, 0, stream>>>(args, given);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The backward gathers centres[index[r]] for every sample. An index out of
// range would trip the device-side assert in GatheredCentres::row, which leaves
// the CUDA context unusable; it is refused here instead, before the launch,
// with the CPU kernel's error (one reduction and one device->host sync; the
// index a forward call returned always passes).
void check_index_range(const at::Tensor& index, int64_t num_centres, const char* op) {
  if (index.numel() == 0) return;
  const at::Tensor out_of_range = index.lt(0).logical_or_(index.ge(num_centres));
  if (!out_of_range.any().item<bool>()) return;
  const int64_t sample = out_of_range.nonzero().select(1, 0)[0].item<int64_t>();
  TORCH_CHECK(false, op, ": index ", index[sample].item<int64_t>(), " of sample ", sample, " is out of range for ",
              num_centres, " centres");
}

template <typename scalar_t>
ForwardArgs<scalar_t> forward_args(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& mask,
                                   at::Tensor* centre, at::Tensor& kl, const Grid<double>& grid,
                                   const PriorVariance<double>& prior) {
  using acc_t = at::opmath_type<scalar_t>;
  ForwardArgs<scalar_t> a{};
  a.mu = mu.const_data_ptr<scalar_t>();
  a.logvar = logvar.const_data_ptr<scalar_t>();
  a.mask = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  a.centre = centre != nullptr ? centre->mutable_data_ptr<scalar_t>() : nullptr;
  a.kl = kl.mutable_data_ptr<acc_t>();
  a.batch = mu.size(0);
  a.n = mu.size(1);
  a.grid = Grid<acc_t>{static_cast<acc_t>(grid.offset), static_cast<acc_t>(grid.spacing), static_cast<acc_t>(grid.low),
                       static_cast<acc_t>(grid.high)};
  a.prior = PriorVariance<acc_t>{static_cast<acc_t>(prior.log_var), static_cast<acc_t>(prior.inv_var)};
  return a;
}

std::tuple<at::Tensor, at::Tensor> closest_centre_kl_cuda(const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                          const c10::optional<at::Tensor>& target_in,
                                                          const c10::optional<at::Tensor>& mask_in, double sigma0,
                                                          double spacing, double offset, c10::optional<double> low,
                                                          c10::optional<double> high) {
  const ClosestCentreOptions options =
      parse_closest_centre(mu_in, logvar_in, target_in, mask_in, sigma0, spacing, offset, low, high);
  check_cuda(mu_in, "closest_centre_kl");
  const c10::cuda::CUDAGuard device_guard(mu_in.device());
  const at::Tensor mu = mu_in.contiguous();          // [B, n]
  const at::Tensor logvar = logvar_in.contiguous();  // [B, n]
  const at::Tensor target = options.source != CentreSource::Rounded ? target_in->contiguous() : at::Tensor();
  const at::Tensor mask = options.source == CentreSource::Masked ? mask_per_element(*mask_in, mu) : at::Tensor();
  at::Tensor centre = at::empty_like(mu, at::MemoryFormat::Contiguous);                     // [B, n]
  at::Tensor kl = at::empty({mu.size(0)}, mu.options().dtype(kl_dtype(mu.scalar_type())));  // [B]
  const Grid<double> grid{options.offset, options.spacing, options.low, options.high};
  const PriorVariance<double> prior{options.log_prior_var, options.inv_prior_var};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "closest_centre_kl_cuda", [&] {
    const ForwardArgs<scalar_t> args = forward_args<scalar_t>(mu, logvar, mask, &centre, kl, grid, prior);
    const DenseCentres<scalar_t> given{target.defined() ? target.const_data_ptr<scalar_t>() : nullptr, mu.size(1)};
    switch (options.source) {
      case CentreSource::Rounded: launch_forward<CentreSource::Rounded>(args, given, stream); break;
      case CentreSource::Target: launch_forward<CentreSource::Target>(args, given, stream); break;
      default: launch_forward<CentreSource::Masked>(args, given, stream);
    }
  });
  return {kl, centre};
}

template <typename Centres, typename scalar_t>
void launch_backward(const at::Tensor& grad_kl, const at::Tensor& mu, const at::Tensor& logvar, const Centres& centres,
                     at::Tensor& grad_mu, at::Tensor& grad_logvar, double sigma0, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t numel = mu.numel();
  if (numel == 0) return;
  const PriorVariance<double> prior = prior_variance(sigma0);
  cuda::dispatch_index_type(numel, [&](auto index_zero) {
    using index_t = decltype(index_zero);
    kl_backward_kernel<scalar_t, index_t><<<cuda::grid_stride_blocks(numel, kThreads), kThreads, 0, stream>>>(
        grad_kl.const_data_ptr<acc_t>(), mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(), centres,
        grad_mu.mutable_data_ptr<scalar_t>(), grad_logvar.mutable_data_ptr<scalar_t>(), static_cast<index_t>(numel),
        static_cast<index_t>(mu.size(1)),
        PriorVariance<acc_t>{static_cast<acc_t>(prior.log_var), static_cast<acc_t>(prior.inv_var)});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> closest_centre_kl_backward_cuda(const at::Tensor& grad_kl_in,
                                                                   const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                                   const at::Tensor& centre_in, double sigma0) {
  check_closest_backward(grad_kl_in, mu_in, logvar_in, centre_in, sigma0);
  check_cuda(mu_in, "closest_centre_kl_backward");
  const c10::cuda::CUDAGuard device_guard(mu_in.device());
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor logvar = logvar_in.contiguous();
  const at::Tensor centre = centre_in.contiguous();
  const at::Tensor grad_kl = grad_kl_in.to(kl_dtype(mu.scalar_type())).contiguous();
  at::Tensor grad_mu = at::empty_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor grad_logvar = at::empty_like(mu, at::MemoryFormat::Contiguous);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "closest_centre_kl_backward_cuda", [&] {
    const DenseCentres<scalar_t> centres{centre.const_data_ptr<scalar_t>(), mu.size(1)};
    launch_backward<DenseCentres<scalar_t>, scalar_t>(grad_kl, mu, logvar, centres, grad_mu, grad_logvar, sigma0,
                                                      stream);
  });
  return {grad_mu, grad_logvar};
}

std::tuple<at::Tensor, at::Tensor> nearest_centre_kl_cuda(const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                          const at::Tensor& centres_in, double sigma0) {
  check_nearest(mu_in, logvar_in, centres_in, sigma0);
  check_cuda(mu_in, "nearest_centre_kl");
  const c10::cuda::CUDAGuard device_guard(mu_in.device());
  const at::Tensor mu = mu_in.contiguous();            // [B, n]
  const at::Tensor logvar = logvar_in.contiguous();    // [B, n]
  const at::Tensor centres = centres_in.contiguous();  // [K, n]
  const int64_t batch = mu.size(0);
  const int64_t n = mu.size(1);
  at::Tensor index = at::empty({batch}, mu.options().dtype(at::kLong));                // [B]
  at::Tensor kl = at::empty({batch}, mu.options().dtype(kl_dtype(mu.scalar_type())));  // [B]
  const Grid<double> unused_grid{0.0, 1.0, 0.0, 0.0};
  const PriorVariance<double> prior = prior_variance(sigma0);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (batch == 0) return {kl, index};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "nearest_centre_kl_cuda", [&] {
    nearest_centre_kernel<scalar_t><<<cuda::grid_stride_blocks(batch, kThreads), kThreads, 0, stream>>>(
        mu.const_data_ptr<scalar_t>(), centres.const_data_ptr<scalar_t>(), index.mutable_data_ptr<int64_t>(), batch,
        centres.size(0), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor no_mask;
    const ForwardArgs<scalar_t> args = forward_args<scalar_t>(mu, logvar, no_mask, nullptr, kl, unused_grid, prior);
    const GatheredCentres<scalar_t> given{centres.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(),
                                          centres.size(0), n};
    launch_forward<CentreSource::Target>(args, given, stream);
  });
  return {kl, index};
}

std::tuple<at::Tensor, at::Tensor> nearest_centre_kl_backward_cuda(const at::Tensor& grad_kl_in,
                                                                   const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                                   const at::Tensor& centres_in,
                                                                   const at::Tensor& index_in, double sigma0) {
  check_nearest_backward(grad_kl_in, mu_in, logvar_in, centres_in, index_in, sigma0);
  check_cuda(mu_in, "nearest_centre_kl_backward");
  const c10::cuda::CUDAGuard device_guard(mu_in.device());
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor logvar = logvar_in.contiguous();
  const at::Tensor centres = centres_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  check_index_range(index, centres.size(0), "nearest_centre_kl_backward");
  const at::Tensor grad_kl = grad_kl_in.to(kl_dtype(mu.scalar_type())).contiguous();
  at::Tensor grad_mu = at::empty_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor grad_logvar = at::empty_like(mu, at::MemoryFormat::Contiguous);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "nearest_centre_kl_backward_cuda", [&] {
    const GatheredCentres<scalar_t> given{centres.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(),
                                          centres.size(0), mu.size(1)};
    launch_backward<GatheredCentres<scalar_t>, scalar_t>(grad_kl, mu, logvar, given, grad_mu, grad_logvar, sigma0,
                                                         stream);
  });
  return {grad_mu, grad_logvar};
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CUDA, m) { MANIFOLD_EXT_CLOSEST_CENTRE_KL_OPS(MANIFOLD_EXT_IMPL_CUDA) }

}  // namespace closest_centre_kl
}  // namespace manifold_ext
