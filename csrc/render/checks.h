// Host-side input checks of the fused renderer's kernels, shared by render_cpu.cpp and
// render_cuda.cu (which pass their KernelSide). The public op validates user input with clear
// errors; these guard the kernels' own contract against direct callers. CUDA-only limits
// (no float64, the decoder sizes its shared-memory layout holds) stay in render_cuda.cu.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "host.h"
#include "render/render.h"

namespace portrait_engine {
namespace render {

inline void check_color_activation(int64_t color_activation, const KernelSide& side) {
  TORCH_CHECK(color_activation >= kActSigmoid && color_activation <= kActLrelu, "render_rays (",
              side.tag, "): color_activation must be 0 (sigmoid), 1 (none) or 2 (lrelu), got ",
              color_activation);
}

// The forward's inputs (and the backward's copies of them); returns the call's sizes.
inline Sizes check_inputs(const at::Tensor& planes, const at::Tensor& points,
                          const at::Tensor& depths, const at::Tensor& proj, const at::Tensor& w1,
                          const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                          const at::Tensor& noise, bool trilinear, const KernelSide& side) {
  TORCH_CHECK(planes.dim() == 6, "render_rays (", side.tag, "): planes must be (B, P, D, H, W, C)");
  TORCH_CHECK(points.dim() == 4 && points.size(3) == 3, "render_rays (", side.tag,
              "): points must be (B, R, S, 3)");
  Sizes z;
  z.B = points.size(0);
  z.R = points.size(1);
  z.S = points.size(2);
  TORCH_CHECK(planes.size(0) == z.B, "render_rays (", side.tag, "): batch mismatch");
  TORCH_CHECK(z.S >= 2, "render_rays (", side.tag, "): at least two samples per ray");
  TORCH_CHECK(depths.dim() == 3 && depths.size(0) == z.B && depths.size(1) == z.R &&
                  depths.size(2) == z.S,
              "render_rays (", side.tag, "): depths must be (B, R, S)");
  TORCH_CHECK(trilinear || planes.size(2) == 1, "render_rays (", side.tag,
              "): a tri-plane has D = 1");
  const int64_t P = planes.size(1);
  TORCH_CHECK(proj.dim() == 3 && proj.size(0) == P && proj.size(1) == 3 && proj.size(2) == 3,
              "render_rays (", side.tag, "): proj must be (P, 3, 3)");
  const int64_t C = planes.size(5);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C, "render_rays (", side.tag,
              "): w1 must be (Hd, C)");
  const int64_t Hd = w1.size(0);
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == Hd, "render_rays (", side.tag,
              "): b1 must be (Hd,)");
  TORCH_CHECK(w2.dim() == 2 && w2.size(1) == Hd && w2.size(0) >= 2, "render_rays (", side.tag,
              "): w2 must be (1 + Co, Hd)");
  const int64_t O = w2.size(0);
  TORCH_CHECK(b2.dim() == 1 && b2.size(0) == O, "render_rays (", side.tag,
              "): b2 must be (1 + Co,)");
  TORCH_CHECK(noise.numel() == 0 || (noise.dim() == 3 && noise.size(0) == z.B &&
                                     noise.size(1) == z.R && noise.size(2) == z.S),
              "render_rays (", side.tag, "): noise must be (B, R, S) or empty");
  const auto acc = acc_dtype(planes);
  for (const at::Tensor* t : {&points, &depths, &proj, &w1, &b1, &w2, &b2, &noise}) {
    TORCH_CHECK(t->scalar_type() == acc, "render_rays (", side.tag,
                "): points, depths, proj, weights and noise must be float32 (float64 with "
                "float64 planes)");
    TORCH_CHECK(t->is_contiguous() && on_side(*t, planes, side), "render_rays (", side.tag,
                "): inputs must be contiguous, on the planes' ", side.tag, " device");
  }
  TORCH_CHECK(planes.is_contiguous() && on_side(planes, planes, side), "render_rays (",
              side.tag, "): planes must be a contiguous ", side.tag, " tensor");
  z.C = static_cast<int>(C);
  z.Hd = static_cast<int>(Hd);
  z.O = static_cast<int>(O);
  z.Co = O - 1;
  z.d.P = P;
  z.d.geo = triplane::Geometry{planes.size(2), planes.size(3), planes.size(4), C};
  z.d.trilinear = trilinear;
  z.d.hidden = z.Hd;
  z.d.out = z.O;
  return z;
}

// The backward's output gradients and its copies of the forward's outputs: contiguous, in the
// accumulation dtype, of the forward outputs' shapes, on the planes' device.
inline void check_backward_tensors(const at::Tensor& grad_features, const at::Tensor& grad_depth,
                                   const at::Tensor& grad_weights, const at::Tensor& features,
                                   const at::Tensor& depth_raw, const at::Tensor& weights,
                                   const at::Tensor& planes, const Sizes& z, bool full_weights,
                                   const KernelSide& side) {
  const int64_t n_weights = full_weights ? z.S - 1 : 1;
  const auto acc = acc_dtype(planes);
  auto check_shaped = [&](const at::Tensor& t, std::vector<int64_t> shape, const char* name) {
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape) && t.scalar_type() == acc &&
                    t.is_contiguous() && on_side(t, planes, side),
                "render_rays (", side.tag, "): ", name,
                " must be contiguous, of the forward output's shape, dtype and device");
  };
  check_shaped(grad_features, {z.B, z.R, z.Co}, "grad_features");
  check_shaped(grad_depth, {z.B, z.R, 1}, "grad_depth_raw");
  check_shaped(grad_weights, {z.B, z.R, n_weights}, "grad_weights");
  check_shaped(features, {z.B, z.R, z.Co}, "features");
  check_shaped(depth_raw, {z.B, z.R, 1}, "depth_raw");
  check_shaped(weights, {z.B, z.R, n_weights}, "weights");
}

}  // namespace render
}  // namespace portrait_engine
