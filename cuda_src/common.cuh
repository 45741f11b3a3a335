// Definitions shared by every kernel file in cuda_src/.
//
// Kernel files pull this in with `#include "common.cuh"`; the loader (cupytv/_loader.py) replaces
// that line with this file's text before handing the source to NVRTC or to the host compiler, so
// CuPy's cache key (the source string) changes whenever this file does.
#pragma once

// Cost hooks for the warp-lockstep proxy (issue 17; cupytv/_host/probe.h, cupytv/gpu_proxy.py).
// They expand to nothing unless the host executor is built with -DCUPYTV_PROBE (the loader's probe
// mode), so NVRTC and normal host builds compile exactly the code without them. A region is named
// by the hook; scripts/gpu_proxy_costs.py prices it from the sm_90 SASS of the source lines the
// hook's enclosing block spans (from the loop header when the hook opens a loop body).
//   TV_PROBE(name)             the region ran once
//   TV_PROBE_N(name, n)        the region ran n times (an inner loop: a warp pays its longest lane)
//   TV_PROBE_LOOP(name)        a loop's extent, to the end of the enclosing scope (so code that
//                              follows a loop needs the hook and the loop in a scope of their
//                              own, or it counts as part of each lane's last trip)
//   TV_PROBE_TRIP(name)        one trip of that loop (trips are aligned across a warp's lanes)
//   TV_PROBE_ACCESS(name, p)   a load or store of *p (shared-memory banks, global sectors)
#if defined(CUPYTV_PROBE) && !defined(__CUDACC__)
#define TV_PROBE_ID_(name) ([] {                                   \
  static const int cupytv_probe_id = ::cupytv_probe::intern(#name); \
  return cupytv_probe_id;                                          \
}())
#define TV_PROBE(name) ::cupytv_probe::record(::cupytv_probe::kHit, TV_PROBE_ID_(name), 0)
#define TV_PROBE_N(name, n)                                       \
  ::cupytv_probe::record(::cupytv_probe::kCount, TV_PROBE_ID_(name), \
                         static_cast<unsigned long long>(n))
#define TV_PROBE_LOOP(name) ::cupytv_probe::Loop cupytv_probe_loop_##name(TV_PROBE_ID_(name))
#define TV_PROBE_TRIP(name) ::cupytv_probe::record(::cupytv_probe::kTrip, TV_PROBE_ID_(name), 0)
#define TV_PROBE_ACCESS(name, p) \
  ::cupytv_probe::access(TV_PROBE_ID_(name), (p), sizeof(*(p)))
#else
#define TV_PROBE(name)
#define TV_PROBE_N(name, n)
#define TV_PROBE_LOOP(name)
#define TV_PROBE_TRIP(name)
#define TV_PROBE_ACCESS(name, p)
#endif

namespace cupytv {

// Sizes, strides and indices are 64-bit everywhere: tensors may hold more than 2^31 elements.
typedef long long index_t;

// First element of this block's tile along x. The product is formed in 64 bits because
// blockIdx.x * blockDim.x overflows 32-bit arithmetic once a grid covers 2^32 elements.
__device__ __forceinline__ index_t block_start_x() {
  return static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x);
}

// One weight per fiber, read without expanding it to every fiber on the host (the weight goes to
// the kernel as the caller gave it: a scalar by value, an array with one entry per value).
// lam_mod == 0: every fiber uses `value`, and `lam` is never read. Otherwise fiber f of the whole
// array (launch-local fiber f of a chunk that starts at fiber `first`) reads
// lam[((first + f) / div) % mod]: a weight that varies along consecutive dimensions of the fiber
// grid (per channel of (N, C, L): div 1, mod C; per sample: div C, mod N; both: div 1, mod N*C).
// The wrapper expands any other pattern to one entry per fiber (div 1, mod = fibers).
template <typename T>
struct FiberWeight {
  const T* lam;
  T value;
  index_t first, div, mod;
  __device__ __forceinline__ T operator()(index_t f) const {
    return mod == 0 ? value : lam[((first + f) / div) % mod];
  }
};

// Per-type constants: machine epsilon (2 x the unit roundoff), the largest finite value, a quiet
// NaN (through bit patterns: NVRTC has no <limits>, and 0.0 / 0.0 is folded differently by
// compilers), and gap_slack, the factor on eps in the 2D certificate's rounding slack (tv2d.cu
// row_gap; cupytv/tvnd.py mirrors both values). float32 iterates are the 1D solutions' double
// values rounded once (measured need <= 0.15 of eps sum |z - s| (|x| + |z|)); float64 ones carry
// the rounding of Condat's double segment sums too, up to a few ulps per sample (measured need
// 2.6 on spikes at -1000, 31 x 32 to 70 x 90), which grows with the fibers' length.
template <typename T>
struct Limits;
template <>
struct Limits<float> {
  static constexpr double eps = 1.1920928955078125e-7;  // 2^-23
  static constexpr double gap_slack = 1.0;
  static constexpr float max_finite = 3.402823466e38f;
  __device__ static float nan() { return __int_as_float(0x7fc00000); }
};
template <>
struct Limits<double> {
  static constexpr double eps = 2.220446049250313e-16;  // 2^-52
  static constexpr double gap_slack = 8.0;
  static constexpr double max_finite = 1.7976931348623157e308;
  __device__ static double nan() { return __longlong_as_double(0x7ff8000000000000LL); }
};

}  // namespace cupytv
