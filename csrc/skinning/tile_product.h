// Small dense products on register tiles, out[r, c] = init[r, c] + Σ_k a[r, k] x[k, c] with
// any strides (Product), for the skinning CPU kernels (shape_blend_cpu.cpp's blocks,
// skinning_cpu.cpp's chunk blends and reductions): float on an AVX-512 CPU register-tiled (R
// rows x Q vectors of accumulators, the last vector masked), other types and CPUs plain loops.
// CPU-only: never include from a .cu file.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common.h"
#include "cpu_math.h"

#if PE_HAVE_ISA_CLONES
#include <immintrin.h>
#endif

namespace portrait_engine {
namespace skinning {

// Every product of a block is a small dense one, out[r, c] = init[r, c] + Σ_k a[r, k] x[k, c]
// over buffers in L1 (the block's data in the accumulation type): on an AVX-512 CPU, float runs
// a register-tiled kernel (R rows x Q vectors of accumulators; loops that accumulated in memory
// instead were bound by store-to-load forwarding, 1.6 ms for the forward at B = 32 on one core);
// other types and CPUs run the plain loops.
constexpr int64_t kLanes = 16;

inline int64_t padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

struct Product {
  int64_t rows, K, width;  // out is (rows, width), the sum runs over K
  int64_t ar, ak;          // a[r * ar + k * ak]
  int64_t ldx, ldi, ldo;   // x[k * ldx + c], init[r * ldi + c] (ldi = 0: one row for all)
};

template <typename acc_t>
inline void product_loops(const Product& p, const acc_t* a, const acc_t* x, const acc_t* init,
                          acc_t* out) {
  for (int64_t r = 0; r < p.rows; ++r) {
    acc_t* o = out + r * p.ldo;
    for (int64_t c = 0; c < p.width; ++c) o[c] = init == nullptr ? acc_t(0) : init[r * p.ldi + c];
    for (int64_t k = 0; k < p.K; ++k) {
      const acc_t w = a[r * p.ar + k * p.ak];
      const acc_t* xk = x + k * p.ldx;
      PE_SIMD
      for (int64_t c = 0; c < p.width; ++c) o[c] += w * xk[c];
    }
  }
}

#if PE_HAVE_ISA_CLONES
#ifndef PE_UNROLL
#define PE_UNROLL _Pragma("GCC unroll 16")
#endif

// R rows from r0 and Q vectors of columns from c0, the last one masked by `last`.
template <int R, int Q>
__attribute__((target("avx512f"))) inline void product_tile_avx512(
    const Product& p, const float* a, const float* x, const float* init, float* out, int64_t r0,
    int64_t c0, __mmask16 last) {
  // the tile's loops unrolled in full (PE_UNROLL) and the sizes as locals: otherwise GCC kept
  // the accumulators in a stack array, a store per FMA (the forward ran at ~19 GFLOP/s, one core)
  const int64_t K = p.K, ar = p.ar, ak = p.ak, ldx = p.ldx;
  __mmask16 mask[Q];
  PE_UNROLL
  for (int q = 0; q < Q; ++q) mask[q] = q == Q - 1 ? last : static_cast<__mmask16>(0xffff);
  __m512 acc[R][Q];
  PE_UNROLL
  for (int r = 0; r < R; ++r) {
    PE_UNROLL
    for (int q = 0; q < Q; ++q) {
      acc[r][q] = init == nullptr
                      ? _mm512_setzero_ps()
                      : _mm512_maskz_loadu_ps(mask[q], init + (r0 + r) * p.ldi + c0 + 16 * q);
    }
  }
  const float* ar0 = a + r0 * ar;
  const float* xk = x + c0;
  for (int64_t k = 0; k < K; ++k, xk += ldx) {
    __m512 xv[Q];
    PE_UNROLL
    for (int q = 0; q < Q; ++q) xv[q] = _mm512_maskz_loadu_ps(mask[q], xk + 16 * q);
    PE_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 w = _mm512_set1_ps(ar0[r * ar + k * ak]);
      PE_UNROLL
      for (int q = 0; q < Q; ++q) acc[r][q] = _mm512_fmadd_ps(w, xv[q], acc[r][q]);
    }
  }
  PE_UNROLL
  for (int r = 0; r < R; ++r) {
    PE_UNROLL
    for (int q = 0; q < Q; ++q) {
      const __mmask16 m = q == Q - 1 ? last : static_cast<__mmask16>(0xffff);
      _mm512_mask_storeu_ps(out + (r0 + r) * p.ldo + c0 + 16 * q, m, acc[r][q]);
    }
  }
}

template <int R>
__attribute__((target("avx512f"))) inline void product_rows_avx512(
    const Product& p, const float* a, const float* x, const float* init, float* out, int64_t r0) {
  constexpr __mmask16 kAll = 0xffff;
  int64_t c0 = 0;
  for (; c0 + 64 <= p.width; c0 += 64) product_tile_avx512<R, 4>(p, a, x, init, out, r0, c0, kAll);
  // the last 1 to 63 columns in one tile of 1 to 4 vectors (e.g. 𝒥 S's 30 columns: one pass
  // over K instead of two)
  const int64_t left = p.width - c0;
  if (left <= 0) return;
  const int64_t tail = left % 16;
  const __mmask16 last = tail == 0 ? kAll : static_cast<__mmask16>((1u << tail) - 1u);
  switch ((left + 15) / 16) {
    case 1: product_tile_avx512<R, 1>(p, a, x, init, out, r0, c0, last); break;
    case 2: product_tile_avx512<R, 2>(p, a, x, init, out, r0, c0, last); break;
    case 3: product_tile_avx512<R, 3>(p, a, x, init, out, r0, c0, last); break;
    default: product_tile_avx512<R, 4>(p, a, x, init, out, r0, c0, last); break;
  }
}

// Rows in tiles of 4 (of 8 where the product is at most 2 vectors wide: 16 accumulators, the FMA
// latency hidden, e.g. 24 joints or 12 B values), then one at a time. Each value's K terms are
// summed in increasing k whatever its tile.
__attribute__((target("avx512f"))) inline void product_avx512(const Product& p, const float* a,
                                                              const float* x, const float* init,
                                                              float* out) {
  int64_t r = 0;
  if (p.width <= 32) {
    for (; r + 8 <= p.rows; r += 8) product_rows_avx512<8>(p, a, x, init, out, r);
  }
  for (; r + 4 <= p.rows; r += 4) product_rows_avx512<4>(p, a, x, init, out, r);
  for (; r < p.rows; ++r) product_rows_avx512<1>(p, a, x, init, out, r);
}
#endif

template <typename acc_t>
inline void product(const Product& p, const acc_t* a, const acc_t* x, const acc_t* init,
                    acc_t* out, bool avx512) {
#if PE_HAVE_ISA_CLONES
  if constexpr (std::is_same_v<acc_t, float>) {
    if (avx512) {
      product_avx512(p, a, x, init, out);
      return;
    }
  }
#endif
  (void)avx512;
  product_loops(p, a, x, init, out);
}


}  // namespace skinning
}  // namespace portrait_engine
