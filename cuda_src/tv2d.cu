// Anisotropic 2D total-variation proximal operator: proximal Dykstra and its accelerated variant,
// with the exact backward (issue 5).
//
// Objective, for every slice X in R^{h x w} (weights lam0 along the rows index i, i.e. between
// vertically adjacent pixels, and lam1 along the columns index j):
//   Y = argmin_Y F(Y) = 1/2 ||Y - X||^2 + lam0 sum |Y[i+1,j] - Y[i,j]| + lam1 sum |Y[i,j+1] - Y[i,j]|
//
// Algorithm. With A = TV along j (each row; weight lam1) and B = TV along i (each column; lam0),
// the dual of F is min_{uA, uB} 1/2 ||X - uA - uB||^2 + A*(uA) + B*(uB). Minimising it alternately
// in uA and uB is proximal Dykstra (Combettes & Pesquet, "Proximal splitting methods in signal
// processing", 2011; the seed's method); minimising exactly in uA inside a FISTA step on uB is
// its acceleration (Chambolle & Pock, "A remark on accelerated block coordinate descent for
// computing the proximity operators of a sum of convex functions", SMAI JCM 1, 2015). One loop
// serves both, with momentum beta_t = 0 (Dykstra) or t / (t + 3) (accelerated, the Chambolle-
// Dossal choice: O(1/t^2) in the dual, and a closed form every executor evaluates identically):
//   Ub = U = 0, Z = X;  for t = 0, 1, ...:
//     C = P_A(X - Ub)                 (the exact 1D prox of every row, tv1d_solvers.cuh)
//     W = Ub + C                      (= X - uA)
//     Z = P_B(W)                      (every column)
//     Un = W - Z                      (uB);  Ub = Un + beta_t (Un - U);  U = Un
// and the output is Z. With beta = 0 this is Dykstra's z = P_A(y + p), y = P_B(z + q) in the
// variables q = Ub, y = Z (x = y + p + q), and U is not stored.
//
// Stopping rule: a certified duality gap. X - Z = uA + uB, with uA = X - W and uB = W - Z exact
// residuals of 1D proxes, hence feasible dual points, so
//   gap(Z) = lam1 TV_rows(Z) + lam0 TV_cols(Z) - <Z, X - Z>  >=  F(Z) - F(Y*)  >=  0,
// computed in float64 on the slice scaled by a power of two (gap_unit), with R = X - Z taken to its
// nearest mean-zero point (slice_gap) and a slack for the rounding of the stored W and Z (row_gap),
// so that it stays an upper bound at any offset and magnitude.
// A slice stops at the first t with gap(Z_t) <= tol * F(Z_t) (relative objective gap at most
// tol / (1 - tol)) or at t = max_iter; tol = 0 runs exactly max_iter iterations. The sums are
// taken in double, per row, then over rows in row order, so every executor and both paths below
// decide identically. n_iter[s] = iterations
// run (0 when Z_0 = X already qualifies: lam = 0, a constant slice); gap[s] = the relative gap.
//
// Non-finite input: a slice holding NaN or +-Inf is marked before the first iteration, returns
// all NaN, n_iter 0, gap NaN, and NaN gradients; other slices never read it.
//
// Backward (exact for the map the forward computed: the n_iter[s] iterations actually run). Each
// 1D prox is piecewise affine: d prox(v) = the average over each constant segment of its output,
// d prox / d lam = (s_out - s_in) / |S| on segment S (see tv1d.cu). The backward re-runs the
// forward from X for exactly n_iter[s] iterations (bit-identical: the same arithmetic) recording
// 2 bits per sample per prox (the sign of the jump from sample k to k + 1 of its output: 0 none,
// 1 up, 2 down), 4 bits per sample per iteration; then runs the adjoint iteration in reverse.
// With a, b the adjoints of Ub, U (both 0 after the last iteration), Xb the gradient of X:
//   columns: un = (1 + beta) a + b;  T = [t last] g - un;
//            glam0 += sum_S (s_out - s_in) mean_S(T);  T = mean over segments of T;
//            T = un + T (the adjoint of W);  b = -beta a;  a = T
//   rows:    glam1 += sum_S (s_out - s_in) mean_S(T);  T = mean over segments of T (of X - Ub);
//            Xb += T;  a -= T
// and grad_x = Xb (g when n_iter = 0: the output is X itself). Jumps below jump_rtol (see there)
// count as none: the gradient is that of the map seen at any step larger than rounding, and it
// converges to the exact prox's gradient as the iterations converge. Nothing is kept between
// forward and backward except X (and n_iter); the backward's workspace is 3 (4 with momentum)
// arrays of X's size plus n_iter * 4 bits per sample.
//
// Forward mode (tv2d_rows_jvp, tv2d_cols_jvp; multi-launch only, after the same recording
// replay): the tangent of the same map, iterations ascending, with Xd, lam0d, lam1d the tangents
// of X and the weights and Ubd = Ud = 0, Zd = Xd before the first iteration:
//   rows:    Wd = Ubd + A(Xd - Ubd)    (A: mean over each recorded segment, + lam1d (s_out - s_in)
//                                       / |S| on it: the 1D prox's tangent)
//   columns: Zd = A(Wd) (with lam0d);  Und = Wd - Zd;  Ubd = Und + beta (Und - Ud);  Ud = Und
// so the JVP is the exact transpose of the backward above (the same segments and jump signs).
//
// Layout: x, z (the output), g, grad_x are C-contiguous (slices, h, w). Slice s's weights are
// cupytv::FiberWeight<T>{lam0 (lam1), lam_value0 (lam_value1), lam_first, lam_div, lam_mod}(s)
// (common.cuh): both read with one pattern, by value when lam_mod is 0.
// momentum: 0 (Dykstra) or 1 (accelerated). Bits: per iteration t and slice s,
// words_per_iter = h * ceil(w / 16) + w * ceil(h / 16) 32-bit words at
// bits[(t * slices + s) * words_per_iter]: first the rows (word m of row r at m * h + r), then
// the columns (word m of column c at h * ceil(w / 16) + m * w + c); sample k of a fiber is bits
// 2 (k % 16) .. 2 (k % 16) + 1 of its word k / 16. One word per fiber per 16 samples, so no two
// threads ever write one word.
//
// Two paths, bit-identical results (the same per-fiber arithmetic and summation order):
//  * Fused (tv2d_solve, tv2d_solve_vjp): one block per slice holds Z, Ub, W (and U) in shared
//    memory and runs every iteration in one launch; X and g are read from global memory. Thread r
//    solves row r, thread c column c, with block barriers between the halves. Rows are padded to
//    ld = w | 1 elements so that the row pass (thread r at element r * ld + k) is free of bank
//    conflicts; the column pass reads consecutive addresses. For h, w <= TV1D_GUARD_MIN_N
//    (Condat needs no workspace) and shared_mem = TV2D_GAP_TERMS * blockDim.x * 8 + (3 + momentum)
//    * h * ld * sizeof(T) within the launch limit. blockDim.x = max(h, w) rounded up to a warp;
//    grid = slices.
//  * Multi-launch (every other size): one thread per fiber of every slice, state in global memory,
//    one launch per phase per iteration, each skipping finished slices; the convergence test
//    stays on the device (tv2d_decide), so the host need not synchronise per iteration. Per
//    iteration: tv2d_rows_gap (gap terms of Z_t), tv2d_decide (one thread per slice),
//    tv2d_rows_prox, tv2d_cols_prox. Backward: the replay (tv2d_rows_prox, tv2d_cols_prox with
//    replay = 1, recording), then per t, descending, tv2d_cols_vjp and tv2d_rows_vjp, then
//    tv2d_lam_grad. block = TV2D_BLOCK, grid = ceil(fibers or slices / TV2D_BLOCK). Workspace:
//    fibers longer than TV1D_GUARD_MIN_N use guarded Condat, whose fallback needs
//    tv1d::condat_scratch<T>(n) elements per fiber (rows and columns share one buffer).
//
// instantiate: tv2d_solve<float>
// instantiate: tv2d_solve<double>
// instantiate: tv2d_solve_vjp<float>
// instantiate: tv2d_solve_vjp<double>
// instantiate: tv2d_check_finite<float>
// instantiate: tv2d_check_finite<double>
// instantiate: tv2d_rows_gap<float>
// instantiate: tv2d_rows_gap<double>
// instantiate: tv2d_decide
// instantiate: tv2d_rows_prox<float>
// instantiate: tv2d_rows_prox<double>
// instantiate: tv2d_cols_prox<float>
// instantiate: tv2d_cols_prox<double>
// instantiate: tv2d_fill_nan<float>
// instantiate: tv2d_fill_nan<double>
// instantiate: tv2d_cols_vjp<float>
// instantiate: tv2d_cols_vjp<double>
// instantiate: tv2d_rows_vjp<float>
// instantiate: tv2d_rows_vjp<double>
// instantiate: tv2d_lam_grad
// instantiate: tv2d_rows_jvp<float>
// instantiate: tv2d_rows_jvp<double>
// instantiate: tv2d_cols_jvp<float>
// instantiate: tv2d_cols_jvp<double>

#include "common.cuh"
#include "tv1d_solvers.cuh"

// Threads per block of the multi-launch kernels.
#define TV2D_BLOCK 128
// Jump codes stored per sample and half-iteration; 16 samples per 32-bit word.
#define TV2D_SAMPLES_PER_WORD 16
#define TV2D_JUMP_UP 1u
#define TV2D_JUMP_DOWN 2u
// Slice states (multi-launch): still iterating, finished, non-finite input.
#define TV2D_ACTIVE 0
#define TV2D_DONE 1
#define TV2D_NONFINITE 2

namespace tv2d {

using cupytv::index_t;

__host__ __device__ __forceinline__ index_t words_per_fiber(index_t n) {
  return (n + TV2D_SAMPLES_PER_WORD - 1) / TV2D_SAMPLES_PER_WORD;
}

__host__ __device__ __forceinline__ index_t words_per_iter(index_t h, index_t w) {
  return h * words_per_fiber(w) + w * words_per_fiber(h);
}

// Where fiber f's words start (the stride between its consecutive words is the number of such
// fibers per slice): row r of slice s at iteration t, or column c. W: unsigned int, const or not.
template <typename W>
__device__ __forceinline__ W* row_words(W* bits, index_t t, index_t s, index_t slices, index_t h,
                                        index_t w, index_t r) {
  return bits + (t * slices + s) * words_per_iter(h, w) + r;
}

template <typename W>
__device__ __forceinline__ W* col_words(W* bits, index_t t, index_t s, index_t slices, index_t h,
                                        index_t w, index_t c) {
  return bits + (t * slices + s) * words_per_iter(h, w) + h * words_per_fiber(w) + c;
}

// Jumps at most this fraction of the slice's max|x| are recorded as no jump. Dykstra drives the
// jumps that vanish at the solution to zero geometrically (measured: 1e-10 after 20 iterations,
// the last ulp after 40, on N(0,1) noise with lam 0.3), so late intermediate 1D solutions hold
// jumps of a few ulps that the exact prox does not have. Taken literally, each such jump is a kink
// of the unrolled map within rounding of the current point and its sign adds a spurious
// (s_out - s_in) term to the lam gradient (20% off the exact prox's gradient after 400 iterations
// in that test, while finite differences of the map itself agree with the exact prox). Treating
// them as fused gives the derivative of the map seen from any step larger than the threshold,
// which converges to the exact prox's gradient as the iterations converge. The threshold is
// relative to the slice's scale, not to the two values compared: around a solution near 0 (a
// checkerboard's mean; feature maps) a relative-to-neighbours test let ulp-sized jumps through
// (found by `python -m cupytv check`). The reference fuses below 1e-9 of max|x| alike.
template <typename T>
__device__ __forceinline__ double jump_rtol();
template <>
__device__ __forceinline__ double jump_rtol<double>() {
  return 1e-9;
}
template <>
__device__ __forceinline__ double jump_rtol<float>() {
  return 1e-6;  // about 8 float32 ulps: float32 iterates carry rounding noise of a few ulps
}

// Record the jump signs of a solved fiber y (n samples, stride sy) into its words (stride ws);
// jumps of at most `tiny` (jump_rtol * the slice's max|x|) count as none.
template <typename T>
__device__ __forceinline__ void record_jumps(const T* y, index_t sy, index_t n, unsigned int* words,
                                             index_t ws, double tiny) {
  unsigned int word = 0;
  double prev = static_cast<double>(y[0]);
  for (index_t k = 0; k < n; ++k) {
    const double next = k + 1 < n ? static_cast<double>(y[(k + 1) * sy]) : prev;
    const unsigned int code =
        next - prev > tiny ? TV2D_JUMP_UP : (prev - next > tiny ? TV2D_JUMP_DOWN : 0u);
    word |= code << (2 * (k % TV2D_SAMPLES_PER_WORD));
    if (k % TV2D_SAMPLES_PER_WORD == TV2D_SAMPLES_PER_WORD - 1 || k + 1 == n) {
      words[(k / TV2D_SAMPLES_PER_WORD) * ws] = word;
      word = 0;
    }
    prev = next;
  }
}

// The 1D backward of one fiber from its recorded jumps: u := A u (the mean of u over each
// segment), returning sum_S (s_out - s_in) mean_S(u), the lam derivative (tv1d.cu's vjp_fiber,
// with the segments read from bits instead of from equal values). With lam_dot != 0 (forward
// mode) each segment also gets lam_dot (s_out - s_in) / |S|: u := the 1D prox's tangent.
template <typename T>
__device__ __forceinline__ double segment_mean(T* u, index_t su, index_t n,
                                               const unsigned int* words, index_t ws,
                                               double lam_dot = 0.0) {
  double glam = 0.0;
  double s_in = 0.0;
  index_t start = 0;
  unsigned int word = 0;
  while (start < n) {
    double sum = 0.0;
    index_t end = start;
    unsigned int code = 0;
    // Extend the segment until a jump after sample `end` (or the fiber's end).
    for (; end < n; ++end) {
      if (end % TV2D_SAMPLES_PER_WORD == 0) word = words[(end / TV2D_SAMPLES_PER_WORD) * ws];
      sum += static_cast<double>(u[end * su]);
      code = (word >> (2 * (end % TV2D_SAMPLES_PER_WORD))) & 3u;
      if (code != 0u && end + 1 < n) break;
    }
    if (end == n) end = n - 1;  // the loop ran off the end: the last segment
    const double size = static_cast<double>(end - start + 1);
    const double mean = sum / size;
    const double s_out =
        end + 1 < n ? (code == TV2D_JUMP_UP ? 1.0 : (code == TV2D_JUMP_DOWN ? -1.0 : 0.0)) : 0.0;
    // lam_dot == 0 keeps the backward's values bit for bit (no added signed zero).
    const double value = lam_dot == 0.0 ? mean : mean + lam_dot * (s_out - s_in) / size;
    tv1d::fill(u, su, start, end + 1, static_cast<T>(value));
    glam += (s_out - s_in) * mean;
    s_in = s_out;
    start = end + 1;
  }
  return glam;
}

// The momentum of iteration t (see the header): 0 for Dykstra, t / (t + 3) accelerated.
__device__ __forceinline__ double momentum_of(int momentum, int t) {
  return momentum ? static_cast<double>(t) / (static_cast<double>(t) + 3.0) : 0.0;
}

// The certificate is summed from TV2D_GAP_TERMS terms per row (row_gap), combined per slice by
// slice_gap: [0] tv - <Z - shift, R> + slack, [1] F's terms, [2] sum R, [3] sum (Z - shift), with
// R = X - Z. Term j of row r lives at terms[j * ts + r].
#define TV2D_GAP_TERMS 4

// The power of two that brings a slice's max|x| to [1, 2): the certificate is computed on the
// slice scaled by it, exactly (a power of two), so its squares neither underflow (float64 data
// below ~1e-162 gave F = 0 and "converged" at y = x) nor overflow (above ~1e154). The relative
// gap is scale-invariant. The exponent is clamped so that the factor itself stays finite for
// subnormal data (max|x| ~ 2^-1074: scaled to >= 2^-74, whose squares are still normal).
__device__ __forceinline__ double gap_unit(double max_abs) {
  if (!(max_abs > 0.0)) return 1.0;
  const int e = ilogb(max_abs);
  return scalbn(1.0, -(e < -1000 ? -1000 : (e > 1000 ? 1000 : e)));
}

// Row r's terms of the certificate (see TV2D_GAP_TERMS); reads row r + 1 of Z too. x: row r of
// X (global, stride 1). Every value is multiplied by `unit` (gap_unit) first.
template <typename T>
__device__ __forceinline__ void row_gap(const T* x, const T* Z, index_t ld, index_t h, index_t w,
                                        index_t r, double lam0, double lam1, double shift,
                                        double unit, double* terms, index_t ts) {
  const T* z = Z + r * ld;
  const bool below = r + 1 < h;
  lam0 *= unit;
  lam1 *= unit;
  shift *= unit;
  double tv = 0.0, inner = 0.0, fit = 0.0, scale = 0.0, res_sum = 0.0, z_sum = 0.0;
  TV_PROBE(row_gap_setup);
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(row_gap);
    for (index_t k = 0; k < w; ++k) {
      TV_PROBE_TRIP(row_gap);
      TV_PROBE_ACCESS(row_gap_z, &z[k]);
      TV_PROBE_ACCESS(row_gap_x, &x[k]);
      const double zk = unit * static_cast<double>(z[k]);
      const double xk = unit * static_cast<double>(x[k]);
      const double res = xk - zk;
      if (k + 1 < w) tv += lam1 * fabs(unit * static_cast<double>(z[k + 1]) - zk);
      if (below) tv += lam0 * fabs(unit * static_cast<double>(z[ld + k]) - zk);
      inner += (zk - shift) * res;
      fit += res * res;
      res_sum += res;
      z_sum += zk - shift;
      if (res != 0.0) scale += fabs(zk - shift) * (fabs(xk) + fabs(zk));
    }
  }
  // X - Z is a feasible dual point D^T u only up to the rounding of the stored W and Z (T's
  // precision), so the inner product is off by up to about eps(T) sum |z - shift| (|x| + |z|)
  // times Limits<T>::gap_slack (measured: see common.cuh). Adding that slack keeps the
  // gap an upper bound: without it float32 gaps came out negative and stopped solves early (a
  // true gap of 3.5e-7 reported as -1.9e-7). A constant shift leaves the gap unchanged once R's
  // mean is accounted for (slice_gap); the slice's first value x[0, 0] takes out an image's
  // offset, which would otherwise dominate the slack (1000 + 50 * photo in float32: no 1e-3
  // certificate at all). Samples with z == x add none: lam = 0 and constant slices (exact, F = 0)
  // still stop at once.
  terms[0] = tv - inner + cupytv::Limits<T>::gap_slack * cupytv::Limits<T>::eps * scale;
  terms[ts] = 0.5 * fit + tv;
  terms[2 * ts] = res_sum;
  terms[3 * ts] = z_sum;
}

// A slice's gap and objective from its rows' terms (summed in row order, so that both paths and
// every executor decide identically). R = X - Z sums to 0 for an exact dual point, but rounded
// iterates leave a mean m (the 1D proxes' segment means are off by ulps of |x|: at -1000 that is
// 1e-13, against an objective of 5e-11). The feasible point is then R - m, whose gap is
//   tv - <Z - shift, R - m> + N m^2 / 2 = terms[0] + m sum (Z - shift) + N m^2 / 2
// (F(Z) - D(u) expanded with <1, R - m> = 0); without it the float64 gap came out -1.9e-9 and a
// tol = 1e-10 solve stopped after 3 iterations.
__device__ __forceinline__ void slice_gap(const double* terms, index_t ts, index_t h,
                                          double pixels, double* gap, double* obj) {
  double part = 0.0, total_obj = 0.0, res_sum = 0.0, z_sum = 0.0;
  for (index_t r = 0; r < h; ++r) {
    part += terms[r];
    total_obj += terms[ts + r];
    res_sum += terms[2 * ts + r];
    z_sum += terms[3 * ts + r];
  }
  const double m = res_sum / pixels;
  *gap = part + m * z_sum + 0.5 * pixels * m * m;
  *obj = total_obj;
}

// Row half for row r: Z_r := X_r - Ub_r (Z is free here), W_r := prox_lam1(Z_r) (jumps recorded
// when words != null), W_r += Ub_r.
template <typename T>
__device__ __forceinline__ void row_prox(const T* x, const T* Ub, T* W, T* Z, index_t ld,
                                         index_t w, index_t r, T lam1, T* scratch,
                                         unsigned int* words, index_t ws, double tiny) {
  const T* ub = Ub + r * ld;
  T* wr = W + r * ld;
  T* v = Z + r * ld;
  TV_PROBE(row_prox);
  {
    TV_PROBE_LOOP(row_in);
    for (index_t k = 0; k < w; ++k) {
      TV_PROBE_TRIP(row_in);
      TV_PROBE_ACCESS(row_in_x, &x[k]);
      TV_PROBE_ACCESS(row_in_ub, &ub[k]);
      TV_PROBE_ACCESS(row_in_v, &v[k]);
      v[k] = x[k] - ub[k];
    }
  }
  tv1d_condat_fiber(static_cast<const T*>(v), 1, wr, 1, w, lam1, scratch);
  if (words != nullptr) record_jumps(static_cast<const T*>(wr), 1, w, words, ws, tiny);
  TV_PROBE_LOOP(row_out);
  for (index_t k = 0; k < w; ++k) {
    TV_PROBE_TRIP(row_out);
    TV_PROBE_ACCESS(row_out_w, &wr[k]);
    TV_PROBE_ACCESS(row_out_ub, &ub[k]);
    TV_PROBE_ACCESS(row_out_w, &wr[k]);
    wr[k] += ub[k];
  }
}

// Column half for column c: Z_c := prox_lam0(W_c) (jumps recorded), Un = W - Z, and the momentum
// step Ub = Un + beta (Un - U), U = Un (Ub = Un without momentum; U is then not touched).
template <typename T>
__device__ __forceinline__ void col_prox(T* Ub, T* U, const T* W, T* Z, index_t ld, index_t h,
                                         index_t c, T lam0, double beta, int momentum,
                                         T* scratch, unsigned int* words, index_t ws,
                                         double tiny) {
  T* zc = Z + c;
  const T* wc = W + c;
  tv1d_condat_fiber(wc, ld, zc, ld, h, lam0, scratch);
  if (words != nullptr) record_jumps(static_cast<const T*>(zc), ld, h, words, ws, tiny);
  const T b = static_cast<T>(beta);
  TV_PROBE(col_prox);
  TV_PROBE_LOOP(col_out);
  for (index_t k = 0; k < h; ++k) {
    TV_PROBE_TRIP(col_out);
    TV_PROBE_ACCESS(col_out_w, &wc[k * ld]);
    TV_PROBE_ACCESS(col_out_z, &zc[k * ld]);
    TV_PROBE_ACCESS(col_out_ub, &Ub[c + k * ld]);
    const T un = wc[k * ld] - zc[k * ld];
    if (momentum) {
      Ub[c + k * ld] = un + b * (un - U[c + k * ld]);
      U[c + k * ld] = un;
    } else {
      Ub[c + k * ld] = un;
    }
  }
}

// Reverse of the column half of iteration t for column c (see the header); returns its glam0
// term. A, B: adjoints of Ub, U; Tb: the work array; g: column c of the upstream gradient (stride
// gs), read only when `last`.
template <typename T>
__device__ __forceinline__ double col_vjp(T* A, T* B, T* Tb, const T* g, index_t gs, index_t ld,
                                          index_t h, index_t c, double beta, int momentum,
                                          bool last, const unsigned int* words, index_t ws) {
  const T bt = static_cast<T>(beta);
  const T one_bt = static_cast<T>(1.0 + beta);
  for (index_t k = 0; k < h; ++k) {
    const index_t e = c + k * ld;
    const T un = momentum ? one_bt * A[e] + B[e] : A[e];
    Tb[e] = (last ? g[k * gs] : T(0)) - un;
  }
  const double glam = segment_mean(Tb + c, ld, h, words, ws);
  for (index_t k = 0; k < h; ++k) {
    const index_t e = c + k * ld;
    const T un = momentum ? one_bt * A[e] + B[e] : A[e];
    const T wbar = un + Tb[e];
    Tb[e] = wbar;
    if (momentum) B[e] = -bt * A[e];
    A[e] = wbar;
  }
  return glam;
}

// Reverse of the row half for row r; returns its glam1 term.
template <typename T>
__device__ __forceinline__ double row_vjp(T* A, T* Xb, T* Tb, index_t ld, index_t w, index_t r,
                                          const unsigned int* words, index_t ws) {
  T* t = Tb + r * ld;
  const double glam = segment_mean(t, 1, w, words, ws);
  T* a = A + r * ld;
  T* xb = Xb + r * ld;
  for (index_t k = 0; k < w; ++k) {
    xb[k] += t[k];
    a[k] -= t[k];
  }
  return glam;
}

template <typename T>
__device__ __forceinline__ bool row_is_finite(const T* row, index_t n) {
  return tv1d::fiber_is_finite(row, 1, n);
}

// The stopping decision and the reported gap, shared by both paths so that they agree bit for bit.
// tol = 0 never stops early: exactly max_iter iterations (a gap that rounds to <= 0 would
// otherwise end a fixed-iteration run at a data-dependent count).
__device__ __forceinline__ bool converged(double gap, double obj, double tol) {
  return tol > 0.0 && gap <= tol * obj;
}

// gap / F; 0 for a slice whose objective is 0 (Z = X is then exact: lam = 0 or constant x).
__device__ __forceinline__ double relative_gap(double gap, double obj) {
  return obj > 0.0 ? gap / obj : 0.0;
}

// Fused-path shared memory: per-thread double partials (TV2D_GAP_TERMS * blockDim.x), then three
// or four padded h x ld arrays (the fourth only with momentum).
template <typename T>
struct FusedTile {
  double* part;
  T* a0;
  T* a1;
  T* a2;
  T* a3;
  index_t ld;
};

template <typename T>
__device__ __forceinline__ FusedTile<T> fused_tile(index_t h, index_t w, int momentum) {
  extern __shared__ __align__(16) unsigned char tv2d_shared_raw[];
  FusedTile<T> tile;
  tile.part = reinterpret_cast<double*>(tv2d_shared_raw);
  tile.ld = w | 1;
  tile.a0 = reinterpret_cast<T*>(tile.part + TV2D_GAP_TERMS * blockDim.x);
  tile.a1 = tile.a0 + h * tile.ld;
  tile.a2 = tile.a1 + h * tile.ld;
  tile.a3 = momentum ? tile.a2 + h * tile.ld : tile.a2;  // never used without momentum
  return tile;
}

// Set the padded arrays from global slice `src` (or 0 when src is null); all threads.
template <typename T>
__device__ __forceinline__ void fused_fill(T* dst, const T* src, index_t ld, index_t h, index_t w) {
  TV_PROBE_LOOP(fused_fill);
  for (index_t e = threadIdx.x; e < h * w; e += blockDim.x) {
    TV_PROBE_TRIP(fused_fill);
    const index_t i = e / w;
    TV_PROBE_ACCESS(fused_fill, &dst[i * ld + (e - i * w)]);
    dst[i * ld + (e - i * w)] = src != nullptr ? src[e] : T(0);
  }
}

template <typename T>
__device__ __forceinline__ void fused_store(T* dst, const T* src, index_t ld, index_t h, index_t w,
                                            bool finite) {
  const T nan = static_cast<T>(tv1d::quiet_nan());
  TV_PROBE_LOOP(fused_store);
  for (index_t e = threadIdx.x; e < h * w; e += blockDim.x) {
    TV_PROBE_TRIP(fused_store);
    const index_t i = e / w;
    TV_PROBE_ACCESS(fused_store_shared, &src[i * ld + (e - i * w)]);
    TV_PROBE_ACCESS(fused_store_global, &dst[e]);
    dst[e] = finite ? src[i * ld + (e - i * w)] : nan;
  }
}

// Whether every row of the global slice xs is finite (all threads; uses part).
template <typename T>
__device__ bool fused_finite(const T* xs, double* part, index_t h, index_t w) {
  const index_t r = threadIdx.x;
  part[r] = (r < h && !row_is_finite(xs + r * w, w)) ? 1.0 : 0.0;
  __syncthreads();
  bool finite = true;
  for (index_t k = 0; k < h; ++k) finite &= part[k] == 0.0;
  __syncthreads();  // part is reused next
  return finite;
}

// max|x| over the global slice xs (all threads; uses part): the scale of jump_rtol and of the
// certificate (gap_unit).
template <typename T>
__device__ double fused_scale(const T* xs, double* part, index_t h, index_t w) {
  const index_t r = threadIdx.x;
  double m = 0.0;
  if (r < h) {
    for (index_t k = 0; k < w; ++k) m = fmax(m, fabs(static_cast<double>(xs[r * w + k])));
  }
  part[r] = m;
  __syncthreads();
  double scale = 0.0;
  for (index_t k = 0; k < h; ++k) scale = fmax(scale, part[k]);
  __syncthreads();  // part is reused next
  return scale;
}

// Arrays of the forward in a fused tile: Z (output), Ub, W, U.
template <typename T>
struct ForwardArrays {
  T* Z;
  T* Ub;
  T* W;
  T* U;
};

template <typename T>
__device__ __forceinline__ ForwardArrays<T> forward_arrays(FusedTile<T> tile) {
  return {tile.a0, tile.a1, tile.a2, tile.a3};
}

// One iteration's two halves in a fused tile (with barriers), recording when bits != null.
template <typename T>
__device__ __forceinline__ void fused_iteration(const T* xs, ForwardArrays<T> f, index_t ld,
                                                index_t s, index_t slices, index_t h, index_t w,
                                                int t, T lam0, T lam1, int momentum,
                                                unsigned int* bits, double tiny) {
  const index_t k = threadIdx.x;
  if (k < h) {
    row_prox(xs + k * w, f.Ub, f.W, f.Z, ld, w, k, lam1, static_cast<T*>(nullptr),
             bits != nullptr ? row_words(bits, t, s, slices, h, w, k)
                             : static_cast<unsigned int*>(nullptr),
             h, tiny);
  }
  __syncthreads();
  if (k < w) {
    col_prox(f.Ub, f.U, f.W, f.Z, ld, h, k, lam0, momentum_of(momentum, t), momentum,
             static_cast<T*>(nullptr),
             bits != nullptr ? col_words(bits, t, s, slices, h, w, k)
                             : static_cast<unsigned int*>(nullptr),
             w, tiny);
  }
  __syncthreads();
}

}  // namespace tv2d

// ---------------------------------------------------------------------------------------------
// Fused path.

template <typename T>
__global__ void tv2d_solve(const T* __restrict__ x, T* __restrict__ z, const T* __restrict__ lam0,
                           const T* __restrict__ lam1, T lam_value0, T lam_value1,
                           cupytv::index_t lam_first, cupytv::index_t lam_div,
                           cupytv::index_t lam_mod, cupytv::index_t slices, cupytv::index_t h, cupytv::index_t w,
                           int momentum, int max_iter, double tol, int* __restrict__ n_iter,
                           double* __restrict__ gap) {
  using cupytv::index_t;
  const index_t s = blockIdx.x;
  const index_t k = threadIdx.x;
  const tv2d::FusedTile<T> tile = tv2d::fused_tile<T>(h, w, momentum);
  const tv2d::ForwardArrays<T> f = tv2d::forward_arrays(tile);
  const T* xs = x + s * h * w;
  const T l0 = cupytv::FiberWeight<T>{lam0, lam_value0, lam_first, lam_div, lam_mod}(s);
  const T l1 = cupytv::FiberWeight<T>{lam1, lam_value1, lam_first, lam_div, lam_mod}(s);
  tv2d::fused_fill(f.Z, xs, tile.ld, h, w);
  tv2d::fused_fill(f.Ub, static_cast<const T*>(nullptr), tile.ld, h, w);
  if (momentum) tv2d::fused_fill(f.U, static_cast<const T*>(nullptr), tile.ld, h, w);
  __syncthreads();
  const bool finite = tv2d::fused_finite(xs, tile.part, h, w);
  const double unit = tv2d::gap_unit(tv2d::fused_scale(xs, tile.part, h, w));
  __shared__ int stop;
  TV_PROBE(solve_setup);
  {  // the loop's probe scope ends with the loop
    TV_PROBE_LOOP(iteration);
    for (int t = 0; finite; ++t) {
      TV_PROBE_TRIP(iteration);
      if (k < h) {
        tv2d::row_gap(xs + k * w, f.Z, tile.ld, h, w, k, l0, l1, static_cast<double>(xs[0]), unit,
                      tile.part + k, blockDim.x);
      }
      __syncthreads();
      if (k == 0) {
        double total_gap, total_obj;
        tv2d::slice_gap(tile.part, blockDim.x, h, static_cast<double>(h * w), &total_gap,
                        &total_obj);
        stop = tv2d::converged(total_gap, total_obj, tol) || t >= max_iter;
        if (stop) {
          n_iter[s] = t;
          gap[s] = tv2d::relative_gap(total_gap, total_obj);
        }
      }
      __syncthreads();
      if (stop) break;
      tv2d::fused_iteration(xs, f, tile.ld, s, slices, h, w, t, l0, l1, momentum,
                            static_cast<unsigned int*>(nullptr), 0.0);
    }
  }
  if (!finite && k == 0) {
    n_iter[s] = 0;
    gap[s] = tv1d::quiet_nan();
  }
  tv2d::fused_store(z + s * h * w, static_cast<const T*>(f.Z), tile.ld, h, w, finite);
}

template <typename T>
__global__ void tv2d_solve_vjp(const T* __restrict__ x, const T* __restrict__ g,
                               const T* __restrict__ lam0, const T* __restrict__ lam1,
                               T lam_value0, T lam_value1, cupytv::index_t lam_first,
                               cupytv::index_t lam_div, cupytv::index_t lam_mod,
                               cupytv::index_t slices,
                               cupytv::index_t h, cupytv::index_t w, int momentum,
                               const int* __restrict__ n_iter, unsigned int* __restrict__ bits,
                               T* __restrict__ grad_x, double* __restrict__ grad_lam) {
  using cupytv::index_t;
  const index_t s = blockIdx.x;
  const index_t k = threadIdx.x;
  const tv2d::FusedTile<T> tile = tv2d::fused_tile<T>(h, w, momentum);
  const tv2d::ForwardArrays<T> f = tv2d::forward_arrays(tile);
  const T* xs = x + s * h * w;
  const T* gs = g + s * h * w;
  const T l0 = cupytv::FiberWeight<T>{lam0, lam_value0, lam_first, lam_div, lam_mod}(s);
  const T l1 = cupytv::FiberWeight<T>{lam1, lam_value1, lam_first, lam_div, lam_mod}(s);
  const bool finite = tv2d::fused_finite(xs, tile.part, h, w);
  const double tiny = tv2d::jump_rtol<T>() * tv2d::fused_scale(xs, tile.part, h, w);
  const int n = finite ? n_iter[s] : 0;
  // Replay with recording. Z needs no initial value (the row half writes it first).
  tv2d::fused_fill(f.Ub, static_cast<const T*>(nullptr), tile.ld, h, w);
  if (momentum) tv2d::fused_fill(f.U, static_cast<const T*>(nullptr), tile.ld, h, w);
  __syncthreads();
  for (int t = 0; t < n; ++t) {
    tv2d::fused_iteration(xs, f, tile.ld, s, slices, h, w, t, l0, l1, momentum, bits, tiny);
  }
  // Adjoints: A (of Ub) in a0, Xb in a1, the work array in a2, B (of U) in a3.
  T* A = tile.a0;
  T* Xb = tile.a1;
  T* Tb = tile.a2;
  T* B = tile.a3;
  tv2d::fused_fill(A, static_cast<const T*>(nullptr), tile.ld, h, w);
  tv2d::fused_fill(Xb, n == 0 ? gs : static_cast<const T*>(nullptr), tile.ld, h, w);
  if (momentum) tv2d::fused_fill(B, static_cast<const T*>(nullptr), tile.ld, h, w);
  __syncthreads();
  double glam0 = 0.0, glam1 = 0.0;  // this thread's column c = k and row r = k terms
  for (int t = n - 1; t >= 0; --t) {
    if (k < w) {
      glam0 += tv2d::col_vjp(A, B, Tb, gs + k, w, tile.ld, h, k, tv2d::momentum_of(momentum, t),
                             momentum, t == n - 1,
                             tv2d::col_words(static_cast<const unsigned int*>(bits), t, s, slices,
                                             h, w, k),
                             w);
    }
    __syncthreads();
    if (k < h) {
      glam1 += tv2d::row_vjp(A, Xb, Tb, tile.ld, w, k,
                             tv2d::row_words(static_cast<const unsigned int*>(bits), t, s, slices,
                                             h, w, k),
                             h);
    }
    __syncthreads();
  }
  tile.part[k] = glam0;
  tile.part[blockDim.x + k] = glam1;
  __syncthreads();
  if (k == 0) {
    // The same order as tv2d_lam_grad: columns 0..w-1, rows 0..h-1.
    double sum0 = 0.0, sum1 = 0.0;
    for (index_t c = 0; c < w; ++c) sum0 += tile.part[c];
    for (index_t r = 0; r < h; ++r) sum1 += tile.part[blockDim.x + r];
    grad_lam[s] = finite ? sum0 : tv1d::quiet_nan();
    grad_lam[slices + s] = finite ? sum1 : tv1d::quiet_nan();
  }
  tv2d::fused_store(grad_x + s * h * w, static_cast<const T*>(Xb), tile.ld, h, w, finite);
}

// ---------------------------------------------------------------------------------------------
// Multi-launch path: one thread per row (or column) of every slice; ld = w in global memory.

namespace tv2d {

// The slice and in-slice index of this thread's fiber, for `per_slice` fibers per slice.
__device__ __forceinline__ bool fiber_of(index_t slices, index_t per_slice, index_t* s,
                                         index_t* k) {
  const index_t f = cupytv::block_start_x() + threadIdx.x;
  if (f >= slices * per_slice) return false;
  *s = f / per_slice;
  *k = f - *s * per_slice;
  return true;
}

// Whether slice s iterates at step t: in the forward, while its state is active; in a replay,
// while t < n_iter[s].
__device__ __forceinline__ bool runs(const int* control, int replay, int t, index_t s) {
  return replay ? t < control[s] : control[s] == TV2D_ACTIVE;
}

}  // namespace tv2d

// state[s] |= TV2D_NONFINITE for every slice with a NaN or +-Inf; one thread per row.
template <typename T>
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_check_finite(const T* __restrict__ x, cupytv::index_t slices, cupytv::index_t h,
                      cupytv::index_t w, int* __restrict__ state) {
  cupytv::index_t s, r;
  if (!tv2d::fiber_of(slices, h, &s, &r)) return;
  if (!tv2d::row_is_finite(x + (s * h + r) * w, w)) atomicOr(state + s, TV2D_NONFINITE);
}

template <typename T>
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_rows_gap(const T* __restrict__ x, const T* __restrict__ z, const T* __restrict__ lam0,
                  const T* __restrict__ lam1, T lam_value0, T lam_value1,
                  cupytv::index_t lam_first, cupytv::index_t lam_div, cupytv::index_t lam_mod,
                  cupytv::index_t slices,
                  cupytv::index_t h, cupytv::index_t w, const int* __restrict__ state,
                  const T* __restrict__ scale, double* __restrict__ terms) {
  cupytv::index_t s, r;
  if (!tv2d::fiber_of(slices, h, &s, &r) || state[s] != TV2D_ACTIVE) return;
  const cupytv::index_t base = s * h * w;
  const T l0 = cupytv::FiberWeight<T>{lam0, lam_value0, lam_first, lam_div, lam_mod}(s);
  const T l1 = cupytv::FiberWeight<T>{lam1, lam_value1, lam_first, lam_div, lam_mod}(s);
  tv2d::row_gap(x + base + r * w, z + base, w, h, w, r, static_cast<double>(l0),
                static_cast<double>(l1), static_cast<double>(x[base]),
                tv2d::gap_unit(static_cast<double>(scale[s])), terms + s * h + r, slices * h);
}

// One thread per slice: sum the rows' terms in row order and decide (the fused path's rule).
// active[t] counts the slices that go on to iteration t + 1 (the host may poll it).
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_decide(const double* __restrict__ terms, cupytv::index_t slices, cupytv::index_t h,
                cupytv::index_t w, int t, int max_iter, double tol, int* __restrict__ state,
                int* __restrict__ n_iter, double* __restrict__ gap, int* __restrict__ active) {
  const cupytv::index_t s = cupytv::block_start_x() + threadIdx.x;
  if (s >= slices || state[s] != TV2D_ACTIVE) return;
  double total_gap, total_obj;
  tv2d::slice_gap(terms + s * h, slices * h, h, static_cast<double>(h * w), &total_gap,
                  &total_obj);
  if (tv2d::converged(total_gap, total_obj, tol) || t >= max_iter) {
    state[s] = TV2D_DONE;
    n_iter[s] = t;
    gap[s] = tv2d::relative_gap(total_gap, total_obj);
  } else {
    atomicAdd(active + t, 1);
  }
}

// Row half of iteration t. control: the state (forward, replay = 0) or n_iter (the backward's
// replay, replay = 1, which records the jumps into bits with the threshold jump_rtol * scale[s],
// scale[s] = max|x| of slice s; the forward touches neither bits nor scale).
template <typename T>
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_rows_prox(const T* __restrict__ x, const T* __restrict__ ub, T* __restrict__ wbuf,
                   T* __restrict__ z, const T* __restrict__ lam1, T lam_value1,
                   cupytv::index_t lam_first, cupytv::index_t lam_div, cupytv::index_t lam_mod,
                   cupytv::index_t slices, cupytv::index_t h, cupytv::index_t w,
                   const int* __restrict__ control, int replay, int t,
                   unsigned int* __restrict__ bits, const T* __restrict__ scale,
                   T* __restrict__ scratch) {
  using cupytv::index_t;
  index_t s, r;
  if (!tv2d::fiber_of(slices, h, &s, &r) || !tv2d::runs(control, replay, t, s)) return;
  const index_t base = s * h * w;
  T* ws = scratch + (s * h + r) * tv1d::condat_scratch<T>(w);
  unsigned int* words = replay ? tv2d::row_words(bits, t, s, slices, h, w, r)
                              : static_cast<unsigned int*>(nullptr);
  const double tiny = replay ? tv2d::jump_rtol<T>() * static_cast<double>(scale[s]) : 0.0;
  tv2d::row_prox(x + base + r * w, ub + base, wbuf + base, z + base, w, w, r,
                 cupytv::FiberWeight<T>{lam1, lam_value1, lam_first, lam_div, lam_mod}(s), ws,
                 words, h, tiny);
}

template <typename T>
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_cols_prox(T* __restrict__ ub, T* __restrict__ u, const T* __restrict__ wbuf,
                   T* __restrict__ z, const T* __restrict__ lam0, T lam_value0,
                   cupytv::index_t lam_first, cupytv::index_t lam_div, cupytv::index_t lam_mod,
                   cupytv::index_t slices, cupytv::index_t h, cupytv::index_t w, int momentum,
                   const int* __restrict__ control, int replay, int t,
                   unsigned int* __restrict__ bits, const T* __restrict__ scale,
                   T* __restrict__ scratch) {
  using cupytv::index_t;
  index_t s, c;
  if (!tv2d::fiber_of(slices, w, &s, &c) || !tv2d::runs(control, replay, t, s)) return;
  const index_t base = s * h * w;
  T* ws = scratch + (s * w + c) * tv1d::condat_scratch<T>(h);
  unsigned int* words = replay ? tv2d::col_words(bits, t, s, slices, h, w, c)
                              : static_cast<unsigned int*>(nullptr);
  const double tiny = replay ? tv2d::jump_rtol<T>() * static_cast<double>(scale[s]) : 0.0;
  tv2d::col_prox(ub + base, u + base, wbuf + base, z + base, w, h, c,
                 cupytv::FiberWeight<T>{lam0, lam_value0, lam_first, lam_div, lam_mod}(s),
                 tv2d::momentum_of(momentum, t), momentum, ws, words, w, tiny);
}

// NaN over every row of the slices whose state has TV2D_NONFINITE; one thread per row.
template <typename T>
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_fill_nan(T* __restrict__ a, cupytv::index_t slices, cupytv::index_t h, cupytv::index_t w,
                  const int* __restrict__ state) {
  cupytv::index_t s, r;
  if (!tv2d::fiber_of(slices, h, &s, &r) || !(state[s] & TV2D_NONFINITE)) return;
  tv1d::fill(a + (s * h + r) * w, 1, 0, w, static_cast<T>(tv1d::quiet_nan()));
}

template <typename T>
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_cols_vjp(const T* __restrict__ g, T* __restrict__ a, T* __restrict__ b,
                  T* __restrict__ tbuf, cupytv::index_t slices, cupytv::index_t h,
                  cupytv::index_t w, int momentum, const int* __restrict__ n_iter, int t,
                  const unsigned int* __restrict__ bits, double* __restrict__ col_glam) {
  using cupytv::index_t;
  index_t s, c;
  if (!tv2d::fiber_of(slices, w, &s, &c) || !tv2d::runs(n_iter, 1, t, s)) return;
  const index_t base = s * h * w;
  col_glam[s * w + c] += tv2d::col_vjp(a + base, b + base, tbuf + base, g + base + c, w, w, h, c,
                                       tv2d::momentum_of(momentum, t), momentum,
                                       t == n_iter[s] - 1,
                                       tv2d::col_words(bits, t, s, slices, h, w, c), w);
}

template <typename T>
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_rows_vjp(T* __restrict__ a, T* __restrict__ xb, T* __restrict__ tbuf,
                  cupytv::index_t slices, cupytv::index_t h, cupytv::index_t w,
                  const int* __restrict__ n_iter, int t, const unsigned int* __restrict__ bits,
                  double* __restrict__ row_glam) {
  using cupytv::index_t;
  index_t s, r;
  if (!tv2d::fiber_of(slices, h, &s, &r) || !tv2d::runs(n_iter, 1, t, s)) return;
  const index_t base = s * h * w;
  row_glam[s * h + r] += tv2d::row_vjp(a + base, xb + base, tbuf + base, w, w, r,
                                       tv2d::row_words(bits, t, s, slices, h, w, r), h);
}

// One thread per slice: grad_lam[s] = sum of the columns' terms (lam0), grad_lam[slices + s] =
// the rows' (lam1), in the fused path's order, as double (the wrapper casts).
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_lam_grad(const double* __restrict__ row_glam, const double* __restrict__ col_glam,
                  cupytv::index_t slices, cupytv::index_t h, cupytv::index_t w,
                  double* __restrict__ grad_lam) {
  const cupytv::index_t s = cupytv::block_start_x() + threadIdx.x;
  if (s >= slices) return;
  double sum0 = 0.0, sum1 = 0.0;
  for (cupytv::index_t c = 0; c < w; ++c) sum0 += col_glam[s * w + c];
  for (cupytv::index_t r = 0; r < h; ++r) sum1 += row_glam[s * h + r];
  grad_lam[s] = sum0;
  grad_lam[slices + s] = sum1;
}

// Forward mode, row half of iteration t for row r (see the header): Wd = Ubd + A(Xd - Ubd).
template <typename T>
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_rows_jvp(const T* __restrict__ xd, const T* __restrict__ ubd, T* __restrict__ wd,
                  const T* __restrict__ lam1d, cupytv::index_t slices, cupytv::index_t h,
                  cupytv::index_t w, const int* __restrict__ n_iter, int t,
                  const unsigned int* __restrict__ bits) {
  using cupytv::index_t;
  index_t s, r;
  if (!tv2d::fiber_of(slices, h, &s, &r) || !tv2d::runs(n_iter, 1, t, s)) return;
  const index_t row = s * h * w + r * w;
  for (index_t k = 0; k < w; ++k) wd[row + k] = xd[row + k] - ubd[row + k];
  tv2d::segment_mean(wd + row, 1, w, tv2d::row_words(bits, t, s, slices, h, w, r), h,
                     static_cast<double>(lam1d[s]));
  for (index_t k = 0; k < w; ++k) wd[row + k] += ubd[row + k];
}

// Forward mode, column half of iteration t for column c: Zd = A(Wd), Und = Wd - Zd, and the
// momentum step on the tangents (Ud is a placeholder without momentum).
template <typename T>
__global__ void __launch_bounds__(TV2D_BLOCK)
    tv2d_cols_jvp(T* __restrict__ ubd, T* __restrict__ ud, const T* __restrict__ wd,
                  T* __restrict__ zd, const T* __restrict__ lam0d, cupytv::index_t slices,
                  cupytv::index_t h, cupytv::index_t w, int momentum,
                  const int* __restrict__ n_iter, int t, const unsigned int* __restrict__ bits) {
  using cupytv::index_t;
  index_t s, c;
  if (!tv2d::fiber_of(slices, w, &s, &c) || !tv2d::runs(n_iter, 1, t, s)) return;
  const index_t col = s * h * w + c;
  for (index_t k = 0; k < h; ++k) zd[col + k * w] = wd[col + k * w];
  tv2d::segment_mean(zd + col, w, h, tv2d::col_words(bits, t, s, slices, h, w, c), w,
                     static_cast<double>(lam0d[s]));
  const T b = static_cast<T>(tv2d::momentum_of(momentum, t));
  for (index_t k = 0; k < h; ++k) {
    const index_t e = col + k * w;
    const T un = wd[e] - zd[e];
    if (momentum) {
      ubd[e] = un + b * (un - ud[e]);
      ud[e] = un;
    } else {
      ubd[e] = un;
    }
  }
}
