// portrait_engine::planes_to_channels_last / planes_from_channels_last: the layout changes
// around the tri-plane kernels, which read planes as rows of channels (B, P, [D,] H, W, C)
// while models hold them as (B, P, C, [D,] H, W) (contract: docs/kernel_contract_triplane.md).
//
//   to:   (B, P, C, *spatial) -> (B, P, *spatial, C) contiguous (dim 2 moved last)
//   from: (B, P, *spatial, C) -> (B, P, C, *spatial) contiguous (the last dim moved to 2)
//
// Each is the other's gradient. Both are a batch of M = B * P matrix transposes (C x L <->
// L x C, L = the spatial size). CPU: a cache-blocked transpose, parallel over (matrix, tile),
// on the elements' bytes (any dtype of 2, 4 or 8 bytes); ATen's permuted copy ran
// these at 5-13 GB/s on the 2-core machine and was about a quarter of the native triplane_sample
// step at the quick size (two copies of 6.3 MB, 2.2 ms each, 2026-11-27). Other devices (and
// other element sizes): ATen's movedim + contiguous (CompositeExplicitAutograd).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "cpu_math.h"

#if PE_HAVE_ISA_CLONES
#include <immintrin.h>
#endif

namespace portrait_engine {
namespace triplane {
namespace {

// out[m, s, r] = in[m, r, s] for M matrices of R x S (both contiguous), in tiles of kTile x kTile
// elements (the unit of parallel work); transpose_tile moves a tile (or its edges) element by
// element, transpose_tile_blocks below in 8 x 8 blocks.
constexpr int64_t kTile = 32;

template <typename T>
void transpose_tile(const T* __restrict__ in, T* __restrict__ out, int64_t R, int64_t S,
                    int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
  for (int64_t s = s0; s < s1; ++s) {
    T* dst = out + s * R;
    for (int64_t r = r0; r < r1; ++r) dst[r] = in[r * S + s];
  }
}

// The tile as 8 x 8 blocks (since 2026-11-27, evening), band by band along the side whose rows
// are far apart, then its edges by the element loop. transpose_tile alone reads a column of the
// tile per output row: to channels-last, the source row stride is the spatial size (16 KiB to
// 256 KiB, multiples of 4 KiB), so the tile's 32 source rows all fall in one L1 set and every
// element read missed L1 (planes_to_channels_last ran at 4 GB/s on one core of a Zen 4,
// 8.6 GB/s on two, where a copy runs at 50-80 GB/s). In bands, each line on the far-apart
// side is read (to channels-last) or written (from) whole by consecutive blocks. block(in, S,
// out, R) moves one 8 x 8 block.
template <typename T, typename Block>
__attribute__((always_inline)) inline void transpose_tile_blocks(
    const T* __restrict__ in, T* __restrict__ out, int64_t R, int64_t S, int64_t r0,
    int64_t r1, int64_t s0, int64_t s1, Block block) {
  const int64_t r8 = r0 + (r1 - r0) / 8 * 8, s8 = s0 + (s1 - s0) / 8 * 8;
  if (S >= R) {  // the source rows are far apart: a band of 8 source rows at a time
    for (int64_t r = r0; r < r8; r += 8) {
      for (int64_t s = s0; s < s8; s += 8) block(in + r * S + s, S, out + s * R + r, R);
    }
  } else {  // the destination rows are: a band of 8 destination rows at a time
    for (int64_t s = s0; s < s8; s += 8) {
      for (int64_t r = r0; r < r8; r += 8) block(in + r * S + s, S, out + s * R + r, R);
    }
  }
  transpose_tile(in, out, R, S, r0, r8, s8, s1);  // the last s1 - s8 < 8 columns
  transpose_tile(in, out, R, S, r8, r1, s0, s1);  // the last r1 - r8 < 8 rows
}

// Any element size, any CPU: the block as an element loop where the source rows are far apart
// (to channels-last); the other way, transpose_tile's loop already writes whole destination
// lines and reads its column from the tile's few contiguous source lines (element blocks were
// slower there: 85 -> 163 us at 3 x 32 x 64^2, one Zen 4, 2 threads).
template <typename T>
void transpose_tile_blocked(const T* __restrict__ in, T* __restrict__ out, int64_t R, int64_t S,
                            int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
  if (S < R) {
    transpose_tile(in, out, R, S, r0, r1, s0, s1);
    return;
  }
  transpose_tile_blocks(in, out, R, S, r0, r1, s0, s1,
                        [](const T* i, int64_t ld_i, T* o, int64_t ld_o) {
                          for (int a = 0; a < 8; ++a) {
                            for (int b = 0; b < 8; ++b) o[b * ld_o + a] = i[a * ld_i + b];
                          }
                        });
}

#if PE_HAVE_ISA_CLONES
// 4-byte elements with AVX2: the block read as 8 row pieces of 32 bytes and written as 8 after
// an in-register transpose (the moves copy bits: no arithmetic touches the values).
struct Block8x8Avx2 {
  __attribute__((target("avx2"))) void operator()(const uint32_t* in_bits, int64_t S,
                                                  uint32_t* out_bits, int64_t R) const {
    const float* in = reinterpret_cast<const float*>(in_bits);
    float* out = reinterpret_cast<float*>(out_bits);
    __m256 row[8];
    for (int i = 0; i < 8; ++i) row[i] = _mm256_loadu_ps(in + i * S);
    const __m256 t0 = _mm256_unpacklo_ps(row[0], row[1]);
    const __m256 t1 = _mm256_unpackhi_ps(row[0], row[1]);
    const __m256 t2 = _mm256_unpacklo_ps(row[2], row[3]);
    const __m256 t3 = _mm256_unpackhi_ps(row[2], row[3]);
    const __m256 t4 = _mm256_unpacklo_ps(row[4], row[5]);
    const __m256 t5 = _mm256_unpackhi_ps(row[4], row[5]);
    const __m256 t6 = _mm256_unpacklo_ps(row[6], row[7]);
    const __m256 t7 = _mm256_unpackhi_ps(row[6], row[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(out + 0 * R, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(out + 1 * R, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(out + 2 * R, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(out + 3 * R, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(out + 4 * R, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(out + 5 * R, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(out + 6 * R, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(out + 7 * R, _mm256_permute2f128_ps(u3, u7, 0x31));
  }
};

__attribute__((target("avx2"))) void transpose_tile_avx2(const uint32_t* __restrict__ in,
                                                         uint32_t* __restrict__ out, int64_t R,
                                                         int64_t S, int64_t r0, int64_t r1,
                                                         int64_t s0, int64_t s1) {
  transpose_tile_blocks(in, out, R, S, r0, r1, s0, s1, Block8x8Avx2{});
}
#endif

template <typename T>
void transpose_batch(const T* in, T* out, int64_t M, int64_t R, int64_t S) {
  const int64_t r_tiles = (R + kTile - 1) / kTile, s_tiles = (S + kTile - 1) / kTile;
  const int64_t per_matrix = r_tiles * s_tiles;
  using TileFn = void (*)(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);
  TileFn tile = &transpose_tile_blocked<T>;
#if PE_HAVE_ISA_CLONES
  if constexpr (sizeof(T) == 4) {
    if (cpu_math::cpu_isa() != cpu_math::Isa::kBaseline) tile = &transpose_tile_avx2;
  }
#endif
  // about 64 tiles (64 KiB of floats) per task
  at::parallel_for(0, M * per_matrix, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m = t / per_matrix, k = t % per_matrix;
      // destination-major order: consecutive tiles of a task write consecutive output rows
      const int64_t st = k / r_tiles, rt = k % r_tiles;
      const int64_t r0 = rt * kTile, s0 = st * kTile;
      tile(in + m * R * S, out + m * R * S, R, S, r0, std::min(R, r0 + kTile), s0,
           std::min(S, s0 + kTile));
    }
  });
}

// (M, R, S) -> (M, S, R) of `x` viewed as M = size(0) * size(1) matrices.
at::Tensor transpose_cpu(const at::Tensor& input, int64_t R, int64_t S, at::IntArrayRef sizes) {
  const at::Tensor x = input.contiguous();
  at::Tensor out = at::empty(sizes, x.options());
  const int64_t M = x.size(0) * x.size(1);
  if (out.numel() == 0) return out;
  switch (x.element_size()) {
    case 2:
      transpose_batch(static_cast<const uint16_t*>(x.const_data_ptr()),
                      static_cast<uint16_t*>(out.mutable_data_ptr()), M, R, S);
      break;
    case 4:
      transpose_batch(static_cast<const uint32_t*>(x.const_data_ptr()),
                      static_cast<uint32_t*>(out.mutable_data_ptr()), M, R, S);
      break;
    case 8:
      transpose_batch(static_cast<const uint64_t*>(x.const_data_ptr()),
                      static_cast<uint64_t*>(out.mutable_data_ptr()), M, R, S);
      break;
    default:
      out.copy_(x.view({x.size(0), x.size(1), R, S}).transpose(2, 3).reshape(sizes));
  }
  return out;
}

void check_rank(const at::Tensor& planes, const char* op) {
  TORCH_CHECK(planes.dim() >= 3, op, ": planes must have at least 3 dimensions (B, P, ...), got ",
              planes.dim());
}

int64_t spatial_size(at::IntArrayRef sizes, int64_t skip) {
  int64_t L = 1;
  for (int64_t d = 2; d < static_cast<int64_t>(sizes.size()); ++d) {
    if (d != skip) L *= sizes[d];
  }
  return L;
}

at::Tensor to_channels_last_cpu(const at::Tensor& planes) {
  check_rank(planes, "planes_to_channels_last");
  const int64_t C = planes.size(2), L = spatial_size(planes.sizes(), 2);
  return transpose_cpu(planes, C, L, planes.movedim(2, -1).sizes());
}

at::Tensor from_channels_last_cpu(const at::Tensor& planes) {
  check_rank(planes, "planes_from_channels_last");
  const int64_t last = planes.dim() - 1;
  const int64_t C = planes.size(last), L = spatial_size(planes.sizes(), last);
  return transpose_cpu(planes, L, C, planes.movedim(-1, 2).sizes());
}

at::Tensor to_channels_last_any(const at::Tensor& planes) {
  check_rank(planes, "planes_to_channels_last");
  return planes.movedim(2, -1).contiguous();
}

at::Tensor from_channels_last_any(const at::Tensor& planes) {
  check_rank(planes, "planes_from_channels_last");
  return planes.movedim(-1, 2).contiguous();
}

}  // namespace
}  // namespace triplane
}  // namespace portrait_engine

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def("planes_to_channels_last(Tensor planes) -> Tensor");
  m.def("planes_from_channels_last(Tensor planes) -> Tensor");
}

TORCH_LIBRARY_IMPL(portrait_engine, CompositeExplicitAutograd, m) {
  m.impl("planes_to_channels_last", &portrait_engine::triplane::to_channels_last_any);
  m.impl("planes_from_channels_last", &portrait_engine::triplane::from_channels_last_any);
}

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("planes_to_channels_last", &portrait_engine::triplane::to_channels_last_cpu);
  m.impl("planes_from_channels_last", &portrait_engine::triplane::from_channels_last_cpu);
}
