// Schemas of the ray generation and compositing kernels (contract: docs/kernel_contract_rays.md).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def(
      "ray_march_forward(Tensor colors, Tensor densities, Tensor depths, Tensor depth_range, "
      "bool white_back, bool scale_rgb) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "ray_march_backward(Tensor grad_rgb, Tensor? grad_depth, Tensor? grad_weights, "
      "Tensor colors, Tensor densities, Tensor depths, Tensor depth_range, Tensor totals, "
      "bool white_back, bool scale_rgb) -> (Tensor, Tensor)");
  m.def("ray_sample_forward(Tensor cam2world, Tensor intrinsics, int resolution) -> (Tensor, Tensor)");
  m.def(
      "ray_sample_backward(Tensor grad_origins, Tensor grad_directions, Tensor cam2world, "
      "Tensor intrinsics, int resolution) -> (Tensor, Tensor)");
}
