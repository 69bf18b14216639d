// Small register-tiled matrix products for the CPU kernels that run a tiny MLP per sample
// (render_cpu.cpp: EG3D's decoder, 32 -> 64 -> 33, over a ray's samples at once).
//
// Why not BLAS: the matrices are a ray's worth of rows (tens to a few hundred) by tens of
// columns, inside an at::parallel_for task; a BLAS call per product would cost more in dispatch
// and threading than the product itself. Here each product is a loop over tiles of kTileRows
// rows by kCols columns held in registers: GCC's vector extension types (a Chunk is kCols
// values) compile to whatever the enclosing function targets (SSE2 baseline, AVX2, AVX-512 under
// cpu_math.h's PE_TARGET_* clones, where the scalar times chunk product becomes an FMA with an
// embedded broadcast). Every matrix's rows are padded to a multiple of kCols values
// (`padded`): the kernels lay their scratch and weight copies out with padded rows. A product
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
      acc[r] = Chunk<T>{};
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
template <typename T, int Rows>
inline void row_tiles(int64_t m, int64_t N, int64_t K, const T* A, int64_t a_row, int64_t a_k,
                      const T* B, int64_t ldb, T* C, int64_t ldc, Start start, const T* bias) {
  const T* A_m = A + m * a_row;
  T* C_m = C + m * ldc;
  int64_t n = 0;
  for (; n + kCols <= N; n += kCols) {
    tile<T, Rows>(K, A_m, a_row, a_k, B + n, ldb, C_m + n, ldc, start,
                  bias + (bias != nullptr ? n : 0));
  }
  for (; n < N; ++n) {
    tile_column<T, Rows>(K, A_m, a_row, a_k, B + n, ldb, C_m + n, ldc, start,
                         bias + (bias != nullptr ? n : 0));
  }
}

// C (M x N, row stride ldc) = start + A (M x K, strides a_row, a_k) · B (K x N, row stride ldb).
// ldb and ldc are multiples of kCols (rows of whole chunks); columns of C from N to the padded
// width are left as they are. `bias` (N values) is read with Start::kBias only.
template <typename T>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_row, int64_t a_k,
                 const T* B, int64_t ldb, T* C, int64_t ldc, Start start, const T* bias) {
  int64_t m = 0;
  for (; m + kTileRows <= M; m += kTileRows) {
    row_tiles<T, kTileRows>(m, N, K, A, a_row, a_k, B, ldb, C, ldc, start, bias);
  }
  // the last M % 8 rows: a tile of 4, of 2, of 1
  if (M - m >= 4) {
    row_tiles<T, 4>(m, N, K, A, a_row, a_k, B, ldb, C, ldc, start, bias);
    m += 4;
  }
  if (M - m >= 2) {
    row_tiles<T, 2>(m, N, K, A, a_row, a_k, B, ldb, C, ldc, start, bias);
    m += 2;
  }
  if (M - m >= 1) row_tiles<T, 1>(m, N, K, A, a_row, a_k, B, ldb, C, ldc, start, bias);
}

}  // namespace cpu_gemm
}  // namespace portrait_engine
