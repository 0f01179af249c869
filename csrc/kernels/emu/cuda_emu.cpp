// Implementation of the CPU emulator declared in cuda_emu.h (x86-64 System V only).
#include "cuda_emu.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

// Cooperative context switch: saves the callee-saved registers and the stack pointer of the
// current context into *save_sp and resumes the context whose stack pointer is load_sp.
extern "C" void ego_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl ego_emu_switch
  .hidden ego_emu_switch
  .type ego_emu_switch,@function
ego_emu_switch:
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
  .size ego_emu_switch, .-ego_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kExchangeBytes = 64;  // per lane

struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes;  // bytes read from src; the rest of the 16 are zero-filled
};

struct Fiber {
  void* sp = nullptr;
  uint3 tid{0, 0, 0};
  bool done = false;
  bool at_block_barrier = false;      // waiting in __syncthreads (not in a warp-level barrier)
  uint64_t block_wait_gen = 0;        // ... of this generation of the block barrier
  std::vector<AsyncCopy> open_group;  // issued, not yet committed
  std::vector<std::vector<AsyncCopy>> committed;  // oldest first
};

struct Barrier {
  int count = 0;
  uint64_t generation = 0;
};

struct State {
  std::vector<Fiber> fibers;
  std::unique_ptr<char[]> stacks;
  size_t stacks_for = 0;
  void* sched_sp = nullptr;
  int cur = -1;
  uint3 bidx{0, 0, 0};
  dim3 bdim;
  dim3 gdim;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<unsigned char> exchange;
  std::vector<uint4> smem;  // 16-byte aligned storage
  const std::function<void()>* body = nullptr;
  uint64_t progress = 0;
  uint64_t seed = 0;
  int async_mode = 0;
  std::mt19937_64 rng;
  std::string error;
  std::string taken_error;
  std::vector<int> launch_blocks;
};

State& S() {
  static State s;
  return s;
}

void to_scheduler() {
  State& s = S();
  ego_emu_switch(&s.fibers[s.cur].sp, s.sched_sp);
}

[[noreturn]] void trampoline() {
  State& s = S();
  (*s.body)();
  {
    Fiber& f = s.fibers[s.cur];
    if (!f.open_group.empty() || !f.committed.empty()) {
      s.error = "a thread exited with cp.async copies never waited for";
    }
  }
  s.fibers[s.cur].done = true;
  ++s.progress;
  ego_emu_switch(&s.fibers[s.cur].sp, s.sched_sp);
  std::abort();  // a finished fiber is never resumed
}

void wait_at(Barrier& b, int participants, bool block_level) {
  State& s = S();
  const uint64_t gen = b.generation;
  ++s.progress;
  if (++b.count == participants) {
    b.count = 0;
    ++b.generation;
    return;
  }
  s.fibers[s.cur].at_block_barrier = block_level;
  s.fibers[s.cur].block_wait_gen = gen;
  while (b.generation == gen) to_scheduler();
  s.fibers[s.cur].at_block_barrier = false;
}

void init_fiber(int i) {
  State& s = S();
  char* top = s.stacks.get() + (size_t(i) + 1) * kStackBytes;
  top = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15));
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;  // return address slot of the trampoline frame (never used)
  *--sp = reinterpret_cast<uint64_t>(&trampoline);
  for (int r = 0; r < 6; ++r) *--sp = 0;  // rbp, rbx, r12-r15
  s.fibers[i].sp = sp;
  s.fibers[i].done = false;
  s.fibers[i].open_group.clear();
  s.fibers[i].committed.clear();
}

void resume(int i) {
  State& s = S();
  s.cur = i;
  ego_emu_switch(&s.sched_sp, s.fibers[i].sp);
  s.cur = -1;
}

// Runs every fiber of the current block to completion; false on deadlock. Policies (by seed):
//   0          round robin over all threads: warps advance in near lock-step;
//   odd        warp-greedy: warps in random order, each run until all its threads wait in
//              __syncthreads or have finished, so one warp gets as far ahead of the others as
//              the barriers allow (exposes a missing __syncthreads, read-after-write or
//              write-after-read between warps);
//   even > 0   round robin in a random order per round.
bool run_block() {
  State& s = S();
  const int n = int(s.fibers.size());
  const int warps = n / 32;
  for (int i = 0; i < n; ++i) init_fiber(i);
  s.block_barrier = Barrier{};
  for (auto& b : s.warp_barriers) b = Barrier{};
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::vector<int> warp_order(warps);
  std::iota(warp_order.begin(), warp_order.end(), 0);
  const bool greedy = (s.seed & 1u) != 0;
  for (;;) {
    const uint64_t before = s.progress;
    bool all_done = true;
    if (greedy) {
      std::shuffle(warp_order.begin(), warp_order.end(), s.rng);
      for (int w : warp_order) {
        for (;;) {  // this warp until it is parked at the block barrier or finished
          const uint64_t warp_before = s.progress;
          bool runnable = false;
          for (int i = w * 32; i < w * 32 + 32; ++i) {
            const Fiber& f = s.fibers[i];
            if (f.done) continue;
            if (f.at_block_barrier && s.block_barrier.generation == f.block_wait_gen) continue;
            runnable = true;
            resume(i);
          }
          if (!runnable || s.progress == warp_before) break;
        }
      }
    } else {
      if (s.seed != 0) std::shuffle(order.begin(), order.end(), s.rng);
      for (int i : order) {
        if (!s.fibers[i].done) resume(i);
      }
    }
    for (int i = 0; i < n; ++i) all_done = all_done && s.fibers[i].done;
    if (all_done) return true;
    if (s.progress == before) return false;
  }
}

}  // namespace

const uint3& thread_idx() { return S().fibers[S().cur].tid; }
const uint3& block_idx() { return S().bidx; }
const dim3& block_dim() { return S().bdim; }
const dim3& grid_dim() { return S().gdim; }
int lane_id() { return int(thread_idx().x & 31u); }
unsigned char* dynamic_smem() { return reinterpret_cast<unsigned char*>(S().smem.data()); }

void sync_block() { wait_at(S().block_barrier, int(S().fibers.size()), true); }
void sync_warp() { wait_at(S().warp_barriers[thread_idx().x / 32], 32, false); }

void warp_allgather(const void* mine, size_t bytes, void* all) {
  if (bytes > kExchangeBytes) std::abort();
  State& s = S();
  const int warp = int(thread_idx().x / 32);
  unsigned char* buf = s.exchange.data() + size_t(warp) * 32 * kExchangeBytes;
  std::memcpy(buf + size_t(lane_id()) * kExchangeBytes, mine, bytes);
  sync_warp();
  for (int l = 0; l < 32; ++l) {
    std::memcpy(static_cast<unsigned char*>(all) + size_t(l) * bytes,
                buf + size_t(l) * kExchangeBytes, bytes);
  }
  sync_warp();
}

namespace {
float decode16(uint32_t bits, bool bf16) {
  if (bf16) {
    const uint32_t u = bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const uint16_t h16 = uint16_t(bits);
  __half h;
  std::memcpy(static_cast<void*>(&h), &h16, 2);
  return __half2float(h);
}
}  // namespace

// m16n8k16, row.col, fp32 accumulators; fragment layout as in the PTX ISA.
void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  struct Frag {
    uint32_t a[4];
    uint32_t b[2];
  };
  const Frag mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  Frag all[32];
  warp_allgather(&mine, sizeof(Frag), all);
  auto A = [&](int row, int k) {
    const Frag& f = all[(row % 8) * 4 + (k % 8) / 2];
    const uint32_t w = f.a[(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
    return decode16((k % 2) ? (w >> 16) : (w & 0xffffu), bf16);
  };
  auto B = [&](int k, int col) {
    const Frag& f = all[col * 4 + (k % 8) / 2];
    const uint32_t w = f.b[k >= 8 ? 1 : 0];
    return decode16((k % 2) ? (w >> 16) : (w & 0xffffu), bf16);
  };
  const int lane = lane_id();
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0);
    const int col = 2 * t + (i & 1);
    float acc = 0.f;
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    d[i] += acc;
  }
}

void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  State& s = S();
  if (!s.error.empty()) return;  // an earlier launch failed: cudaGetLastError reports it
  const size_t threads = size_t(block.x) * block.y * block.z;
  if (block.y != 1 || block.z != 1 || threads == 0 || threads % 32 != 0 || threads > 1024 ||
      smem_bytes > 48 * 1024) {
    s.error = "bad launch configuration (block " + std::to_string(block.x) + "x" +
              std::to_string(block.y) + "x" + std::to_string(block.z) + ", smem " +
              std::to_string(smem_bytes) + ")";
    return;
  }
  s.launch_blocks.push_back(int(threads));
  if (s.stacks_for < threads) {
    s.stacks.reset(new char[threads * kStackBytes]);
    s.stacks_for = threads;
  }
  s.fibers.assign(threads, Fiber{});
  for (size_t i = 0; i < threads; ++i) s.fibers[i].tid = uint3{unsigned(i), 0u, 0u};
  s.warp_barriers.assign(threads / 32, Barrier{});
  s.exchange.assign(threads / 32 * 32 * kExchangeBytes, 0);
  s.smem.assign((smem_bytes + 15) / 16 + 1, uint4{0, 0, 0, 0});
  s.bdim = block;
  s.gdim = grid;
  s.body = &body;
  s.rng.seed(s.seed);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        s.bidx = uint3{x, y, z};
        std::memset(s.smem.data(), 0xFF, s.smem.size() * sizeof(uint4));
        if (!run_block()) {
          s.error = "deadlock in block (" + std::to_string(x) + "," + std::to_string(y) + "," +
                    std::to_string(z) + "): a barrier can never complete";
          return;
        }
      }
    }
  }
}

void perform(const AsyncCopy& c) {
  unsigned char buf[16] = {0};
  std::memcpy(buf, c.src, size_t(c.bytes));
  std::memcpy(c.dst, buf, 16);
}

void set_async_mode(int mode) { S().async_mode = mode; }

void cp_async16(void* smem, const void* gmem, int src_bytes) {
  State& s = S();
  const AsyncCopy c{smem, gmem, src_bytes};
  const bool now = s.async_mode == 1 || (s.async_mode == 2 && (s.rng() & 1u));
  if (now) {
    perform(c);
  } else {
    s.fibers[s.cur].open_group.push_back(c);
  }
}

void cp_async_commit() {
  State& s = S();
  Fiber& f = s.fibers[s.cur];
  f.committed.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void cp_async_wait(int keep_pending) {
  State& s = S();
  Fiber& f = s.fibers[s.cur];
  while (int(f.committed.size()) > keep_pending) {
    for (const AsyncCopy& c : f.committed.front()) perform(c);
    f.committed.erase(f.committed.begin());
  }
}

void set_seed(uint64_t seed) { S().seed = seed; }

int launches_with_block(int threads) {
  const auto& v = S().launch_blocks;
  return int(std::count(v.begin(), v.end(), threads));
}

int launch_count() { return int(S().launch_blocks.size()); }

void reset_launches() { S().launch_blocks.clear(); }

const char* take_error() {
  State& s = S();
  s.taken_error = s.error;
  s.error.clear();
  return s.taken_error.c_str();
}

}  // namespace emu

// The few runtime calls the host-side dispatcher makes.
extern "C" cudaError_t cudaGetLastError(void) {
  return emu::S().error.empty() ? cudaSuccess : cudaErrorLaunchFailure;
}
extern "C" cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
extern "C" cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrComputeCapabilityMajor ? 9 : 0;
  return cudaSuccess;
}
