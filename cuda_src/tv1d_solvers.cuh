// Per-fiber 1D TV solvers shared by the 1D and 2D kernel files (tv1d.cu, tv2d.cu).
//
// Each function solves one fiber y = argmin 1/2 ||y - x||^2 + lam * sum |y[k+1] - y[k]| given a
// pointer and a stride (in elements) for x and for y, so a caller can run it on a contiguous row,
// a strided column, a shared-memory tile or global memory alike. The algorithms, their numerics
// and the output contract (one bit-identical value per constant segment; non-finite fibers all
// NaN; every loop bounded) are documented in tv1d.cu's header; this file only holds the code.
//
//   template <typename T> __device__ void tv1d_condat_fiber(const T* x, index_t stride_x, T* y,
//       index_t stride_y, index_t n, T lam, T* scratch)   // x, y distinct; scratch: see below
//   template <typename T> __device__ void tv1d_taut_string_fiber(same arguments)  // may alias
//   tv1d::condat_scratch<T>(n), tv1d::taut_string_scratch<T>(n): elements of T of workspace per
//       fiber (8-byte aligned); condat needs none for n <= TV1D_GUARD_MIN_N.
#pragma once

#include "common.cuh"

// Condat's scan re-reads samples after each restart. Measured reads per sample: N(0,1) noise
// 1.0-1.9 on average (rare fibers up to 5), noisy steps up to 4, but random walks with a large lam
// 3-12 on average (up to 25) and the ramp O(n). The taut string costs about 2 reads' worth per
// sample (measured on the host), so past this budget a fiber is re-solved by it: any fiber then
// costs at most (4 + 2) / 2 = 3 times the better of the two methods.
#define TV1D_CONDAT_WORK_PER_SAMPLE 4
// Adjacent segments whose values differ by less than this many ulps of their sums' rounding are
// one segment (see taut_string_solve and condat_scan).
#define TV1D_MERGE_ULPS 4
// Fibers up to this length skip the guard: their worst case is n + 1 reads per sample.
#define TV1D_GUARD_MIN_N 64

namespace tv1d {

using cupytv::index_t;

// Largest finite double: |v| <= this is false exactly for NaN and +-Inf.
#define TV1D_DOUBLE_MAX 1.7976931348623157e308

// A quiet NaN (NVRTC has no <cmath> NAN macro).
__device__ __forceinline__ double quiet_nan() { return __longlong_as_double(0x7ff8000000000000LL); }

// Elements of T per fiber that the taut string needs: four arrays of n + 1 doubles (positions and
// values of the lower and upper hull vertices).
template <typename T>
__host__ __device__ __forceinline__ index_t taut_string_scratch(index_t n) {
  return 4 * (n + 1) * static_cast<index_t>(sizeof(double) / sizeof(T));
}

template <typename T>
__host__ __device__ __forceinline__ index_t condat_scratch(index_t n) {
  return n > TV1D_GUARD_MIN_N ? taut_string_scratch<T>(n) : 0;
}

// Row length of a staged tile: odd, so that a warp reading one element of each row is free of
template <typename T>
__device__ __forceinline__ bool fiber_is_finite(const T* x, index_t sx, index_t n) {
  bool finite = true;
  TV_PROBE_LOOP(finite_check);
  for (index_t k = 0; k < n; ++k) {
    TV_PROBE_TRIP(finite_check);
    TV_PROBE_ACCESS(finite_check, &x[k * sx]);
    finite &= fabs(static_cast<double>(x[k * sx])) <= TV1D_DOUBLE_MAX;
  }
  return finite;
}

template <typename T>
__device__ __forceinline__ void fill(T* y, index_t sy, index_t begin, index_t end, T value) {
  TV_PROBE_LOOP(fill);
  for (index_t k = begin; k < end; ++k) {
    TV_PROBE_TRIP(fill);
    TV_PROBE_ACCESS(fill, &y[k * sy]);
    y[k * sy] = value;
  }
}

template <typename T>
__device__ __forceinline__ void copy(const T* x, index_t sx, T* y, index_t sy, index_t n) {
  TV_PROBE_LOOP(copy);
  for (index_t k = 0; k < n; ++k) {
    TV_PROBE_TRIP(copy);
    TV_PROBE_ACCESS(copy, &y[k * sy]);
    y[k * sy] = x[k * sx];
  }
}

// The cases every method shares. Returns true when the fiber is done: non-finite input (all NaN
// out), lam == 0 or n <= 1 (exact copy; x and y may be the same array).
template <typename T>
__device__ __forceinline__ bool trivial_fiber(const T* x, index_t sx, T* y, index_t sy, index_t n,
                                              T lam) {
  if (!fiber_is_finite(x, sx, n)) {
    fill(y, sy, 0, n, static_cast<T>(quiet_nan()));
    return true;
  }
  if (!(lam > T(0)) || n <= 1) {
    if (x != y || sx != sy) copy(x, sx, y, sy, n);
    return true;
  }
  return false;
}

// The tie rule of condat_scan (see Ties below), shared with tv1d.cu's condat_masked: the value to
// write for segment [begin, end) with sum s and closed-form value `value` is the last segment's
// when the two differ by rounding only. Keeps the last segment written: its value, sum and length
// (a merged run counts as one).
struct Settle {
  double lam;
  double last_value = 0.0, last_sum = 0.0, last_len = 0.0;
  __device__ __forceinline__ double operator()(index_t begin, index_t end, double s,
                                               double value) {
    const double len = static_cast<double>(end - begin);
    const double eps = 2.220446049250313e-16;  // the sums are doubles
    // |value - last| <= MERGE eps ((|last_sum| + lam) / last_len + (|s| + lam) / len), times
    // last_len len: no division on the path every segment takes.
    const double spread = (fabs(last_sum) + lam) * len + (fabs(s) + lam) * last_len;
    const double gap = fabs(value - last_value) * (last_len * len);
    if (begin > 0 && gap <= TV1D_MERGE_ULPS * eps * spread) {
      last_sum += s;
      last_len += len;
      return last_value;
    }
    last_value = value;
    last_sum = s;
    last_len = len;
    return value;
  }
};

// Condat's direct algorithm on a fiber with lam > 0, n >= 2. x and y may alias (it writes only
// samples before the ones it still reads). Returns false, with y partly written, when the scan
// would exceed `budget` steps. `finite` is false when a sample it read is NaN or +-Inf: the
// finite check rides along the scan (every sample is read before the scan can finish) instead of
// a pass of its own over the fiber, as a sum of sample * 0 (0 while every sample is finite, NaN
// after a NaN or an infinity: two instructions a step, off the scan's dependency chain). Non-finite samples leave every loop bounded (the budget; the
// steps between two restarts and the restarts are at most n each whatever the values), and the
// caller then discards what was written (condat_checked).
//
// The dual variable u_k = sum_{j<=k} (x_j - y_j) must stay in [-lam, lam], equal +lam where y
// jumps down after k, -lam where it jumps up, and u_{-1} = u_{n-1} = 0. For the open segment
// [k0, k] the scan keeps the lowest and highest values (vmin, vmax) the segment can still take,
// the duals umin, umax that they give at k, and the last positions (kmin, kmax) where those bounds
// were tightened. When even vmin makes u drop below -lam the segment [k0, kmin] must end at vmin
// with a jump down, and the scan restarts at kmin + 1 (symmetrically for vmax and a jump up).
//
// Numerics: vmin and vmax start lam away from the data and are tightened incrementally, so they
// carry rounding of order eps * lam; they only steer decisions (where rounding-level errors move
// the result continuously by as much). The values written are recomputed from the optimality
// conditions and double running sums of the segment: y = (sum_S x + u_{k0-1} -+ lam) / |S| at a
// jump, (sum_S x + u_{k0-1}) / |S| for the last segment. So a segment's error is the rounding of
// its own sum, not of lam or of anything before it.
//
// Ties: at lam = lam_max of a stretch (one segment or two are equally optimal) the scan may end a
// segment whose value and its successor's agree in exact arithmetic, leaving them a rounding
// apart; the spurious jump between them has a sign decided by rounding, which the backward reads
// as a kink (the lam gradient's sign flipped on a ramp at lam_max). So a segment whose value is
// within rounding of the previous one's (TV1D_MERGE_ULPS of their sums' magnitudes, |sum_S x| +
// lam per sample: at a tie lam is the largest partial sum of x - mean over the stretch, so it
// stands in for sum |x| where the sum itself cancels) is written with the previous value: one
// run of equal values, within rounding of the merged segment's closed form. Checked per segment,
// with no per-sample work and nothing rewritten (deferring each segment's write cost ~10%).
template <typename T>
__device__ __forceinline__ bool condat_scan(const T* x, index_t sx, T* y, index_t sy, index_t n, T lam_t,
                            index_t budget, bool& finite) {
  TV_PROBE(scan_setup);
  const double lam = lam_t;
  index_t k0 = 0, k = 0, kmin = 0, kmax = 0;
  double ub = 0.0;  // u_{k0-1}: 0 at the fiber start, +lam after a jump down, -lam after one up
  double sum = static_cast<double>(x[0]);  // x[k0] + ... + x[k]
  double zero = sum * 0.0;                 // see `finite` above
  double smin = sum, smax = sum;           // the sums up to kmin, up to kmax
  double vmin = sum - lam, vmax = sum + lam;
  double umin = lam, umax = -lam;
  Settle settle{lam};
  // End [k0, kmin] with a jump down after it (or [k0, kmax], up) and restart behind it.
#define TV1D_JUMP(down)                                                                     \
  {                                                                                         \
    const index_t last = (down) ? kmin : kmax;                                              \
    const double s_seg = (down) ? smin : smax;                                              \
    const double value = settle(k0, last + 1, s_seg,                                        \
                                (s_seg + ub + ((down) ? -lam : lam)) /                      \
                                    static_cast<double>(last - k0 + 1));                    \
    fill(y, sy, k0, last + 1, static_cast<T>(value));                                       \
    /* Unreachable (a bound is tightened only before the fiber's end), kept as a guard. */  \
    if (last + 1 >= n) {                                                                    \
      finite = zero == 0.0;                                                                 \
      return true;                                                                          \
    }                                                                                       \
    k0 = k = kmin = kmax = last + 1;                                                        \
    ub = (down) ? lam : -lam;                                                               \
    TV_PROBE_ACCESS(scan_restart, &x[k0 * sx]);                                             \
    sum = smin = smax = static_cast<double>(x[k0 * sx]);                                    \
    vmin = sum + ub - lam;                                                                  \
    vmax = sum + ub + lam;                                                                  \
    umin = lam;                                                                             \
    umax = -lam;                                                                            \
  }
  TV_PROBE_LOOP(scan);
  for (index_t step = 0; step < budget; ++step) {
    TV_PROBE_TRIP(scan);
    if (k == n - 1) {
      // End of the fiber: u_{n-1} must be 0.
      TV_PROBE(scan_end);
      if (umin < 0.0) {
        TV_PROBE(scan_end_down);
        TV1D_JUMP(true);
      } else if (umax > 0.0) {
        TV_PROBE(scan_end_up);
        TV1D_JUMP(false);
      } else {
        TV_PROBE(scan_last);
        const double value = settle(k0, n, sum, (sum + ub) / static_cast<double>(n - k0));
        fill(y, sy, k0, n, static_cast<T>(value));
        finite = zero == 0.0;
        return true;
      }
      continue;
    }
    TV_PROBE_ACCESS(scan_next, &x[(k + 1) * sx]);
    const double next = static_cast<double>(x[(k + 1) * sx]);
    zero += next * 0.0;
    const double umin_next = umin + next - vmin;
    const double umax_next = umax + next - vmax;
    if (umin_next < -lam) {
      TV_PROBE(jump_down);
      TV1D_JUMP(true);
    } else if (umax_next > lam) {
      TV_PROBE(jump_up);
      TV1D_JUMP(false);
    } else {
      TV_PROBE(step);
      ++k;
      sum += next;
      umin = umin_next;
      umax = umax_next;
      const double len = static_cast<double>(k - k0 + 1);
      if (umin >= lam) {
        TV_PROBE(tighten_min);
        vmin += (umin - lam) / len;
        umin = lam;
        kmin = k;
        smin = sum;
      }
      if (umax <= -lam) {
        TV_PROBE(tighten_max);
        vmax += (umax + lam) / len;
        umax = -lam;
        kmax = k;
        smax = sum;
      }
    }
  }
#undef TV1D_JUMP
  finite = zero == 0.0;
  return false;
}

// Condat's scan with the cases of trivial_fiber, in one pass over the fiber where trivial_fiber
// and the scan made two: lam == 0 or n <= 1 go through trivial_fiber; otherwise the scan checks
// the samples as it reads them, and a non-finite fiber it completes comes out all NaN. Returns
// false only when the scan ran past `budget`, y partly written; the caller re-solves the fiber
// from the pristine x with tv1d_taut_string_fiber, whose trivial_fiber gives a non-finite fiber
// its NaNs there. The same outputs as trivial_fiber followed by condat_scan, bit for bit.
template <typename T>
__device__ __forceinline__ bool condat_checked(const T* x, index_t sx, T* y, index_t sy,
                                               index_t n, T lam, index_t budget) {
  TV_PROBE(condat_checked);
  if (!(lam > T(0)) || n <= 1) {
    TV_PROBE(checked_trivial);
    return trivial_fiber(x, sx, y, sy, n, lam);
  }
  bool finite;
  const bool done = condat_scan(x, sx, y, sy, n, lam, budget, finite);
  if (done && !finite) {
    TV_PROBE(checked_nonfinite);
    fill(y, sy, 0, n, static_cast<T>(quiet_nan()));
  }
  return done;
}

// The taut string on a finite fiber with lam > 0, n >= 2; x and y may alias (samples are written
// only behind the string's last bend, which trails the read position). ws: 4 * (n + 1) doubles.
//
// Positions p = 0..n carry the running sum S_p = x_0 + ... + x_{p-1}; the tube is
// [S_p - lam, S_p + lam] for 0 < p < n, pinned to S_0 = 0 and S_n. From the anchor (the string's
// last bend, (a, fa)) the string must pass above the lower points and below the upper ones. The
// concave majorant of the lower points (slopes decreasing) and the convex minorant of the upper
// points (slopes increasing) bound its first slope from below and above. When a new point makes
// the lower bound exceed the upper one, one hull has just collapsed to that point and the string
// bends at the first vertex of the other hull: the segment up to it is final (y there = its slope).
template <typename T>
__device__ void taut_string_solve(const T* x, index_t sx, T* y, index_t sy, index_t n, T lam_t,
                                  double* ws) {
  TV_PROBE(taut_string_setup);
  const double lam = lam_t;
  double* lo_pos = ws;
  double* lo_val = ws + (n + 1);
  double* up_pos = ws + 2 * (n + 1);
  double* up_val = ws + 3 * (n + 1);
  index_t lo_head = 0, lo_tail = 0, up_head = 0, up_tail = 0;  // deques [head, tail)
  // The anchor: position, running-sum value, and side (-1: a lower vertex S - lam, +1: an upper
  // one S + lam, 0: an end of the fiber).
  double a = 0.0, fa = 0.0, ta = 0.0;
  double sum = 0.0;
  // The last finished stretch of the string, [pend_a, a), is written only when the next bend
  // turns by more than rounding. Bends that round to the same slope (collinear hull vertices,
  // e.g. a staircase) are one segment of the exact solution, and the backward must see one run
  // of equal values there, not two values an ulp apart. Deferring keeps every sample written once
  // (merging after writing could rewrite a run many times).
  double pend_a = 0.0, pend_fa = 0.0, pend_t = 0.0;
  // The value written is not the slope (fa - pend_fa) / (a - pend_a), whose rounding grows with
  // the running sums (eps * |S| / |segment|), but the same quantity from the segment's own sum,
  // (sum_S x + lam (ta - pend_t)) / |S|: the error of Condat's closed form. The extra read of x
  // is of samples not yet overwritten (writes trail here), so x and y may still alias.
  auto flush = [&]() {
    if (a > pend_a) {
      const index_t begin = static_cast<index_t>(pend_a), end = static_cast<index_t>(a);
      double local = 0.0;
      for (index_t k = begin; k < end; ++k) local += static_cast<double>(x[k * sx]);
      fill(y, sy, begin, end, static_cast<T>((local + lam * (ta - pend_t)) / (a - pend_a)));
    }
    pend_a = a;
    pend_fa = fa;
    pend_t = ta;
  };
  // Move the anchor along the string to (p, fp) on side tp, the next bend.
  auto bend = [&](double p, double fp, double tp) {
    if (a > pend_a) {
      const double before = (fa - pend_fa) / (a - pend_a), after = (fp - fa) / (p - a);
      // Rounding of a slope from running sums of magnitude |f| over a length l: ~eps |f| / l. A
      // vertex is f = S -+ lam, rounded like S and lam, which |f| alone understates where the
      // two cancel (a tie on zero-mean data: two segments 1.4e-15 apart), hence |f| + 2 lam.
      const double eps = 2.220446049250313e-16;
      const double spread = (fabs(fa) + fabs(pend_fa) + 4.0 * lam) / (a - pend_a) +
                            (fabs(fp) + fabs(fa) + 4.0 * lam) / (p - a);
      const double tol = TV1D_MERGE_ULPS * eps * spread;
      if (!(fabs(after - before) <= tol)) flush();
    }
    a = p;
    fa = fp;
    ta = tp;
  };
  const double end_pos = static_cast<double>(n);
  // slope(anchor -> (p1, v1)) > slope(anchor -> (p2, v2)); positions are past the anchor.
  auto steeper = [&](double p1, double v1, double p2, double v2) {
    return (v1 - fa) * (p2 - a) > (v2 - fa) * (p1 - a);
  };
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(taut_string);
    for (index_t p = 1; p <= n; ++p) {
      TV_PROBE_TRIP(taut_string);
      sum += static_cast<double>(x[(p - 1) * sx]);
      const double pos = static_cast<double>(p);
      const double lo = p < n ? sum - lam : sum;
      const double up = p < n ? sum + lam : sum;
      // Concave lower hull: drop vertices the new point sees over (slopes must decrease).
      while (lo_tail > lo_head) {
        const bool first = lo_tail - 1 == lo_head;
        const double pp = first ? a : lo_pos[lo_tail - 2], pv = first ? fa : lo_val[lo_tail - 2];
        const double lp = lo_pos[lo_tail - 1], lv = lo_val[lo_tail - 1];
        if ((lo - pv) * (lp - pp) >= (lv - pv) * (pos - pp)) {
          --lo_tail;
        } else {
          break;
        }
      }
      lo_pos[lo_tail] = pos;
      lo_val[lo_tail] = lo;
      ++lo_tail;
      // Convex upper hull: drop vertices the new point passes under (slopes must increase).
      while (up_tail > up_head) {
        const bool first = up_tail - 1 == up_head;
        const double pp = first ? a : up_pos[up_tail - 2], pv = first ? fa : up_val[up_tail - 2];
        const double qp = up_pos[up_tail - 1], qv = up_val[up_tail - 1];
        if ((up - pv) * (qp - pp) <= (qv - pv) * (pos - pp)) {
          --up_tail;
        } else {
          break;
        }
      }
      up_pos[up_tail] = pos;
      up_val[up_tail] = up;
      ++up_tail;
      if (!steeper(lo_pos[lo_head], lo_val[lo_head], up_pos[up_head], up_val[up_head])) continue;
      if (up_pos[up_head] == pos) {
        // The upper hull collapsed to the new point: bend over the lower hull's vertices until the
        // lower bound no longer exceeds the slope to the new upper point. The lower hull ends at
        // the new lower point, which is not steeper, so the loop stops before emptying it.
        while (lo_pos[lo_head] < pos && steeper(lo_pos[lo_head], lo_val[lo_head], pos, up)) {
          bend(lo_pos[lo_head], lo_val[lo_head], -1.0);  // before pos <= n: an interior vertex
          ++lo_head;
        }
      } else {
        while (up_pos[up_head] < pos && steeper(pos, lo, up_pos[up_head], up_val[up_head])) {
          bend(up_pos[up_head], up_val[up_head], 1.0);
          ++up_head;
        }
      }
    }
  }
  bend(end_pos, sum, 0.0);
  flush();
}

}  // namespace tv1d

// The taut string on one fiber; x and y may be the same array.
template <typename T>
__device__ void tv1d_taut_string_fiber(const T* x, cupytv::index_t stride_x, T* y,
                                       cupytv::index_t stride_y, cupytv::index_t n, T lam,
                                       T* scratch) {
  if (tv1d::trivial_fiber(x, stride_x, y, stride_y, n, lam)) return;
  tv1d::taut_string_solve(x, stride_x, y, stride_y, n, lam, reinterpret_cast<double*>(scratch));
}

// Condat's guarded direct algorithm on one fiber; x and y must not overlap.
template <typename T>
__device__ void tv1d_condat_fiber(const T* x, cupytv::index_t stride_x, T* y,
                                  cupytv::index_t stride_y, cupytv::index_t n, T lam, T* scratch) {
  TV_PROBE(condat_fiber);
  const bool guarded = n > TV1D_GUARD_MIN_N;
  // Unguarded fibers get a budget their worst case cannot reach (each restart finalises at least
  // one sample after at most n steps), so the loop is bounded and never falls back.
  const cupytv::index_t budget = guarded ? TV1D_CONDAT_WORK_PER_SAMPLE * n : n * n + 2 * n;
  if (!tv1d::condat_checked(x, stride_x, y, stride_y, n, lam, budget)) {
    tv1d_taut_string_fiber(x, stride_x, y, stride_y, n, lam, scratch);  // x is pristine here
  }
}

