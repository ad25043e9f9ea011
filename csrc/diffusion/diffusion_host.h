// Host-side pieces of the diffusion ops shared by the CPU and CUDA entry
// points: reading the abar arguments (one value for the batch, or one per
// sample), validating schedules and inputs. Checks live here once so both
// backends raise the same errors.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "common/checks.h"
#include "common/repr.h"
#include "diffusion/diffusion.h"

// The ops of this family, listed once: the CPU and CUDA files register a
// kernel for each (common/registration.h); the schemas are in diffusion_schema.cpp.
#define MANIFOLD_EXT_DIFFUSION_OPS(X) \
  X(diffusion_nll_step)               \
  X(diffusion_nll_step_backward)      \
  X(diffusion_nll_step_and_forward)   \
  X(diffusion_forward_step)           \
  X(ddpm_step)                        \
  X(ddim_step)                        \
  X(large_step)                       \
  X(diffusion_step_backward)          \
  X(rk4_combine)                      \
  X(rk4_update)

namespace manifold_ext {
namespace diffusion {

inline std::string schedule_requirement(ScheduleRule rule, const char* name_a, const char* name_b) {
  const std::string a(name_a), b(name_b);
  switch (rule) {
    case ScheduleRule::Likelihood:
      return "need 0 < " + b + " < " + a + " <= 1 (Eq. 17-20: the noise level must grow strictly from t to t + dt)";
    case ScheduleRule::Forward:
      return "need 0 < " + b + " <= " + a + " <= 1 (Eq. 17: noise can only be added going forward)";
    default:
      return "need 0 < " + a + " < 1 and " + a + " <= " + b +
             " <= 1 (a backward step goes from a noisier time to "
             "a cleaner one)";
  }
}

// ---------------------------------------------------------------------------
// Coefficients against the compute dtype. The kernels compute the per-sample
// coefficients in double and cast them to the compute dtype (float32 for
// float32/float16/bfloat16 inputs). A schedule whose coefficients do not fit
// it (e.g. diffusion_nll_step at (abar_t, abar_next) = (1, 1e-300): Eq. 19's
// 1/sqrt(abar_next) = 1e150) would multiply by inf and return inf or NaN
// (0 * inf) for finite inputs; such a schedule is refused instead. In double
// every valid schedule fits.
// ---------------------------------------------------------------------------
inline bool computes_in_double(at::ScalarType dtype) { return dtype == at::kDouble; }

// Largest magnitude among the coefficients the kernels compute from one pair
// (for the backward steps, a bound on every step kind: DDIM's eps coefficient
// and all noise coefficients are at most 1 + |sqrt(abar_prev / abar_t)|).
inline double largest_coefficient(ScheduleRule rule, double a, double b) {
  switch (rule) {
    case ScheduleRule::Likelihood: {
      const NllCoefficients<double> c = nll_coefficients(a, b);
      return std::max(
          {std::abs(c.s), std::abs(c.kq), std::abs(c.cx), std::abs(c.ce), std::abs(c.kp), std::abs(c.log_norm)});
    }
    case ScheduleRule::Forward: return 1.0;  // sqrt(abar_next / abar_t) and sqrt(1 - abar_next / abar_t)
    default: {
      const BackwardMean mean = backward_mean_coefficients(a, b);
      return std::max(std::abs(mean.x), std::abs(mean.eps)) + 1.0;
    }
  }
}

// The smallest abar at or above which every coefficient of a valid pair fits
// float32 (from the bounds |cx|, |ce| <= 1/sqrt(abar_next) of the likelihood
// step and |coefficients| <= 1e8/sqrt(abar_t) + 1 of the backward steps): a
// per-sample schedule at or above it needs no per-sample check.
inline double float32_safe_abar(ScheduleRule rule) {
  switch (rule) {
    case ScheduleRule::Likelihood: return 1e-76;
    case ScheduleRule::Forward: return 0.0;
    default: return 1e-60;
  }
}

inline void check_coefficients_fit(ScheduleRule rule, double a, double b, at::ScalarType dtype, const char* op,
                                   const char* name_a, const char* name_b, int64_t sample) {
  const double largest = largest_coefficient(rule, a, b);
  const double limit = std::numeric_limits<float>::max();
  if (largest <= limit) return;  // (false for NaN, which the schedule check has refused already)
  const std::string where = sample < 0 ? std::string() : " at sample " + std::to_string(sample);
  TORCH_CHECK_VALUE(false, op, ": the schedule", where, ", ", name_a, " = ", repr(a), " and ", name_b, " = ", repr(b),
                    ", gives the step a coefficient of ", repr(largest), ", beyond the largest float32 (", repr(limit),
                    "); the kernels compute in float32 for ", dtype,
                    " inputs and would return inf or NaN. Use float64 inputs or a less extreme schedule");
}

// The abar arguments of one call: either one pair for the whole batch, or one
// pair per sample.
struct AbarPair {
  bool per_sample = false;
  double a = 0, b = 0;  // shared values
  at::Tensor a_values;  // [B] float64 on the inputs' device, when per_sample
  at::Tensor b_values;  // [B]
};

inline void check_abar_tensor(const at::Tensor& abar, int64_t batch, const at::Tensor& x, const char* op,
                              const char* name) {
  TORCH_CHECK(at::isFloatingType(abar.scalar_type()), op, ": ", name,
              " must be a float or a floating-point tensor, got dtype ", abar.scalar_type());
  TORCH_CHECK(abar.dim() == 0 || (abar.dim() == 1 && abar.size(0) == batch), op, ": ", name,
              " must be a float, a 0-dim tensor or a per-sample tensor of shape [B] = [", batch, "], got shape ",
              abar.sizes());
  TORCH_CHECK(abar.dim() == 0 || abar.device() == x.device(), op, ": a per-sample ", name,
              " must be on the device of the inputs (", x.device(), "), got ", abar.device());
}

// The CPU scan, defined in diffusion_cpu.cpp (ATen's CPU parallel primitives are not for nvcc).
int64_t first_bad_sample_cpu(const double* abar_a, const double* abar_b, int64_t batch, ScheduleRule rule);

// Index of the first sample whose pair breaks `rule`, or -1. On CPU a direct
// parallel scan (the eager comparison ops it replaces cost as much as the
// likelihood step on 2-D points); on CUDA one reduction (a device sync).
inline int64_t first_bad_sample(const at::Tensor& av, const at::Tensor& bv, ScheduleRule rule) {
  const int64_t batch = av.size(0);
  if (av.device().is_cpu()) {
    return first_bad_sample_cpu(av.const_data_ptr<double>(), bv.const_data_ptr<double>(), batch, rule);
  }
  at::Tensor ok;
  switch (rule) {
    case ScheduleRule::Likelihood: ok = (bv > 0).logical_and_(bv < av).logical_and_(av <= 1); break;
    case ScheduleRule::Forward: ok = (bv > 0).logical_and_(bv <= av).logical_and_(av <= 1); break;
    default: ok = (av > 0).logical_and_(av < 1).logical_and_(av <= bv).logical_and_(bv <= 1); break;
  }
  if (ok.all().item<bool>()) return -1;
  return ok.logical_not().nonzero().select(1, 0)[0].item<int64_t>();
}

// Per-sample version: one min-reduction over the abar that bounds the
// coefficients; only a schedule reaching below the float32-safe level is
// checked pair by pair (on the host).
inline void check_per_sample_coefficients_fit(const AbarPair& pair, ScheduleRule rule, at::ScalarType dtype,
                                              const char* op, const char* name_a, const char* name_b) {
  const double safe = float32_safe_abar(rule);
  if (safe <= 0) return;
  const at::Tensor& bounding = rule == ScheduleRule::Likelihood ? pair.b_values : pair.a_values;
  if (bounding.min().item<double>() >= safe) return;
  const at::Tensor av = pair.a_values.cpu();
  const at::Tensor bv = pair.b_values.cpu();
  const double* a = av.const_data_ptr<double>();
  const double* b = bv.const_data_ptr<double>();
  for (int64_t i = 0; i < av.size(0); ++i) check_coefficients_fit(rule, a[i], b[i], dtype, op, name_a, name_b, i);
}

// The per-sample checks: raises the error naming the first sample whose pair
// breaks `rule`, then (float32 compute) the first whose coefficients do not fit
// float32; returns when every pair passes. (The CPU one-pass likelihood path
// calls it only when its in-pass test, likelihood_pair_clear, has flagged a pair.)
inline void check_abar_samples(const AbarPair& pair, ScheduleRule rule, at::ScalarType dtype, const char* op,
                               const char* name_a, const char* name_b) {
  if (!pair.per_sample || pair.a_values.size(0) == 0) return;
  const int64_t bad = first_bad_sample(pair.a_values, pair.b_values, rule);
  if (bad >= 0) {
    const at::Tensor& av = pair.a_values;
    const at::Tensor& bv = pair.b_values;
    TORCH_CHECK_VALUE(false, op, ": invalid schedule at sample ", bad, ", got ", name_a, " = ",
                      repr(av[bad].item<double>()), " and ", name_b, " = ", repr(bv[bad].item<double>()), "; ",
                      schedule_requirement(rule, name_a, name_b));
  }
  if (!computes_in_double(dtype)) check_per_sample_coefficients_fit(pair, rule, dtype, op, name_a, name_b);
}

// check_samples = false leaves the per-sample pairs to the caller, which then
// calls check_abar_samples.
inline AbarPair read_abar_pair(const at::Tensor& a, const at::Tensor& b, const at::Tensor& x, ScheduleRule rule,
                               const char* op, const char* name_a, const char* name_b, bool check_samples = true) {
  const int64_t batch = x.size(0);
  check_abar_tensor(a, batch, x, op, name_a);
  check_abar_tensor(b, batch, x, op, name_b);
  AbarPair pair;
  const bool check_fit = !computes_in_double(x.scalar_type());
  if (a.dim() == 0 && b.dim() == 0) {
    pair.a = a.item<double>();
    pair.b = b.item<double>();
    TORCH_CHECK_VALUE(schedule_ok(rule, pair.a, pair.b), op, ": invalid schedule, got ", name_a, " = ", repr(pair.a),
                      " and ", name_b, " = ", repr(pair.b), "; ", schedule_requirement(rule, name_a, name_b));
    if (check_fit) check_coefficients_fit(rule, pair.a, pair.b, x.scalar_type(), op, name_a, name_b, -1);
    return pair;
  }
  const auto options = x.options().dtype(at::kDouble);
  pair.per_sample = true;
  pair.a_values = a.to(options).expand({batch}).contiguous();
  pair.b_values = b.to(options).expand({batch}).contiguous();
  if (check_samples) check_abar_samples(pair, rule, x.scalar_type(), op, name_a, name_b);
  return pair;
}

inline void check_batched(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.dim() >= 1, op, ": ", name, " must have a batch dimension ([B, *]), got a 0-dim tensor");
  check_floating(x, op, name);
}

// acc: [B] float32 or float64, on x's device.
inline void check_accumulator(const at::Tensor& acc, const at::Tensor& x, const char* op) {
  TORCH_CHECK(acc.dim() == 1 && acc.size(0) == x.size(0), op, ": acc must have shape [B] = [", x.size(0), "], got ",
              acc.sizes());
  TORCH_CHECK(acc.scalar_type() == at::kFloat || acc.scalar_type() == at::kDouble, op,
              ": acc must be float32 or float64 (the log-likelihood is accumulated in float32 or wider), got ",
              acc.scalar_type());
  TORCH_CHECK(acc.device() == x.device(), op, ": acc must be on the device of x_t (", x.device(), "), got ",
              acc.device());
}

inline StepKind parse_step(std::string_view step) {
  if (step == "forward") return StepKind::Forward;
  if (step == "ddpm") return StepKind::Ddpm;
  if (step == "ddim") return StepKind::Ddim;
  if (step == "large_step") return StepKind::Large;
  TORCH_CHECK_VALUE(false, "diffusion_step_backward: unknown step '", std::string(step),
                    "'; expected 'forward', 'ddpm', 'ddim' or 'large_step'");
  return StepKind::Forward;
}

inline ScheduleRule step_rule(StepKind kind) {
  return kind == StepKind::Forward ? ScheduleRule::Forward : ScheduleRule::Backward;
}

inline void check_eta(double eta, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(eta) && eta >= 0 && eta <= 1, op,
                    ": eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM posterior variance), got ", eta);
}

}  // namespace diffusion
}  // namespace manifold_ext
