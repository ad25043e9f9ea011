// How the CUDA kernels of the diffusion ops validate a per-sample schedule
// (abar given as a [B] tensor on the GPU). Shared by diffusion_cuda.cu and the
// Python binding in ops.cpp (manifold_ext.ops.deferred_schedule_checks).
//
//   immediate (default)  the pairs are checked before the launch, on the
//                        device, and the first bad sample is raised as a
//                        ValueError naming it: exact, but one device->host
//                        sync per call.
//   deferred             the kernel that turns each pair into its step
//                        coefficients also checks it: no sync, so a training
//                        loop runs without stalls and the call can be
//                        captured in a CUDA graph; a bad pair stops the
//                        kernel with a device-side assert (the CUDA context
//                        is then unusable, as after any device-side assert)
//                        after printing the sample, its values and the rule.
//
// Deferred is also what a call being captured into a CUDA graph gets, whatever
// the setting: a sync is not allowed during capture. Schedules given as
// floats or 0-dim tensors are checked on the host either way (no sync).
#pragma once

#include <atomic>

namespace manifold_ext {
namespace diffusion {

// Process-wide, so backward ops running on autograd's threads follow it too.
inline std::atomic<bool>& deferred_schedule_checks_flag() {
  static std::atomic<bool> deferred{false};
  return deferred;
}

}  // namespace diffusion
}  // namespace manifold_ext
