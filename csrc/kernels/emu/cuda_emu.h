// A small CUDA execution emulator for testing the kernels in csrc/kernels/ on a CPU.
//
// Each CUDA thread of a block runs as a fiber (its own stack, cooperative switching); blocks run
// one after another. __syncthreads and the warp-synchronous primitives (__shfl_xor_sync, mma)
// are barriers over the block or the warp; the order in which fibers resume after a barrier is
// shuffled by a seed, so a missing barrier shows up as a result that depends on the seed. A
// barrier that can never complete (a thread that left early, a shuffle in divergent code) is
// reported as a deadlock instead of hanging. Dynamic shared memory is filled with 0xFF bytes
// (NaN in every float type) before each block, so reads of never-written shared memory poison
// the result. Only what the kernels use is provided; x86-64 Linux only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

// The CUDA headers name members blockDim/gridDim: include them before the macros below.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_types.h>

namespace emu {

const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
int lane_id();
unsigned char* dynamic_smem();
void sync_block();
void sync_warp();
// Warp all-gather: every lane contributes `bytes` bytes; `all` receives 32 * bytes.
void warp_allgather(const void* mine, size_t bytes, void* all);
void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16);
void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body);
// cp.async. When the copy lands is chosen by set_async_mode: 0 = when a wait_group retires its
// group (the latest legal moment: a read before the matching wait and barrier sees poison),
// 1 = at issue (the earliest: a copy into a buffer another warp still reads clobbers it),
// 2 = either, drawn per copy from the scheduling seed.
void set_async_mode(int mode);
void cp_async16(void* smem, const void* gmem, int src_bytes);
void cp_async_commit();
void cp_async_wait(int keep_pending);

// Scheduling seed for the next launches (0 = plain round-robin), and the number of fiber
// switches performed so far (a cost measure for the tests).
void set_seed(uint64_t seed);
// Launches seen since the last reset: with a given block size (threads per block), and all.
int launches_with_block(int threads);
int launch_count();
void reset_launches();
// Last error: a non-empty string after a deadlock or a bad launch; cleared by the getter.
const char* take_error();

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

inline void __syncthreads() { ::emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::emu::sync_warp(); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) {
  T all[32];
  ::emu::warp_allgather(&v, sizeof(T), all);
  return all[::emu::lane_id() ^ lane_mask];
}

template <class T>
T __shfl_sync(unsigned, T v, int src_lane, int = 32) {
  T all[32];
  ::emu::warp_allgather(&v, sizeof(T), all);
  return all[src_lane & 31];
}
