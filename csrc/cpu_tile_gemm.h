// Small register-tiled matrix products for the CPU kernels that run a tiny MLP per sample
// (render_cpu.cpp: EG3D's decoder, 32 -> 64 -> 33, over a ray's samples at once).
//
// Why not BLAS: the matrices are a ray's worth of rows (tens to a few hundred) by tens of
// columns, inside an at::parallel_for task; a BLAS call per product would cost more in dispatch
// and threading than the product itself. Here each product is a loop over tiles of kTileRows
// rows by kCols columns held in registers: GCC's vector extension types of the enclosing
// function's register width (the kVecBytes template argument: 16 for the SSE2 baseline, 32 and
// 64 for cpu_math.h's AVX2 and AVX-512 clones, where the scalar times vector product becomes an
// FMA with an embedded broadcast), kTileRows chosen so the accumulators fit the register file.
// The render kernel pads every matrix's rows to a multiple of kCols values (`padded`: its
// scratch and weight copies are laid out with padded rows); other callers need not. A product
// computes its N columns: whole chunks, then the last N % kCols columns one at a time (so a
// kernel may pass the padded width, whose padding columns depend only on B's, or the true
// one). The reduction dimension K is never padded.
//
// Summation order: each output element is start + Σ_k in increasing k, one FMA (or multiply-add)
// per term, the same whatever the tile it falls in: results do not depend on the threads.
// CPU-only (GCC / Clang vector extensions): never include from a .cu file.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu_math.h"

namespace portrait_engine {
namespace cpu_gemm {

constexpr int kCols = 16;  // values per chunk, and the padding unit of every row

inline int64_t padded(int64_t n) { return (n + kCols - 1) / kCols * kCols; }

// A chunk of kCols values as kVecs native vectors of kVecBytes bytes: the enclosing function's
// register width (16 baseline, 32 AVX2, 64 AVX-512; cpu_math::kVecBytes*). A vector type wider
// than the target's registers is not split into registers by GCC: it lives in memory and every
// operation on it loads and stores (a 64-byte chunk under AVX2 ran these products 7x slower than
// 32-byte vectors, and slower than the SSE2 baseline).
template <typename T, int kVecBytes>
struct Lanes {
  using vec = typename cpu_math::VecOf<T, kVecBytes>::type;
  static constexpr int kWidth = cpu_math::VecOf<T, kVecBytes>::kLanes;
  static constexpr int kVecs = kCols / kWidth;
  static_assert(kVecs >= 1 && kVecs * kWidth == kCols, "a chunk must be whole vectors");
  // rows of a full tile: at most kBudget accumulator registers (of 16 below AVX-512, 32 with
  // it; B's chunk is read as a memory operand where no register is left), at most 8 rows
  // (enough to hide the FMA latency): float 8 / 6 / 3 rows at 64 / 32 / 16 bytes, double
  // 8 / 3 / 1. Remainder rows go in tiles of Rows / 2, Rows / 4, ..., 1 (rows_from).
  static constexpr int kBudget = kVecBytes == 64 ? 24 : 12;
  static constexpr int kRows = kBudget / kVecs;
  static constexpr int kTileRows = kRows < 1 ? 1 : (kRows > 8 ? 8 : kRows);
};

// How a product starts: from zero, from a bias row (kCols-aligned, the same for every row), or
// from C's current values (accumulation).
enum class Start { kZero, kBias, kAccumulate };

// One tile: C[r][0, kCols) = start + Σ_k A(r, k) · B[k][0, kCols), r < Rows, with
// A(r, k) = A[r · a_row + k · a_k] (so Aᵀ is A with the strides swapped).
template <typename T, int kVecBytes, int Rows>
inline void tile(int64_t K, const T* __restrict__ A, int64_t a_row, int64_t a_k,
                 const T* __restrict__ B, int64_t ldb, T* __restrict__ C, int64_t ldc,
                 Start start, const T* __restrict__ bias) {
  using L = Lanes<T, kVecBytes>;
  using V = typename L::vec;
  constexpr int kV = L::kVecs;
  V acc[Rows][kV];
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
#pragma GCC unroll 16
    for (int q = 0; q < kV; ++q) {
      if (start == Start::kAccumulate) {
        std::memcpy(&acc[r][q], C + r * ldc + q * L::kWidth, sizeof(V));
      } else if (start == Start::kBias) {
        // GCC 12 warns (-Warray-bounds) where a caller's null bias is inlined into this read,
        // which only Start::kBias reaches, and a kBias caller passes a bias
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
        std::memcpy(&acc[r][q], bias + q * L::kWidth, sizeof(V));
#pragma GCC diagnostic pop
      } else {
        acc[r][q] = V{};
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    V b[kV];
#pragma GCC unroll 16
    for (int q = 0; q < kV; ++q) std::memcpy(&b[q], B + k * ldb + q * L::kWidth, sizeof(V));
    const T* a = A + k * a_k;
#pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) {
      const T x = a[r * a_row];
#pragma GCC unroll 16
      for (int q = 0; q < kV; ++q) acc[r][q] += x * b[q];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
#pragma GCC unroll 16
    for (int q = 0; q < kV; ++q) {
      std::memcpy(C + r * ldc + q * L::kWidth, &acc[r][q], sizeof(V));
    }
  }
}

// One column of a tile (the columns past the last whole chunk): scalar accumulators.
template <typename T, int Rows>
inline void tile_column(int64_t K, const T* __restrict__ A, int64_t a_row, int64_t a_k,
                        const T* __restrict__ B, int64_t ldb, T* __restrict__ C, int64_t ldc,
                        Start start, const T* __restrict__ bias) {
  T acc[Rows];
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
    acc[r] = start == Start::kAccumulate ? C[r * ldc]
             : start == Start::kBias     ? bias[0]
                                         : T(0);
  }
  for (int64_t k = 0; k < K; ++k) {
    const T b = B[k * ldb];
    const T* a = A + k * a_k;
#pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) acc[r] += a[r * a_row] * b;
  }
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) C[r * ldc] = acc[r];
}

// Rows [m, m + Rows) of the product: the whole chunks of columns, then the remaining columns.
template <typename T, int kVecBytes, int Rows>
inline void row_tiles(int64_t m, int64_t N, int64_t K, const T* A, int64_t a_row, int64_t a_k,
                      const T* B, int64_t ldb, T* C, int64_t ldc, Start start, const T* bias) {
  const T* A_m = A + m * a_row;
  T* C_m = C + m * ldc;
  int64_t n = 0;
  for (; n + kCols <= N; n += kCols) {
    tile<T, kVecBytes, Rows>(K, A_m, a_row, a_k, B + n, ldb, C_m + n, ldc, start,
                             bias + (bias != nullptr ? n : 0));
  }
  for (; n < N; ++n) {
    tile_column<T, Rows>(K, A_m, a_row, a_k, B + n, ldb, C_m + n, ldc, start,
                         bias + (bias != nullptr ? n : 0));
  }
}

// Rows [m, M) in tiles of Rows rows while they last, then of Rows / 2, ..., 1.
template <typename T, int kVecBytes, int Rows>
inline void rows_from(int64_t m, int64_t M, int64_t N, int64_t K, const T* A, int64_t a_row,
                      int64_t a_k, const T* B, int64_t ldb, T* C, int64_t ldc, Start start,
                      const T* bias) {
  for (; m + Rows <= M; m += Rows) {
    row_tiles<T, kVecBytes, Rows>(m, N, K, A, a_row, a_k, B, ldb, C, ldc, start, bias);
  }
  if constexpr (Rows > 1) {
    rows_from<T, kVecBytes, Rows / 2>(m, M, N, K, A, a_row, a_k, B, ldb, C, ldc, start, bias);
  }
}

// C (M x N, row stride ldc) = start + A (M x K, strides a_row, a_k) · B (K x N, row stride ldb),
// with vectors of kVecBytes bytes (the enclosing function's register width).
// Any ldb and ldc: every load and store of a chunk is an unaligned memcpy (the render kernel
// pads its rows to multiples of kCols, which keeps them aligned; skinning_cpu.cpp's grad_dirs
// passes its true row length). Columns of C from N on are never written. `bias` (N values) is
// read with Start::kBias only.
template <typename T, int kVecBytes>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_row, int64_t a_k,
                 const T* B, int64_t ldb, T* C, int64_t ldc, Start start, const T* bias) {
  rows_from<T, kVecBytes, Lanes<T, kVecBytes>::kTileRows>(0, M, N, K, A, a_row, a_k, B, ldb, C,
                                                          ldc, start, bias);
}

}  // namespace cpu_gemm
}  // namespace portrait_engine
