// CPU kernels of the affine coupling op: validation, output allocation, and
// the parallel walk over row chunks. The per-element work happens in the
// vectorised row loops (affine_coupling_cpu_vec.cpp, one copy per ISA).
//
// Determinism: each chunk's logdet partial sum lands in its own slot and the
// slots of a sample are added in a fixed order, so results do not depend on
// the number of threads.
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

namespace manifold_ext {
namespace affine_coupling {
namespace {

// Rows longer than this are cut into chunks so that long rows (split layout,
// large images) still spread across threads; 4096 elements keep a chunk's
// operands (4 arrays x 16 KiB in float32) inside L1/L2.
constexpr int64_t kChunkLen = 4096;
// Minimum work per parallel task, in elements.
constexpr int64_t kGrainElems = 32768;

struct ChunkPlan {
  int64_t chunks_per_row;
  int64_t chunks_per_sample;
  int64_t total_chunks;
  int64_t grain;  // chunks per parallel task
};

ChunkPlan plan_chunks(const RowGeometry& g) {
  ChunkPlan p{};
  p.chunks_per_row = (g.row_len + kChunkLen - 1) / kChunkLen;
  p.chunks_per_sample = g.rows_per_sample * p.chunks_per_row;
  p.total_chunks = g.batch * p.chunks_per_sample;
  p.grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, std::min(g.row_len, kChunkLen)));
  return p;
}

// Element range [begin, begin + len) of chunk `chunk` within global row `row`.
struct ChunkSpan {
  int64_t row;
  int64_t begin;
  int64_t len;
};

ChunkSpan chunk_span(int64_t chunk, const RowGeometry& g, const ChunkPlan& p) {
  ChunkSpan s{};
  s.row = chunk / p.chunks_per_row;
  s.begin = (chunk % p.chunks_per_row) * kChunkLen;
  s.len = std::min(kChunkLen, g.row_len - s.begin);
  return s;
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

  const ChunkPlan plan = plan_chunks(geometry);
  std::vector<double> chunk_logdet(static_cast<size_t>(plan.total_chunks));
  const RowMode row_mode{mode.scale, mode.reverse, mode.clamp};
  const CpuIsa isa = cpu_isa();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_cpu", [&] {
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* h_data = h.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    const int64_t len = geometry.row_len;
    at::parallel_for(0, plan.total_chunks, plan.grain, [&](int64_t first, int64_t last) {
      for (int64_t chunk = first; chunk < last; ++chunk) {
        const ChunkSpan span = chunk_span(chunk, geometry, plan);
        const ForwardRow<scalar_t> row{x_data + active_offset(span.row, len) + span.begin,
                                       h_data + shift_offset(span.row, len) + span.begin,
                                       h_data + raw_offset(span.row, len) + span.begin,
                                       y_data + active_offset(span.row, len) + span.begin, span.len};
        chunk_logdet[chunk] = MANIFOLD_EXT_CALL_CPU_ISA(isa, forward_row, row, row_mode);
      }
    });
    scalar_t* logdet_data = logdet.mutable_data_ptr<scalar_t>();
    for (int64_t b = 0; b < geometry.batch; ++b) {
      double sum = 0.0;
      for (int64_t k = 0; k < plan.chunks_per_sample; ++k) sum += chunk_logdet[b * plan.chunks_per_sample + k];
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

  const ChunkPlan plan = plan_chunks(geometry);
  const RowMode row_mode{mode.scale, mode.reverse, mode.clamp};
  const CpuIsa isa = cpu_isa();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_backward_cpu", [&] {
    const scalar_t* grad_y_data = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* grad_logdet_data = grad_logdet.const_data_ptr<scalar_t>();
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* h_data = h.const_data_ptr<scalar_t>();
    scalar_t* grad_x_data = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* grad_h_data = grad_h.mutable_data_ptr<scalar_t>();
    const int64_t len = geometry.row_len;
    at::parallel_for(0, plan.total_chunks, plan.grain, [&](int64_t first, int64_t last) {
      for (int64_t chunk = first; chunk < last; ++chunk) {
        const ChunkSpan span = chunk_span(chunk, geometry, plan);
        const int64_t a = active_offset(span.row, len) + span.begin;
        const int64_t t = shift_offset(span.row, len) + span.begin;
        const int64_t r = raw_offset(span.row, len) + span.begin;
        const BackwardRow<scalar_t> row{
            grad_y_data + a, x_data + a,      h_data + t,      h_data + r,
            grad_x_data + a, grad_h_data + t, grad_h_data + r, grad_logdet_data[chunk / plan.chunks_per_sample],
            span.len};
        MANIFOLD_EXT_CALL_CPU_ISA(isa, backward_row, row, row_mode);
      }
    });
  });
  return {grad_x, grad_h};
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_ext, CPU, m) {
  m.impl("affine_coupling", &affine_coupling_cpu);
  m.impl("affine_coupling_backward", &affine_coupling_backward_cpu);
}

}  // namespace affine_coupling
}  // namespace manifold_ext
