// A CPU emulation of the CUDA vocabulary the agentfast kernels use, so the kernels of
// csrc/cuda/masked_attention_kernels.cuh run, unchanged, in the CPU-only test suite.
//
// Every CUDA thread of a block is an OS thread: __syncthreads() is a barrier over the block,
// __syncwarp() and __shfl_xor_sync() are barriers over the 32 threads of a warp. Blocks of a
// grid run one after another on the same threads. wmma input fragments hold a whole 16x16
// tile in every lane; an accumulator holds 8 elements per lane (element e of the tile belongs
// to lane e % 32), which each lane computes and stores alone, so lanes exchange results only
// through memory, as on a GPU, where the element-to-lane mapping is unspecified (and differs
// from this one). fp16/bf16 products are exact in fp32 and accumulate in fp32, as tensor
// cores do.
//
// Every launch with batch x heads > 4 folds it over grid.y and grid.z (a GPU does so past
// 65535), so the tests cover that path at small sizes.
//
// Checks: each block's shared memory starts filled with 0xFF (NaN for floats and halves), so
// a kernel that reads shared memory it never wrote shows NaN in its results; bytes past the
// kernel's shared memory size are a guard, and a write there fails the launch; so does a
// 16-byte load or store at an address that is not 16-byte aligned, where a GPU would fault.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define AGENTFAST_TENSOR_CORES 1
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
inline float __expf(float x) { return std::exp(x); }
[[noreturn]] inline void __trap() { std::abort(); }

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace cuda_emulation {

constexpr int kWarpSize = 32;
constexpr size_t kGuardBytes = 1024;
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPoisonByte = 0xFF;

struct Warp {
  std::barrier<> barrier{kWarpSize};
  float slots[kWarpSize] = {};
};

// What the current OS thread is, as a CUDA thread.
// 16-byte accesses at addresses that are not 16-byte aligned (a GPU would fault), this launch.
inline std::atomic<int> misaligned_accesses{0};

struct ThreadState {
  unsigned char* shared = nullptr;
  std::barrier<>* block = nullptr;
  Warp* warp = nullptr;
  int lane = 0;
};
inline thread_local ThreadState current;

inline int lane() { return current.lane; }

}  // namespace cuda_emulation

inline void __syncthreads() { cuda_emulation::current.block->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { cuda_emulation::current.warp->barrier.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  cuda_emulation::Warp& warp = *cuda_emulation::current.warp;
  const int lane = cuda_emulation::lane();
  warp.slots[lane] = value;
  warp.barrier.arrive_and_wait();
  const float other = warp.slots[lane ^ lane_mask];
  warp.barrier.arrive_and_wait();  // nobody overwrites a slot before every lane has read it
  return other;
}

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the kernels use 16x16x16 tiles only");
  float full[256];  // matrix_a / matrix_b: every lane holds the whole tile, row-major
};

// Accumulators: lane l holds elements l, l + 32, ..., l + 224 of the row-major tile (a GPU's
// mapping differs and is unspecified; the kernels must not depend on it).
template <>
struct fragment<accumulator, 16, 16, 16, float, void> {
  static constexpr int num_elements = 8;
  float x[num_elements];
};
using accumulator_fragment = fragment<accumulator, 16, 16, 16, float, void>;

inline int element_of(int i) { return cuda_emulation::lane() + i * cuda_emulation::kWarpSize; }

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) {
      const T value = std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r];
      f.full[r * 16 + c] = static_cast<float>(value);
    }
  }
}

inline void load_matrix_sync(accumulator_fragment& f, const float* p, unsigned ldm, layout_t layout) {
  TORCH_CHECK(layout == mem_row_major, "emulated wmma: only row-major accumulators are used");
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = p[(element_of(i) / 16) * ldm + element_of(i) % 16];
}

inline void fill_fragment(accumulator_fragment& f, float value) { std::fill(f.x, f.x + f.num_elements, value); }

template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(accumulator_fragment& d, const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b, const accumulator_fragment& c) {
  for (int i = 0; i < d.num_elements; ++i) {
    const int row = element_of(i) / 16, col = element_of(i) % 16;
    float sum = c.x[i];
    for (int k = 0; k < 16; ++k) sum = std::fma(a.full[row * 16 + k], b.full[k * 16 + col], sum);
    d.x[i] = sum;
  }
}

inline void store_matrix_sync(float* p, const accumulator_fragment& f, unsigned ldm, layout_t layout) {
  TORCH_CHECK(layout == mem_row_major, "emulated wmma: only row-major accumulators are used");
  for (int i = 0; i < f.num_elements; ++i) p[(element_of(i) / 16) * ldm + element_of(i) % 16] = f.x[i];
}

}  // namespace wmma
}  // namespace nvcuda

namespace agentfast {
namespace {
inline unsigned char* dynamic_shared_memory() { return cuda_emulation::current.shared; }

inline void check_vector_alignment(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) ++cuda_emulation::misaligned_accesses;
}

inline uint4 load_vector(const void* p) {
  check_vector_alignment(p);
  uint4 value;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

inline void store_vector(void* p, uint4 value) {
  check_vector_alignment(p);
  std::memcpy(p, &value, sizeof(value));
}
}  // namespace
}  // namespace agentfast

namespace cuda_emulation {

// Runs body() as every thread of every block of the grid; fails when a block wrote past its
// shared memory.
template <typename Body>
void run_grid(const Body& body, dim3 grid, int threads, size_t shared_bytes) {
  TORCH_CHECK(threads > 0 && threads % kWarpSize == 0 && threads <= 1024,
              "emulated launch: block size must be a multiple of 32 up to 1024, got ", threads);
  std::vector<unsigned char> storage(shared_bytes + kGuardBytes + 128);
  unsigned char* shared = storage.data() + (128 - reinterpret_cast<uintptr_t>(storage.data()) % 128) % 128;
  std::memset(shared, kPoisonByte, shared_bytes);
  std::memset(shared + shared_bytes, kGuardByte, kGuardBytes);
  std::barrier<> block(threads);
  std::vector<std::unique_ptr<Warp>> warps;
  for (int w = 0; w < threads / kWarpSize; ++w) warps.push_back(std::make_unique<Warp>());
  std::atomic<bool> overflow{false};
  misaligned_accesses = 0;

  const auto worker = [&](int t) {
    threadIdx = dim3(t);
    blockDim = dim3(threads);
    gridDim = grid;
    current = ThreadState{shared, &block, warps[t / kWarpSize].get(), t % kWarpSize};
    for (unsigned z = 0; z < grid.z; ++z) {
      for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = dim3(x, y, z);
          body();
          block.arrive_and_wait();  // the block is done
          if (t == 0) {
            for (size_t i = 0; i < kGuardBytes; ++i) {
              if (shared[shared_bytes + i] != kGuardByte) overflow = true;
            }
            std::memset(shared, kPoisonByte, shared_bytes);
            std::memset(shared + shared_bytes, kGuardByte, kGuardBytes);
          }
          block.arrive_and_wait();  // the next block starts from poisoned shared memory
        }
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker, t);
  for (std::thread& thread : pool) thread.join();
  TORCH_CHECK(!overflow, "emulated launch: a block wrote past its ", shared_bytes, " bytes of shared memory");
  TORCH_CHECK(misaligned_accesses == 0, "emulated launch: ", misaligned_accesses.load(),
              " 16-byte accesses were not 16-byte aligned (a GPU faults on them)");
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
