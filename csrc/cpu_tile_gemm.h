// Small register-tiled matrix products for the CPU kernels that run a tiny MLP per sample
// (render_cpu.cpp: EG3D's decoder, 32 -> 64 -> 33, over a ray's samples at once).
//
// Why not BLAS: the matrices are a ray's worth of rows (tens to a few hundred) by tens of
// columns, inside an at::parallel_for task; a BLAS call per product would cost more in dispatch
// and threading than the product itself. Here each product is a loop over tiles of kTileRows
// rows by kCols columns held in registers: GCC's vector extension types (a Chunk is kCols
// values) compile to whatever the enclosing function targets (SSE2 baseline, AVX2, AVX-512 under
// cpu_math.h's PE_TARGET_* clones, where the scalar times chunk product becomes an FMA with an
// embedded broadcast). Every matrix's column count is padded to a multiple of kCols
// (`padded`): the kernels lay their scratch and weight copies out with padded rows, and the
// padding columns of a product depend only on the padding columns of B (whatever they hold,
// they never reach a real column). The reduction dimension K is never padded.
//
// Summation order: each output element is start + Σ_k in increasing k, one FMA (or multiply-add)
// per term, the same whatever the tile it falls in: results do not depend on the threads.
// CPU-only (GCC / Clang vector extensions): never include from a .cu file.
#pragma once

#include <cstdint>
#include <cstring>

namespace portrait_engine {
namespace cpu_gemm {

constexpr int kCols = 16;     // values per chunk, and the padding unit of every row
constexpr int kTileRows = 8;  // rows of a full tile: 8 accumulators hide the FMA latency

inline int64_t padded(int64_t n) { return (n + kCols - 1) / kCols * kCols; }

template <typename T>
struct ChunkOf {
  typedef T type __attribute__((vector_size(kCols * sizeof(T))));
};
template <typename T>
using Chunk = typename ChunkOf<T>::type;

// How a product starts: from zero, from a bias row (kCols-aligned, the same for every row), or
// from C's current values (accumulation).
enum class Start { kZero, kBias, kAccumulate };

// One tile: C[r][0, kCols) = start + Σ_k A(r, k) · B[k][0, kCols), r < Rows, with
// A(r, k) = A[r · a_row + k · a_k] (so Aᵀ is A with the strides swapped).
template <typename T, int Rows>
inline void tile(int64_t K, const T* __restrict__ A, int64_t a_row, int64_t a_k,
                 const T* __restrict__ B, int64_t ldb, T* __restrict__ C, int64_t ldc,
                 Start start, const T* __restrict__ bias) {
  Chunk<T> acc[Rows];
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
    if (start == Start::kAccumulate) {
      std::memcpy(&acc[r], C + r * ldc, sizeof(Chunk<T>));
    } else if (start == Start::kBias) {
      std::memcpy(&acc[r], bias, sizeof(Chunk<T>));
    } else {
      acc[r] = Chunk<T>{} ;
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    Chunk<T> b;
    std::memcpy(&b, B + k * ldb, sizeof(b));
    const T* a = A + k * a_k;
#pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) acc[r] += a[r * a_row] * b;
  }
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) std::memcpy(C + r * ldc, &acc[r], sizeof(Chunk<T>));
}

// C (M x N, row stride ldc) = start + A (M x K, strides a_row, a_k) · B (K x N, row stride ldb).
// N, ldb and ldc are multiples of kCols; `bias` (N values) is read with Start::kBias only.
template <typename T>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_row, int64_t a_k,
                 const T* B, int64_t ldb, T* C, int64_t ldc, Start start, const T* bias) {
  int64_t m = 0;
  for (; m + kTileRows <= M; m += kTileRows) {
    for (int64_t n = 0; n < N; n += kCols) {
      tile<T, kTileRows>(K, A + m * a_row, a_row, a_k, B + n, ldb, C + m * ldc + n, ldc, start,
                         bias + (bias != nullptr ? n : 0));
    }
  }
  // the last M % 8 rows: a tile of 4, of 2, of 1
  for (const int rows : {4, 2, 1}) {
    if (M - m < rows) continue;
    for (int64_t n = 0; n < N; n += kCols) {
      const T* A_m = A + m * a_row;
      T* C_m = C + m * ldc + n;
      const T* bias_n = bias + (bias != nullptr ? n : 0);
      if (rows == 4) tile<T, 4>(K, A_m, a_row, a_k, B + n, ldb, C_m, ldc, start, bias_n);
      if (rows == 2) tile<T, 2>(K, A_m, a_row, a_k, B + n, ldb, C_m, ldc, start, bias_n);
      if (rows == 1) tile<T, 1>(K, A_m, a_row, a_k, B + n, ldb, C_m, ldc, start, bias_n);
    }
    m += rows;
  }
}

}  // namespace cpu_gemm
}  // namespace portrait_engine
