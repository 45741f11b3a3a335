// Projected Newton (PN) for the 1D TV proximal operator: one thread per fiber, the whole solve of
// a fiber inside one launch. Included by cuda_src/tv1d.cu (the loader inlines it).
//
// Objective, per fiber x in R^n with weight lam >= 0:
//   y = argmin_y 1/2 ||y - x||^2 + lam * sum_{k<n-1} |y[k+1] - y[k]|.
// Dual (D: (Dz)[k] = z[k+1] - z[k], shape (n-1, n)):
//   min_u f(u) = 1/2 ||D^T u||^2 - u^T D x   s.t. |u[k]| <= lam,   y = x - D^T u,
// so u = cumsum(y - x), and the gradient is g = D D^T u - D x = -D y, g[k] = y[k] - y[k+1].
// The duality gap of a feasible u (primal at y = x - D^T u minus dual) is a sum of non-negative
// terms, gap(u) = sum_k lam |g[k]| + u[k] g[k]; it bounds 1/2 ||y - y*||^2.
//
// Algorithm (D. P. Bertsekas, "Projected Newton methods for optimization problems with simple
// constraints", SIAM J. Control Optim. 20(2), 1982, applied to this dual as in A. Barbero and
// S. Sra, "Fast Newton-type methods for total variation regularization", ICML 2011, and proxTV):
//   0. A pass for finiteness and the mean; a pass for lam_max = max |u0| of u0 = cumsum(mean - x)
//      (the unconstrained minimiser; lam_max is the smallest lam whose prox is the constant mean)
//      and max|x - mean|; one writing u0 (scaled: see solve_fiber). The box is
//      b = min(lam, 2 lam_max): for lam > lam_max the dual optimum lies strictly inside both
//      boxes, so the solution is the same and no dual quantity exceeds O(n max|x|) however large
//      lam is. The first Newton pass clips u0 to the box. The solver works on xs = x - mean
//      (rounded to T; D xs = D x, so the dual is unchanged): rounding then scales with the signal's
//      variation rather than its offset (1e4 + N(0, 1) in float32 needs this).
//   1. Free set: every k except those at a bound with the gradient pushing outward (u[k] == b and
//      g[k] < 0, or u[k] == -b and g[k] > 0). The projection clips to exactly +-b, so "at a bound"
//      is an exact comparison.
//   2. Newton direction d = (D D^T)_FF^{-1} g_F on the free set F, 0 elsewhere. D D^T =
//      tridiag(-1, 2, -1) restricted to F splits into independent blocks of consecutive free
//      indices, each solved by the Thomas algorithm. For this matrix the pivots are known, (p+1)/p
//      at 1-based position p in a block, so the forward sweep is the running sum
//      e[p] = e[p-1] + p g[p] and the back substitution d[p] = (e[p] + p d[p+1]) / (p+1), run over
//      each block as soon as it ends, within the same pass that computes g. O(n).
//   3. Projected backtracking line search on u(a) = clip(u - a d, -b, b), a = 1 first. f is
//      quadratic, so f(u + s) - f(u) = g^T s + 1/2 ||D^T s||^2 is evaluated exactly from the step
//      s, never as a difference of two large objective values. Armijo: accept when
//      f(u(a)) - f(u) <= ARMIJO_SIGMA g^T s. Otherwise the next a is the minimiser of the quadratic
//      interpolating f along the trial step, a (-g^T s) / ||D^T s||^2, safeguarded to
//      [STEP_SHRINK_MIN a, STEP_SHRINK_MAX a]. After LINE_SEARCH_MAX_STEPS failures, or when a
//      trial does not point downhill (g^T s >= 0: projection blocks the direction), one projected
//      gradient step clip(u - g / 4) is taken instead (||D D^T|| < 4, so it cannot increase f).
//   4. Stop at the first of:
//      - gap(u) <= tol = GAP_TOL_FACTOR eps(T) 2b sum_{k free} (|xs[k]| + |xs[k+1]| + 4b),
//        an estimate of the rounding floor of the computed gap (a held k contributes exactly 0; a
//        free one carries an error of about eps(T) (|xs[k]| + |xs[k+1]| + 4 b) in g[k], weighted by
//        b + |u[k]| <= 2 b). Scale-aware: invariant under (x, lam) -> (c x, c lam) and under
//        offsets, local to the free set (a large-magnitude region elsewhere does not loosen it),
//        and the same rule for float and double with their own eps (2^-23, 2^-52);
//      - PN's finite termination: the last step was a full Newton step that no bound clipped and
//        every variable at a bound is still held, so u minimises f on its face and satisfies KKT;
//      - stagnation: the last accepted step changed no u[k] (nothing can change any more in T);
//      - PN_MAX_ITERATIONS iterations.
//   5. Polish. A jump is a k with |u[k]| >= lam (1 - sqrt(eps(T))), of sign s = sign(u[k]);
//      segments are the maximal runs between jumps. Each segment S gets the value the optimality
//      conditions give, y_S = (sum_S x + lam (s_out - s_in)) / |S| (s_in, s_out: signs of the jumps
//      into and out of S, 0 at the fiber ends), from a double sum, rounded to T once and written to
//      all of S, so every segment is a run of bit-identical values and the result is exact whenever
//      the structure is right. Consistency: every jump must separate values (in T) that differ
//      with its sign; a jump that vanishes or flips is removed and its two segments merge. This is
//      done in one left-to-right scan with a segment stack, like pool-adjacent-violators (merges
//      cascade leftwards; each removes a jump, so O(n) in all). The threshold errs towards jumps
//      because a spurious jump is caught by this test while a missing one would not be, and PN's
//      own error mode (variables still held that the optimum frees) is exactly spurious jumps.
//   Special cases: a fiber holding NaN or +-Inf, or whose lam is NaN or negative, comes out all
//   NaN; lam == 0, n == 1 and constant fibers return x bit for bit. Range: the dual arithmetic
//   needs |x - mean| + 2 min(lam, 2 lam_max) to stay finite in T and the double sums of x not to
//   overflow; a fiber beyond that (e.g. float32 values near 3e38 with lam as large) still
//   terminates, with NaN or Inf in its output.
//
// Precision: vectors (u, d, the gradient) in T; every reduction (segment sums, the mean, lam_max,
// the gap and its tolerance, g^T s, ||D^T s||^2) in double, cheap next to the passes over memory.
// float32 results match the exact prox of the float32 input to within rounding (<= 0.5 ulp in our
// tests) once the structure is found.
//
// Caps (every loop is bounded): PN_MAX_ITERATIONS Newton iterations, LINE_SEARCH_MAX_STEPS trials
// per line search, the polish is one scan plus one write pass. Random signals finish in 2-6
// iterations; long ramps are PN's slow case (each iteration frees one more variable at each end
// of a flat run) and may reach the cap, after which the polish's merges complete the structure
// (exact in most of our tests, but not guaranteed: a jump PN has not yet found is not added; two
// concatenated ramps with lam = 1e3 came out 4.4 off). So a fiber that stops without its
// certificate (the gap test or finite termination; i.e. at the cap or stalled above the gap's
// rounding floor) is flagged in `uncertified`, and the wrapper re-solves it with the taut string.
//
// Arguments (the tv1d_* forward contract): x, y: (outer, n, inner), C-contiguous; fiber (o, i)
// holds x[(o*n + k)*inner + i]; fiber f = o*inner + i has the weight cupytv::FiberWeight built
// from (lam, lam_value, lam_first, lam_div, lam_mod), as in tv1d.cu. uncertified[f] = 1 for a fiber f that stopped without a certificate (see
// Caps), else untouched (the wrapper zeroes it). scratch: 16 bytes per element per fiber, i.e. TV1D_PN_SCRATCH_PER_ELEMENT(T)
// = 16 / sizeof(T) elements of T (2 for double, 4 for float) times n * outer * inner in all: the
// planes u and d for the solver, reused by the polish as its segment stack (first index as a
// 64-bit integer, sum as a double, stored as bit patterns of T).
//
// Launch: block = (TV1D_PN_BLOCK,) = (128,), grid = (ceil(outer*inner / 128),), shared_mem = 0
// (any block size is correct). Threading model: thread f = blockIdx.x*blockDim.x + threadIdx.x
// solves fiber f = o*inner + i alone, start to finish, with no barriers; adjacent threads take
// adjacent i, so strided fibers (inner > 1) are read coalesced; contiguous fibers (inner == 1) are
// read in place, one row per thread. Scratch layout: on the GPU (and on the host when
// TV1D_PN_INTERLEAVED_SCRATCH is defined, for tests) element k of plane p of fiber f is
// scratch[(p*n + k)*fibers + f], so adjacent threads touch adjacent words; on the host executor
// the planes of a fiber are contiguous, scratch[(f*planes + p)*n + k], because a CPU thread runs a
// whole fiber alone and a 16n-byte working set stays in cache. Both layouts give identical results.
#pragma once

#include "common.cuh"

// Threads per block the wrapper launches with (any block size is correct).
#define TV1D_PN_BLOCK 128
// Elements of T of scratch per fiber element: 16 bytes (planes u and d, or the polish's stack).
#define TV1D_PN_SCRATCH_PER_ELEMENT(T) (16 / sizeof(T))

namespace cupytv {
namespace tv1d_pn_detail {

// Bounds on the exponent of the power of two the solver scales a fiber by (solve_fiber): the
// factor itself must be finite in T.
#define PN_UNIT_EXP_MAX_FLOAT 126
#define PN_UNIT_EXP_MAX_DOUBLE 1000
// Newton iterations per fiber. Finite termination ends most solves in under 10.
constexpr int PN_MAX_ITERATIONS = 100;
// Trials per line search before falling back to a projected gradient step.
constexpr int LINE_SEARCH_MAX_STEPS = 20;
// Sufficient-decrease constant of the Armijo test.
constexpr double ARMIJO_SIGMA = 0.05;
// Safeguards of the interpolated step: the next trial lies in [MIN, MAX] times the current one.
constexpr double STEP_SHRINK_MIN = 0.1;
constexpr double STEP_SHRINK_MAX = 0.5;
// Multiplies the rounding floor of the computed duality gap to give the stopping tolerance.
constexpr double GAP_TOL_FACTOR = 1.0;
// Step of the fallback projected gradient step: 1 / ||D D^T||, ||D D^T|| < 4.
constexpr double GRADIENT_STEP = 0.25;

// A fiber (or scratch plane) read with a stride: element k is p[k * stride].
template <typename T>
struct Strided {
  T* p;
  index_t stride;
  __device__ __forceinline__ T& operator[](index_t k) const { return p[k * stride]; }
};

// A fiber's scratch: plane p (n elements of T) is Strided{origin + p * plane_step, stride}.
template <typename T>
struct Planes {
  static constexpr int count = TV1D_PN_SCRATCH_PER_ELEMENT(T);  // 2 or 4 planes
  T* origin;
  index_t plane_step, stride;
  __device__ __forceinline__ Strided<T> operator()(int p) const {
    return Strided<T>{origin + p * plane_step, stride};
  }
};

template <typename T>
__device__ __forceinline__ T clip(T v, T b) {
  return v > b ? b : (v < -b ? -b : v);
}

template <typename T>
__device__ __forceinline__ void fill(Strided<T> y, index_t n, T value) {
  for (index_t k = 0; k < n; ++k) y[k] = value;
}

template <typename T>
__device__ __forceinline__ void copy(Strided<const T> x, Strided<T> y, index_t n) {
  for (index_t k = 0; k < n; ++k) y[k] = x[k];
}

// One pass: g[k] at the current u, the free set, the gap, and the Newton direction by blockwise
// Thomas sweeps, written to d (0 off the free set). Before it, the pending step u = clip(u - a d)
// of the previous iteration is applied (a = 0: none), reading the old d one element ahead of where
// the new one is written.
struct NewtonPass {
  double gap;       // duality gap at the updated u
  index_t at_bound; // variables with |u| == b
  index_t held;     // ... of which the gradient pushes outward (not free)
  bool moved;       // the pending step changed some u[k]
  double noise;     // sum over free k of |xs[k]| + |xs[k+1]| + 4 b: scales the gap's rounding floor
};

template <typename T>
__device__ NewtonPass newton_pass(Strided<const T> x, T shift, T unit, Strided<T> u,
                                  Strided<T> d, index_t n, T b, T step) {
  NewtonPass r{0.0, 0, 0, false, 0.0};
  const index_t m = n - 1;  // dual variables
  // Sliding window: u_cur = u[k] (updated), y_cur = y[k].
  T u_cur = clip(step != T(0) ? u[0] - step * d[0] : u[0], b);
  r.moved = u_cur != u[0];
  T x_cur = (x[0] - shift) * unit;
  T y_cur = x_cur + u_cur;
  index_t p = 0;  // 1-based position in the current free block, 0 outside one
  T e = T(0);     // forward sweep: e[p] = e[p-1] + p g[p]
  for (index_t k = 0; k < m; ++k) {
    T u_next = T(0);
    if (k + 1 < m) {
      const T old = u[k + 1];
      u_next = clip(step != T(0) ? old - step * d[k + 1] : old, b);
      r.moved |= u_next != old;
    }
    const T x_next = (x[k + 1] - shift) * unit;
    const T y_next = x_next - u_cur + u_next;
    const T g = y_cur - y_next;
    u[k] = u_cur;
    r.gap += static_cast<double>(b) * fabs(static_cast<double>(g)) +
             static_cast<double>(u_cur) * static_cast<double>(g);
    const bool upper = u_cur >= b, lower = u_cur <= -b;
    const bool held = (upper && g < T(0)) || (lower && g > T(0));
    r.at_bound += (upper || lower) ? 1 : 0;
    r.held += held ? 1 : 0;
    if (!held) {
      r.noise += static_cast<double>(fabs(x_cur)) + static_cast<double>(fabs(x_next)) +
                 4.0 * static_cast<double>(b);
      ++p;
      e += static_cast<T>(p) * g;
      d[k] = e;
    } else {
      d[k] = T(0);
    }
    // A free block ended at k-1 (k held) or ends at k (the last variable, free): back
    // substitution over it, (p+1) d[p] = e[p] + p d[p+1].
    if (p > 0 && (held || k + 1 == m)) {
      const index_t end = held ? k - 1 : k;
      T d_next = T(0);
      index_t q = p;
      for (index_t j = end; q >= 1; --j, --q) {
        // 1/(q+1) does not depend on the recurrence, so the division stays off its critical path.
        const T inv = T(1) / static_cast<T>(q + 1);
        const T dj = (d[j] + static_cast<T>(q) * d_next) * inv;
        d[j] = dj;
        d_next = dj;
      }
      p = 0;
      e = T(0);
    }
    x_cur = x_next;
    u_cur = u_next;
    y_cur = y_next;
  }
  return r;
}

// One line-search trial at step a: the change of f and g^T s for s = clip(u - a d) - u.
struct Trial {
  double df;       // f(u + s) - f(u)
  double g_dot_s;  // g^T s
  double curv;     // ||D^T s||^2
  bool clipped;    // some u - a d fell outside the box
};

template <typename T>
__device__ Trial trial(Strided<const T> x, T shift, T unit, Strided<T> u, Strided<T> d, index_t n,
                       T b, T step) {
  Trial t{0.0, 0.0, 0.0, false};
  const index_t m = n - 1;
  T u_cur = u[0];
  T y_cur = (x[0] - shift) * unit + u_cur;
  T s_prev = T(0);
  for (index_t k = 0; k < m; ++k) {
    const T u_next = k + 1 < m ? u[k + 1] : T(0);
    const T y_next = (x[k + 1] - shift) * unit - u_cur + u_next;
    const T g = y_cur - y_next;
    const T target = u_cur - step * d[k];
    t.clipped |= target > b || target < -b;
    const T s = clip(target, b) - u_cur;
    t.g_dot_s += static_cast<double>(g) * static_cast<double>(s);
    const double ds = static_cast<double>(s_prev) - static_cast<double>(s);
    t.curv += ds * ds;
    s_prev = s;
    u_cur = u_next;
    y_cur = y_next;
  }
  t.curv += static_cast<double>(s_prev) * static_cast<double>(s_prev);
  t.df = t.g_dot_s + 0.5 * t.curv;
  return t;
}

// d = GRADIENT_STEP * g, so that the next pending step clip(u - d) is a projected gradient step.
template <typename T>
__device__ void gradient_direction(Strided<const T> x, T shift, T unit, Strided<T> u,
                                   Strided<T> d, index_t n) {
  const index_t m = n - 1;
  T u_cur = u[0];
  T y_cur = (x[0] - shift) * unit + u_cur;
  for (index_t k = 0; k < m; ++k) {
    const T u_next = k + 1 < m ? u[k + 1] : T(0);
    const T y_next = (x[k + 1] - shift) * unit - u_cur + u_next;
    d[k] = static_cast<T>(GRADIENT_STEP) * (y_cur - y_next);
    u_cur = u_next;
    y_cur = y_next;
  }
}

// The polish's segment stack: entry j holds a segment's first index and its sum of x (double).
// It lives in the scratch planes the solver no longer needs, as bit patterns of T so that every
// plane is only ever accessed as T (no type punning through pointers).
template <typename T>
struct SegmentStack;
template <>
struct SegmentStack<double> {
  Strided<double> start, sum;  // planes 0 (u) and 1 (d)
  __device__ explicit SegmentStack(const Planes<double>& p) : start(p(0)), sum(p(1)) {}
  __device__ void put(index_t j, index_t first, double s) const {
    start[j] = __longlong_as_double(first);
    sum[j] = s;
  }
  __device__ index_t first(index_t j) const { return __double_as_longlong(start[j]); }
  __device__ double total(index_t j) const { return sum[j]; }
  __device__ void set_total(index_t j, double s) const { sum[j] = s; }
};
template <>
struct SegmentStack<float> {
  Strided<float> start_lo, start_hi, sum_hi, sum_lo;  // planes 0 to 3
  __device__ explicit SegmentStack(const Planes<float>& p)
      : start_lo(p(0)), start_hi(p(1)), sum_hi(p(2)), sum_lo(p(3)) {}
  __device__ void put(index_t j, index_t first, double s) const {
    const unsigned long long bits = static_cast<unsigned long long>(first);
    start_lo[j] = __int_as_float(static_cast<int>(static_cast<unsigned int>(bits)));
    start_hi[j] = __int_as_float(static_cast<int>(static_cast<unsigned int>(bits >> 32)));
    set_total(j, s);
  }
  __device__ index_t first(index_t j) const {
    const unsigned long long lo = static_cast<unsigned int>(__float_as_int(start_lo[j]));
    const unsigned long long hi = static_cast<unsigned int>(__float_as_int(start_hi[j]));
    return static_cast<index_t>((hi << 32) | lo);
  }
  // A double as an unevaluated float pair hi + lo: relative error about 2^-48.
  __device__ double total(index_t j) const {
    return static_cast<double>(sum_hi[j]) + static_cast<double>(sum_lo[j]);
  }
  __device__ void set_total(index_t j, double s) const {
    const float hi = static_cast<float>(s);
    sum_hi[j] = hi;
    sum_lo[j] = static_cast<float>(s - static_cast<double>(hi));
  }
};

// Value of a segment from its sum, length and the signs of the jumps into and out of it, rounded
// to T: what is written, and what the consistency test compares.
template <typename T>
__device__ __forceinline__ T segment_value(double sum, index_t len, T s_in, T s_out, double lam) {
  // lam is only multiplied by a nonzero sign difference: lam = +Inf must not meet 0.
  if (s_out != s_in) sum += lam * static_cast<double>(s_out - s_in);
  return static_cast<T>(sum / static_cast<double>(len));
}

// Polish (step 5). A left-to-right scan classifies u[k] into jump signs, kept in y, and pushes the
// segments they delimit on a stack; like pool-adjacent-violators, while the jump below the newest
// segment contradicts the two values it separates, the two merge (each merge removes a jump, so
// the scan is O(n) in all). A right-to-left pass over the stack then writes each segment's value,
// reading jump signs in y only left of everything written so far. The value of the entry below
// the newest segment is cached: it is recomputed only after a merge.
template <typename T>
__device__ void polish(Strided<const T> x, Strided<T> y, Strided<const T> u,
                       const SegmentStack<T>& stack, index_t n, T lam, T lam_u) {
  const index_t m = n - 1;
  const T threshold = lam_u * static_cast<T>(1.0 - sqrt(Limits<T>::eps));
  const double lam_d = static_cast<double>(lam);
  index_t top = -1;  // index of the top entry of the stack
  T v_top = T(0);    // its value (its outgoing jump is the incoming jump of the next segment)
  index_t start = 0;
  T s_in = T(0);
  double sum = 0.0;
  for (index_t k = 0; k < n; ++k) {
    sum += static_cast<double>(x[k]);
    T s_out = T(0);
    if (k < m) {
      const T v = u[k];
      s_out = v >= threshold ? T(1) : (v <= -threshold ? T(-1) : T(0));
      y[k] = s_out;
      if (s_out == T(0)) continue;
    }
    // The segment [start, k] is complete; merge it into the stack while its jump disagrees.
    index_t a = start;
    T v = segment_value(sum, k + 1 - a, s_in, s_out, lam_d);
    while (top >= 0 && !(s_in * (v - v_top) > T(0))) {
      a = stack.first(top);
      sum += stack.total(top);
      --top;
      s_in = a > 0 ? y[a - 1] : T(0);
      v = segment_value(sum, k + 1 - a, s_in, s_out, lam_d);
      if (top >= 0) {
        const index_t a_top = stack.first(top);
        const T s_top = a_top > 0 ? y[a_top - 1] : T(0);
        v_top = segment_value(stack.total(top), a - a_top, s_top, s_in, lam_d);
      }
    }
    stack.put(++top, a, sum);
    v_top = v;
    start = k + 1;
    s_in = s_out;
    sum = 0.0;
  }
  index_t end = n;  // one past the current entry
  T s_out = T(0);
  for (index_t j = top; j >= 0; --j) {
    const index_t a = stack.first(j);
    const T s = a > 0 ? y[a - 1] : T(0);
    const T v = segment_value(stack.total(j), end - a, s, s_out, lam_d);
    for (index_t k = a; k < end; ++k) y[k] = v;
    end = a;
    s_out = s;
  }
}

// Returns false when the fiber stopped without a certificate (see Caps).
template <typename T>
__device__ bool solve_fiber(Strided<const T> x, Strided<T> y, const Planes<T>& scratch, index_t n,
                            T lam) {
  // Pass 0: finiteness and the sum.
  double sum = 0.0;
  bool finite = true;
  for (index_t k = 0; k < n; ++k) {
    const T a = fabs(x[k]);
    finite &= a <= Limits<T>::max_finite;  // false for NaN and +-Inf
    sum += static_cast<double>(x[k]);
  }
  if (!finite || !(lam >= T(0))) {
    fill(y, n, Limits<T>::nan());
    return true;
  }
  if (lam == T(0) || n == 1) {
    copy(x, y, n);
    return true;
  }
  // Pass 1: lam_max, max|x - mean| and the box.
  const Strided<T> u = scratch(0), d = scratch(1);
  const double mean = sum / static_cast<double>(n);
  double c = 0.0, lam_max = 0.0, dev = 0.0;
  for (index_t k = 0; k < n; ++k) {
    const double v = mean - static_cast<double>(x[k]);
    dev = fabs(v) > dev ? fabs(v) : dev;
    if (k + 1 == n) break;
    c += v;
    lam_max = fabs(c) > lam_max ? fabs(c) : lam_max;
  }
  if (lam_max == 0.0) {  // every x[k] == mean: a constant fiber
    copy(x, y, n);
    return true;
  }
  // The solver sees (x - shift) * unit (same dual up to the factor, same g): rounding then scales
  // with the signal's variation, not its offset (near the mean the subtraction is exact,
  // Sterbenz), and its double reductions, products of a dual value and a gradient (b |g|, g^T s,
  // ||D^T s||^2), are near 1 whatever the magnitudes: at 1e-301 they underflowed, the gap test
  // passed on zeros and y came out 2.2 times the data's scale off. unit is the power of two
  // nearest 1 / sqrt(b * max|x - mean|), so scaling is exact; the box and the polish's threshold
  // are scaled alike, the polish's values come from x and lam themselves.
  const T shift = static_cast<T>(mean);
  const T box_cap = static_cast<T>(2.0 * lam_max);
  const T b0 = lam < box_cap ? lam : box_cap;
  const int e_max = sizeof(T) == sizeof(float) ? PN_UNIT_EXP_MAX_FLOAT : PN_UNIT_EXP_MAX_DOUBLE;
  int e = -(ilogb(static_cast<double>(b0)) + ilogb(dev)) / 2;
  e = e < -e_max ? -e_max : (e > e_max ? e_max : e);
  const T unit = static_cast<T>(scalbn(1.0, e));
  const T b = b0 * unit;
  // Pass 2: the starting point u0 = cumsum(mean - x), in the solver's units.
  c = 0.0;
  for (index_t k = 0; k + 1 < n; ++k) {
    c += mean - static_cast<double>(x[k]);
    u[k] = static_cast<T>(c * static_cast<double>(unit));  // clipped by the first Newton pass
  }
  const double tol_per_noise = GAP_TOL_FACTOR * Limits<T>::eps * 2.0 * static_cast<double>(b);

  T step = T(0);       // step of the pending update u = clip(u - step d)
  bool clean = false;  // the pending update is a full Newton step that no bound clipped
  bool certified = false;
  for (int it = 0;; ++it) {
    const NewtonPass r = newton_pass(x, shift, unit, u, d, n, b, step);
    const bool stalled = step != T(0) && !r.moved;
    certified = r.gap <= tol_per_noise * r.noise || (clean && r.held == r.at_bound);
    if (certified || stalled || it == PN_MAX_ITERATIONS) break;
    T a = T(1);
    step = T(0);
    for (int ls = 0; ls < LINE_SEARCH_MAX_STEPS; ++ls) {
      const Trial t = trial<T>(x, shift, unit, u, d, n, b, a);
      if (!(t.g_dot_s < 0.0)) break;  // no trial moves downhill: projection blocks the direction
      if (t.df <= ARMIJO_SIGMA * t.g_dot_s) {
        step = a;
        clean = a == T(1) && !t.clipped;
        break;
      }
      double next = static_cast<double>(a) * (-t.g_dot_s) / t.curv;
      const double lo = STEP_SHRINK_MIN * static_cast<double>(a);
      const double hi = STEP_SHRINK_MAX * static_cast<double>(a);
      next = next > lo ? (next < hi ? next : hi) : lo;  // also maps NaN to lo
      a = static_cast<T>(next);
    }
    if (step == T(0)) {
      gradient_direction<T>(x, shift, unit, u, d, n);
      step = T(1);
      clean = false;
    }
  }
  polish<T>(x, y, Strided<const T>{u.p, u.stride}, SegmentStack<T>(scratch), n, lam,
            lam * unit);
  return certified;
}

}  // namespace tv1d_pn_detail
}  // namespace cupytv

template <typename T>
__global__ void tv1d_pn(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ lam,
                        T lam_value, cupytv::index_t lam_first, cupytv::index_t lam_div,
                        cupytv::index_t lam_mod, cupytv::index_t outer, cupytv::index_t n, cupytv::index_t inner,
                        T* __restrict__ scratch, int* __restrict__ uncertified) {
  using cupytv::index_t;
  namespace pn = cupytv::tv1d_pn_detail;
  const index_t fibers = outer * inner;
  const index_t f = cupytv::block_start_x() + threadIdx.x;
  if (f >= fibers || n < 1) return;
  const index_t o = f / inner;
  const index_t i = f - o * inner;
  const index_t base = o * n * inner + i;
#if defined(__CUDA_ARCH__) || defined(TV1D_PN_INTERLEAVED_SCRATCH)
  const pn::Planes<T> planes{scratch + f, n * fibers, fibers};
#else
  const pn::Planes<T> planes{scratch + f * pn::Planes<T>::count * n, n, 1};
#endif
  if (!pn::solve_fiber<T>(pn::Strided<const T>{x + base, inner}, pn::Strided<T>{y + base, inner},
                         planes, n,
                         cupytv::FiberWeight<T>{lam, lam_value, lam_first, lam_div, lam_mod}(f))) {
    uncertified[f] = 1;
  }
}
