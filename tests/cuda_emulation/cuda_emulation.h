// A CPU emulation of the CUDA vocabulary the agentfast kernels use, so the kernels of
// csrc/cuda/masked_attention_kernels.cuh run, unchanged, in the CPU-only test suite.
//
// Threads: every CUDA thread of a block is a fiber (fibers.h): __syncthreads() is a barrier
// over the block, warp collectives (__syncwarp, shuffles, mma.sync, ldmatrix) a rendezvous of
// the warp's 32 lanes. Blocks of a grid run on a few OS threads, each block on one.
//
// Tensor cores: mma.sync.m16n8k16 (f16/bf16 in, f32 accumulate) and ldmatrix (x1/x2/x4,
// .trans) exchange data between lanes exactly as the PTX ISA lays fragments out, lane by lane:
// a lane holds only its own registers, so a kernel that assumes another layout computes the
// wrong product. Products of 16-bit inputs are exact in fp32 and accumulate in fp32.
//
// Memory discipline, each a failed launch or NaN results where a GPU would misbehave:
// - each block's shared memory starts filled with 0xFF (NaN for floats and halves), so a kernel
//   that reads shared memory it never wrote shows NaN in its results;
// - cp.async poisons its destination when issued and writes the data only when the thread
//   waits for its group (cp.async.wait_group), so reading a tile before the matching wait, or
//   overwriting one another warp still reads, shows NaN;
// - bytes past the kernel's shared memory size are a guard, and a write there fails the launch;
// - a 16-byte access (cp.async, an ldmatrix row) at an address that is not 16-byte aligned, or
//   an ldmatrix row or cp.async destination outside shared memory, fails it;
// - a barrier some threads never reach (divergent __syncthreads, a lane skipping a collective),
//   lanes of a warp meeting at different collectives, and cp.async copies never waited for fail it.
//
// Every launch with batch x heads > 4 folds it over grid.y and grid.z (a GPU does so past
// 65535), so the tests cover that path at small sizes.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "fibers.h"

#define AGENTFAST_CUDA_EMULATION 1
// Batch x heads past 4 folds over grid.y and grid.z, as past 65535 on a GPU.
#define AGENTFAST_MAX_GRID_YZ 4
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

using std::max;
using std::min;

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline __half __float2half_rn(float x) { return __half(x); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) { return __nv_bfloat16(x); }
[[noreturn]] inline void __trap() { std::abort(); }

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_emulation {

constexpr int kWarpSize = 32;
constexpr size_t kGuardBytes = 1024;
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPoisonByte = 0xFF;

// What lanes of a warp meet at; all 32 must meet at the same kind.
enum class Collective : uint8_t { kSync, kShuffle, kMmaF16, kMmaBF16, kLdMatrix, kLdMatrixTrans };

// One warp's rendezvous point and the registers its lanes exchange there.
struct Warp {
  fibers::Barrier barrier{kWarpSize};
  Collective kind[kWarpSize];
  int count[kWarpSize];  // ldmatrix: matrices; shuffle: lane mask
  uint32_t word[kWarpSize], shuffled[kWarpSize];
  uint32_t a[kWarpSize][4], b[kWarpSize][2];
  float c[kWarpSize][4], d[kWarpSize][4];
  const unsigned char* address[kWarpSize];
  uint32_t rows[4][8][4];  // ldmatrix: 4 matrices x 8 rows x 16 bytes
};

struct AsyncCopy {
  unsigned char* dst;
  const unsigned char* src;
  int bytes;
};

// One CUDA thread: its index, its warp, its outstanding cp.async copies.
struct Thread {
  dim3 index;
  int lane = 0;
  Warp* warp = nullptr;
  std::vector<AsyncCopy> copies;       // issued, oldest first
  std::vector<size_t> group_ends;      // end of each committed group in `copies`
};

// Problems found during a launch (fibers cannot throw); the launch fails with the first.
struct LaunchErrors {
  std::mutex mutex;
  std::string first;
  std::atomic<int64_t> misaligned{0};

  void report(const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex);
    if (first.empty()) first = message;
  }
};

// The block an OS thread runs now.
struct BlockState {
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;
  fibers::Scheduler* scheduler = nullptr;
  fibers::Barrier block_barrier;
  std::vector<Thread> threads;
  std::vector<std::unique_ptr<Warp>> warps;
  LaunchErrors* errors = nullptr;
};

inline thread_local BlockState* block_state = nullptr;
inline thread_local dim3 block_index, grid_dim, block_dim;

inline Thread& this_thread() { return block_state->threads[block_state->scheduler->current()]; }
inline int lane() { return this_thread().lane; }
inline void report(const std::string& message) { block_state->errors->report(message); }

inline bool in_shared(const void* p, size_t bytes) {
  const auto* byte = static_cast<const unsigned char*>(p);
  return byte >= block_state->shared && byte + bytes <= block_state->shared + block_state->shared_bytes;
}

inline void check_alignment_16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) ++block_state->errors->misaligned;
}

// Lane `lane` deposits its part, the warp meets, the last lane runs exchange(), then each lane
// reads its result. Lanes of one warp must meet at the same kind of collective.
template <typename Exchange>
void warp_collective(Collective kind, const Exchange& exchange) {
  Thread& self = this_thread();
  Warp& warp = *self.warp;
  warp.kind[self.lane] = kind;
  block_state->scheduler->arrive_and_wait(warp.barrier, [&] {
    for (int l = 1; l < kWarpSize; ++l) {
      if (warp.kind[l] != warp.kind[0]) {
        report("emulated warp: lanes of one warp met at different collectives (a divergent warp)");
        break;
      }
    }
    exchange(warp);
  });
}

}  // namespace cuda_emulation

#define threadIdx (::cuda_emulation::this_thread().index)
#define blockIdx (::cuda_emulation::block_index)
#define gridDim (::cuda_emulation::grid_dim)
#define blockDim (::cuda_emulation::block_dim)

inline void __syncthreads() {
  cuda_emulation::block_state->scheduler->arrive_and_wait(cuda_emulation::block_state->block_barrier, [] {});
}

inline void __syncwarp(unsigned = 0xffffffffu) {
  cuda_emulation::warp_collective(cuda_emulation::Collective::kSync, [](cuda_emulation::Warp&) {});
}

// Each lane deposits its word; the last to arrive snapshots them all, and each lane reads its
// partner's from the snapshot. The snapshot is next rewritten only when every lane has reached
// the next collective, past its read: one rendezvous per collective suffices.
template <typename T>
T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  static_assert(sizeof(T) == 4, "emulated shuffles move 32-bit values");
  using cuda_emulation::Warp;
  Warp& warp = *cuda_emulation::this_thread().warp;
  const int lane = cuda_emulation::lane();
  std::memcpy(&warp.word[lane], &value, 4);
  cuda_emulation::warp_collective(cuda_emulation::Collective::kShuffle,
                                  [](Warp& w) { std::memcpy(w.shuffled, w.word, sizeof(w.word)); });
  T result;
  std::memcpy(&result, &warp.shuffled[lane ^ lane_mask], 4);
  return result;
}

// ---------------------------------------------------------------------------------------
// Tensor-core vocabulary (see csrc/cuda/warp_primitives.cuh for the GPU side).

namespace cuda_emulation {

// The PTX fragment layouts of mma.m16n8k16 with 16-bit inputs (PTX ISA, "Matrix Fragments for
// mma.m16n8k16"); g = lane / 4, t = lane % 4. Element h (0 low, 1 high) of 32-bit register r:
//   A (16 x 16, row):  row g + 8 * (r % 2),  col 2t + h + 8 * (r / 2)
//   B (16 x 8, col):   row 2t + h + 8 * r,   col g
//   C, D (16 x 8 f32): element i at row g + 8 * (i / 2), col 2t + i % 2
inline int a_row(int lane, int r) { return lane / 4 + 8 * (r % 2); }
inline int a_col(int lane, int r, int h) { return 2 * (lane % 4) + h + 8 * (r / 2); }
inline int b_row(int lane, int r, int h) { return 2 * (lane % 4) + h + 8 * r; }
inline int b_col(int lane) { return lane / 4; }
inline int c_row(int lane, int i) { return lane / 4 + 8 * (i / 2); }
inline int c_col(int lane, int i) { return 2 * (lane % 4) + i % 2; }

template <typename T>
float half_of(uint32_t word, int h) {
  const auto bits = static_cast<uint16_t>(h == 0 ? word & 0xffffu : word >> 16);
  T value;
  std::memcpy(&value, &bits, 2);
  return static_cast<float>(value);
}

template <typename T>
uint16_t bits_of(float x) {
  const T value(x);
  uint16_t bits;
  std::memcpy(&bits, &value, 2);
  return bits;
}

// d = a @ b + c for the warp: 16x16 (f16/bf16) x 16x8 (f16/bf16) + 16x8 (f32).
template <typename T>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  Thread& self = this_thread();
  Warp& warp = *self.warp;
  const int lane = self.lane;
  std::memcpy(warp.a[lane], a, sizeof(a));
  std::memcpy(warp.b[lane], b, sizeof(b));
  std::memcpy(warp.c[lane], c, sizeof(c));
  const Collective kind = std::is_same_v<T, c10::Half> ? Collective::kMmaF16 : Collective::kMmaBF16;
  warp_collective(kind, [](Warp& w) {
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < kWarpSize; ++l) {
      for (int r = 0; r < 4; ++r) {
        for (int h = 0; h < 2; ++h) A[a_row(l, r)][a_col(l, r, h)] = half_of<T>(w.a[l][r], h);
      }
      for (int r = 0; r < 2; ++r) {
        for (int h = 0; h < 2; ++h) B[b_row(l, r, h)][b_col(l)] = half_of<T>(w.b[l][r], h);
      }
      for (int i = 0; i < 4; ++i) C[c_row(l, i)][c_col(l, i)] = w.c[l][i];
    }
    for (int l = 0; l < kWarpSize; ++l) {
      for (int i = 0; i < 4; ++i) {
        const int row = c_row(l, i), col = c_col(l, i);
        float sum = C[row][col];
        for (int k = 0; k < 16; ++k) sum = std::fma(A[row][k], B[k][col], sum);
        w.d[l][i] = sum;
      }
    }
  });
  std::memcpy(d, warp.d[lane], sizeof(d));
}

// ldmatrix.sync.aligned.m8n8.x{COUNT}[.trans].shared.b16: lanes 8j..8j+7 give the row
// addresses of matrix j (16 bytes each, 16-byte aligned, in shared memory). Register j of lane
// l holds, of matrix j, row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1; with .trans, column
// l / 4, rows 2 (l % 4) and 2 (l % 4) + 1.
template <int COUNT, bool TRANS>
void ldmatrix(uint32_t* regs, const void* row_address) {
  static_assert(COUNT == 1 || COUNT == 2 || COUNT == 4, "ldmatrix loads 1, 2 or 4 matrices");
  Thread& self = this_thread();
  Warp& warp = *self.warp;
  const int lane = self.lane;
  warp.address[lane] = static_cast<const unsigned char*>(row_address);
  warp.count[lane] = COUNT;
  warp_collective(TRANS ? Collective::kLdMatrixTrans : Collective::kLdMatrix, [](Warp& w) {
    for (int l = 0; l < COUNT * 8; ++l) {
      const unsigned char* p = w.address[l];
      if (w.count[l] != COUNT) report("emulated ldmatrix: lanes disagree on the number of matrices");
      if (reinterpret_cast<uintptr_t>(p) % 16 != 0) ++block_state->errors->misaligned;
      if (!in_shared(p, 16)) {
        report("emulated ldmatrix: a row address outside the block's shared memory");
        std::memset(w.rows[l / 8][l % 8], 0, 16);
        continue;
      }
      std::memcpy(w.rows[l / 8][l % 8], p, 16);
    }
  });
  for (int j = 0; j < COUNT; ++j) {
    if (!TRANS) {
      regs[j] = warp.rows[j][lane / 4][lane % 4];
    } else {
      uint16_t element[2];
      for (int h = 0; h < 2; ++h) {
        std::memcpy(&element[h], reinterpret_cast<const unsigned char*>(warp.rows[j][2 * (lane % 4) + h]) + 2 * (lane / 4), 2);
      }
      regs[j] = static_cast<uint32_t>(element[0]) | (static_cast<uint32_t>(element[1]) << 16);
    }
  }
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes: copies src_bytes (0..16) and zero-fills
// the rest of the 16, once the thread waits for the group holding it. Until then the
// destination holds poison.
inline void cp_async_16(void* dst, const void* src, int src_bytes) {
  check_alignment_16(dst);
  check_alignment_16(src);
  if (!in_shared(dst, 16)) {
    report("emulated cp.async: destination outside the block's shared memory");
    return;
  }
  if (src_bytes < 0 || src_bytes > 16) {
    report("emulated cp.async: source size must lie in [0, 16]");
    return;
  }
  std::memset(dst, kPoisonByte, 16);
  this_thread().copies.push_back({static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), src_bytes});
}

inline void cp_async_commit() {
  Thread& self = this_thread();
  self.group_ends.push_back(self.copies.size());
}

// cp.async.wait_group pending: all but the newest `pending` committed groups are complete.
inline void cp_async_wait(int pending) {
  Thread& self = this_thread();
  const int groups = static_cast<int>(self.group_ends.size());
  if (groups <= pending) return;
  const size_t done = self.group_ends[groups - pending - 1];
  for (size_t i = 0; i < done; ++i) {
    const AsyncCopy& copy = self.copies[i];
    std::memcpy(copy.dst, copy.src, copy.bytes);
    std::memset(copy.dst + copy.bytes, 0, 16 - copy.bytes);
  }
  self.copies.erase(self.copies.begin(), self.copies.begin() + static_cast<std::ptrdiff_t>(done));
  self.group_ends.erase(self.group_ends.begin(), self.group_ends.begin() + (groups - pending));
  for (size_t& end : self.group_ends) end -= done;
}

}  // namespace cuda_emulation

namespace agentfast {
namespace {
inline unsigned char* dynamic_shared_memory() { return cuda_emulation::block_state->shared; }
}  // namespace
}  // namespace agentfast

namespace cuda_emulation {

// OS threads that run blocks of one launch (AGENTFAST_EMULATION_THREADS, default: up to 4).
inline int launch_threads(int64_t blocks) {
  int wanted = static_cast<int>(std::min<unsigned>(4u, std::max(1u, std::thread::hardware_concurrency())));
  if (const char* env = std::getenv("AGENTFAST_EMULATION_THREADS")) wanted = std::max(1, std::atoi(env));
  return static_cast<int>(std::min<int64_t>(wanted, blocks));
}

// Runs body() as every thread of every block of the grid; fails when a block broke one of the
// rules listed at the top of this file.
template <typename Body>
void run_grid(const Body& body, dim3 grid, int threads, size_t shared_bytes) {
  TORCH_CHECK(threads > 0 && threads % kWarpSize == 0 && threads <= 1024,
              "emulated launch: block size must be a multiple of 32 up to 1024, got ", threads);
  const int64_t blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  LaunchErrors errors;
  std::atomic<int64_t> next_block{0};
  std::atomic<bool> overflow{false}, deadlock{false}, unwaited{false};

  const auto worker = [&] {
    std::vector<unsigned char> storage(shared_bytes + kGuardBytes + 128);
    unsigned char* shared = storage.data() + (128 - reinterpret_cast<uintptr_t>(storage.data()) % 128) % 128;
    fibers::Scheduler scheduler;
    BlockState state;
    state.shared = shared;
    state.shared_bytes = shared_bytes;
    state.scheduler = &scheduler;
    state.errors = &errors;
    state.block_barrier.expected = threads;
    for (int w = 0; w < threads / kWarpSize; ++w) state.warps.push_back(std::make_unique<Warp>());
    block_state = &state;
    grid_dim = grid;
    block_dim = dim3(threads);
    for (int64_t id; (id = next_block.fetch_add(1)) < blocks;) {
      block_index = dim3(static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
                         static_cast<unsigned>(id / grid.x / grid.y));
      std::memset(shared, kPoisonByte, shared_bytes);
      std::memset(shared + shared_bytes, kGuardByte, kGuardBytes);
      state.threads.assign(threads, Thread{});
      for (int t = 0; t < threads; ++t) {
        state.threads[t].index = dim3(t);
        state.threads[t].lane = t % kWarpSize;
        state.threads[t].warp = state.warps[t / kWarpSize].get();
      }
      for (auto& warp : state.warps) warp->barrier = fibers::Barrier{kWarpSize};
      state.block_barrier = fibers::Barrier{threads};
      const bool finished = scheduler.run(
          threads, kWarpSize, [](void* context, int) { (*static_cast<const Body*>(context))(); },
          const_cast<void*>(static_cast<const void*>(&body)));
      if (!finished) deadlock = true;
      for (const Thread& t : state.threads) {
        if (!t.copies.empty()) unwaited = true;
      }
      for (size_t i = 0; i < kGuardBytes; ++i) {
        if (shared[shared_bytes + i] != kGuardByte) overflow = true;
      }
      if (!finished) break;
    }
    block_state = nullptr;
  };

  const int workers = launch_threads(blocks);
  std::vector<std::thread> pool;
  for (int w = 1; w < workers; ++w) pool.emplace_back(worker);
  worker();
  for (std::thread& thread : pool) thread.join();
  TORCH_CHECK(!deadlock, "emulated launch: a barrier some threads of a block never reached (deadlock)");
  TORCH_CHECK(!overflow, "emulated launch: a block wrote past its ", shared_bytes, " bytes of shared memory");
  TORCH_CHECK(errors.misaligned == 0, "emulated launch: ", errors.misaligned.load(),
              " 16-byte accesses were not 16-byte aligned (a GPU faults on them)");
  TORCH_CHECK(!unwaited, "emulated launch: a thread ended with cp.async copies it never waited for");
  TORCH_CHECK(errors.first.empty(), errors.first);
}

// The Launcher of masked_attention_kernels.cuh.
struct Launcher {
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, dim3 grid, int threads, size_t shared_bytes, const Args&... args) const {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    run_grid([&] { kernel(args...); }, grid, threads, shared_bytes);
  }
};

}  // namespace cuda_emulation
