// Kernel registration from one op list per family. Each family's host header
// lists its ops once, as an X-macro MANIFOLD_EXT_<FAMILY>_OPS(X); its CPU and
// CUDA files register the kernels <op>_cpu and <op>_cuda of every op in it:
//
//   TORCH_LIBRARY_IMPL(manifold_ext, CPU, m) { MANIFOLD_EXT_DIFFUSION_OPS(MANIFOLD_EXT_IMPL_CPU) }
//
// so both devices register the same ops by construction, and a new op is added
// to the list, not to two registration blocks. (The schemas stay written out in
// <family>_schema.cpp: they are the op's documentation.)
#pragma once

#define MANIFOLD_EXT_IMPL_CPU(op) m.impl(#op, &op##_cpu);
#define MANIFOLD_EXT_IMPL_CUDA(op) m.impl(#op, &op##_cuda);
