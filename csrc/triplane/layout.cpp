// portrait_engine::planes_to_channels_last / planes_from_channels_last: the layout changes
// around the tri-plane kernels, which read planes as rows of channels (B, P, [D,] H, W, C)
// while models hold them as (B, P, C, [D,] H, W) (contract: docs/kernel_contract_triplane.md).
//
//   to:   (B, P, C, *spatial) -> (B, P, *spatial, C) contiguous (dim 2 moved last)
//   from: (B, P, *spatial, C) -> (B, P, C, *spatial) contiguous (the last dim moved to 2)
//
// Each is the other's gradient. Both are a batch of M = B * P matrix transposes (C x L <->
// L x C, L = the spatial size). CPU: a cache-blocked transpose, parallel over (matrix, block of
// columns), on the elements' bytes (any dtype of 2, 4 or 8 bytes); ATen's permuted copy ran
// these at 5-13 GB/s on the 2-core machine and was about a quarter of the native triplane_sample
// step at the quick size (two copies of 6.3 MB, 2.2 ms each, 2026-11-27). Other devices (and
// other element sizes): ATen's movedim + contiguous (CompositeExplicitAutograd).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace portrait_engine {
namespace triplane {
namespace {

// out[m, s, r] = in[m, r, s] for M matrices of R x S (both contiguous), in tiles of kTile x kTile
// elements: the tile's source rows and destination rows both stay in L1.
constexpr int64_t kTile = 32;

template <typename T>
void transpose_tile(const T* __restrict__ in, T* __restrict__ out, int64_t R, int64_t S,
                    int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
  for (int64_t s = s0; s < s1; ++s) {
    T* dst = out + s * R;
    for (int64_t r = r0; r < r1; ++r) dst[r] = in[r * S + s];
  }
}

template <typename T>
void transpose_batch(const T* in, T* out, int64_t M, int64_t R, int64_t S) {
  const int64_t r_tiles = (R + kTile - 1) / kTile, s_tiles = (S + kTile - 1) / kTile;
  const int64_t per_matrix = r_tiles * s_tiles;
  // about 64 tiles (64 KiB of floats) per task
  at::parallel_for(0, M * per_matrix, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m = t / per_matrix, k = t % per_matrix;
      // destination-major order: consecutive tiles of a task write consecutive output rows
      const int64_t st = k / r_tiles, rt = k % r_tiles;
      const int64_t r0 = rt * kTile, s0 = st * kTile;
      transpose_tile(in + m * R * S, out + m * R * S, R, S, r0, std::min(R, r0 + kTile), s0,
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
