// Definitions shared by every kernel file in cuda_src/.
//
// Kernel files pull this in with `#include "common.cuh"`; the loader (cupytv/_loader.py) replaces
// that line with this file's text before handing the source to NVRTC or to the host compiler, so
// CuPy's cache key (the source string) changes whenever this file does.
#pragma once

namespace cupytv {

// Sizes, strides and indices are 64-bit everywhere: tensors may hold more than 2^31 elements.
typedef long long index_t;

// First element of this block's tile along x. The product is formed in 64 bits because
// blockIdx.x * blockDim.x overflows 32-bit arithmetic once a grid covers 2^32 elements.
__device__ __forceinline__ index_t block_start_x() {
  return static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x);
}

}  // namespace cupytv
