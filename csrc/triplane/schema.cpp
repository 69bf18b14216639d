// Schemas of the triplane_sample kernels (contract: docs/kernel_contract_triplane.md).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def(
      "triplane_sample_forward(Tensor planes, Tensor points, Tensor proj, bool trilinear, "
      "bool reduce_mean, bool nan_propagate) -> Tensor");
  m.def(
      "triplane_sample_backward(Tensor grad_out, Tensor planes, Tensor points, Tensor proj, "
      "bool trilinear, bool reduce_mean, bool nan_propagate, bool points_grad=True) -> "
      "(Tensor, Tensor)");
}
