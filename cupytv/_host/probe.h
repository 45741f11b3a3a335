// The warp-lockstep probe (issue 17): included after cuda_host.h only in probe builds
// (-DCUPYTV_PROBE, cupytv/_loader.py probe mode); normal host builds and NVRTC never see it, and
// the TV_PROBE* hooks in cuda_src/common.cuh expand to nothing there.
//
// Each CUDA thread appends events to its own trace while its block runs; when the block ends,
// every 32 consecutive threads (by linear thread index, as a GPU forms warps) are merged post hoc
// as if they had run in lockstep:
//   * a loop (TV_PROBE_LOOP, RAII: begun where declared, ended with its scope) numbers its trips
//     (TV_PROBE_TRIP); trip t of every lane is aligned with trip t of the others, and the n-th
//     instance of a loop inside one segment with the n-th instance in the other lanes;
//   * inside one aligned segment (a trip, or the code between loops), every region any lane runs
//     is issued once, with the largest count any lane gives it (TV_PROBE_N: a data-dependent
//     inner loop costs its longest lane);
//   * the i-th memory access of a region in a segment (TV_PROBE_ACCESS) is one warp request made
//     of the lanes that reach it: shared-memory wavefronts under the 32 x 4-byte bank model at
//     the kernel's real offsets in the dynamic shared buffer, 32-byte sectors for global memory.
// A post hoc merge of traces instead of true lockstep execution: the executor runs threads one
// after another, and a merge needs no change to how kernels run, only to what they record.
// Totals are per (kernel, region): warp executions (sum over aligned segments of the largest lane
// count) and lane executions (sum of lane counts); the cost per execution comes from the SASS
// (scripts/gpu_proxy_costs.py), so the Python side turns these into instructions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace cupytv_probe {

enum Kind : std::uint8_t { kHit, kCount, kBegin, kTrip, kEnd, kAccess };

struct Event {
  std::uint16_t region;
  Kind kind;
  std::uint8_t bytes;  // kAccess: the access size
  std::uint32_t shared;  // kAccess: 1 when value is an offset into the dynamic shared buffer
  std::uint64_t value;  // kCount: the count; kAccess: the address or shared offset
};

constexpr unsigned kWarp = 32;
constexpr unsigned kBanks = 32;
constexpr unsigned kBankBytes = 4;
constexpr unsigned kSectorBytes = 32;

struct Totals {
  double warp = 0, lane = 0;                    // executions (cost-bearing hooks)
  double requests = 0, lanes_accessing = 0;     // memory requests and the lanes in them
  double shared_requests = 0, wavefronts = 0, ideal_wavefronts = 0;
  double global_requests = 0, sectors = 0, ideal_sectors = 0;
};

inline std::mutex g_mutex;
inline std::vector<std::string> g_names;
inline int g_kernel = 0;
// (kernel, region) -> totals; also threads and warps seen per kernel.
inline std::unordered_map<std::uint64_t, Totals> g_totals;
inline std::unordered_map<int, double> g_threads, g_warps, g_launches;

// Called by each generated launcher of a probe build (cupytv/_host/build.py).
inline void start_launch(int kernel) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_kernel = kernel;
  g_launches[kernel] += 1;
}

inline int intern(const char* name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (std::size_t i = 0; i < g_names.size(); ++i) {
    if (g_names[i] == name) return static_cast<int>(i);
  }
  g_names.emplace_back(name);
  return static_cast<int>(g_names.size() - 1);
}

// Per worker: the running block's traces and its dynamic shared buffer.
inline thread_local std::vector<std::vector<Event>> t_traces;
inline thread_local const unsigned char* t_shared = nullptr;
inline thread_local std::size_t t_shared_bytes = 0;

inline std::vector<Event>& trace() {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  return t_traces[t];
}

inline void record(Kind kind, int region, std::uint64_t value) {
  trace().push_back(Event{static_cast<std::uint16_t>(region), kind, 0, 0, value});
}

inline void access(int region, const void* p, unsigned bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  const bool shared = t_shared != nullptr && c >= t_shared && c < t_shared + t_shared_bytes;
  const std::uint64_t value =
      shared ? static_cast<std::uint64_t>(c - t_shared) : reinterpret_cast<std::uint64_t>(c);
  trace().push_back(Event{static_cast<std::uint16_t>(region), kAccess,
                          static_cast<std::uint8_t>(bytes), shared ? 1u : 0u, value});
}

// A loop's extent: begun on construction, ended on destruction (every exit, returns included).
struct Loop {
  int region;
  explicit Loop(int r) : region(r) { record(kBegin, r, 0); }
  ~Loop() { record(kEnd, region, 0); }
};

inline std::uint64_t mix(std::uint64_t h, std::uint64_t v) {
  // splitmix64 on the combination: segment keys are hashes of their path of (loop, instance,
  // trip) steps; a collision would merge two segments' counts (odds ~1e-19 per pair).
  std::uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

struct AccessGroup {
  std::uint16_t region;
  bool shared;
  std::vector<std::pair<std::uint64_t, unsigned>> addrs;  // (address or offset, bytes)
};

inline void add(std::pair<std::uint16_t, std::uint64_t>& slot, std::uint16_t region,
                std::uint64_t n) {
  slot.first = region;
  slot.second += n;
}

// Merges one warp's lanes (traces [first, first + lanes)) into `local`.
inline void merge_warp(std::size_t first, std::size_t lanes,
                       std::unordered_map<std::uint64_t, Totals>& local) {
  // key(segment, region) -> (region, largest lane count)
  std::unordered_map<std::uint64_t, std::pair<std::uint16_t, std::uint64_t>> warp_max;
  std::unordered_map<std::uint64_t, AccessGroup> groups;
  const std::uint64_t kernel_key = static_cast<std::uint64_t>(g_kernel) << 32;
  for (std::size_t l = first; l < first + lanes; ++l) {
    struct Frame {
      std::uint64_t loop, parent;
      std::uint64_t trips;
    };
    std::vector<Frame> stack;
    std::uint64_t seg = 0;
    // key(segment, region) -> (region, this lane's count)
    std::unordered_map<std::uint64_t, std::pair<std::uint16_t, std::uint64_t>> lane_count;
    std::unordered_map<std::uint64_t, std::uint64_t> occurrence;
    for (const Event& e : t_traces[l]) {
      switch (e.kind) {
        case kBegin: {
          const std::uint64_t o = occurrence[mix(seg, 2 * e.region + 1)]++;
          stack.push_back(Frame{mix(mix(seg, 2 * e.region + 1), o), seg, 0});
          seg = stack.back().loop;
          break;
        }
        case kTrip:
          if (!stack.empty()) seg = mix(stack.back().loop, ++stack.back().trips);
          add(lane_count[mix(seg, 2 * e.region)], e.region, 1);
          local[kernel_key | e.region].lane += 1;
          break;
        case kEnd:
          if (!stack.empty()) {
            seg = stack.back().parent;
            stack.pop_back();
          }
          break;
        case kHit:
        case kCount: {
          const std::uint64_t n = e.kind == kHit ? 1 : e.value;
          add(lane_count[mix(seg, 2 * e.region)], e.region, n);
          local[kernel_key | e.region].lane += static_cast<double>(n);
          break;
        }
        case kAccess: {
          const std::uint64_t slot = mix(mix(seg, 2 * e.region), 0xacce55);
          const std::uint64_t key = mix(slot, occurrence[slot]++);
          AccessGroup& g = groups[key];
          g.region = e.region;
          g.shared = e.shared != 0;
          g.addrs.emplace_back(e.value, e.bytes);
          break;
        }
      }
    }
    for (const auto& [key, rn] : lane_count) {
      auto& m = warp_max[key];
      m.first = rn.first;
      m.second = std::max(m.second, rn.second);
    }
  }
  for (const auto& [key, m] : warp_max) {
    local[kernel_key | m.first].warp += static_cast<double>(m.second);
  }
  for (const auto& [key, g] : groups) {
    Totals& t = local[kernel_key | g.region];
    t.requests += 1;
    t.lanes_accessing += static_cast<double>(g.addrs.size());
    std::uint64_t bytes = 0;
    for (const auto& a : g.addrs) bytes += a.second;
    if (g.shared) {
      // Distinct 4-byte words per bank; the busiest bank sets the wavefronts (a broadcast of one
      // word to many lanes costs one).
      std::vector<std::vector<std::uint64_t>> words(kBanks);
      for (const auto& [off, n] : g.addrs) {
        for (std::uint64_t w = off / kBankBytes; w <= (off + n - 1) / kBankBytes; ++w) {
          auto& b = words[w % kBanks];
          if (std::find(b.begin(), b.end(), w) == b.end()) b.push_back(w);
        }
      }
      std::size_t busiest = 1;
      for (const auto& b : words) busiest = std::max(busiest, b.size());
      t.shared_requests += 1;
      t.wavefronts += static_cast<double>(busiest);
      t.ideal_wavefronts += static_cast<double>((bytes + kBanks * kBankBytes - 1) /
                                                (kBanks * kBankBytes));
    } else {
      std::vector<std::uint64_t> sectors;
      for (const auto& [addr, n] : g.addrs) {
        for (std::uint64_t s = addr / kSectorBytes; s <= (addr + n - 1) / kSectorBytes; ++s) {
          sectors.push_back(s);
        }
      }
      std::sort(sectors.begin(), sectors.end());
      sectors.erase(std::unique(sectors.begin(), sectors.end()), sectors.end());
      t.global_requests += 1;
      t.sectors += static_cast<double>(sectors.size());
      t.ideal_sectors += static_cast<double>((bytes + kSectorBytes - 1) / kSectorBytes);
    }
  }
}

void begin_block(unsigned nthreads, const unsigned char* shared, std::size_t shared_bytes) {
  if (t_traces.size() < nthreads) t_traces.resize(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) t_traces[t].clear();
  t_shared = shared;
  t_shared_bytes = shared_bytes;
}

void end_block(unsigned nthreads) {
  std::unordered_map<std::uint64_t, Totals> local;
  for (std::size_t first = 0; first < nthreads; first += kWarp) {
    merge_warp(first, std::min<std::size_t>(kWarp, nthreads - first), local);
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  for (const auto& [key, t] : local) {
    Totals& g = g_totals[key];
    g.warp += t.warp;
    g.lane += t.lane;
    g.requests += t.requests;
    g.lanes_accessing += t.lanes_accessing;
    g.shared_requests += t.shared_requests;
    g.wavefronts += t.wavefronts;
    g.ideal_wavefronts += t.ideal_wavefronts;
    g.global_requests += t.global_requests;
    g.sectors += t.sectors;
    g.ideal_sectors += t.ideal_sectors;
  }
  g_threads[g_kernel] += nthreads;
  g_warps[g_kernel] += (nthreads + kWarp - 1) / kWarp;
}

}  // namespace cupytv_probe

// The report the Python side reads (cupytv/gpu_proxy.py): one line per (kernel, region) with
// tab-separated fields, after one line per kernel with its threads and warps.
extern "C" __attribute__((visibility("default"))) const char* cupytv_probe_report() {
  using namespace cupytv_probe;
  static std::string out;
  std::lock_guard<std::mutex> lock(g_mutex);
  out.clear();
  char line[512];
  for (const auto& [k, n] : g_threads) {
    std::snprintf(line, sizeof line, "kernel\t%d\t%.17g\t%.17g\t%.17g\n", k, n, g_warps[k],
                  g_launches[k]);
    out += line;
  }
  for (const auto& [key, t] : g_totals) {
    const int kernel = static_cast<int>(key >> 32);
    const std::string& name = g_names.at(key & 0xffffffffULL);
    std::snprintf(line, sizeof line,
                  "region\t%d\t%s\t%.17g\t%.17g\t%.17g\t%.17g\t%.17g\t%.17g\t%.17g\t%.17g\t%.17g"
                  "\t%.17g\n",
                  kernel, name.c_str(), t.warp, t.lane, t.requests, t.lanes_accessing,
                  t.shared_requests, t.wavefronts, t.ideal_wavefronts, t.global_requests,
                  t.sectors, t.ideal_sectors);
    out += line;
  }
  return out.c_str();
}

extern "C" __attribute__((visibility("default"))) void cupytv_probe_reset() {
  using namespace cupytv_probe;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_totals.clear();
  g_threads.clear();
  g_warps.clear();
  g_launches.clear();
}
