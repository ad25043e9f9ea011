// CPU kernels of the closest-centre KL ops: validation, output allocation and
// the parallel walk over rows (samples). The per-element work happens in the
// vectorised loops (closest_centre_kl_cpu_vec.cpp, one copy per ISA).
//
// Determinism: every sample's KL is summed inside one task, in an order fixed
// by n alone, so results do not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "closest_centre_kl/closest_centre_kl_cpu_rows.h"
#include "closest_centre_kl/closest_centre_kl_host.h"
#include "common/checks.h"
#include "common/cpu_capability.h"
#include "common/registration.h"

namespace manifold_ext {
namespace closest_centre_kl {
namespace {

// Minimum elements per parallel task of the elementwise passes.
constexpr int64_t kGrainElems = 32768;
// Minimum distance terms (samples x centres x n) per task of the nearest-centre search.
constexpr int64_t kGrainDistanceTerms = 1 << 18;
// Samples whose chosen centres are gathered into one task-local buffer at a time.
constexpr int64_t kGatherRows = 256;

int64_t row_grain(int64_t n, int64_t work_per_element = 1) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, n * work_per_element));
}

KlParams prior_only_params(double sigma0, CentreSource source) {
  const PriorVariance<double> prior = prior_variance(sigma0);
  return KlParams{source, prior.log_var, prior.inv_var, 0.0, 1.0, 0.0, 0.0, 1.0, false};
}

std::tuple<at::Tensor, at::Tensor> closest_centre_kl_cpu(const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                         const c10::optional<at::Tensor>& target_in,
                                                         const c10::optional<at::Tensor>& mask_in, double sigma0,
                                                         double spacing, double offset, c10::optional<double> low,
                                                         c10::optional<double> high) {
  const ClosestCentreOptions options =
      parse_closest_centre(mu_in, logvar_in, target_in, mask_in, sigma0, spacing, offset, low, high);
  check_cpu(mu_in, "closest_centre_kl");
  const at::Tensor mu = mu_in.contiguous();          // [B, n]
  const at::Tensor logvar = logvar_in.contiguous();  // [B, n]
  const at::Tensor target = options.source != CentreSource::Rounded ? target_in->contiguous() : at::Tensor();
  // A mask per dimension ([n]) is not expanded to [B, n]: the loops tile it.
  const at::Tensor mask = options.source == CentreSource::Masked ? mask_in->contiguous() : at::Tensor();
  const bool mask_per_dimension = mask.defined() && mask.dim() == 1;
  const int64_t batch = mu.size(0);
  const int64_t n = mu.size(1);
  at::Tensor kl = at::empty({batch}, mu.options());                      // [B]
  at::Tensor centre = at::empty_like(mu, at::MemoryFormat::Contiguous);  // [B, n]
  const KlParams& params = options;
  const CpuIsa isa = cpu_isa();

  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "closest_centre_kl_cpu", [&] {
    const scalar_t* mu_data = mu.const_data_ptr<scalar_t>();
    const scalar_t* logvar_data = logvar.const_data_ptr<scalar_t>();
    const scalar_t* target_data = target.defined() ? target.const_data_ptr<scalar_t>() : nullptr;
    const bool* mask_data = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
    scalar_t* centre_data = centre.mutable_data_ptr<scalar_t>();
    scalar_t* kl_data = kl.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, row_grain(n), [&](int64_t first, int64_t last) {
      const int64_t start = first * n;
      const ForwardRows<scalar_t> rows{mu_data + start,
                                       logvar_data + start,
                                       target_data ? target_data + start : nullptr,
                                       mask_data && !mask_per_dimension ? mask_data + start : mask_data,
                                       centre_data + start,
                                       kl_data + first,
                                       last - first,
                                       n,
                                       mask_per_dimension};
      MANIFOLD_EXT_CALL_CPU_ISA(isa, forward_rows, rows, params);
    });
  });
  return {kl, centre};
}

std::tuple<at::Tensor, at::Tensor> closest_centre_kl_backward_cpu(const at::Tensor& grad_kl_in, const at::Tensor& mu_in,
                                                                  const at::Tensor& logvar_in,
                                                                  const at::Tensor& centre_in, double sigma0) {
  check_closest_backward(grad_kl_in, mu_in, logvar_in, centre_in, sigma0);
  check_cpu(mu_in, "closest_centre_kl_backward");
  const at::Tensor mu = mu_in.contiguous();                                   // [B, n]
  const at::Tensor logvar = logvar_in.contiguous();                           // [B, n]
  const at::Tensor centre = centre_in.contiguous();                           // [B, n]
  const at::Tensor grad_kl = grad_kl_in.to(mu.scalar_type()).contiguous();    // [B]
  at::Tensor grad_mu = at::empty_like(mu, at::MemoryFormat::Contiguous);      // [B, n]
  at::Tensor grad_logvar = at::empty_like(mu, at::MemoryFormat::Contiguous);  // [B, n]
  const int64_t batch = mu.size(0);
  const int64_t n = mu.size(1);
  const KlParams params = prior_only_params(sigma0, CentreSource::Target);
  const CpuIsa isa = cpu_isa();

  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "closest_centre_kl_backward_cpu", [&] {
    const scalar_t* grad_kl_data = grad_kl.const_data_ptr<scalar_t>();
    const scalar_t* mu_data = mu.const_data_ptr<scalar_t>();
    const scalar_t* logvar_data = logvar.const_data_ptr<scalar_t>();
    const scalar_t* centre_data = centre.const_data_ptr<scalar_t>();
    scalar_t* grad_mu_data = grad_mu.mutable_data_ptr<scalar_t>();
    scalar_t* grad_logvar_data = grad_logvar.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, row_grain(n), [&](int64_t first, int64_t last) {
      const int64_t start = first * n;
      const BackwardRows<scalar_t> rows{
          grad_kl_data + first, mu_data + start,          logvar_data + start, centre_data + start,
          grad_mu_data + start, grad_logvar_data + start, last - first,        n};
      MANIFOLD_EXT_CALL_CPU_ISA(isa, backward_rows, rows, params);
    });
  });
  return {grad_mu, grad_logvar};
}

// centres [K, n] -> [n, K_pad] (one contiguous run of centres per dimension),
// padding columns +inf so they are never nearest.
at::Tensor centres_by_dimension(const at::Tensor& centres, int64_t block) {
  const int64_t num_centres = centres.size(0);
  const int64_t padded = (num_centres + block - 1) / block * block;
  at::Tensor table = at::full({centres.size(1), padded}, std::numeric_limits<double>::infinity(), centres.options());
  table.narrow(1, 0, num_centres).copy_(centres.t());
  return table;
}

// Copies centres[index[r]] for rows [first, first + count) into buffer [count, n].
template <typename scalar_t>
void gather_centres(const scalar_t* centres, const int64_t* index, int64_t num_centres, int64_t first, int64_t count,
                    int64_t n, scalar_t* buffer, const char* op) {
  for (int64_t r = 0; r < count; ++r) {
    const int64_t k = index[first + r];
    TORCH_CHECK(k >= 0 && k < num_centres, op, ": index ", k, " of sample ", first + r, " is out of range for ",
                num_centres, " centres");
    std::copy(centres + k * n, centres + (k + 1) * n, buffer + r * n);
  }
}

std::tuple<at::Tensor, at::Tensor> nearest_centre_kl_cpu(const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                         const at::Tensor& centres_in, double sigma0) {
  constexpr const char* op = "nearest_centre_kl";
  check_nearest(mu_in, logvar_in, centres_in, sigma0);
  check_cpu(mu_in, op);
  const int64_t num_centres = centres_in.size(0);
  TORCH_CHECK(mu_in.scalar_type() == at::kDouble || num_centres < (int64_t(1) << 24), op,
              ": float32 search supports up to 2^24 centres, got ", num_centres, " (use float64)");
  const at::Tensor mu = mu_in.contiguous();            // [B, n]
  const at::Tensor logvar = logvar_in.contiguous();    // [B, n]
  const at::Tensor centres = centres_in.contiguous();  // [K, n]
  const int64_t batch = mu.size(0);
  const int64_t n = mu.size(1);
  const CpuIsa isa = cpu_isa();
  const int64_t block = MANIFOLD_EXT_CALL_CPU_ISA(isa, centre_block, mu.scalar_type() == at::kDouble);
  const at::Tensor table = centres_by_dimension(centres, block);         // [n, K_pad]
  at::Tensor kl = at::empty({batch}, mu.options());                      // [B]
  at::Tensor index = at::empty({batch}, mu.options().dtype(at::kLong));  // [B]
  const KlParams params = prior_only_params(sigma0, CentreSource::Target);
  const int64_t grain = std::max<int64_t>(1, kGrainDistanceTerms / std::max<int64_t>(1, table.size(1) * n));

  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "nearest_centre_kl_cpu", [&] {
    const scalar_t* mu_data = mu.const_data_ptr<scalar_t>();
    const scalar_t* logvar_data = logvar.const_data_ptr<scalar_t>();
    const scalar_t* centre_data = centres.const_data_ptr<scalar_t>();
    const scalar_t* table_data = table.const_data_ptr<scalar_t>();
    scalar_t* kl_data = kl.mutable_data_ptr<scalar_t>();
    int64_t* index_data = index.mutable_data_ptr<int64_t>();
    at::parallel_for(0, batch, grain, [&](int64_t first, int64_t last) {
      std::vector<scalar_t> chosen(static_cast<size_t>(std::min(kGatherRows, last - first) * n));
      for (int64_t r = first; r < last; r += kGatherRows) {
        const int64_t count = std::min(kGatherRows, last - r);
        const NearestRows<scalar_t> search{mu_data + r * n, table_data, num_centres, table.size(1), index_data + r,
                                           count,           n};
        MANIFOLD_EXT_CALL_CPU_ISA(isa, nearest_rows, search);
        gather_centres(centre_data, index_data, num_centres, r, count, n, chosen.data(), op);
        const ForwardRows<scalar_t> rows{mu_data + r * n, logvar_data + r * n, chosen.data(), nullptr,
                                         nullptr,         kl_data + r,         count,         n};
        MANIFOLD_EXT_CALL_CPU_ISA(isa, forward_rows, rows, params);
      }
    });
  });
  return {kl, index};
}

std::tuple<at::Tensor, at::Tensor> nearest_centre_kl_backward_cpu(const at::Tensor& grad_kl_in, const at::Tensor& mu_in,
                                                                  const at::Tensor& logvar_in,
                                                                  const at::Tensor& centres_in,
                                                                  const at::Tensor& index_in, double sigma0) {
  constexpr const char* op = "nearest_centre_kl_backward";
  check_nearest_backward(grad_kl_in, mu_in, logvar_in, centres_in, index_in, sigma0);
  check_cpu(mu_in, op);
  const at::Tensor mu = mu_in.contiguous();                                   // [B, n]
  const at::Tensor logvar = logvar_in.contiguous();                           // [B, n]
  const at::Tensor centres = centres_in.contiguous();                         // [K, n]
  const at::Tensor index = index_in.contiguous();                             // [B]
  const at::Tensor grad_kl = grad_kl_in.to(mu.scalar_type()).contiguous();    // [B]
  at::Tensor grad_mu = at::empty_like(mu, at::MemoryFormat::Contiguous);      // [B, n]
  at::Tensor grad_logvar = at::empty_like(mu, at::MemoryFormat::Contiguous);  // [B, n]
  const int64_t batch = mu.size(0);
  const int64_t n = mu.size(1);
  const int64_t num_centres = centres.size(0);
  const KlParams params = prior_only_params(sigma0, CentreSource::Target);
  const CpuIsa isa = cpu_isa();

  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "nearest_centre_kl_backward_cpu", [&] {
    const scalar_t* grad_kl_data = grad_kl.const_data_ptr<scalar_t>();
    const scalar_t* mu_data = mu.const_data_ptr<scalar_t>();
    const scalar_t* logvar_data = logvar.const_data_ptr<scalar_t>();
    const scalar_t* centre_data = centres.const_data_ptr<scalar_t>();
    const int64_t* index_data = index.const_data_ptr<int64_t>();
    scalar_t* grad_mu_data = grad_mu.mutable_data_ptr<scalar_t>();
    scalar_t* grad_logvar_data = grad_logvar.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, row_grain(n), [&](int64_t first, int64_t last) {
      std::vector<scalar_t> chosen(static_cast<size_t>(std::min(kGatherRows, last - first) * n));
      for (int64_t r = first; r < last; r += kGatherRows) {
        const int64_t count = std::min(kGatherRows, last - r);
        gather_centres(centre_data, index_data, num_centres, r, count, n, chosen.data(), op);
        const int64_t start = r * n;
        const BackwardRows<scalar_t> rows{grad_kl_data + r,
                                          mu_data + start,
                                          logvar_data + start,
                                          chosen.data(),
                                          grad_mu_data + start,
                                          grad_logvar_data + start,
                                          count,
                                          n};
        MANIFOLD_EXT_CALL_CPU_ISA(isa, backward_rows, rows, params);
      }
    });
  });
  return {grad_mu, grad_logvar};
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CPU, m) { MANIFOLD_EXT_CLOSEST_CENTRE_KL_OPS(MANIFOLD_EXT_IMPL_CPU) }

}  // namespace closest_centre_kl
}  // namespace manifold_ext
