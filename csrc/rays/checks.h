// Host-side input checks of the ray kernels, shared by rays_cpu.cpp and rays_cuda.cu (which
// pass their KernelSide). The public ops validate user input with clear errors; these guard
// the kernels' own contract (shapes, contiguity, dtypes, device) against direct callers.
#pragma once

#include <ATen/ATen.h>

#include "host.h"

namespace portrait_engine {
namespace rays {

struct MarchSizes {
  int64_t B, R, S, C;
};

inline MarchSizes check_march(const at::Tensor& colors, const at::Tensor& densities,
                              const at::Tensor& depths, const at::Tensor& depth_range,
                              const KernelSide& side) {
  TORCH_CHECK(colors.dim() == 4, "ray_march (", side.tag, "): colors must be (B, R, S, C)");
  const MarchSizes z{colors.size(0), colors.size(1), colors.size(2), colors.size(3)};
  TORCH_CHECK(z.S >= 1, "ray_march (", side.tag, "): at least one sample per ray");
  TORCH_CHECK(colors.is_contiguous() && on_side(colors, colors, side), "ray_march (", side.tag,
              "): colors must be a contiguous ", side.tag, " tensor");
  for (const at::Tensor* t : {&densities, &depths}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == z.B && t->size(1) == z.R && t->size(2) == z.S &&
                    t->size(3) == 1,
                "ray_march (", side.tag, "): densities and depths must be (B, R, S, 1)");
    TORCH_CHECK(t->scalar_type() == colors.scalar_type(), "ray_march (", side.tag,
                "): dtype mismatch");
    TORCH_CHECK(t->is_contiguous() && on_side(*t, colors, side), "ray_march (", side.tag,
                "): inputs must be contiguous tensors on the colors' device");
  }
  TORCH_CHECK(depth_range.numel() == 2 && depth_range.is_contiguous() &&
                  depth_range.scalar_type() == acc_dtype(colors) &&
                  on_side(depth_range, colors, side),
              "ray_march (", side.tag,
              "): depth_range must be a (2,) tensor in the accumulation dtype");
  return z;
}

// The backward's gradients and the forward's totals. grad_depth and grad_weights may be
// undefined (None): no gradient reached that output, and the kernels skip its terms.
inline void check_march_backward(const at::Tensor& grad_rgb,
                                 const c10::optional<at::Tensor>& grad_depth,
                                 const c10::optional<at::Tensor>& grad_weights,
                                 const at::Tensor& totals, const at::Tensor& colors,
                                 const MarchSizes& z, const KernelSide& side) {
  const auto dtype = colors.scalar_type();
  TORCH_CHECK(grad_rgb.sizes() == at::IntArrayRef({z.B, z.R, z.C}) && grad_rgb.is_contiguous() &&
                  grad_rgb.scalar_type() == dtype && on_side(grad_rgb, colors, side),
              "ray_march (", side.tag, "): grad_rgb must be a contiguous (B, R, C) tensor");
  if (grad_depth.has_value() && grad_depth->defined()) {
    TORCH_CHECK(grad_depth->sizes() == at::IntArrayRef({z.B, z.R, 1}) &&
                    grad_depth->is_contiguous() && grad_depth->scalar_type() == dtype &&
                    on_side(*grad_depth, colors, side),
                "ray_march (", side.tag, "): grad_depth must be a contiguous (B, R, 1) tensor");
  }
  if (grad_weights.has_value() && grad_weights->defined()) {
    TORCH_CHECK(grad_weights->sizes() == at::IntArrayRef({z.B, z.R, z.S - 1, 1}) &&
                    grad_weights->is_contiguous() && grad_weights->scalar_type() == dtype &&
                    on_side(*grad_weights, colors, side),
                "ray_march (", side.tag,
                "): grad_weights must be a contiguous (B, R, S-1, 1) tensor");
  }
  TORCH_CHECK(totals.sizes() == at::IntArrayRef({z.B, z.R, z.C + 2}) && totals.is_contiguous() &&
                  totals.scalar_type() == acc_dtype(colors) && on_side(totals, colors, side),
              "ray_march (", side.tag, "): totals must be the forward's (B, R, C+2) output");
}

// The data pointer of an optional gradient, or nullptr where none was given.
template <typename scalar_t>
const scalar_t* optional_data(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<scalar_t>() : nullptr;
}

inline void check_ray_sample(const at::Tensor& cam2world, const at::Tensor& intrinsics,
                             int64_t resolution, const KernelSide& side) {
  TORCH_CHECK(cam2world.dim() == 3 && cam2world.size(1) == 4 && cam2world.size(2) == 4 &&
                  cam2world.is_contiguous() && on_side(cam2world, cam2world, side),
              "ray_sample (", side.tag, "): cam2world must be a contiguous (B, 4, 4) ", side.tag,
              " tensor");
  TORCH_CHECK(intrinsics.dim() == 3 && intrinsics.size(0) == cam2world.size(0) &&
                  intrinsics.size(1) == 3 && intrinsics.size(2) == 3 &&
                  intrinsics.is_contiguous() && on_side(intrinsics, cam2world, side) &&
                  intrinsics.scalar_type() == cam2world.scalar_type(),
              "ray_sample (", side.tag, "): intrinsics must be a contiguous (B, 3, 3) tensor");
  TORCH_CHECK(resolution > 0, "ray_sample (", side.tag, "): resolution must be positive");
}

inline void check_ray_sample_grads(const at::Tensor& grad_origins,
                                   const at::Tensor& grad_directions, const at::Tensor& cam2world,
                                   int64_t resolution, const KernelSide& side) {
  for (const at::Tensor* g : {&grad_origins, &grad_directions}) {
    TORCH_CHECK(g->dim() == 3 && g->size(0) == cam2world.size(0) &&
                    g->size(1) == resolution * resolution && g->size(2) == 3 &&
                    g->is_contiguous() && on_side(*g, cam2world, side) &&
                    g->scalar_type() == cam2world.scalar_type(),
                "ray_sample backward (", side.tag,
                "): grad_origins and grad_directions must be contiguous (B, resolution^2, 3) "
                "tensors of cam2world's dtype and device");
  }
}

}  // namespace rays
}  // namespace portrait_engine
