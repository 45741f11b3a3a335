// 1D total-variation proximal operator: exact direct solvers and the O(n) backward (issue 4).
//
// Objective, for every fiber x in R^n of the input (one weight lam >= 0 per fiber):
//   y = argmin_y  1/2 ||y - x||^2 + lam * sum_{k=0}^{n-2} |y[k+1] - y[k]|
//
// Shapes and layout. The wrapper (cupytv/tv1d.py) makes x C-contiguous and views it as
// (outer, n, inner) with the TV axis in the middle: fiber f = o*inner + i (o-major) has element k
// at x[(o*n + k)*inner + i]. inner == 1 is the contiguous case (axis = last); inner > 1 are strided
// fibers. y has x's layout. Fiber f's weight is cupytv::FiberWeight (common.cuh) built from the
// arguments (lam, lam_value, lam_first, lam_div, lam_mod): lam_value for every fiber when
// lam_mod == 0 (a scalar, passed by value), else lam[((lam_first + f) / lam_div) % lam_mod].
// All sizes, strides and indices are 64-bit.
//
// Kernels (T = float or double; computed in T, sums and dual variables accumulated in double):
//   tv1d_condat<T>(x, y, lam, lam_value, lam_first, lam_div, lam_mod, outer, n, inner, scratch)
//       Condat's direct algorithm (L. Condat, "A direct algorithm for 1D total variation
//       denoising", IEEE Signal Processing Letters 20(11), 2013), guarded against its quadratic
//       worst case: a fiber whose scan exceeds TV1D_CONDAT_WORK_PER_SAMPLE * n steps (Condat's
//       restarts re-read the same samples; a ramp with a large lam re-reads O(n) samples O(n)
//       times) is re-solved from x by the linear-time taut string below. Only fibers longer than
//       TV1D_GUARD_MIN_N get the guard (and scratch): below that the worst case is at most n + 1
//       reads per sample (about n / 2 on a ramp), and a batch of short fibers needs no workspace.
//   tv1d_condat<T, false>, tv1d_taut_string<T, false>: the same without shared-memory staging,
//       for the host executor, where caches already serve each thread's contiguous fiber and a
//       block barrier costs ~35 ns per thread (docs/ARCHITECTURE.md); bit-identical results.
//   tv1d_taut_string<T>(same arguments): the taut-string algorithm (Davies & Kovac, "Local
//       extremes, runs, strings and multiresolution", Ann. Statist. 29(1), 2001; Barbero & Sra,
//       JMLR 19, 2018, sec. 2): the running sum of y is the taut string through the tube
//       [S_k - lam, S_k + lam] around the running sum S of x, pinned at both ends. The convex hull
//       of the tube's upper side and the concave hull of its lower side are kept as deques from
//       the string's last bend; every sample is pushed once and popped at most once per hull, so
//       the cost is linear for every input. Uses scratch for the hulls on every fiber. The
//       hulls steer decisions only; each segment's value is recomputed from its own float64 sum
//       (the closed form below), so its error is Condat's: eps * |segment sum| / |S|.
//   tv1d_vjp<T>(y, g, grad_x, grad_lam, outer, n, inner, tiny)
//       Segments = maximal runs of y within `tiny` of the run's first value (the forwards write
//       one value per constant segment, so with tiny = 0 the runs are exactly the segments;
//       tiny > 0 serves outputs of iterative solvers, whose segments carry rounding noise). grad_x = mean of g over each segment; grad_lam[f] =
//       sum over segments of (s_out - s_in) * mean_segment(g), with s_in / s_out the sign of the
//       jump into / out of the segment (0 at the fiber ends): the derivative of
//       y_S = mean_S(x) + lam (s_out - s_in) / |S| (see cupytv/reference/tv1d.py). grad_lam has
//       one entry per fiber (o-major); the wrapper sums it down to lam's shape. A fiber whose y
//       holds NaN or +-Inf gets all-NaN grad_x and a NaN grad_lam.
//   tv1d_weight_grad<T>(grad_fiber, grad_lam, fibers, div, mod)
//       grad_lam[j] = sum of grad_fiber[f] over the fibers whose weight is entry j (the
//       FiberWeight indexing: (f / div) % mod == j; a scalar weight is div = mod = 1), summed in
//       double, one block per entry (grid = (mod,)), in a fixed order: the same bits on every run
//       and executor. The wrapper uses it when each entry has many fibers (a scalar or
//       per-channel weight); per-fiber weights need no sum.
//
// Output contract (the backward relies on it): every constant segment of y holds one value,
// computed once and stored to each of its samples, so segments are runs of bit-identical values;
// lam == 0 (or n == 1) copies x exactly; a fiber holding NaN or +-Inf comes out all NaN and no
// other fiber is touched; every loop is bounded (Condat's scan by its work budget, the taut string
// and the emission loops by n).
//
// Threading model: one thread per fiber, thread f = blockIdx.x * blockDim.x + threadIdx.x; the
// fiber solves are sequential by nature (each segment's extent depends on all samples before it).
// Strided fibers (inner > 1) are read and written in place: adjacent threads own adjacent i, so
// each step of the fibers' loops is one coalesced access across the warp. Contiguous fibers
// (inner == 1) are staged when a tile fits: the block's blockDim.x fibers (blockDim.x * n
// consecutive values) are loaded into dynamic shared memory by consecutive threads (coalesced),
// each thread solves its fiber in place in the tile, and the tile is stored back coalesced. Tile
// rows are padded to an odd length (n | 1) so that thread t reading element k of its row hits bank
// (t * row + k) mod 32, all distinct across a warp. When the tile does not fit, contiguous fibers
// are read in place (through L1). No transposing copies for any axis. For double tiles the
// 8-byte words of an odd row stride are conflict-free as well. The backward reads y and g in place
// for every layout (one pass, no tile: its per-sample work is a compare and an add).
//
// Launch contract (what the wrapper implements):
//   block      = TV1D_BLOCK threads (x only); grid = ceil(outer * inner / TV1D_BLOCK) blocks
//                (x only). Forward kernels derive the staging decision from blockDim.x, so the
//                block must be exactly TV1D_BLOCK for shared_mem below to match.
//   shared_mem = forward, staged kernels only, when inner == 1 and
//                TV1D_BLOCK * (n | 1) * sizeof(T) <= TV1D_STAGE_MAX_BYTES: that product;
//                otherwise 0 (always 0 for the <T, false> kernels and tv1d_vjp).
//   scratch    = outer * inner * scratch_per_fiber elements of T, 8-byte aligned (NumPy and CuPy
//                allocations are), where scratch_per_fiber = 4 * (n + 1) * sizeof(double) /
//                sizeof(T) for tv1d_taut_string, the same for tv1d_condat when
//                n > TV1D_GUARD_MIN_N, else 0 (the wrapper then passes a 1-element dummy).
//                Never read before written.
//
// Per-fiber device functions (in tv1d_solvers.cuh, shared with tv2d.cu), usable from any loop (a
// benchmark's plain C + OpenMP loop calls them with x and y distinct):
//   template <typename T> __device__ void tv1d_condat_fiber(const T* x, index_t stride_x, T* y,
//       index_t stride_y, index_t n, T lam, T* scratch)       // scratch as above, or unused
//   template <typename T> __device__ void tv1d_taut_string_fiber(same arguments)
//
// instantiate: tv1d_condat<float>
// instantiate: tv1d_condat<double>
// instantiate: tv1d_condat<float, false>
// instantiate: tv1d_condat<double, false>
// instantiate: tv1d_taut_string<float>
// instantiate: tv1d_taut_string<double>
// instantiate: tv1d_taut_string<float, false>
// instantiate: tv1d_taut_string<double, false>
// instantiate: tv1d_vjp<float>
// instantiate: tv1d_vjp<double>
// instantiate: tv1d_weight_grad<float>
// instantiate: tv1d_weight_grad<double>
//
// Projected Newton (method "pn"): kernel tv1d_pn<T> with the forward signature above, its own
// launch contract (block 128, shared_mem 0, scratch 16 / sizeof(T) * n elements per fiber) and
// documentation in cuda_src/tv1d_pn.cuh.
// instantiate: tv1d_pn<float>
// instantiate: tv1d_pn<double>

#include "common.cuh"
#include "tv1d_solvers.cuh"
#include "tv1d_pn.cuh"

// Threads per block for every kernel in this file (a multiple of the warp; 128 keeps a double
// tile of 47-sample fibers within TV1D_STAGE_MAX_BYTES).
#define TV1D_BLOCK 128
// CUDA's default dynamic shared memory limit per block; larger tiles are read in place.
#define TV1D_STAGE_MAX_BYTES (48 * 1024)

namespace tv1d {

using cupytv::index_t;
using cupytv::FiberWeight;

// Row length of a staged tile: odd, so that a warp reading one element of each row is free of
// bank conflicts.
__device__ __forceinline__ index_t staged_row(index_t n) { return n | 1; }

template <typename T>
__device__ __forceinline__ bool tile_fits(index_t n, index_t inner) {
  return inner == 1 &&
         static_cast<index_t>(blockDim.x) * staged_row(n) * static_cast<index_t>(sizeof(T)) <=
             TV1D_STAGE_MAX_BYTES;
}

// Solve one fiber in place in a staged tile (or anywhere x == y): Condat's scan, and on a
// fallback the taut string re-reads the pristine samples from `source` (global x).
template <typename T>
__device__ void condat_in_place(T* row, const T* source, index_t source_stride, index_t n, T lam,
                                T* scratch) {
  TV_PROBE(in_place_setup);
  if (trivial_fiber(row, 1, row, 1, n, lam)) return;
  const bool guarded = n > TV1D_GUARD_MIN_N;
  const index_t budget = guarded ? TV1D_CONDAT_WORK_PER_SAMPLE * n : n * n + 2 * n;
  if (!condat_scan(row, 1, row, 1, n, lam, budget) && guarded) {
    taut_string_solve(source, source_stride, row, 1, n, lam, reinterpret_cast<double*>(scratch));
  }
}

enum Method { kCondat, kTautString };

// The body every forward kernel shares: fiber indexing, per-fiber lam and scratch, and the
// staging of contiguous fibers through shared memory.
template <typename T, Method kMethod, bool kStage>
__device__ __forceinline__ void forward(const T* __restrict__ x, T* __restrict__ y,
                                        const FiberWeight<T> lam, index_t outer, index_t n,
                                        index_t inner, T* __restrict__ scratch) {
  TV_PROBE(forward_setup);
  const index_t fibers = outer * inner;
  const index_t first = cupytv::block_start_x();
  const index_t f = first + threadIdx.x;
  const index_t per_fiber =
      kMethod == kCondat ? condat_scratch<T>(n) : taut_string_scratch<T>(n);
  T* const ws = scratch + (f < fibers ? f : 0) * per_fiber;
  if (kStage && tile_fits<T>(n, inner)) {
    TV_PROBE(staged);
    // Coalesced load of the block's fibers, solve in the tile, coalesced store. Every thread
    // reaches both barriers; threads past the last fiber only help move data.
    extern __shared__ __align__(16) unsigned char tv1d_shared_raw[];
    T* tile = reinterpret_cast<T*>(tv1d_shared_raw);
    const unsigned int len = static_cast<unsigned int>(n);
    const unsigned int row = static_cast<unsigned int>(staged_row(n));
    const index_t remaining = fibers - first;
    const unsigned int count = remaining < blockDim.x ? static_cast<unsigned int>(remaining)
                                                      : blockDim.x;
    const unsigned int total = count * len;
    const T* src = x + first * n;
    T* dst = y + first * n;
    {  // the loop's probe scope ends with the loop
      TV_PROBE_LOOP(stage_in);
      for (unsigned int e = threadIdx.x; e < total; e += blockDim.x) {
        TV_PROBE_TRIP(stage_in);
        TV_PROBE_ACCESS(stage_in_global, &src[e]);
        TV_PROBE_ACCESS(stage_in_shared, &tile[(e / len) * row + e % len]);
        tile[(e / len) * row + e % len] = src[e];
      }
    }
    __syncthreads();
    if (threadIdx.x < count) {
      TV_PROBE(staged_solve);
      const T lam_f = lam(f);
      T* mine = tile + threadIdx.x * row;
      if (kMethod == kCondat) {
        condat_in_place(mine, src + threadIdx.x * n, 1, n, lam_f, ws);
      } else {
        tv1d_taut_string_fiber(mine, 1, mine, 1, n, lam_f, ws);
      }
    }
    __syncthreads();
    {  // the loop's probe scope ends with the loop
      TV_PROBE_LOOP(stage_out);
      for (unsigned int e = threadIdx.x; e < total; e += blockDim.x) {
        TV_PROBE_TRIP(stage_out);
        TV_PROBE_ACCESS(stage_out_shared, &tile[(e / len) * row + e % len]);
        TV_PROBE_ACCESS(stage_out_global, &dst[e]);
        dst[e] = tile[(e / len) * row + e % len];
      }
    }
    return;
  }
  if (f >= fibers) return;
  const index_t o = f / inner;
  const index_t i = f - o * inner;
  const index_t base = o * n * inner + i;
  const T lam_f = lam(f);
  if (kMethod == kCondat) {
    // A literal stride for contiguous fibers lets the compiler drop the index multiplications
    // from the scan (the host executor's main case; the strided call keeps the general form).
    TV_PROBE(unstaged_condat);
    if (inner == 1) {
      TV_PROBE(unstaged_contiguous);
      tv1d_condat_fiber(x + base, 1, y + base, 1, n, lam_f, ws);
    } else {
      TV_PROBE(unstaged_strided);
      tv1d_condat_fiber(x + base, inner, y + base, inner, n, lam_f, ws);
    }
  } else {
    TV_PROBE(unstaged_taut_string);
    tv1d_taut_string_fiber(x + base, inner, y + base, inner, n, lam_f, ws);
  }
}

}  // namespace tv1d

template <typename T, bool kStage = true>
__global__ void __launch_bounds__(TV1D_BLOCK)
    tv1d_condat(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ lam, T lam_value,
                cupytv::index_t lam_first, cupytv::index_t lam_div, cupytv::index_t lam_mod,
                cupytv::index_t outer, cupytv::index_t n, cupytv::index_t inner,
                T* __restrict__ scratch) {
  tv1d::forward<T, tv1d::kCondat, kStage>(
      x, y, cupytv::FiberWeight<T>{lam, lam_value, lam_first, lam_div, lam_mod}, outer, n, inner,
      scratch);
}

template <typename T, bool kStage = true>
__global__ void __launch_bounds__(TV1D_BLOCK)
    tv1d_taut_string(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ lam,
                     T lam_value, cupytv::index_t lam_first, cupytv::index_t lam_div,
                     cupytv::index_t lam_mod, cupytv::index_t outer, cupytv::index_t n,
                     cupytv::index_t inner, T* __restrict__ scratch) {
  tv1d::forward<T, tv1d::kTautString, kStage>(
      x, y, cupytv::FiberWeight<T>{lam, lam_value, lam_first, lam_div, lam_mod}, outer, n, inner,
      scratch);
}

namespace tv1d {

// The backward of one fiber (see the header): segments are runs of equal y.
template <typename T>
__device__ __forceinline__ T vjp_fiber(const T* yf, const T* gf, T* gx, index_t s, index_t n,
                                       double tiny) {
  double glam = 0.0;
  bool has_nan = false;
  double s_in = 0.0;  // sign of the jump into the current segment
  index_t start = 0;
  TV_PROBE(vjp_setup);
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(vjp_segment);
    while (start < n) {
      TV_PROBE_TRIP(vjp_segment);
      TV_PROBE_ACCESS(vjp_y, &yf[start * s]);
      const T v = yf[start * s];
      has_nan |= !(fabs(static_cast<double>(v)) <= TV1D_DOUBLE_MAX);  // NaN or +-Inf
      double sum = static_cast<double>(gf[start * s]);
      index_t end = start + 1;
      T after = v;
      {  // the loop's probe scope ends with the loop
        TV_PROBE_LOOP(vjp_run);
        for (; end < n; ++end) {
          TV_PROBE_TRIP(vjp_run);
          TV_PROBE_ACCESS(vjp_y, &yf[end * s]);
          TV_PROBE_ACCESS(vjp_g, &gf[end * s]);
          after = yf[end * s];
          // Written so that NaN (and Inf - Inf) ends the segment: the next segment's start is then
          // the non-finite sample, which the test above catches (a NaN inside a run was merged).
          if (!(fabs(static_cast<double>(after) - static_cast<double>(v)) <= tiny)) break;
          sum += static_cast<double>(gf[end * s]);
        }
      }
      const double mean = sum / static_cast<double>(end - start);
      fill(gx, s, start, end, static_cast<T>(mean));
      const double s_out = end < n ? static_cast<double>((after > v) - (after < v)) : 0.0;
      glam += (s_out - s_in) * mean;
      s_in = s_out;
      start = end;
    }
  }
  if (has_nan) {
    fill(gx, s, 0, n, static_cast<T>(quiet_nan()));
    glam = quiet_nan();
  }
  return static_cast<T>(glam);
}

}  // namespace tv1d

template <typename T>
__global__ void __launch_bounds__(TV1D_BLOCK)
    tv1d_vjp(const T* __restrict__ y, const T* __restrict__ g, T* __restrict__ grad_x,
             T* __restrict__ grad_lam, cupytv::index_t outer, cupytv::index_t n,
             cupytv::index_t inner, double tiny) {
  using cupytv::index_t;
  TV_PROBE(vjp_kernel);
  const index_t f = cupytv::block_start_x() + threadIdx.x;
  if (f >= outer * inner) return;
  const index_t o = f / inner;
  const index_t base = o * n * inner + (f - o * inner);
  // A literal stride for contiguous fibers, as in the forward.
  grad_lam[f] = inner == 1 ? tv1d::vjp_fiber(y + base, g + base, grad_x + base, 1, n, tiny)
                           : tv1d::vjp_fiber(y + base, g + base, grad_x + base, inner, n, tiny);
}

template <typename T>
__global__ void __launch_bounds__(TV1D_BLOCK)
    tv1d_weight_grad(const T* __restrict__ grad_fiber, T* __restrict__ grad_lam,
                     cupytv::index_t fibers, cupytv::index_t div, cupytv::index_t mod) {
  using cupytv::index_t;
  __shared__ double partial[TV1D_BLOCK];
  const index_t j = blockIdx.x;
  const index_t count = fibers / mod;  // the fibers that share entry j
  double sum = 0.0;
  for (index_t k = threadIdx.x; k < count; k += blockDim.x) {
    // k-th fiber of entry j: f = (q * mod + j) * div + r with k = q * div + r.
    const index_t q = k / div;
    sum += static_cast<double>(grad_fiber[(q * mod + j) * div + (k - q * div)]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_lam[j] = static_cast<T>(partial[0]);
}
