// Schemas of the fused neural renderer's kernels (contract: docs/render_rays.md).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def(
      "render_rays_forward(Tensor planes, Tensor points, Tensor depths, Tensor proj, Tensor w1, "
      "Tensor b1, Tensor w2, Tensor b2, Tensor noise, bool trilinear, bool use_crop, "
      "float crop_limit, bool white_back, bool scale_rgb, int color_activation, bool full_weights) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "render_rays_backward(Tensor grad_features, Tensor grad_depth_raw, Tensor grad_weights, "
      "Tensor planes, Tensor points, Tensor depths, Tensor proj, Tensor w1, Tensor b1, "
      "Tensor w2, Tensor b2, Tensor noise, Tensor features, Tensor depth_raw, Tensor weights, "
      "bool trilinear, bool use_crop, float crop_limit, bool white_back, bool scale_rgb, "
      "int color_activation, bool full_weights, bool deterministic) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
