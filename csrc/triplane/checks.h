// Host-side input checks of the tri-plane kernels, shared by triplane_cpu.cpp and
// triplane_cuda.cu (which pass their KernelSide). The public op validates user input with
// clear errors; these guard the kernels' own contract against direct callers.
#pragma once

#include <ATen/ATen.h>

#include "host.h"
#include "triplane/triplane.h"

namespace portrait_engine {
namespace triplane {

struct Sizes {
  int64_t B, P, N;
  Geometry geo;
};

inline Sizes check_inputs(const at::Tensor& planes, const at::Tensor& points,
                          const at::Tensor& proj, const KernelSide& side) {
  TORCH_CHECK(planes.dim() == 6, "triplane (", side.tag, "): planes must be (B, P, D, H, W, C)");
  TORCH_CHECK(points.dim() == 3 && points.size(2) == 3, "triplane (", side.tag,
              "): points must be (B, N, 3)");
  TORCH_CHECK(proj.dim() == 3 && proj.size(0) == planes.size(1) && proj.size(1) == 3 &&
                  proj.size(2) == 3,
              "triplane (", side.tag, "): proj must be (P, 3, 3)");
  TORCH_CHECK(planes.size(0) == points.size(0), "triplane (", side.tag, "): batch mismatch");
  TORCH_CHECK(planes.is_contiguous() && points.is_contiguous() && proj.is_contiguous(),
              "triplane (", side.tag, "): inputs must be contiguous");
  TORCH_CHECK(points.scalar_type() == planes.scalar_type(), "triplane (", side.tag,
              "): dtype mismatch");
  TORCH_CHECK(proj.scalar_type() == acc_dtype(planes), "triplane (", side.tag,
              "): proj must be in the accumulation dtype");
  TORCH_CHECK(on_side(planes, planes, side) && on_side(points, planes, side) &&
                  on_side(proj, planes, side),
              "triplane (", side.tag, "): tensors must be on one ", side.tag, " device");
  Sizes z;
  z.B = planes.size(0);
  z.P = planes.size(1);
  z.N = points.size(1);
  z.geo = Geometry{planes.size(2), planes.size(3), planes.size(4), planes.size(5)};
  return z;
}

// grad_out: the forward output's shape, (B, N, C) (reduce_mean) or (B, P, N, C).
inline void check_grad_out(const at::Tensor& grad_out, const at::Tensor& planes, const Sizes& z,
                           bool reduce_mean, const KernelSide& side) {
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == planes.scalar_type() &&
                  on_side(grad_out, planes, side),
              "triplane (", side.tag, "): grad_out must be contiguous, in the input dtype and device");
  if (reduce_mean) {
    TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == z.B && grad_out.size(1) == z.N &&
                    grad_out.size(2) == z.geo.C,
                "triplane (", side.tag, "): grad_out must be (B, N, C)");
  } else {
    TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == z.B && grad_out.size(1) == z.P &&
                    grad_out.size(2) == z.N && grad_out.size(3) == z.geo.C,
                "triplane (", side.tag, "): grad_out must be (B, P, N, C)");
  }
}

}  // namespace triplane
}  // namespace portrait_engine
