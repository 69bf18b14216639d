// Schemas of the skinning kernels (contract: docs/kernel_contract_skinning.md).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def(
      "forward_kinematics_forward(Tensor pose, Tensor joints, Tensor parents, bool pose2rot) -> "
      "(Tensor, Tensor, Tensor)");
  m.def(
      "forward_kinematics_backward(Tensor grad_rot_mats, Tensor grad_posed_joints, "
      "Tensor grad_rel_transforms, Tensor pose, Tensor joints, Tensor parents, bool pose2rot) -> "
      "(Tensor, Tensor)");
  m.def(
      "skin_points_forward(Tensor points, Tensor weights, Tensor transforms, bool inverse) -> "
      "Tensor");
  m.def(
      "skin_points_backward(Tensor grad_out, Tensor points, Tensor weights, Tensor transforms, "
      "bool inverse) -> (Tensor, Tensor, Tensor)");
  m.def("blend_shapes_forward(Tensor base, Tensor coeffs, Tensor dirs) -> Tensor");
  m.def(
      "blend_shapes_backward(Tensor grad_out, Tensor coeffs, Tensor dirs, bool dirs_grad) -> "
      "(Tensor, Tensor)");
  m.def(
      "shape_blend_forward(Tensor v_template, Tensor betas, Tensor shapedirs, Tensor J_regressor) "
      "-> (Tensor, Tensor)");
  m.def(
      "shape_blend_backward(Tensor grad_v_shaped, Tensor grad_regressed, Tensor v_template, "
      "Tensor betas, Tensor shapedirs, Tensor J_regressor) -> (Tensor, Tensor, Tensor, Tensor)");
}
