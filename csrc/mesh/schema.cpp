// Schemas of the mesh_deform kernels (contract: docs/kernel_contract_skinning.md).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def(
      "mesh_deform_forward(Tensor points, Tensor posed_vertices, Tensor canonical_vertices, "
      "Tensor faces, float thickness) -> (Tensor, Tensor)");
  m.def(
      "mesh_deform_backward(Tensor grad_out, Tensor points, Tensor posed_vertices, "
      "Tensor canonical_vertices, Tensor faces, Tensor face_index) -> (Tensor, Tensor, Tensor)");
}
