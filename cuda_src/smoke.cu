// Smoke kernels for the kernel runtime (issue 3). They compute nothing the package needs; they
// exist so that every CI run proves the two executors agree on a kernel that uses static and
// dynamic shared memory and many barriers.
//
// Objective, with B = blockDim.x and tile b = elements [b*B, b*B + m_b), m_b = min(B, n - b*B):
//   smoke_tile_reverse<T>(x, y, n): y[b*B + j] = x[b*B + m_b - 1 - j]          (0 <= j < m_b)
//   smoke_tile_scan<T>(x, y, n):    y[b*B + j] = x[b*B] + ... + x[b*B + j]    (0 <= j < m_b)
// Arguments: x: const T*, shape (n,), contiguous; y: T*, shape (n,), contiguous; n: int64.
//
// Threading model: 1D grid of ceil(n / B) blocks, one tile per block; thread j of block b owns
// element b*B + j. Threads past the end of the array stay alive (they must reach every barrier)
// but neither load nor store. Reverse stages the tile in dynamic shared memory
// (shared_mem = B * sizeof(T)) around one barrier. Scan is the Hillis–Steele doubling scan over a
// double buffer in static shared memory: ceil(log2 B) rounds, one barrier each; B <= 1024.
//
// instantiate: smoke_tile_reverse<float>
// instantiate: smoke_tile_reverse<double>
// instantiate: smoke_tile_scan<float>
// instantiate: smoke_tile_scan<double>

#include "common.cuh"

// The largest block CUDA allows; sizes the scan's static shared buffer (16 KiB for double).
#define SMOKE_MAX_BLOCK 1024

template <typename T>
__global__ void smoke_tile_reverse(const T* __restrict__ x, T* __restrict__ y,
                                   cupytv::index_t n) {
  // One buffer for every T: CUDA forbids redeclaring an extern __shared__ array with another
  // element type, so the raw bytes are declared once and viewed as T.
  extern __shared__ __align__(16) unsigned char smoke_shared_raw[];
  T* tile = reinterpret_cast<T*>(smoke_shared_raw);
  const cupytv::index_t start = cupytv::block_start_x();
  const cupytv::index_t remaining = n - start;
  const cupytv::index_t m = remaining < blockDim.x ? remaining : blockDim.x;
  const cupytv::index_t j = threadIdx.x;
  if (j < m) tile[j] = x[start + j];
  __syncthreads();
  if (j < m) y[start + j] = tile[m - 1 - j];
}

template <typename T>
__global__ void smoke_tile_scan(const T* __restrict__ x, T* __restrict__ y, cupytv::index_t n) {
  __shared__ T buffer[2][SMOKE_MAX_BLOCK];
  const cupytv::index_t i = cupytv::block_start_x() + threadIdx.x;
  const unsigned int j = threadIdx.x;
  const bool valid = i < n;
  // Padding with zeros lets the partial last tile run the same rounds as a full one.
  buffer[0][j] = valid ? x[i] : T(0);
  __syncthreads();
  int src = 0;
  for (unsigned int offset = 1; offset < blockDim.x; offset *= 2) {
    T v = buffer[src][j];
    if (j >= offset) v += buffer[src][j - offset];
    buffer[1 - src][j] = v;
    __syncthreads();
    src = 1 - src;
  }
  if (valid) y[i] = buffer[src][j];
}
