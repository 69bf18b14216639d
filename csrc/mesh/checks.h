// Host-side input checks of the mesh_deform kernels, shared by mesh_deform_cpu.cpp and
// mesh_deform_cuda.cu (which pass their KernelSide). The public op validates user input with
// clear errors; these guard the kernels' own contract against direct callers.
#pragma once

#include <ATen/ATen.h>

#include "host.h"

namespace portrait_engine {
namespace mesh {

inline void check_inputs(const at::Tensor& points, const at::Tensor& posed,
                         const at::Tensor& canonical, const at::Tensor& faces,
                         const KernelSide& side) {
  TORCH_CHECK(points.dim() == 3 && points.size(2) == 3 && points.is_contiguous(),
              "mesh_deform (", side.tag, "): points must be a contiguous (B, N, 3) tensor");
  TORCH_CHECK(posed.dim() == 3 && posed.size(0) == points.size(0) && posed.size(2) == 3 &&
                  posed.is_contiguous(),
              "mesh_deform (", side.tag,
              "): posed_vertices must be a contiguous (B, V, 3) tensor");
  TORCH_CHECK(canonical.sizes() == posed.sizes() && canonical.is_contiguous(), "mesh_deform (",
              side.tag, "): canonical_vertices must be contiguous, shaped as posed_vertices");
  TORCH_CHECK(faces.dim() == 2 && faces.size(1) == 3 && faces.scalar_type() == at::kLong &&
                  faces.is_contiguous(),
              "mesh_deform (", side.tag, "): faces must be a contiguous (F, 3) int64 tensor");
  TORCH_CHECK(posed.scalar_type() == points.scalar_type() &&
                  canonical.scalar_type() == points.scalar_type(),
              "mesh_deform (", side.tag, "): dtype mismatch");
  TORCH_CHECK(on_side(points, points, side) && on_side(posed, points, side) &&
                  on_side(canonical, points, side) && on_side(faces, points, side),
              "mesh_deform (", side.tag, "): tensors must be on one ", side.tag, " device");
}

inline void check_thickness(double thickness, const KernelSide& side) {
  TORCH_CHECK(thickness > 0, "mesh_deform (", side.tag, "): thickness must be positive");
}

inline void check_backward(const at::Tensor& grad_out, const at::Tensor& face_index,
                           const at::Tensor& points, const KernelSide& side) {
  TORCH_CHECK(grad_out.sizes() == points.sizes() && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == points.scalar_type() &&
                  on_side(grad_out, points, side),
              "mesh_deform (", side.tag, "): grad_out must be a contiguous (B, N, 3) tensor");
  TORCH_CHECK(face_index.dim() == 2 && face_index.size(0) == points.size(0) &&
                  face_index.size(1) == points.size(1) &&
                  face_index.scalar_type() == at::kLong && face_index.is_contiguous() &&
                  on_side(face_index, points, side),
              "mesh_deform (", side.tag, "): face_index must be the forward's (B, N) int64 output");
}

}  // namespace mesh
}  // namespace portrait_engine
