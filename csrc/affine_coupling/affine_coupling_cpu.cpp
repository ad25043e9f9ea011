// CPU kernels of the affine coupling op: validation, output allocation, and
// the parallel walk over runs of rows. The per-element work happens in the
// vectorised loops (affine_coupling_cpu_vec.cpp, one copy per ISA).
//
// Determinism: a run holding whole samples writes their logdet; otherwise each
// run's partial sum lands in its own slot and the slots of a sample are added
// in a fixed order. Either way results do not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "affine_coupling/affine_coupling_cpu_rows.h"
#include "affine_coupling/affine_coupling_host.h"
#include "common/checks.h"
#include "common/cpu_capability.h"
#include "common/registration.h"

namespace manifold_ext {
namespace affine_coupling {
namespace {

// Work is cut into runs of rows of about kChunkLen elements: whole samples
// when a sample is that short (vector data: one run holds many samples), else
// whole rows of one sample, else pieces of one long row. 4096 elements keep a
// run's operands (4 arrays x 16 KiB in float32) inside L1/L2. The cut depends
// on the shapes only, never on the number of threads, and each sample's
// logdet is summed in a fixed order: results do not depend on the threads.
constexpr int64_t kChunkLen = 4096;
// Minimum work per parallel task, in elements.
constexpr int64_t kGrainElems = 32768;

enum class RunKind { Samples, RowsOfSample, RowPieces };

struct RunPlan {
  RunKind kind;
  int64_t per_run;          // samples per run (Samples) or rows per run (RowsOfSample)
  int64_t pieces_per_row;   // RowPieces
  int64_t runs_per_sample;  // RowsOfSample, RowPieces
  int64_t total_runs;
  int64_t grain;  // runs per parallel task
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

RunPlan plan_runs(const RowGeometry& g) {
  RunPlan p{};
  const int64_t sample_len = g.rows_per_sample * g.row_len;
  int64_t run_elems;
  if (sample_len <= kChunkLen) {
    p.kind = RunKind::Samples;
    p.per_run = kChunkLen / std::max<int64_t>(1, sample_len);
    p.total_runs = ceil_div(g.batch, p.per_run);
    run_elems = p.per_run * sample_len;
  } else if (g.row_len <= kChunkLen) {
    p.kind = RunKind::RowsOfSample;
    p.per_run = kChunkLen / g.row_len;
    p.runs_per_sample = ceil_div(g.rows_per_sample, p.per_run);
    p.total_runs = g.batch * p.runs_per_sample;
    run_elems = p.per_run * g.row_len;
  } else {
    p.kind = RunKind::RowPieces;
    p.pieces_per_row = ceil_div(g.row_len, kChunkLen);
    p.runs_per_sample = g.rows_per_sample * p.pieces_per_row;
    p.total_runs = g.batch * p.runs_per_sample;
    run_elems = kChunkLen;
  }
  p.grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, run_elems));
  return p;
}

RowRun run_at(int64_t k, const RowGeometry& g, const RunPlan& p) {
  const int64_t R = g.rows_per_sample;
  const int64_t L = g.row_len;
  switch (p.kind) {
    case RunKind::Samples: {
      const int64_t first_sample = k * p.per_run;
      return RowRun{first_sample * R, std::min(p.per_run, g.batch - first_sample) * R, 0, L};
    }
    case RunKind::RowsOfSample: {
      const int64_t part = k % p.runs_per_sample;
      const int64_t first_row = (k / p.runs_per_sample) * R + part * p.per_run;
      return RowRun{first_row, std::min(p.per_run, R - part * p.per_run), 0, L};
    }
    default: {
      const int64_t part = k % p.runs_per_sample;
      const int64_t row = (k / p.runs_per_sample) * R + part / p.pieces_per_row;
      const int64_t begin = (part % p.pieces_per_row) * kChunkLen;
      return RowRun{row, 1, begin, std::min(kChunkLen, L - begin)};
    }
  }
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_cpu(const at::Tensor& x_in, const at::Tensor& h_in,
                                                       c10::string_view scale, c10::string_view layout, double clamp,
                                                       bool reverse) {
  const CouplingMode mode = parse_mode(scale, layout, clamp, reverse);
  const RowGeometry geometry = check_inputs(x_in, h_in, mode);
  check_cpu(x_in, "affine_coupling");
  const at::Tensor x = x_in.contiguous();                          // [B, C, *spatial]
  const at::Tensor h = h_in.contiguous();                          // [B, 2C, *spatial]
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);  // [B, C, *spatial]
  at::Tensor logdet = at::empty({geometry.batch}, x.options());    // [B]

  const RunPlan plan = plan_runs(geometry);
  const RowMode row_mode{mode.scale, mode.reverse, mode.clamp};
  const CpuIsa isa = cpu_isa();
  if (geometry.batch == 0) return {y, logdet};
  if (geometry.rows_per_sample * geometry.row_len == 0) {  // no active elements: log|det J| = 0
    logdet.zero_();
    return {y, logdet};
  }

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_cpu", [&] {
    const CouplingData<scalar_t> data{x.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(),
                                      y.mutable_data_ptr<scalar_t>(), geometry};
    scalar_t* logdet_data = logdet.mutable_data_ptr<scalar_t>();
    if (plan.kind == RunKind::Samples) {  // each run holds whole samples: write their logdet directly
      at::parallel_for(0, plan.total_runs, plan.grain, [&](int64_t first, int64_t last) {
        std::vector<double> sums(static_cast<size_t>(plan.per_run));
        for (int64_t k = first; k < last; ++k) {
          const RowRun run = run_at(k, geometry, plan);
          MANIFOLD_EXT_CALL_CPU_ISA(isa, forward_run, data, run, row_mode, sums.data());
          const int64_t first_sample = run.first_row / geometry.rows_per_sample;
          const int64_t samples = run.rows / geometry.rows_per_sample;
          for (int64_t j = 0; j < samples; ++j) logdet_data[first_sample + j] = static_cast<scalar_t>(sums[j]);
        }
      });
      return;
    }
    std::vector<double> partial(static_cast<size_t>(plan.total_runs));  // one slot per run
    at::parallel_for(0, plan.total_runs, plan.grain, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) {
        MANIFOLD_EXT_CALL_CPU_ISA(isa, forward_run, data, run_at(k, geometry, plan), row_mode, &partial[k]);
      }
    });
    for (int64_t b = 0; b < geometry.batch; ++b) {
      double sum = 0.0;
      for (int64_t k = 0; k < plan.runs_per_sample; ++k) sum += partial[b * plan.runs_per_sample + k];
      logdet_data[b] = static_cast<scalar_t>(sum);
    }
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_backward_cpu(const at::Tensor& grad_y_in,
                                                                const at::Tensor& grad_logdet_in,
                                                                const at::Tensor& x_in, const at::Tensor& h_in,
                                                                c10::string_view scale, c10::string_view layout,
                                                                double clamp, bool reverse) {
  const CouplingMode mode = parse_mode(scale, layout, clamp, reverse);
  const RowGeometry geometry = check_inputs(x_in, h_in, mode);
  check_backward_inputs(grad_y_in, grad_logdet_in, x_in);
  check_cpu(x_in, "affine_coupling_backward");
  const at::Tensor x = x_in.contiguous();                                          // [B, C, *spatial]
  const at::Tensor h = h_in.contiguous();                                          // [B, 2C, *spatial]
  const at::Tensor grad_y = grad_y_in.contiguous();                                // [B, C, *spatial]
  const at::Tensor grad_logdet = grad_logdet_in.to(x.scalar_type()).contiguous();  // [B]
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);             // [B, C, *spatial]
  at::Tensor grad_h = at::empty_like(h, at::MemoryFormat::Contiguous);             // [B, 2C, *spatial]

  const RunPlan plan = plan_runs(geometry);
  const RowMode row_mode{mode.scale, mode.reverse, mode.clamp};
  const CpuIsa isa = cpu_isa();
  if (geometry.batch == 0 || geometry.rows_per_sample * geometry.row_len == 0) return {grad_x, grad_h};

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_backward_cpu", [&] {
    const CouplingGradData<scalar_t> data{grad_y.const_data_ptr<scalar_t>(),
                                          grad_logdet.const_data_ptr<scalar_t>(),
                                          x.const_data_ptr<scalar_t>(),
                                          h.const_data_ptr<scalar_t>(),
                                          grad_x.mutable_data_ptr<scalar_t>(),
                                          grad_h.mutable_data_ptr<scalar_t>(),
                                          geometry};
    at::parallel_for(0, plan.total_runs, plan.grain, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) {
        MANIFOLD_EXT_CALL_CPU_ISA(isa, backward_run, data, run_at(k, geometry, plan), row_mode);
      }
    });
  });
  return {grad_x, grad_h};
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CPU, m) { MANIFOLD_EXT_AFFINE_COUPLING_OPS(MANIFOLD_EXT_IMPL_CPU) }

}  // namespace affine_coupling
}  // namespace manifold_ext
