// cupytv host executor: the CUDA compatibility header.
//
// The loader prepends this header to a kernel file from cuda_src/ and compiles the result with the
// system C++ compiler into a shared library; generated `extern "C"` launchers (one per requested
// template instantiation) call cupytv_host::launch<&kernel<T>>.
//
// Execution model (the why is in docs/ARCHITECTURE.md, "Kernel runtime"):
//   * Blocks run in parallel on the calling thread and the helper threads of a small pool (see
//     "The worker pool" below), one block at a time per thread.
//   * The threads of a block all run on their worker's OS thread. A "driver" loop calls the kernel
//     once per CUDA thread, in threadIdx order, as a plain function call. A thread that reaches
//     __syncthreads() keeps the fiber stack it is running on; a new driver continues the loop on a
//     fresh stack. Once every thread has either returned or reached the barrier, the waiting
//     threads are resumed in order, each running to its next barrier or its end. Kernels without
//     barriers therefore never switch context (the fast path).
//   * Because a block never leaves its worker thread, `thread_local` storage is private to the
//     block running there: __shared__ variables and the threadIdx/blockIdx registers are
//     thread_local, and the dynamic shared buffer is allocated per worker.
//   * Threads that have returned count as arrived at later barriers (as on current GPUs).
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cassert>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUPYTV_HOST_ASAN 1
#else
#define CUPYTV_HOST_ASAN 0
#endif

// The hand-written switch covers x86-64; everything else (and CUPYTV_HOST_UCONTEXT, which the
// test suite uses to keep the fallback honest) uses ucontext, correct but ~20x slower per switch.
#if defined(__x86_64__) && !defined(CUPYTV_HOST_UCONTEXT)
#define CUPYTV_HOST_ASM_SWITCH 1
#else
#define CUPYTV_HOST_ASM_SWITCH 0
#include <ucontext.h>
#endif

// ------------------------------------------------------------------------------------------------
// CUDA keywords. Block-scope `thread_local` implies `static`, so `__shared__ T buf[N];` inside a
// kernel becomes one buffer per worker thread, i.e. per running block.
// `extern __shared__ T name[];` cannot be spelled with a macro; the loader rewrites it into a
// pointer to the worker's dynamic shared buffer (cupytv_host::dynamic_shared()).
// __constant__ and warp-level intrinsics are deliberately left undefined: kernels may not use them.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
};

// The CUDA "registers". Only the worker thread running a block reads or writes them; a thread
// resumed after a barrier restores its own threadIdx (see cupytv_host::barrier).
static thread_local uint3 threadIdx;
static thread_local uint3 blockIdx;
static thread_local dim3 blockDim;
static thread_local dim3 gridDim;

// ------------------------------------------------------------------------------------------------
// Device functions with a direct host equivalent. CUDA overloads the <cmath> functions for
// float; the using-declarations bring the std:: float overloads into the global namespace so that
// sqrt(x) on a float stays in float, as on the GPU.
using std::abs;
using std::ceil;
using std::copysign;
using std::cos;
using std::exp;
using std::expm1;
using std::fabs;
using std::floor;
using std::fma;
using std::fmax;
using std::fmin;
using std::hypot;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
using std::log1p;
using std::pow;
using std::round;
using std::sin;
using std::sqrt;
using std::tanh;
using std::trunc;

// min/max accept mixed argument types, as CUDA's overloads do (int and long long give long long).
// Floating point goes through fmin/fmax, which return the other argument for a NaN, as on the GPU.
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
  else return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));
  else return C(a) < C(b) ? C(b) : C(a);
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }
inline long long __double_as_longlong(double d) { return std::bit_cast<long long>(d); }
template <class T>
inline T __ldg(const T* p) { return *p; }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
// The threads of a block share one OS thread here, so ordering among them needs only the compiler.
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }

// Atomics: blocks run concurrently on different OS threads, so global-memory atomics must be real
// atomics. Relaxed ordering matches CUDA's (atomics are not fences there either). The value
// parameter is not deduced, so atomicAdd(&unsigned_long_long, 1) converts 1 as CUDA's overloads do.
template <class T>
using Value = std::type_identity_t<T>;
template <class T>
inline T atomicAdd(T* a, Value<T> v) {
  return std::atomic_ref<T>(*a).fetch_add(v, std::memory_order_relaxed);
}
template <class T>
inline T atomicSub(T* a, Value<T> v) {
  return std::atomic_ref<T>(*a).fetch_sub(v, std::memory_order_relaxed);
}
template <class T>
inline T atomicExch(T* a, Value<T> v) {
  return std::atomic_ref<T>(*a).exchange(v, std::memory_order_relaxed);
}
template <class T>
inline T atomicAnd(T* a, Value<T> v) {
  return std::atomic_ref<T>(*a).fetch_and(v, std::memory_order_relaxed);
}
template <class T>
inline T atomicOr(T* a, Value<T> v) {
  return std::atomic_ref<T>(*a).fetch_or(v, std::memory_order_relaxed);
}
template <class T>
inline T atomicXor(T* a, Value<T> v) {
  return std::atomic_ref<T>(*a).fetch_xor(v, std::memory_order_relaxed);
}
template <class T>
inline T atomicCAS(T* a, Value<T> expected, Value<T> desired) {
  std::atomic_ref<T>(*a).compare_exchange_strong(expected, desired, std::memory_order_relaxed);
  return expected;  // the old value, whether or not the swap happened
}
template <class T>
inline T atomicMin(T* a, Value<T> v) {
  std::atomic_ref<T> ref(*a);
  T old = ref.load(std::memory_order_relaxed);
  while (v < old && !ref.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}
template <class T>
inline T atomicMax(T* a, Value<T> v) {
  std::atomic_ref<T> ref(*a);
  T old = ref.load(std::memory_order_relaxed);
  while (v > old && !ref.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}

namespace cupytv_host {

// ------------------------------------------------------------------------------------------------
// Fiber stacks. mmap'ed with a PROT_NONE guard page below, so an overflow faults instead of
// silently corrupting a neighbour; MAP_NORESERVE because only the few touched pages are ever used.
#ifndef CUPYTV_HOST_STACK_BYTES
#define CUPYTV_HOST_STACK_BYTES (256 * 1024)
#endif
constexpr std::size_t kStackBytes = CUPYTV_HOST_STACK_BYTES;

struct Stack {
  unsigned char* lo = nullptr;  // lowest usable byte (just above the guard page)
  std::size_t size = 0;
};

struct Context {
#if CUPYTV_HOST_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  const void* stack_lo = nullptr;  // for the sanitizer's fiber annotations
  std::size_t stack_size = 0;
};

#if CUPYTV_HOST_ASM_SWITCH
// Saves the callee-saved general registers on the current stack, stores the stack pointer in
// *save, and resumes the context whose stack pointer is `load`. MXCSR and the x87 control word
// are not switched (restoring them costs more than the rest together): kernels cannot change the
// floating-point environment (CUDA has no API for it), so every fiber shares its worker's.
extern "C" void cupytv_host_switch(void** save, void* load);
extern "C" void cupytv_host_fiber_start();
asm(R"(
    .text
    .p2align 4
    .hidden cupytv_host_switch
    .type cupytv_host_switch,@function
cupytv_host_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cupytv_host_switch, .-cupytv_host_switch

    .p2align 4
    .hidden cupytv_host_fiber_start
    .type cupytv_host_fiber_start,@function
cupytv_host_fiber_start:
    movq %r13, %rdi
    callq *%r12
    ud2
    .size cupytv_host_fiber_start, .-cupytv_host_fiber_start
)");
#endif

#if !CUPYTV_HOST_ASM_SWITCH
// makecontext passes int arguments only, so the entry and its argument arrive in 32-bit halves.
inline void ucontext_trampoline(unsigned fn_hi, unsigned fn_lo, unsigned arg_hi, unsigned arg_lo) {
  auto fn = reinterpret_cast<void (*)(void*)>((std::uintptr_t{fn_hi} << 32) | fn_lo);
  fn(reinterpret_cast<void*>((std::uintptr_t{arg_hi} << 32) | arg_lo));
}
#endif

// Prepares `ctx` so that switching to it calls entry(arg) on `stack`; entry must never return.
inline void make_context(Context& ctx, const Stack& stack, void (*entry)(void*), void* arg) {
  ctx.stack_lo = stack.lo;
  ctx.stack_size = stack.size;
#if CUPYTV_HOST_ASM_SWITCH
  // Frame popped by cupytv_host_switch, lowest address first: r15, r14, r13, r12, rbx, rbp,
  // return address. After the `ret` the stack pointer is 16-byte aligned, so the `call` in
  // cupytv_host_fiber_start enters `entry` with the alignment the ABI promises.
  constexpr std::uintptr_t kFrameSlots = 7;
  auto top = reinterpret_cast<std::uintptr_t>(stack.lo + stack.size) & ~std::uintptr_t{15};
  auto* frame = reinterpret_cast<std::uint64_t*>(top - kFrameSlots * sizeof(std::uint64_t));
  frame[0] = 0;                                       // r15
  frame[1] = 0;                                       // r14
  frame[2] = reinterpret_cast<std::uint64_t>(arg);    // r13: argument for entry
  frame[3] = reinterpret_cast<std::uint64_t>(entry);  // r12: entry
  frame[4] = 0;                                       // rbx
  frame[5] = 0;                                       // rbp = 0 ends frame-pointer stack walks
  frame[6] = reinterpret_cast<std::uint64_t>(&cupytv_host_fiber_start);
  ctx.sp = frame;
#else
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack.lo;
  ctx.uc.uc_stack.ss_size = stack.size;
  ctx.uc.uc_link = nullptr;
  const auto fn = reinterpret_cast<std::uintptr_t>(entry);
  const auto a = reinterpret_cast<std::uintptr_t>(arg);
  makecontext(&ctx.uc, reinterpret_cast<void (*)()>(&ucontext_trampoline), 4,
              static_cast<unsigned>(fn >> 32), static_cast<unsigned>(fn),
              static_cast<unsigned>(a >> 32), static_cast<unsigned>(a));
#endif
}

// ------------------------------------------------------------------------------------------------
// Per-worker state. A worker runs one block at a time, so this is also the state of that block.
struct Worker {
  Context native;  // the worker's own stack, where run_block (the scheduler) lives
  std::vector<Stack> free_stacks;
  std::vector<Context> thread_ctx;  // saved context of each CUDA thread suspended at a barrier
  std::vector<unsigned> waiting;    // threads suspended at the current barrier, in arrival order
  std::vector<unsigned> resuming;   // threads being resumed in this round, in arrival order
  std::size_t resume_pos = 0;       // the next of them to resume
  unsigned nthreads = 0;
  unsigned next = 0;  // first pass: the thread a newly started driver begins with
  bool first_pass = false;
  // A driver runs the first pass. When one of its threads blocks at a barrier, that thread keeps
  // the driver's stack and a new driver (new epoch) continues on a fresh stack; the old driver's
  // frame stays under the thread and only notices, once the thread returns, that it is stale.
  unsigned long long driver_epoch = 0;
  Stack driver_stack;
  Context driver;
  Context ended;  // where a context that is never resumed saves its registers
  void (*driver_entry)(void*) = nullptr;
  void* body = nullptr;
  unsigned char* dynamic_shared = nullptr;

  Worker() {
#if CUPYTV_HOST_ASAN
    // The sanitizer must be told the bounds of the stack it switches back to.
    pthread_attr_t attr;
    pthread_getattr_np(pthread_self(), &attr);
    void* lo = nullptr;
    pthread_attr_getstack(&attr, &lo, &native.stack_size);
    native.stack_lo = lo;
    pthread_attr_destroy(&attr);
#endif
  }
  ~Worker() {
    for (const Stack& s : free_stacks) {
#if CUPYTV_HOST_ASAN
      // A driver's frame never unwinds (it switches away for good), so its redzones are still
      // poisoned, and the sanitizer keeps shadow memory across munmap: whatever is mapped here
      // next (a Python arena, say) would report a stack-buffer-underflow on its first memset.
      // This runs when a thread that launched kernels exits.
      __asan_unpoison_memory_region(s.lo, s.size);
#endif
      munmap(s.lo - page_size(), s.size + page_size());
    }
  }
  static std::size_t page_size() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }

  Stack take_stack() {
    if (free_stacks.empty()) {
      const std::size_t guard = page_size();
      void* p = mmap(nullptr, kStackBytes + guard, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) {
        std::fprintf(stderr, "cupytv host executor: cannot map a %zu-byte fiber stack\n",
                     kStackBytes);
        std::abort();
      }
      mprotect(p, guard, PROT_NONE);
      return Stack{static_cast<unsigned char*>(p) + guard, kStackBytes};
    }
    Stack s = free_stacks.back();
    free_stacks.pop_back();
#if CUPYTV_HOST_ASAN
    // A stale driver leaves without unwinding, so its frame's redzones are still poisoned.
    __asan_unpoison_memory_region(s.lo, s.size);
#endif
    return s;
  }

  uint3 thread_index(unsigned t) const {
    return uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
  }

  // After the first pass, what runs next when a thread blocks or ends: the next thread of the
  // current round; when the round is over, the first thread of the next one (the waiting
  // threads have all arrived, so this is where the barrier opens); the scheduler when none are
  // left. Threads hand over to each other directly, one switch per arrival.
  Context& next_context() {
    if (resume_pos == resuming.size()) {
      if (waiting.empty()) return native;
      std::swap(waiting, resuming);
      waiting.clear();
      resume_pos = 0;
    }
    return thread_ctx[resuming[resume_pos++]];
  }
};

// The worker of the calling OS thread. run_chunks sets it up on each worker before any block runs;
// afterwards the hot paths read this plain pointer, which needs no initialisation guard.
static thread_local Worker* current_worker;

inline Worker& setup_worker() {
  static thread_local Worker w;
  current_worker = &w;
  return w;
}

// Suspends `from` and resumes `to`. `from_ends` says that `from` will never be resumed.
inline void switch_context(Context& from, Context& to, bool from_ends) {
#if CUPYTV_HOST_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(from_ends ? nullptr : &fake_stack, to.stack_lo, to.stack_size);
#else
  (void)from_ends;
#endif
#if CUPYTV_HOST_ASM_SWITCH
  cupytv_host_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
#if CUPYTV_HOST_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

// Starts a new driver on a fresh stack, suspending `from`.
inline void start_driver(Worker& w, Context& from) {
  w.driver_stack = w.take_stack();
  ++w.driver_epoch;
  make_context(w.driver, w.driver_stack, w.driver_entry, w.body);
  switch_context(from, w.driver, false);
}

// The first pass over a block's threads; see Worker::driver_epoch.
template <class Body>
[[noreturn]] void driver_main(void* body_ptr) {
#if CUPYTV_HOST_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  // Laundered so the compiler keeps the address in a register: left alone, it recomputes the
  // thread-local address (a __tls_get_addr call) on every iteration of the hot loop below.
  Worker* wp = current_worker;
  asm("" : "+r"(wp));
  Worker& w = *wp;
  // A private copy of the body (which holds the kernel arguments by value): its address never
  // escapes, so the arguments live in registers instead of being reloaded after every store the
  // kernel makes through a pointer of the same type.
  Body body = *static_cast<const Body*>(body_ptr);
  const Stack my_stack = w.driver_stack;
  const unsigned long long my_epoch = w.driver_epoch;
  const dim3 dims = blockDim;
  // Nested loops rather than one loop with carries: the innermost one costs a handful of
  // instructions per CUDA thread, which is what keeps barrier-free kernels near plain-C speed.
  uint3 idx = w.thread_index(w.next);
  for (; idx.z < dims.z; ++idx.z, idx.y = 0) {
    for (; idx.y < dims.y; ++idx.y, idx.x = 0) {
      for (; idx.x < dims.x; ++idx.x) {
        // Nothing but the index is published: barrier() recovers the thread's number from it,
        // so a kernel without barriers costs no stores here.
        threadIdx = idx;
        body();
        // A new epoch: the thread that just returned had blocked at a barrier while running
        // here; it owned this stack from then on, and a newer driver went on.
        if (w.driver_epoch != my_epoch) goto done;
      }
    }
  }
done:
  // Either the first pass is over (every thread has returned or waits at its first barrier) or
  // a thread that had blocked here has ended. Nothing below touches this stack after the switch,
  // so it may go back to the pool first.
  w.first_pass = false;
  w.free_stacks.push_back(my_stack);
  switch_context(w.ended, w.next_context(), true);
  __builtin_unreachable();
}

inline void barrier() {
  Worker& w = *current_worker;
  const uint3 idx = threadIdx;
  const unsigned t = idx.x + blockDim.x * (idx.y + blockDim.y * idx.z);
  w.waiting.push_back(t);
  if (w.first_pass) {
    w.next = t + 1;
    // This thread keeps the stack of the driver that started it (see Worker::driver_epoch).
    w.thread_ctx[t].stack_lo = w.driver_stack.lo;
    w.thread_ctx[t].stack_size = w.driver_stack.size;
    start_driver(w, w.thread_ctx[t]);
  } else {
    // When this is the only live thread, the next round starts with it: nothing to switch.
    Context& self = w.thread_ctx[t];
    Context& next = w.next_context();
    if (&next != &self) switch_context(self, next, false);
  }
  // Resumed: restore this thread's index, which other threads overwrote meanwhile.
  threadIdx = idx;
}

// Runs one block; returns when all its threads have ended. Each round resumes every waiting
// thread once, in arrival order, and each runs to its next barrier or its end, so no round starts
// before every live thread has arrived: a true barrier.
inline void run_block(Worker& w) {
  w.next = 0;
  w.first_pass = true;
  w.waiting.clear();
  w.resuming.clear();
  w.resume_pos = 0;
  start_driver(w, w.native);
}

inline unsigned char* dynamic_shared() { return current_worker->dynamic_shared; }

// The launch configuration as the Python side passes it (mirrored by a ctypes.Structure).
// workers: how many OS threads may run the blocks, the calling thread included
// (cupytv.set_num_threads; the Python side resolves its default); 0 or less: every core.
#ifdef CUPYTV_PROBE
}  // namespace cupytv_host
// Probe builds only (cupytv/_host/probe.h, included after this header): each block's traces are
// cleared before it runs and merged into warps after it ends.
namespace cupytv_probe {
void begin_block(unsigned nthreads, const unsigned char* shared, std::size_t shared_bytes);
void end_block(unsigned nthreads);
}  // namespace cupytv_probe
namespace cupytv_host {
#endif

struct LaunchConfig {
  unsigned int grid[3];
  unsigned int block[3];
  unsigned long long shared_mem;
  int workers;
};

// ------------------------------------------------------------------------------------------------
// The worker pool: the blocks of a grid run on the calling thread plus up to workers - 1 helper
// threads of a pool this library starts on first use and keeps.
//
// Why not an OpenMP parallel-for (the first version): its region ends at a barrier that waits for
// every thread of the team, so on a CPU that other processes keep busy each launch waited for its
// worst-scheduled thread, and libgomp's idle threads spun on cores that the thread waited for
// needed; its wait policy is read once per process, from the environment, by whichever
// libgomp.so.1 loads first (torch ships its own under that soname). Measured: a 2D solve 13x
// slower with one core busy than on one thread (benchmarks/NOTES.md, "Threads on a shared CPU").
// Here:
//   * a launch waits only for the helpers that joined it. A helper that has not woken by the time
//     every block is claimed is not waited for: it finds the launch closed and sleeps again.
//   * an idle helper spins for at most kSpinMicros (an iterative solver's next launch usually
//     comes sooner), then blocks on a condition variable; the caller waiting for joined helpers
//     does the same. Nothing spins longer than that on a core another process needs.
//   * a grid with fewer chunks than workers wakes only as many helpers as it has chunks.
//   * blocks are claimed in chunks from one atomic counter (dynamic scheduling).
// Launches from several threads at once are allowed: the pool serves one, the others run their
// blocks on their own thread. After fork() the child starts a fresh pool (its helpers are gone).

// How long an idle thread polls before blocking. A multi-launch 2D iteration issues a launch every
// ~50-100 us (the Python side's cost per launch), so a helper that spins this long catches the next
// one without a wake-up (~10-50 us on a VM); a longer spin only burns a core another process
// could use. Measured on the shared 2-core machine: 0, 100 and 1000 us alike within the noise,
// and longer spins joined fewer launches under load (a thread that blocks gets the scheduler's
// wake-up preference, one that spins waits for its turn; NOTES.md).
#ifndef CUPYTV_HOST_SPIN_US
#define CUPYTV_HOST_SPIN_US 100
#endif
constexpr long long kSpinMicros = CUPYTV_HOST_SPIN_US;

// Over-decomposing the grid into chunks keeps workers busy when blocks take uneven time.
constexpr long long kChunksPerWorker = 8;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Polls `ready` for up to kSpinMicros; whether it became true. The clock is read once per
// kPollsPerClockRead polls (a pause is ~10-150 cycles, a clock read ~20 ns).
template <class Ready>
bool spin_until(Ready ready) {
  constexpr int kPollsPerClockRead = 64;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  for (;;) {
    for (int i = 0; i < kPollsPerClockRead; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return ready();
  }
}

// The index of the calling thread within the launch it is running: 0 for the launching thread,
// 1 .. workers - 1 for the helpers that joined (what omp_get_thread_num() was). Tests read it.
static thread_local int worker_slot = 0;
inline int worker_index() { return worker_slot; }

// One grid's shared state, on the launching thread's stack for the launch's duration.
struct Launch {
  void (*run)(Launch&) = nullptr;  // claims and runs chunks of blocks until none is left
  const LaunchConfig* cfg = nullptr;
  void* body = nullptr;
  long long nblocks = 0;
  long long chunk = 1;
  std::atomic<long long> next{0};  // the first block not yet claimed
  int helpers = 0;                 // how many helpers may join
  int joined = 0;                  // how many did (guarded by Pool::mutex)
  bool open = false;               // helpers may still join (guarded by Pool::mutex)
  std::atomic<int> active{0};      // joined helpers still running it
};

struct Pool {
  std::mutex mutex;              // guards launch, the Launch's joined/open, sleepers, threads
  std::condition_variable work;  // idle helpers sleep here
  std::condition_variable done;  // the launching thread sleeps here for joined helpers
  std::atomic<unsigned long long> generation{0};  // bumped when a launch is published
  Launch* launch = nullptr;
  int sleepers = 0;
  int threads = 0;
  std::mutex owner;  // held by the thread whose launch the pool serves
};

inline void helper_main(Pool* p, unsigned long long seen) {
  for (;;) {
    if (!spin_until([&] { return p->generation.load(std::memory_order_acquire) != seen; })) {
      std::unique_lock lock(p->mutex);
      ++p->sleepers;
      p->work.wait(lock, [&] { return p->generation.load(std::memory_order_relaxed) != seen; });
      --p->sleepers;
    }
    std::unique_lock lock(p->mutex);
    seen = p->generation.load(std::memory_order_relaxed);
    Launch* l = p->launch;
    if (l == nullptr || !l->open || l->joined == l->helpers) continue;
    worker_slot = ++l->joined;
    l->active.fetch_add(1, std::memory_order_relaxed);
    lock.unlock();
    l->run(*l);
    worker_slot = 0;
    lock.lock();
    // The release half publishes this helper's blocks to the launching thread; `l` is not
    // touched after it (the launch may return and free it at once).
    if (l->active.fetch_sub(1, std::memory_order_acq_rel) == 1) p->done.notify_one();
  }
}

// This library's pool. A fork()ed child has none of the parent's helpers (and possibly a mutex
// one of them held), so it forgets the parent's pool, leaked on purpose, and starts its own.
inline std::atomic<Pool*>& pool_slot() {
  static std::atomic<Pool*> slot{nullptr};
  return slot;
}

inline Pool& pool() {
  static const int at_fork = pthread_atfork(nullptr, nullptr, [] {
    pool_slot().store(nullptr, std::memory_order_relaxed);
  });
  (void)at_fork;
  std::atomic<Pool*>& slot = pool_slot();
  Pool* p = slot.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  // Helpers never exit, so the pool is never freed (ctypes never unloads the library).
  Pool* fresh = new Pool;
  if (slot.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;  // another thread installed one first
  return *p;
}

template <class Body>
void run_chunks(Launch& l) {
  const LaunchConfig& cfg = *l.cfg;
  Worker& w = setup_worker();
  blockDim = dim3{cfg.block[0], cfg.block[1], cfg.block[2]};
  gridDim = dim3{cfg.grid[0], cfg.grid[1], cfg.grid[2]};
  w.nthreads = cfg.block[0] * cfg.block[1] * cfg.block[2];
  if (w.thread_ctx.size() < w.nthreads) w.thread_ctx.resize(w.nthreads);
  w.driver_entry = &driver_main<Body>;
  w.body = l.body;
  // Exactly the requested bytes, freshly allocated, so the sanitizer flags any overrun.
  w.dynamic_shared = static_cast<unsigned char*>(std::malloc(cfg.shared_mem ? cfg.shared_mem : 1));
  const long long gx = cfg.grid[0], gy = cfg.grid[1];
  for (;;) {
    const long long first = l.next.fetch_add(l.chunk, std::memory_order_relaxed);
    if (first >= l.nblocks) break;
    const long long last = std::min(first + l.chunk, l.nblocks);
    for (long long b = first; b < last; ++b) {
      blockIdx = uint3{static_cast<unsigned>(b % gx), static_cast<unsigned>((b / gx) % gy),
                       static_cast<unsigned>(b / (gx * gy))};
#ifdef CUPYTV_PROBE
      ::cupytv_probe::begin_block(w.nthreads, w.dynamic_shared, cfg.shared_mem);
      run_block(w);
      ::cupytv_probe::end_block(w.nthreads);
#else
      run_block(w);
#endif
    }
  }
  std::free(w.dynamic_shared);
  w.dynamic_shared = nullptr;
}

template <class Body>
void run_grid(const LaunchConfig& cfg, Body& body) {
  const long long nblocks =
      static_cast<long long>(cfg.grid[0]) * cfg.grid[1] * cfg.grid[2];
  if (nblocks == 0) return;
  const long long workers =
      cfg.workers > 0 ? cfg.workers : std::max(1u, std::thread::hardware_concurrency());
  Launch l;
  l.run = &run_chunks<Body>;
  l.cfg = &cfg;
  l.body = &body;
  l.nblocks = nblocks;
  l.chunk = std::max(1LL, nblocks / (workers * kChunksPerWorker));
  const long long chunks = (nblocks + l.chunk - 1) / l.chunk;
  l.helpers = static_cast<int>(std::min(workers, chunks) - 1);
  Pool& p = pool();
  // Serial: one worker asked for, one chunk, or the pool busy with another thread's launch.
  if (l.helpers == 0 || !p.owner.try_lock()) {
    run_chunks<Body>(l);
    return;
  }
  int wake = 0;
  {
    std::lock_guard lock(p.mutex);
    const unsigned long long seen = p.generation.load(std::memory_order_relaxed);
    for (; p.threads < l.helpers; ++p.threads) {
      try {
        std::thread(helper_main, &p, seen).detach();
      } catch (const std::system_error&) {  // out of threads (ulimit, cgroup pids): fewer helpers
        break;
      }
    }
    l.helpers = std::min(l.helpers, p.threads);
    p.launch = &l;
    l.open = true;
    p.generation.store(seen + 1, std::memory_order_release);
    wake = std::min(p.sleepers, l.helpers);
  }
  for (int i = 0; i < wake; ++i) p.work.notify_one();
  run_chunks<Body>(l);
  // Every block is claimed: close the launch, then wait for the helpers that joined it.
  {
    std::lock_guard lock(p.mutex);
    l.open = false;
    p.launch = nullptr;
  }
  const auto finished = [&] { return l.active.load(std::memory_order_acquire) == 0; };
  if (!spin_until(finished)) {
    std::unique_lock lock(p.mutex);
    p.done.wait(lock, finished);
  }
  p.owner.unlock();
}

// Type codes for the launcher's signature string, read by the Python side to check arguments:
// NumPy dtype strings, prefixed by "p" (pointer to const) or "P" (pointer to mutable).
template <class T> struct TypeCode;
template <> struct TypeCode<bool> { static constexpr const char* value = "b1"; };
template <> struct TypeCode<signed char> { static constexpr const char* value = "i1"; };
template <> struct TypeCode<unsigned char> { static constexpr const char* value = "u1"; };
template <> struct TypeCode<short> { static constexpr const char* value = "i2"; };
template <> struct TypeCode<unsigned short> { static constexpr const char* value = "u2"; };
template <> struct TypeCode<int> { static constexpr const char* value = "i4"; };
template <> struct TypeCode<unsigned int> { static constexpr const char* value = "u4"; };
template <> struct TypeCode<long long> { static constexpr const char* value = "i8"; };
template <> struct TypeCode<unsigned long long> { static constexpr const char* value = "u8"; };
template <> struct TypeCode<float> { static constexpr const char* value = "f4"; };
template <> struct TypeCode<double> { static constexpr const char* value = "f8"; };

template <class P>
std::string type_code() {
  if constexpr (std::is_pointer_v<P>) {
    using Pointee = std::remove_pointer_t<P>;
    return std::string(std::is_const_v<Pointee> ? "p" : "P") +
           TypeCode<std::remove_cv_t<Pointee>>::value;
  } else {
    return TypeCode<std::remove_cv_t<P>>::value;
  }
}

template <class... P>
const char* signature(void (*)(P...)) {
  static const std::string sig = [] {
    std::string s;
    ((s += (s.empty() ? "" : ",") + type_code<P>()), ...);
    return s;
  }();
  return sig.c_str();
}

// Unpacks CUDA-style kernelParams (args[i] points at the i-th argument) once per launch, then
// runs the grid with a body that calls the kernel directly, so it can be inlined into the driver.
template <auto Kernel, class... P, std::size_t... I>
void launch_impl(void (*)(P...), const LaunchConfig& cfg, void** args,
                 std::index_sequence<I...>) {
  const std::tuple<std::remove_cv_t<P>...> values{*static_cast<std::remove_cv_t<P>*>(args[I])...};
  auto body = [values] { Kernel(std::get<I>(values)...); };
  run_grid(cfg, body);
}

template <auto Kernel, class... P>
void launch(void (*kernel)(P...), const LaunchConfig* cfg, void** args) {
  launch_impl<Kernel>(kernel, *cfg, args, std::index_sequence_for<P...>{});
}

}  // namespace cupytv_host

inline void __syncthreads() { cupytv_host::barrier(); }
