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
//   tv1d_condat<T>(x, y, lam, lam_value, lam_first, lam_div, lam_mod, outer, n, inner, fallback)
//       Condat's direct algorithm (L. Condat, "A direct algorithm for 1D total variation
//       denoising", IEEE Signal Processing Letters 20(11), 2013), guarded against its quadratic
//       worst case: a fiber whose scan exceeds TV1D_CONDAT_WORK_PER_SAMPLE * n steps (Condat's
//       restarts re-read the same samples; a ramp with a large lam re-reads O(n) samples O(n)
//       times) is appended to the `fallback` list (its y left partly written) and re-solved from
//       x by tv1d_fallback, launched next. Only fibers longer than TV1D_GUARD_MIN_N get the
//       guard: below that the worst case is at most n + 1 reads per sample (about n / 2 on a
//       ramp). No workspace: the fallback pass holds it, for a bounded number of fibers at once.
//   tv1d_fallback<T>(x, y, lam, lam_value, lam_first, lam_div, lam_mod, n, inner, fallback,
//                    slots, scratch)
//       The taut string (below) on each fiber of the list, read and written in place: thread t of
//       `slots` takes entries t, t + slots, ... with the t-th taut_string_scratch<T>(n) elements
//       of scratch. The wrapper sizes `slots` by a workspace budget, not by the fibers (issue 18:
//       workspace only for the fibers that fall back); the count is read on the device.
//   tv1d_condat_short<T>(same arguments): the GPU's tv1d_condat for contiguous fibers of at most
//       TV1D_SHORT_MAX_N samples whose staged tile fits (inner == 1; the wrapper checks): Condat's
//       scan in three passes that keep a warp's lanes in step (condat_masked: the same decisions
//       and bits as condat_scan), and nothing else, so its registers are that path's alone (a
//       kernel gets the registers of its worst path). No scratch is read.
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
//       holds NaN or +-Inf gets all-NaN grad_x and a NaN grad_lam. Each mean is
//       sum * (1 / |S|) (a correctly rounded reciprocal, from a per-block table on the GPU;
//       sum / |S| past TV1D_RECIP_MAX samples). With tiny == 0 the GPU variant (<T>) runs two
//       passes of n trips per fiber that keep a warp's lanes in step (sums and each segment's
//       mean at its last sample; then the means spread backwards), staging contiguous fibers of
//       at most TV1D_VJP_STAGE_MAX_N samples: y through the tile into segment masks, then g
//       through the same tile, solved there, stored coalesced. The host variant (<T, false>)
//       walks segment by segment (faster on a CPU); both give the same bits.
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
// 8-byte words of an odd row stride are conflict-free as well. The backward stages as described
// with tv1d_vjp above.
//
// Launch contract (what the wrapper implements):
//   block      = TV1D_BLOCK threads (x only); grid = ceil(outer * inner / TV1D_BLOCK) blocks
//                (x only; tv1d_fallback: ceil(slots / TV1D_BLOCK)). Forward kernels derive the
//                staging decision from blockDim.x, so the block must be exactly TV1D_BLOCK for
//                shared_mem below to match.
//   shared_mem = forward, staged kernels only, when inner == 1 and
//                TV1D_BLOCK * (n | 1) * sizeof(T) <= TV1D_STAGE_MAX_BYTES: that product;
//                tv1d_vjp<T> too when also n <= TV1D_VJP_STAGE_MAX_N and tiny == 0;
//                otherwise 0 (always 0 for the <T, false> kernels). tv1d_condat_short<T> is
//                launched only where its tile fits, with that product.
//   scratch    = tv1d_taut_string: outer * inner * taut_string_scratch<T>(n) elements of T
//                (4 * (n + 1) doubles per fiber), 8-byte aligned (NumPy and CuPy allocations
//                are); tv1d_fallback: slots * taut_string_scratch<T>(n). Never read before
//                written.
//   fallback   = tv1d_condat and tv1d_condat_short: 1 + outer * inner int64, fallback[0] == 0 at
//                launch (a 1-element zero when n <= TV1D_GUARD_MIN_N: nothing is deferred);
//                tv1d_fallback reads it after them, on the same stream.
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
// instantiate: tv1d_condat_short<float>
// instantiate: tv1d_condat_short<double>
// instantiate: tv1d_fallback<float>
// instantiate: tv1d_fallback<double>
// instantiate: tv1d_taut_string<float>
// instantiate: tv1d_taut_string<double>
// instantiate: tv1d_taut_string<float, false>
// instantiate: tv1d_taut_string<double, false>
// instantiate: tv1d_vjp<float>
// instantiate: tv1d_vjp<double>
// instantiate: tv1d_vjp<float, false>
// instantiate: tv1d_vjp<double, false>
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
// The VJP stages fibers up to this length (their segment ends fit a 64-bit mask).
#define TV1D_VJP_STAGE_MAX_N 64
// tv1d_condat_short's longest fiber (its segment ends fit a 64-bit mask).
#define TV1D_SHORT_MAX_N 64

namespace tv1d {

using cupytv::index_t;
using cupytv::FiberWeight;

// Row length of a staged tile: odd, so that a warp reading one element of each row is free of
// bank conflicts.
__device__ __forceinline__ index_t staged_row(index_t n) { return n | 1; }

// The staged tile's index of element e of the block's consecutive samples (fiber e / len,
// sample e % len, rows padded to `row`), for e = threadIdx.x, threadIdx.x + blockDim.x, ...:
// the quotient and remainder advance by those of blockDim.x, so a thread divides once, not once
// per element (an integer division by a run-time length is ~20 instructions).
struct TileWalk {
  unsigned int q, r;             // e / len, e % len
  unsigned int step_q, step_r;   // blockDim.x / len, blockDim.x % len
  unsigned int len, row;
  __device__ __forceinline__ TileWalk(unsigned int e, unsigned int len_, unsigned int row_)
      : q(e / len_), r(e % len_), step_q(blockDim.x / len_), step_r(blockDim.x % len_),
        len(len_), row(row_) {}
  __device__ __forceinline__ unsigned int at() const { return q * row + r; }
  __device__ __forceinline__ void advance() {
    q += step_q;
    r += step_r;
    if (r >= len) {
      r -= len;
      ++q;
    }
  }
};

template <typename T>
__device__ __forceinline__ bool tile_fits(index_t n, index_t inner) {
  return inner == 1 &&
         static_cast<index_t>(blockDim.x) * staged_row(n) * static_cast<index_t>(sizeof(T)) <=
             TV1D_STAGE_MAX_BYTES;
}

// A block's staged tile in dynamic shared memory: its `count` contiguous fibers (from fiber
// `first` on), fiber t's sample k at t * row + k. load and store move the block's count * len
// consecutive global values, each thread taking every blockDim.x-th one (coalesced), so every
// thread of the block must call them; the caller places the barriers.
template <typename T>
struct StagedTile {
  T* tile;
  unsigned int len, row, count, total;
  __device__ __forceinline__ StagedTile(unsigned char* raw, index_t n, index_t fibers,
                                        index_t first)
      : tile(reinterpret_cast<T*>(raw)),
        len(static_cast<unsigned int>(n)),
        row(static_cast<unsigned int>(staged_row(n))),
        count(fibers - first < blockDim.x ? static_cast<unsigned int>(fibers - first)
                                          : blockDim.x),
        total(count * len) {}
  __device__ __forceinline__ T* fiber(unsigned int t) const { return tile + t * row; }
  __device__ __forceinline__ void load(const T* src) const {
    TV_PROBE_LOOP(stage_in);
    TileWalk at(threadIdx.x, len, row);
    for (unsigned int e = threadIdx.x; e < total; e += blockDim.x, at.advance()) {
      TV_PROBE_TRIP(stage_in);
      TV_PROBE_ACCESS(stage_in_global, &src[e]);
      TV_PROBE_ACCESS(stage_in_shared, &tile[at.at()]);
      tile[at.at()] = src[e];
    }
  }
  __device__ __forceinline__ void store(T* dst) const {
    TV_PROBE_LOOP(stage_out);
    TileWalk at(threadIdx.x, len, row);
    for (unsigned int e = threadIdx.x; e < total; e += blockDim.x, at.advance()) {
      TV_PROBE_TRIP(stage_out);
      TV_PROBE_ACCESS(stage_out_shared, &tile[at.at()]);
      TV_PROBE_ACCESS(stage_out_global, &dst[e]);
      dst[e] = tile[at.at()];
    }
  }
};

// Condat's scan on one fiber (x and y may be the same, e.g. a staged tile row), guarded for
// n > TV1D_GUARD_MIN_N: false when the scan ran past its budget, leaving y partly written, for
// the caller to hand the fiber to the fallback pass (defer_fiber, tv1d_fallback).
template <typename T>
__device__ bool condat_guarded(const T* x, index_t sx, T* y, index_t sy, index_t n, T lam) {
  TV_PROBE(condat_guarded);
  const bool guarded = n > TV1D_GUARD_MIN_N;
  // Unguarded fibers get a budget their worst case cannot reach (see tv1d_condat_fiber).
  const index_t budget = guarded ? TV1D_CONDAT_WORK_PER_SAMPLE * n : n * n + 2 * n;
  return condat_checked(x, sx, y, sy, n, lam, budget) || !guarded;
}

// Append fiber f to the fallback list: fallback[0] counts, fallback[1 + k] are the fibers (in
// no particular order; each is solved alone, so the order changes no bit).
__device__ __forceinline__ void defer_fiber(index_t* fallback, index_t f) {
  TV_PROBE(defer_fiber);
  const unsigned long long k =
      atomicAdd(reinterpret_cast<unsigned long long*>(fallback), 1ULL);
  fallback[1 + static_cast<index_t>(k)] = f;
}

// Condat's scan on a staged fiber of at most 64 samples (the GPU's path for short contiguous
// fibers): the decisions of condat_scan, then its values, in three passes whose loops carry no
// per-segment work, so the lanes of a warp stay in step. condat_scan fills each segment and
// settles its value as it ends one (a loop of the segment's length and a division inside the
// scan: every lane waited for the longest fill of the warp); here the scan only records where
// segments end (bit k of `ends`, and of `downs` for a jump down, of `jumps` for any jump), a
// value pass recomputes each segment's sum in the same order and settles it with the same
// arithmetic (so the same bits), storing it at the segment's last sample, and a backward pass
// spreads it over the segment. The scan keeps no sums: they only fed the values.
template <typename T>
__device__ void condat_masked(T* row, index_t n, T lam_t) {
  TV_PROBE(masked_setup);
  if (trivial_fiber(row, 1, row, 1, n, lam_t)) return;
  const double lam = lam_t;
  const int len_n = static_cast<int>(n);
  unsigned long long ends = 0, downs = 0, jumps = 0;
  int k0 = 0, k = 0, kmin = 0, kmax = 0;
  double ub = 0.0;
  double vmin = static_cast<double>(row[0]) - lam, vmax = static_cast<double>(row[0]) + lam;
  double umin = lam, umax = -lam;
  bool done = false;
  const int budget = len_n * len_n + 2 * len_n;  // condat_scan's for unguarded fibers
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(masked_scan);
#pragma unroll 1
    for (int step = 0; step < budget && !done; ++step) {
      TV_PROBE_TRIP(masked_scan);
      int last = -1;
      bool down = false;
      if (k == len_n - 1) {
        // End of the fiber: u_{n-1} must be 0.
        TV_PROBE(masked_end);
        if (umin < 0.0) {
          last = kmin;
          down = true;
        } else if (umax > 0.0) {
          last = kmax;
        } else {
          ends |= 1ULL << (len_n - 1);
          done = true;
        }
      } else {
        TV_PROBE_ACCESS(masked_next, &row[k + 1]);
        const double next = static_cast<double>(row[k + 1]);
        const double umin_next = umin + next - vmin;
        const double umax_next = umax + next - vmax;
        if (umin_next < -lam) {
          last = kmin;
          down = true;
        } else if (umax_next > lam) {
          last = kmax;
        } else {
          TV_PROBE(masked_step);
          ++k;
          umin = umin_next;
          umax = umax_next;
          const double len = static_cast<double>(k - k0 + 1);
          if (umin >= lam) {
            vmin += (umin - lam) / len;
            umin = lam;
            kmin = k;
          }
          if (umax <= -lam) {
            vmax += (umax + lam) / len;
            umax = -lam;
            kmax = k;
          }
        }
      }
      if (last >= 0) {
        // End [k0, last] with a jump and restart behind it.
        TV_PROBE(masked_jump);
        const unsigned long long bit = 1ULL << last;
        ends |= bit;
        jumps |= bit;
        if (down) downs |= bit;
        if (last + 1 >= len_n) {
          done = true;  // unreachable, as in condat_scan (a bound tightens only before the end)
        } else {
          k0 = k = kmin = kmax = last + 1;
          ub = down ? lam : -lam;
          TV_PROBE_ACCESS(masked_restart, &row[k0]);
          const double x0 = static_cast<double>(row[k0]);
          vmin = x0 + ub - lam;
          vmax = x0 + ub + lam;
          umin = lam;
          umax = -lam;
        }
      }
    }
  }
  if (!done) {
    // Out of budget: unreachable (every restart moves k0 forward, and at most n steps separate
    // two restarts), so a fiber ending here would be a bug; it comes out all NaN, not wrong.
    fill(row, 1, 0, n, static_cast<T>(quiet_nan()));
    return;
  }
  // Values: condat_scan's closed forms and its settle (see Ties there), in its order.
  Settle settle{lam};
  double sum = 0.0, ubv = 0.0;
  int start = 0;
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(masked_values);
#pragma unroll 1
    for (int j = 0; j < len_n; ++j) {
      TV_PROBE_TRIP(masked_values);
      TV_PROBE_ACCESS(masked_value_read, &row[j]);
      const double xj = static_cast<double>(row[j]);
      sum = j == start ? xj : sum + xj;
      if ((ends >> j) & 1ULL) {
        TV_PROBE(masked_segment);
        const bool jump = (jumps >> j) & 1ULL, down = (downs >> j) & 1ULL;
        const double len = static_cast<double>(j + 1 - start);
        const double closed = (sum + ubv + (jump ? (down ? -lam : lam) : 0.0)) / len;
        row[j] = static_cast<T>(settle(start, j + 1, sum, closed));
        ubv = down ? lam : -lam;
        start = j + 1;
      }
    }
  }
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(masked_spread);
    T value = row[len_n - 1];
#pragma unroll 1
    for (int j = len_n - 1; j >= 0; --j) {
      TV_PROBE_TRIP(masked_spread);
      TV_PROBE_ACCESS(masked_spread, &row[j]);
      if ((ends >> j) & 1ULL) value = row[j];
      row[j] = value;
    }
  }
}

enum Method { kCondat, kTautString };

// The body every forward kernel shares: fiber indexing, per-fiber lam, and the staging of
// contiguous fibers through shared memory. kCondat: `work` is the fallback list (defer_fiber);
// kTautString: the scratch of taut_string_scratch<T>(n) elements per fiber.
template <typename T, Method kMethod, bool kStage, bool kShort = false>
__device__ __forceinline__ void forward(const T* __restrict__ x, T* __restrict__ y,
                                        const FiberWeight<T> lam, index_t outer, index_t n,
                                        index_t inner, void* __restrict__ work) {
  TV_PROBE(forward_setup);
  const index_t fibers = outer * inner;
  const index_t first = cupytv::block_start_x();
  const index_t f = first + threadIdx.x;
  index_t* const fallback = static_cast<index_t*>(work);
  T* const ws = kMethod == kCondat ? static_cast<T*>(nullptr)
                                   : static_cast<T*>(work) +
                                         (f < fibers ? f : 0) * taut_string_scratch<T>(n);
  if (kShort || (kStage && tile_fits<T>(n, inner))) {
    TV_PROBE(staged);
    // Coalesced load of the block's fibers, solve in the tile, coalesced store. Every thread
    // reaches both barriers; threads past the last fiber only help move data.
    extern __shared__ __align__(16) unsigned char tv1d_shared_raw[];
    const StagedTile<T> tile(tv1d_shared_raw, n, fibers, first);
    tile.load(x + first * n);
    __syncthreads();
    if (threadIdx.x < tile.count) {
      TV_PROBE(staged_solve);
      const T lam_f = lam(f);
      T* mine = tile.fiber(threadIdx.x);
      if (kShort) {
        condat_masked(mine, n, lam_f);
      } else if (kMethod == kCondat) {
        if (!condat_guarded(mine, 1, mine, 1, n, lam_f)) defer_fiber(fallback, f);
      } else {
        tv1d_taut_string_fiber(mine, 1, mine, 1, n, lam_f, ws);
      }
    }
    __syncthreads();
    tile.store(y + first * n);
    return;
  }
  if (kShort || f >= fibers) return;  // the short kernel has no unstaged path
  const index_t o = f / inner;
  const index_t i = f - o * inner;
  const index_t base = o * n * inner + i;
  const T lam_f = lam(f);
  if (kMethod == kCondat) {
    // A literal stride for contiguous fibers lets the compiler drop the index multiplications
    // from the scan (the host executor's main case; the strided call keeps the general form).
    // The GPU variant keeps one general copy: nvcc merged the two copies into one anyway, under
    // the contiguous call's debug locations, which the proxy's cost table then priced as one
    // copy of twice the size.
    TV_PROBE(unstaged_condat);
    bool solved;
    if (!kStage && inner == 1) {
      TV_PROBE(unstaged_contiguous);
      solved = condat_guarded(x + base, 1, y + base, 1, n, lam_f);
    } else {
      TV_PROBE(unstaged_strided);
      solved = condat_guarded(x + base, inner, y + base, inner, n, lam_f);
    }
    if (!solved) defer_fiber(fallback, f);
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
                cupytv::index_t* __restrict__ fallback) {
  tv1d::forward<T, tv1d::kCondat, kStage>(
      x, y, cupytv::FiberWeight<T>{lam, lam_value, lam_first, lam_div, lam_mod}, outer, n, inner,
      fallback);
}

template <typename T>
__global__ void __launch_bounds__(TV1D_BLOCK)
    tv1d_condat_short(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ lam,
                      T lam_value, cupytv::index_t lam_first, cupytv::index_t lam_div,
                      cupytv::index_t lam_mod, cupytv::index_t outer, cupytv::index_t n,
                      cupytv::index_t inner, cupytv::index_t* __restrict__ fallback) {
  tv1d::forward<T, tv1d::kCondat, true, true>(
      x, y, cupytv::FiberWeight<T>{lam, lam_value, lam_first, lam_div, lam_mod}, outer, n, inner,
      fallback);
}

// The fallback pass: the fibers tv1d_condat deferred, re-solved from x by the taut string.
// Thread t of the grid's `slots` threads solves list entries t, t + slots, ... with its own
// taut_string_scratch<T>(n) elements of scratch; it reads every sample in place (strided or
// not), as the unstaged forward does.
template <typename T>
__global__ void __launch_bounds__(TV1D_BLOCK)
    tv1d_fallback(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ lam,
                  T lam_value, cupytv::index_t lam_first, cupytv::index_t lam_div,
                  cupytv::index_t lam_mod, cupytv::index_t n, cupytv::index_t inner,
                  const cupytv::index_t* __restrict__ fallback, cupytv::index_t slots,
                  T* __restrict__ scratch) {
  using cupytv::index_t;
  const index_t t = cupytv::block_start_x() + threadIdx.x;
  if (t >= slots) return;
  const cupytv::FiberWeight<T> weight{lam, lam_value, lam_first, lam_div, lam_mod};
  const index_t count = fallback[0];
  T* const ws = scratch + t * tv1d::taut_string_scratch<T>(n);
  TV_PROBE_LOOP(fallback);
  for (index_t k = t; k < count; k += slots) {
    TV_PROBE_TRIP(fallback);
    const index_t f = fallback[1 + k];
    const index_t o = f / inner;
    const index_t base = o * n * inner + (f - o * inner);
    // The fiber's x is pristine; a non-finite fiber (deferred before its scan reached the
    // sample that is not finite) gets its NaNs from tv1d_taut_string_fiber's trivial_fiber.
    tv1d_taut_string_fiber(x + base, inner, y + base, inner, n, weight(f), ws);
  }
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

// Reciprocals 1 / len of segment lengths up to TV1D_RECIP_MAX, per block in shared memory: the
// VJP's segment means are sum * (1 / len), so no division sits in its loop (longer segments,
// rare and long, divide).
#define TV1D_RECIP_MAX 128

// kTable false: the reciprocal is computed here (the host executor: a CPU divides quickly, and a
// shared table would cost a block barrier); the same correctly rounded 1 / len, so the same bits.
template <bool kTable>
__device__ __forceinline__ double segment_mean(double sum, index_t len, const double* recip) {
  if (len > TV1D_RECIP_MAX) {
    TV_PROBE(vjp_long_segment);
    return sum / static_cast<double>(len);
  }
  return sum * (kTable ? recip[len] : 1.0 / static_cast<double>(len));
}


// The backward of one fiber (see the header): segments are runs of equal y.
template <bool kTable, typename T>
__device__ __forceinline__ T vjp_fiber(const T* yf, const T* gf, T* gx, index_t s, index_t n,
                                       double tiny, const double* recip) {
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
      const double mean = segment_mean<kTable>(sum, end - start, recip);
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

namespace tv1d {

// The backward of one fiber with segments = runs of bit-identical values (tiny == 0), in two
// passes of n trips each, the same for every lane of a warp whatever its segments (the loop that
// walked segment by segment issued every lane's runs separately): forward, summing g and storing
// each segment's mean at its last sample; backward, spreading each mean over its segment.
// y is read in place (stride sy); gx (stride sx) holds the means between the passes.
template <typename T>
__device__ __forceinline__ T vjp_uniform(const T* yf, index_t sy, const T* gf, index_t sg, T* gx,
                                         index_t sx, index_t n, const double* recip) {
  TV_PROBE(vjp_uniform_setup);
  bool finite = true;
  double sum = 0.0, glam = 0.0, s_in = 0.0;
  index_t start = 0;
  T cur = yf[0];
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(vjp_sum);
    #pragma unroll 1  // one trip per copy: the proxy prices trips as written
    for (index_t k = 0; k < n; ++k) {
      TV_PROBE_TRIP(vjp_sum);
      TV_PROBE_ACCESS(vjp_g, &gf[k * sg]);
      finite &= fabs(static_cast<double>(cur)) <= TV1D_DOUBLE_MAX;
      sum += static_cast<double>(gf[k * sg]);
      const bool last = k + 1 == n;
      TV_PROBE_ACCESS(vjp_y, &yf[(last ? k : k + 1) * sy]);
      const T next = yf[(last ? k : k + 1) * sy];
      if (last || !(next == cur)) {
        TV_PROBE(vjp_segment_end);
        const double mean = segment_mean<true>(sum, k + 1 - start, recip);
        gx[k * sx] = static_cast<T>(mean);
        const double s_out = last ? 0.0 : static_cast<double>((next > cur) - (next < cur));
        glam += (s_out - s_in) * mean;
        s_in = s_out;
        sum = 0.0;
        start = k + 1;
      }
      cur = next;
    }
  }
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(vjp_spread);
    T mean = gx[(n - 1) * sx];
    T after = yf[(n - 1) * sy];
    #pragma unroll 1  // one trip per copy: the proxy prices trips as written
    for (index_t k = n - 1; k >= 0; --k) {
      TV_PROBE_TRIP(vjp_spread);
      TV_PROBE_ACCESS(vjp_y, &yf[k * sy]);
      const T here = yf[k * sy];
      if (!(here == after)) mean = gx[k * sx];  // k ends a segment: its mean is stored there
      gx[k * sx] = mean;
      after = here;
    }
  }
  if (!finite) {
    fill(gx, sx, 0, n, static_cast<T>(quiet_nan()));
    glam = quiet_nan();
  }
  return static_cast<T>(glam);
}

// The same from a staged tile: `row` holds g on entry and the gradient on exit; the segment ends
// and the jump directions arrive as bit masks (bit k: a segment ends at k / y steps up after k),
// computed from y while it was in the tile, so y is read from global memory once, coalesced.
template <typename T>
__device__ __forceinline__ T vjp_staged(T* row, index_t n, unsigned long long ends,
                                        unsigned long long ups, bool finite, const double* recip) {
  TV_PROBE(vjp_staged_setup);
  double sum = 0.0, glam = 0.0, s_in = 0.0;
  index_t start = 0;
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(vjp_tile_sum);
    #pragma unroll 1  // one trip per copy: the proxy prices trips as written
    for (index_t k = 0; k < n; ++k) {
      TV_PROBE_TRIP(vjp_tile_sum);
      TV_PROBE_ACCESS(vjp_tile, &row[k]);
      sum += static_cast<double>(row[k]);
      if ((ends >> k) & 1ULL) {
        TV_PROBE(vjp_tile_segment_end);
        const double mean = segment_mean<true>(sum, k + 1 - start, recip);
        row[k] = static_cast<T>(mean);
        const double s_out =
            k + 1 == n ? 0.0 : (((ups >> k) & 1ULL) ? 1.0 : -1.0);  // an end inside is a jump
        glam += (s_out - s_in) * mean;
        s_in = s_out;
        sum = 0.0;
        start = k + 1;
      }
    }
  }
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(vjp_tile_spread);
    T mean = row[n - 1];
    #pragma unroll 1  // one trip per copy: the proxy prices trips as written
    for (index_t k = n - 1; k >= 0; --k) {
      TV_PROBE_TRIP(vjp_tile_spread);
      TV_PROBE_ACCESS(vjp_tile, &row[k]);
      if ((ends >> k) & 1ULL) mean = row[k];
      row[k] = mean;
    }
  }
  if (!finite) {
    fill(row, 1, 0, n, static_cast<T>(quiet_nan()));
    glam = quiet_nan();
  }
  return static_cast<T>(glam);
}

}  // namespace tv1d

template <typename T, bool kStage = true>
__global__ void __launch_bounds__(TV1D_BLOCK)
    tv1d_vjp(const T* __restrict__ y, const T* __restrict__ g, T* __restrict__ grad_x,
             T* __restrict__ grad_lam, cupytv::index_t outer, cupytv::index_t n,
             cupytv::index_t inner, double tiny) {
  using cupytv::index_t;
  TV_PROBE(vjp_kernel);
  const index_t fibers = outer * inner;
  const index_t first = cupytv::block_start_x();
  const index_t f = first + threadIdx.x;
  __shared__ double recip_table[TV1D_RECIP_MAX + 1];
  const double* recip = nullptr;
  if (kStage) {
    for (unsigned int len = threadIdx.x; len <= TV1D_RECIP_MAX; len += blockDim.x) {
      recip_table[len] = len == 0 ? 0.0 : 1.0 / static_cast<double>(len);
    }
    __syncthreads();
    recip = recip_table;
  }
  // The GPU variant (kStage) runs uniform passes; the host executor's walks segment by segment,
  // which a CPU runs 1.7x faster (one read of y and g, one write). Both form each mean as
  // segment_mean does, so they give the same bits. tiny > 0 (outputs of iterative solvers):
  // segments within tiny of their first value, which only the walk tests.
  const bool uniform = kStage && tiny == 0.0;
  if (uniform && n <= TV1D_VJP_STAGE_MAX_N && tv1d::tile_fits<T>(n, inner)) {
    TV_PROBE(vjp_staged);
    // y through the tile first (coalesced), reduced to each fiber's masks; then g into the same
    // tile, solved in place, stored back as grad_x (coalesced). Every thread reaches every
    // barrier; threads past the last fiber only move data.
    extern __shared__ __align__(16) unsigned char tv1d_shared_raw[];
    const tv1d::StagedTile<T> tile(tv1d_shared_raw, n, fibers, first);
    const index_t offset = first * n;
    tile.load(y + offset);
    __syncthreads();
    unsigned long long ends = 0, ups = 0;
    bool finite = true;
    if (threadIdx.x < tile.count) {
      TV_PROBE(vjp_masks);
      const T* mine = tile.fiber(threadIdx.x);
      T cur = mine[0];
      TV_PROBE_LOOP(vjp_mask);
      #pragma unroll 1  // one trip per copy: the proxy prices trips as written
      for (index_t k = 0; k < n; ++k) {
        TV_PROBE_TRIP(vjp_mask);
        TV_PROBE_ACCESS(vjp_tile, &mine[k + 1 < n ? k + 1 : k]);
        finite &= fabs(static_cast<double>(cur)) <= TV1D_DOUBLE_MAX;
        const T next = mine[k + 1 < n ? k + 1 : k];
        const unsigned long long bit = 1ULL << k;
        if (k + 1 == n || !(next == cur)) ends |= bit;
        if (next > cur) ups |= bit;
        cur = next;
      }
    }
    __syncthreads();
    tile.load(g + offset);
    __syncthreads();
    if (threadIdx.x < tile.count) {
      grad_lam[f] = tv1d::vjp_staged(tile.fiber(threadIdx.x), n, ends, ups, finite, recip);
    }
    __syncthreads();
    tile.store(grad_x + offset);
    return;
  }
  if (f >= fibers) return;
  const index_t o = f / inner;
  const index_t base = o * n * inner + (f - o * inner);
  // A literal stride for contiguous fibers, as in the forward.
  if (uniform) {
    grad_lam[f] =
        inner == 1
            ? tv1d::vjp_uniform(y + base, 1, g + base, 1, grad_x + base, 1, n, recip)
            : tv1d::vjp_uniform(y + base, inner, g + base, inner, grad_x + base, inner, n, recip);
  } else {
    grad_lam[f] =
        inner == 1
            ? tv1d::vjp_fiber<kStage>(y + base, g + base, grad_x + base, 1, n, tiny, recip)
            : tv1d::vjp_fiber<kStage>(y + base, g + base, grad_x + base, inner, n, tiny, recip);
  }
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
