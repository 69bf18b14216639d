// AVX-512 lane helpers shared by the skinning CPU kernels (skinning_cpu.cpp's 16-point forms,
// shape_blend_cpu.cpp's vertex-vectorised direct passes): masks of the first lanes, a sum of
// the lanes in a fixed order, and the permutes between 16 interleaved (x, y, z) triples and
// three vectors of components. Functions carry a target attribute (the extension is built for
// baseline x86-64; callers pick them at run time by cpu_math::cpu_isa()). CPU-only.
#pragma once

#include <cstdint>

#include "cpu_math.h"

#if PE_HAVE_ISA_CLONES
#include <immintrin.h>

namespace portrait_engine {
namespace skinning {

// lanes [0, n) of a 16-lane mask
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff)
                 : n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << n) - 1u);
}

// The sum of a vector's 16 lanes in a fixed order. GCC 12's _mm512_reduce_add_ps, shuffles and
// casts pass an undefined vector to their builtins (a -Wuninitialized warning in its header):
// the masked forms below name every operand.
__attribute__((target("avx512f"))) inline float sum_lanes(__m512 v) {
  constexpr __mmask16 kAll = 0xffff;
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, kAll, v, v, 0x4E));  // the 256-bit halves
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, kAll, v, v, 0xB1));  // the 128-bit quarters
  __m128 x = _mm512_mask_extractf32x4_ps(_mm_setzero_ps(), 0xf, v, 0);
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)));
}

// Permute indices between 16 (x, y, z) triples (48 floats in three vectors) and three vectors of
// components: component c of point i is float 3 i + c.
struct TripleIndices {
  alignas(64) int32_t split_first[3][16];  // de-interleave: from (v0, v1),
  alignas(64) int32_t split_last[3][16];   //   then from (t, v2)
  alignas(64) int32_t join_first[3][16];   // interleave: from (x, y),
  alignas(64) int32_t join_last[3][16];    //   then from (t, z)
};

inline const TripleIndices& triple_indices() {
  static const TripleIndices indices = [] {
    TripleIndices t{};
    for (int c = 0; c < 3; ++c) {
      for (int i = 0; i < 16; ++i) {
        const int f = 3 * i + c;  // component c of point i in the 48 floats
        t.split_first[c][i] = f < 32 ? f : 0;
        t.split_last[c][i] = f >= 32 ? 16 + (f - 32) : i;
      }
    }
    for (int q = 0; q < 3; ++q) {  // output vector q holds floats 16 q .. 16 q + 15
      for (int i = 0; i < 16; ++i) {
        const int f = 16 * q + i, point = f / 3, c = f % 3;
        t.join_first[q][i] = c == 2 ? 0 : point + 16 * c;
        t.join_last[q][i] = c == 2 ? 16 + point : i;
      }
    }
    return t;
  }();
  return indices;
}

// three vectors of 48 interleaved floats (rows[q] holds floats 16 q ..) into x, y, z
__attribute__((target("avx512f"))) inline void split_triples(const TripleIndices& t,
                                                             const __m512 rows[3],
                                                             __m512 out[3]) {
  for (int c = 0; c < 3; ++c) {
    const __m512i first = _mm512_load_si512(t.split_first[c]);
    const __m512i last = _mm512_load_si512(t.split_last[c]);
    out[c] = _mm512_permutex2var_ps(_mm512_permutex2var_ps(rows[0], first, rows[1]), last,
                                    rows[2]);
  }
}

// x, y, z into three vectors of 48 interleaved floats
__attribute__((target("avx512f"))) inline void join_triples(const TripleIndices& t,
                                                            const __m512 in[3], __m512 rows[3]) {
  for (int q = 0; q < 3; ++q) {
    const __m512i first = _mm512_load_si512(t.join_first[q]);
    const __m512i last = _mm512_load_si512(t.join_last[q]);
    rows[q] = _mm512_permutex2var_ps(_mm512_permutex2var_ps(in[0], first, in[1]), last, in[2]);
  }
}

// n <= 16 triples from src into x, y, z (lanes past n zero)
__attribute__((target("avx512f"))) inline void load_triples(const TripleIndices& t,
                                                            const float* src, int64_t n,
                                                            __m512 out[3]) {
  __m512 rows[3];
  for (int q = 0; q < 3; ++q) {
    rows[q] = _mm512_maskz_loadu_ps(first_lanes(3 * n - 16 * q), src + 16 * q);
  }
  split_triples(t, rows, out);
}

// x, y, z of n <= 16 points as triples into dst
__attribute__((target("avx512f"))) inline void store_triples(const TripleIndices& t,
                                                             const __m512 in[3], int64_t n,
                                                             float* dst) {
  __m512 rows[3];
  join_triples(t, in, rows);
  for (int q = 0; q < 3; ++q) {
    _mm512_mask_storeu_ps(dst + 16 * q, first_lanes(3 * n - 16 * q), rows[q]);
  }
}

}  // namespace skinning
}  // namespace portrait_engine
#endif
