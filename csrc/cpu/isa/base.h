// CPU attention kernels, compiled once per instruction-set variant: the headers of this folder.
//
// Included only by ../attention_isa.cpp, which is compiled several times with different target
// flags and a different EGOVLPV2_CPU_ISA namespace. Everything here therefore lives in that
// namespace and uses only C library calls (logf, memcpy, aligned_alloc): an inline function
// shared between the variants (std::vector, std::max, ...) could be emitted by the AVX-512
// object and picked by the linker for the baseline one.
//
// This header: the variant's vector width and tile sizes, integer helpers, scratch memory and
// software prefetch.
#pragma once

#ifndef EGOVLPV2_CPU_ISA
#error "define EGOVLPV2_CPU_ISA, the namespace of this instruction-set variant"
#endif

#include <stdint.h>
#include <stdlib.h>

namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA {

#if defined(__AVX512F__)
constexpr int64_t kVecBytes = 64;
#elif defined(__AVX__)
constexpr int64_t kVecBytes = 32;
#else
constexpr int64_t kVecBytes = 16;
#endif

// Elements of one vector register.
template <typename T>
constexpr int64_t kLanes = kVecBytes / static_cast<int64_t>(sizeof(T));
// GEMM tile: kMR rows by kNR<T> columns (two vector registers) of accumulators; AVX-512 has
// 32 registers, so 8 rows (16 accumulators), else 4 rows (8 accumulators).
constexpr int64_t kMR = kVecBytes == 64 ? 8 : 4;
template <typename T>
constexpr int64_t kNR = 2 * kLanes<T>;
// Packed rows are padded to a whole number of vectors.
template <typename T>
inline int64_t padded(int64_t n) {
  return (n + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
}
// Queries per block of the dense engine (keeps the score block in L1/L2).
constexpr int64_t kQueryBlock = 64;
// A key set with at least this many queries goes through the dense engine.
constexpr int64_t kDenseMin = 2;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// ---------------------------------------------------------------------------------------------
// Scratch memory: one aligned block per parallel chunk, carved into buffers.

class Block {
 public:
  explicit Block(int64_t bytes)
      : base_(static_cast<char*>(
            aligned_alloc(64, static_cast<size_t>(round_up(max64(bytes, 64), 64))))) {}
  ~Block() { free(base_); }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  char* get() const { return base_; }

 private:
  char* base_;
};

// Hands out consecutive 64-byte aligned buffers from a block (or just counts their size when
// the block is null, so the same code computes the workspace size).
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* take(int64_t n) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += round_up(max64(n, 1) * static_cast<int64_t>(sizeof(T)), 64);
    return p;
  }
  int64_t used() const { return used_; }

 private:
  char* base_;
  int64_t used_ = 0;
};

// Software prefetch of [p, p + bytes): the next head's column slices of the same token rows
// are 9 KB apart (one per row), too scattered for the hardware prefetchers.
inline void prefetch(const void* p, int64_t bytes, bool write) {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) {
    if (write)
      __builtin_prefetch(c + off, 1, 3);
    else
      __builtin_prefetch(c + off, 0, 3);
  }
#else
  (void)p;
  (void)bytes;
  (void)write;
#endif
}

// A work item that cannot get its scratch memory marks the op failed (Status::kOutOfMemory).
#define EGOVLPV2_FAIL_AND_RETURN(ctx)                     \
  do {                                                    \
    __atomic_store_n(&(ctx).failed, 1, __ATOMIC_RELAXED); \
    return;                                               \
  } while (0)

}  // namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA
