// CPU kernels of the diffusion ops (families 2 and 3): validation, output
// allocation, per-sample coefficients, and the parallel walk over chunks. The
// per-element work happens in the vectorised row loops (diffusion_cpu_vec.cpp,
// one copy per ISA).
//
// Determinism: every per-sample sum is computed by one task over a fixed
// partition of the sample's elements and combined in a fixed order, so results
// do not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/cpu_capability.h"
#include "common/registration.h"
#include "diffusion/diffusion_cpu_rows.h"
#include "diffusion/diffusion_host.h"

namespace manifold_ext {
namespace diffusion {

int64_t first_bad_sample_cpu(const double* a, const double* b, int64_t batch, ScheduleRule rule) {
  // A branch-free count first (it vectorises); the position only when one fails.
  const int64_t failures = at::parallel_reduce(
      0, batch, 1 << 15, int64_t(0),
      [&](int64_t first, int64_t last, int64_t count) {
        for (int64_t i = first; i < last; ++i) count += !schedule_ok(rule, a[i], b[i]);
        return count;
      },
      std::plus<int64_t>());
  if (failures == 0) return -1;
  for (int64_t i = 0; i < batch; ++i) {
    if (!schedule_ok(rule, a[i], b[i])) return i;
  }
  return -1;
}
namespace {

// Elements per task chunk: 4096 keeps a chunk's operands in L1/L2.
constexpr int64_t kChunkLen = 4096;

// std::vector that leaves its elements uninitialised: per-sample coefficient
// arrays are written in full by parallel tasks right after allocation, and
// zero-filling them first (24 MB for a million samples) cost as much as the
// likelihood step itself on 2-D points.
template <typename T>
struct UninitialisedAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = UninitialisedAllocator<U>;
  };
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T>
using CoefVector = std::vector<T, UninitialisedAllocator<T>>;

int64_t per_sample_len(const at::Tensor& x) { return x.size(0) == 0 ? 0 : x.numel() / x.size(0); }

// Per-sample coefficients in double, computed once per run of equal abar
// pairs (batches usually hold a few distinct times), then cast to scalar_t.
template <typename Coef, typename scalar_t, typename Fn>
CoefVector<Coef> per_sample_coefficients(const AbarPair& pair, Fn&& coefficients_of) {
  const int64_t batch = pair.a_values.size(0);
  CoefVector<Coef> out(static_cast<size_t>(batch));
  const double* a = pair.a_values.const_data_ptr<double>();
  const double* b = pair.b_values.const_data_ptr<double>();
  at::parallel_for(0, batch, 2048, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      if (i > first && a[i] == a[i - 1] && b[i] == b[i - 1]) {
        out[i] = out[i - 1];
      } else {
        out[i] = cast_coefficients<scalar_t>(coefficients_of(a[i], b[i]));
      }
    }
  });
  return out;
}

// The likelihood step's coefficients: per sample they are computed SIMD-wide
// (five divisions, two square roots and a log per sample would otherwise cost
// more than the step's memory pass on short samples).
// In float32 that is exact to rounding only down to kFloat32SimdCoefficientAbar
// (diffusion.h): the same pass counts the pairs below it, and a schedule
// reaching below it has its coefficients computed again in double, pair by
// pair, as the shared-schedule path does. (The pairs were checked valid before.)
template <typename scalar_t>
CoefVector<NllCoefficients<scalar_t>> nll_coefficients_for(const AbarPair& pair) {
  if (!pair.per_sample) return {cast_coefficients<scalar_t>(nll_coefficients(pair.a, pair.b))};
  const int64_t batch = pair.a_values.size(0);
  CoefVector<NllCoefficients<scalar_t>> out(static_cast<size_t>(batch));
  const double* a = pair.a_values.const_data_ptr<double>();
  const double* b = pair.b_values.const_data_ptr<double>();
  const CpuIsa isa = cpu_isa();
  std::atomic<int64_t> uncleared_pairs{0};
  at::parallel_for(0, batch, 4096, [&](int64_t first, int64_t last) {
    uncleared_pairs +=
        MANIFOLD_EXT_CALL_CPU_ISA(isa, nll_coefficient_span,
                                  NllCoefficientSpan<scalar_t>{a + first, b + first, out.data() + first, last - first});
  });
  if (std::is_same_v<scalar_t, float> && uncleared_pairs.load() > 0) {
    return per_sample_coefficients<NllCoefficients<scalar_t>, scalar_t>(
        pair, [](double a_value, double b_value) { return nll_coefficients(a_value, b_value); });
  }
  return out;
}

template <typename Coef, typename scalar_t, typename Fn>
CoefVector<Coef> coefficients_for(const AbarPair& pair, Fn&& coefficients_of) {
  if (pair.per_sample) return per_sample_coefficients<Coef, scalar_t>(pair, coefficients_of);
  return {cast_coefficients<scalar_t>(coefficients_of(pair.a, pair.b))};
}

// ---------------------------------------------------------------------------
// Linear steps (forward step Eq. 17, DDPM, DDIM, large step Eq. 12)
// ---------------------------------------------------------------------------
at::Tensor linear_step_cpu(const char* op, StepKind kind, const at::Tensor& x_in, const at::Tensor& eps_in,
                           const std::optional<at::Tensor>& noise_in, const at::Tensor& abar_a,
                           const at::Tensor& abar_b, double eta, const char* x_name, const char* eps_name,
                           const char* name_a, const char* name_b) {
  check_batched(x_in, op, x_name);
  check_like(eps_in, x_in, op, eps_name, x_name);
  if (noise_in) check_like(*noise_in, x_in, op, "noise", x_name);
  check_cpu(x_in, op);
  const AbarPair pair = read_abar_pair(abar_a, abar_b, x_in, step_rule(kind), op, name_a, name_b);
  const at::Tensor x = x_in.contiguous();      // [B, *]
  const at::Tensor eps = eps_in.contiguous();  // [B, *]
  const at::Tensor noise = noise_in ? noise_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t batch = x.size(0);
  const int64_t len = per_sample_len(x);
  const CpuIsa isa = cpu_isa();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "diffusion_linear_step_cpu", [&] {
    using Coef = StepCoefficients<scalar_t>;
    const CoefVector<Coef> coef =
        coefficients_for<Coef, scalar_t>(pair, [&](double a, double b) { return step_coefficients(kind, a, b, eta); });
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* eps_data = eps.const_data_ptr<scalar_t>();
    const scalar_t* noise_data = noise.defined() ? noise.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    auto rows_at = [&](int64_t offset, int64_t rows, int64_t row_len, int64_t first_coef, int64_t stride) {
      return LinearStepRows<scalar_t>{x_data + offset,
                                      eps_data + offset,
                                      noise_data ? noise_data + offset : nullptr,
                                      out_data + offset,
                                      coef.data() + first_coef,
                                      stride,
                                      rows,
                                      row_len};
    };
    if (!pair.per_sample) {
      // One set of coefficients: a flat elementwise pass in chunks.
      const int64_t numel = x.numel();
      at::parallel_for(0, (numel + kChunkLen - 1) / kChunkLen, 8, [&](int64_t first, int64_t last) {
        for (int64_t chunk = first; chunk < last; ++chunk) {
          const int64_t begin = chunk * kChunkLen;
          const int64_t n = std::min(kChunkLen, numel - begin);
          MANIFOLD_EXT_CALL_CPU_ISA(isa, linear_step_rows, rows_at(begin, 1, n, 0, 0));
        }
      });
    } else {
      const int64_t grain = std::max<int64_t>(1, 8 * kChunkLen / std::max<int64_t>(1, len));
      at::parallel_for(0, batch, grain, [&](int64_t first, int64_t last) {
        MANIFOLD_EXT_CALL_CPU_ISA(isa, linear_step_rows, rows_at(first * len, last - first, len, first, 1));
      });
    }
  });
  return out;
}

at::Tensor diffusion_forward_step_cpu(const at::Tensor& x_t, const at::Tensor& noise, const at::Tensor& abar_t,
                                      const at::Tensor& abar_next) {
  return linear_step_cpu("diffusion_forward_step", StepKind::Forward, x_t, noise, std::nullopt, abar_t, abar_next, 0.0,
                         "x_t", "noise", "abar_t", "abar_next");
}

at::Tensor ddpm_step_cpu(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& abar_t,
                         const at::Tensor& abar_prev, const std::optional<at::Tensor>& noise) {
  return linear_step_cpu("ddpm_step", StepKind::Ddpm, x_t, eps, noise, abar_t, abar_prev, 0.0, "x_t", "eps", "abar_t",
                         "abar_prev");
}

at::Tensor ddim_step_cpu(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& abar_t,
                         const at::Tensor& abar_prev, double eta, const std::optional<at::Tensor>& noise) {
  check_eta(eta, "ddim_step");
  return linear_step_cpu("ddim_step", StepKind::Ddim, x_t, eps, noise, abar_t, abar_prev, eta, "x_t", "eps", "abar_t",
                         "abar_prev");
}

at::Tensor large_step_cpu(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& abar_t,
                          const at::Tensor& abar_prev, const std::optional<at::Tensor>& noise) {
  return linear_step_cpu("large_step", StepKind::Large, x_t, eps, noise, abar_t, abar_prev, 0.0, "x_t", "eps", "abar_t",
                         "abar_prev");
}

// Gradients of out = cx x + ce eps + cn noise: (cx g, ce g, cn g).
std::tuple<at::Tensor, at::Tensor, at::Tensor> diffusion_step_backward_cpu(const at::Tensor& grad_in,
                                                                           c10::string_view step,
                                                                           const at::Tensor& abar_a,
                                                                           const at::Tensor& abar_b, double eta) {
  const char* op = "diffusion_step_backward";
  const StepKind kind = parse_step(step);
  if (kind == StepKind::Ddim) check_eta(eta, op);
  check_batched(grad_in, op, "grad");
  check_cpu(grad_in, op);
  const AbarPair pair = read_abar_pair(abar_a, abar_b, grad_in, step_rule(kind), op, "abar_a", "abar_b");
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor grad_x = at::empty_like(grad, at::MemoryFormat::Contiguous);
  at::Tensor grad_eps = at::empty_like(grad, at::MemoryFormat::Contiguous);
  at::Tensor grad_noise = at::empty_like(grad, at::MemoryFormat::Contiguous);
  const int64_t batch = grad.size(0);
  const int64_t len = per_sample_len(grad);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "diffusion_step_backward_cpu", [&] {
    using Coef = StepCoefficients<scalar_t>;
    const CoefVector<Coef> coef =
        coefficients_for<Coef, scalar_t>(pair, [&](double a, double b) { return step_coefficients(kind, a, b, eta); });
    const int64_t stride = pair.per_sample ? 1 : 0;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* ge = grad_eps.mutable_data_ptr<scalar_t>();
    scalar_t* gn = grad_noise.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kChunkLen / std::max<int64_t>(1, len));
    at::parallel_for(0, batch, grain, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        const Coef c = coef[b * stride];
        for (int64_t i = b * len; i < (b + 1) * len; ++i) {  // auto-vectorised
          gx[i] = c.x * g[i];
          ge[i] = c.eps * g[i];
          gn[i] = c.noise * g[i];
        }
      }
    });
  });
  return {grad_x, grad_eps, grad_noise};
}

// ---------------------------------------------------------------------------
// Log-likelihood step (Eq. 15-20), optionally fused with the next forward step
// ---------------------------------------------------------------------------
struct NllInputs {
  at::Tensor acc, x_t, x_next, eps;
  AbarPair pair;
  int64_t batch, len;
};

NllInputs prepare_nll(const char* op, const at::Tensor& acc, const at::Tensor& x_t, const at::Tensor& x_next,
                      const at::Tensor& eps, const at::Tensor& abar_t, const at::Tensor& abar_next,
                      bool check_samples = true) {
  check_batched(x_t, op, "x_t");
  check_like(x_next, x_t, op, "x_next", "x_t");
  check_like(eps, x_t, op, "eps", "x_t");
  check_accumulator(acc, x_t, op);
  check_cpu(x_t, op);
  NllInputs in;
  in.pair = read_abar_pair(abar_t, abar_next, x_t, ScheduleRule::Likelihood, op, "abar_t", "abar_next", check_samples);
  in.acc = acc.contiguous();
  in.x_t = x_t.contiguous();
  in.x_next = x_next.contiguous();
  in.eps = eps.contiguous();
  in.batch = x_t.size(0);
  in.len = per_sample_len(x_t);
  return in;
}

// Rows [first, ...) of acc and acc_new.
AccumulatorSpan accumulator_span(const at::Tensor& acc, at::Tensor& acc_new, int64_t first) {
  const int64_t bytes = static_cast<int64_t>(acc.element_size()) * first;
  return AccumulatorSpan{static_cast<const char*>(acc.const_data_ptr()) + bytes,
                         static_cast<char*>(acc_new.mutable_data_ptr()) + bytes, acc.scalar_type() == at::kDouble};
}

// acc_new[b] = acc[b] + D * log_norm_b + (the sum of sample b's element terms):
// samples up to kChunkLen elements are processed whole, several per task, by
// row loops that also add to the accumulator (every stream advances in one
// loop); longer samples are cut into kChunkLen pieces whose partial sums are
// added in order afterwards.
template <typename scalar_t>
void nll_accumulate(const NllInputs& in, const CoefVector<NllCoefficients<scalar_t>>& coef, const scalar_t* noise,
                    scalar_t* x_after, const CoefVector<StepCoefficients<scalar_t>>* forward_coef,
                    at::Tensor& acc_new) {
  const CpuIsa isa = cpu_isa();
  const int64_t len = in.len;
  const int64_t stride = in.pair.per_sample ? 1 : 0;
  const scalar_t* x_t = in.x_t.const_data_ptr<scalar_t>();
  const scalar_t* x_next = in.x_next.const_data_ptr<scalar_t>();
  const scalar_t* eps = in.eps.const_data_ptr<scalar_t>();
  const StepCoefficients<scalar_t>* fc = forward_coef ? forward_coef->data() : nullptr;
  auto rows_at = [&](int64_t offset, int64_t rows, int64_t row_len, int64_t first_sample, double* sums) {
    return NllRows<scalar_t>{x_t + offset,
                             x_next + offset,
                             eps + offset,
                             coef.data() + first_sample * stride,
                             noise ? noise + offset : nullptr,
                             x_after ? x_after + offset : nullptr,
                             fc ? fc + first_sample * stride : nullptr,
                             stride,
                             rows,
                             row_len,
                             accumulator_span(in.acc, acc_new, first_sample),
                             sums};
  };
  if (len <= kChunkLen) {
    const int64_t samples_per_chunk = std::max<int64_t>(1, kChunkLen / std::max<int64_t>(1, len));
    const int64_t chunks = (in.batch + samples_per_chunk - 1) / samples_per_chunk;
    at::parallel_for(0, chunks, 4, [&](int64_t first, int64_t last) {
      const int64_t b0 = first * samples_per_chunk;
      const int64_t rows = std::min(last * samples_per_chunk, in.batch) - b0;
      MANIFOLD_EXT_CALL_CPU_ISA(isa, nll_rows, rows_at(b0 * len, rows, len, b0, nullptr));
    });
    return;
  }
  const int64_t pieces = (len + kChunkLen - 1) / kChunkLen;
  std::vector<double> partial(static_cast<size_t>(in.batch * pieces));
  at::parallel_for(0, in.batch * pieces, 4, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const int64_t b = k / pieces;
      const int64_t begin = (k % pieces) * kChunkLen;
      const int64_t n = std::min(kChunkLen, len - begin);
      MANIFOLD_EXT_CALL_CPU_ISA(isa, nll_rows, rows_at(b * len + begin, 1, n, b, partial.data() + k));
    }
  });
  const double dlen = static_cast<double>(len);
  const AccumulatorSpan acc = accumulator_span(in.acc, acc_new, 0);
  for (int64_t b = 0; b < in.batch; ++b) {
    double sum = dlen * static_cast<double>(coef[b * stride].log_norm);
    for (int64_t p = 0; p < pieces; ++p) sum += partial[b * pieces + p];
    if (acc.is_double) {
      static_cast<double*>(acc.out)[b] = static_cast<const double*>(acc.in)[b] + sum;
    } else {
      static_cast<float*>(acc.out)[b] = static_cast<float>(static_cast<const float*>(acc.in)[b] + sum);
    }
  }
}

// Samples this short with a per-sample schedule take the one-pass path
// (coefficients computed SIMD-wide inside the row loop, and the schedule
// checked in the same pass: one read of it instead of two).
constexpr int64_t kShortSampleLen = 8;

bool takes_one_pass_path(const at::Tensor& x_t, const at::Tensor& abar_t, const at::Tensor& abar_next) {
  return (abar_t.dim() != 0 || abar_next.dim() != 0) && x_t.dim() >= 1 && per_sample_len(x_t) <= kShortSampleLen;
}

// Returns how many samples have a pair that is not likelihood_pair_clear (the
// caller then checks the schedule on the host, and raises).
template <typename scalar_t>
int64_t nll_step_short_per_sample(const NllInputs& in, at::Tensor& acc_new) {
  const CpuIsa isa = cpu_isa();
  const scalar_t* x_t = in.x_t.const_data_ptr<scalar_t>();
  const scalar_t* x_next = in.x_next.const_data_ptr<scalar_t>();
  const scalar_t* eps = in.eps.const_data_ptr<scalar_t>();
  const double* a = in.pair.a_values.const_data_ptr<double>();
  const double* b = in.pair.b_values.const_data_ptr<double>();
  const int64_t grain = std::max<int64_t>(1, kChunkLen / std::max<int64_t>(1, in.len));
  std::atomic<int64_t> uncleared_pairs{0};
  at::parallel_for(0, in.batch, grain, [&](int64_t first, int64_t last) {
    const int64_t offset = first * in.len;
    uncleared_pairs += MANIFOLD_EXT_CALL_CPU_ISA(
        isa, nll_per_sample_rows,
        NllPerSampleRows<scalar_t>{x_t + offset, x_next + offset, eps + offset, a + first, b + first, last - first,
                                   in.len, accumulator_span(in.acc, acc_new, first)});
  });
  return uncleared_pairs.load();
}

at::Tensor diffusion_nll_step_cpu(const at::Tensor& acc, const at::Tensor& x_t, const at::Tensor& x_next,
                                  const at::Tensor& eps, const at::Tensor& abar_t, const at::Tensor& abar_next) {
  const char* op = "diffusion_nll_step";
  const bool one_pass = takes_one_pass_path(x_t, abar_t, abar_next);
  const NllInputs in = prepare_nll(op, acc, x_t, x_next, eps, abar_t, abar_next, /*check_samples=*/!one_pass);
  at::Tensor acc_new = at::empty_like(in.acc, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(in.x_t.scalar_type(), "diffusion_nll_step_cpu", [&] {
    if (one_pass) {
      if (nll_step_short_per_sample<scalar_t>(in, acc_new) == 0) return;
      // A pair was flagged: raise if it is invalid or its coefficients do not fit; otherwise some abar_next is
      // below the level down to which the one-pass float32 coefficients are exact, and the call is computed
      // again through the coefficient array (in double where needed, nll_coefficients_for).
      check_abar_samples(in.pair, ScheduleRule::Likelihood, in.x_t.scalar_type(), op, "abar_t", "abar_next");
    }
    const CoefVector<NllCoefficients<scalar_t>> coef = nll_coefficients_for<scalar_t>(in.pair);
    nll_accumulate<scalar_t>(in, coef, nullptr, nullptr, nullptr, acc_new);
  });
  return acc_new;
}

std::tuple<at::Tensor, at::Tensor> diffusion_nll_step_and_forward_cpu(
    const at::Tensor& acc, const at::Tensor& x_t, const at::Tensor& x_next, const at::Tensor& eps,
    const at::Tensor& noise_in, const at::Tensor& abar_t, const at::Tensor& abar_next, const at::Tensor& abar_after) {
  const char* op = "diffusion_nll_step_and_forward";
  const NllInputs in = prepare_nll(op, acc, x_t, x_next, eps, abar_t, abar_next);
  check_like(noise_in, x_t, op, "noise", "x_t");
  const AbarPair forward_pair =
      read_abar_pair(abar_next, abar_after, x_t, ScheduleRule::Forward, op, "abar_next", "abar_after");
  // Both pairs share one layout of coefficients: per sample if either is.
  AbarPair nll_pair = in.pair;
  AbarPair fwd_pair = forward_pair;
  if (nll_pair.per_sample != fwd_pair.per_sample) {
    auto expand = [&](AbarPair& p) {
      if (p.per_sample) return;
      p.per_sample = true;
      p.a_values = at::full({in.batch}, p.a, in.x_t.options().dtype(at::kDouble));
      p.b_values = at::full({in.batch}, p.b, in.x_t.options().dtype(at::kDouble));
    };
    expand(nll_pair);
    expand(fwd_pair);
  }
  NllInputs in2 = in;
  in2.pair = nll_pair;
  const at::Tensor noise = noise_in.contiguous();
  at::Tensor x_after = at::empty_like(in.x_next, at::MemoryFormat::Contiguous);
  at::Tensor acc_new = at::empty_like(in.acc, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(in.x_t.scalar_type(), "diffusion_nll_step_and_forward_cpu", [&] {
    using Coef = NllCoefficients<scalar_t>;
    using FCoef = StepCoefficients<scalar_t>;
    const CoefVector<Coef> coef = nll_coefficients_for<scalar_t>(nll_pair);
    const CoefVector<FCoef> forward_coef = coefficients_for<FCoef, scalar_t>(fwd_pair, forward_step_coefficients);
    nll_accumulate<scalar_t>(in2, coef, noise.const_data_ptr<scalar_t>(), x_after.mutable_data_ptr<scalar_t>(),
                             &forward_coef, acc_new);
  });
  return {acc_new, x_after};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> diffusion_nll_step_backward_cpu(
    const at::Tensor& grad_acc_in, const at::Tensor& x_t, const at::Tensor& x_next, const at::Tensor& eps,
    const at::Tensor& abar_t, const at::Tensor& abar_next) {
  const char* op = "diffusion_nll_step_backward";
  TORCH_CHECK(grad_acc_in.dim() == 1 && grad_acc_in.size(0) == x_t.size(0), op, ": grad_acc must have shape [B] = [",
              x_t.size(0), "], got ", grad_acc_in.sizes());
  const NllInputs in = prepare_nll(op, grad_acc_in.to(at::kDouble), x_t, x_next, eps, abar_t, abar_next);
  at::Tensor grad_x_t = at::empty_like(in.x_t, at::MemoryFormat::Contiguous);
  at::Tensor grad_x_next = at::empty_like(in.x_t, at::MemoryFormat::Contiguous);
  at::Tensor grad_eps = at::empty_like(in.x_t, at::MemoryFormat::Contiguous);
  const CpuIsa isa = cpu_isa();
  AT_DISPATCH_FLOATING_TYPES(in.x_t.scalar_type(), "diffusion_nll_step_backward_cpu", [&] {
    using Coef = NllCoefficients<scalar_t>;
    const CoefVector<Coef> coef = nll_coefficients_for<scalar_t>(in.pair);
    const at::Tensor grad = in.acc.to(in.x_t.scalar_type()).contiguous();
    const int64_t stride = in.pair.per_sample ? 1 : 0;
    const int64_t len = in.len;
    const int64_t grain = std::max<int64_t>(1, kChunkLen / std::max<int64_t>(1, len));
    at::parallel_for(0, in.batch, grain, [&](int64_t first, int64_t last) {
      const int64_t offset = first * len;
      const NllBackwardRows<scalar_t> rows{grad.const_data_ptr<scalar_t>() + first,
                                           in.x_t.const_data_ptr<scalar_t>() + offset,
                                           in.x_next.const_data_ptr<scalar_t>() + offset,
                                           in.eps.const_data_ptr<scalar_t>() + offset,
                                           coef.data() + first * stride,
                                           grad_x_t.mutable_data_ptr<scalar_t>() + offset,
                                           grad_x_next.mutable_data_ptr<scalar_t>() + offset,
                                           grad_eps.mutable_data_ptr<scalar_t>() + offset,
                                           stride,
                                           last - first,
                                           len};
      MANIFOLD_EXT_CALL_CPU_ISA(isa, nll_backward_rows, rows);
    });
  });
  return {grad_x_t, grad_x_next, grad_eps};
}

// ---------------------------------------------------------------------------
// Runge-Kutta combination (Eq. 33, Eq. 39)
// ---------------------------------------------------------------------------
at::Tensor rk4_cpu(const char* op, const at::Tensor* x_in, const at::Tensor& k1_in, const at::Tensor& k2_in,
                   const at::Tensor& k3_in, const at::Tensor& k4_in, double h) {
  const at::Tensor& like = x_in ? *x_in : k1_in;
  const char* like_name = x_in ? "x" : "k1";
  check_floating(like, op, like_name);
  if (x_in) check_like(k1_in, like, op, "k1", like_name);
  check_like(k2_in, like, op, "k2", like_name);
  check_like(k3_in, like, op, "k3", like_name);
  check_like(k4_in, like, op, "k4", like_name);
  TORCH_CHECK_VALUE(std::isfinite(h), op, ": the step h must be finite, got ", h);
  check_cpu(like, op);
  const at::Tensor x = x_in ? x_in->contiguous() : at::Tensor();
  const at::Tensor k1 = k1_in.contiguous(), k2 = k2_in.contiguous(), k3 = k3_in.contiguous(), k4 = k4_in.contiguous();
  at::Tensor out = at::empty_like(k1, at::MemoryFormat::Contiguous);
  const int64_t numel = k1.numel();
  const CpuIsa isa = cpu_isa();
  AT_DISPATCH_FLOATING_TYPES(k1.scalar_type(), "rk4_cpu", [&] {
    at::parallel_for(0, (numel + kChunkLen - 1) / kChunkLen, 8, [&](int64_t first, int64_t last) {
      for (int64_t chunk = first; chunk < last; ++chunk) {
        const int64_t begin = chunk * kChunkLen;
        const Rk4Span<scalar_t> span{x.defined() ? x.const_data_ptr<scalar_t>() + begin : nullptr,
                                     k1.const_data_ptr<scalar_t>() + begin,
                                     k2.const_data_ptr<scalar_t>() + begin,
                                     k3.const_data_ptr<scalar_t>() + begin,
                                     k4.const_data_ptr<scalar_t>() + begin,
                                     out.mutable_data_ptr<scalar_t>() + begin,
                                     static_cast<scalar_t>(h),
                                     std::min(kChunkLen, numel - begin)};
        MANIFOLD_EXT_CALL_CPU_ISA(isa, rk4_span, span);
      }
    });
  });
  return out;
}

at::Tensor rk4_combine_cpu(const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& k3, const at::Tensor& k4) {
  return rk4_cpu("rk4_combine", nullptr, k1, k2, k3, k4, 1.0);
}

at::Tensor rk4_update_cpu(const at::Tensor& x, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& k3,
                          const at::Tensor& k4, double h) {
  return rk4_cpu("rk4_update", &x, k1, k2, k3, k4, h);
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CPU, m) { MANIFOLD_EXT_DIFFUSION_OPS(MANIFOLD_EXT_IMPL_CPU) }

}  // namespace diffusion
}  // namespace manifold_ext
