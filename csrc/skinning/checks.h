// Host-side input checks of the skinning kernels, shared by skinning_cpu.cpp and
// skinning_cuda.cu (which pass their KernelSide). The public ops validate user input with
// clear errors; these guard the kernels' own contract against direct callers.
#pragma once

#include <ATen/ATen.h>

#include "host.h"

namespace portrait_engine {
namespace skinning {

inline void check_fk(const at::Tensor& pose, const at::Tensor& joints, const at::Tensor& parents,
                     bool pose2rot, const KernelSide& side) {
  TORCH_CHECK(joints.dim() == 3 && joints.size(2) == 3 && joints.is_contiguous(),
              "forward_kinematics (", side.tag, "): joints must be a contiguous (B, J, 3) tensor");
  const int64_t B = joints.size(0), J = joints.size(1);
  TORCH_CHECK(pose.is_contiguous() && pose.scalar_type() == joints.scalar_type() &&
                  pose.dim() >= 2 && pose.size(0) == B && pose.size(1) == J &&
                  (pose2rot ? (pose.dim() == 3 && pose.size(2) == 3)
                            : (pose.dim() == 4 && pose.size(2) == 3 && pose.size(3) == 3)),
              "forward_kinematics (", side.tag,
              "): pose must be a contiguous (B, J, 3) (pose2rot) or (B, J, 3, 3) tensor in the "
              "joints' dtype");
  TORCH_CHECK(parents.dim() == 1 && parents.size(0) == J && parents.scalar_type() == at::kLong &&
                  parents.is_contiguous(),
              "forward_kinematics (", side.tag, "): parents must be a contiguous (J,) int64 tensor");
  TORCH_CHECK(on_side(joints, joints, side) && on_side(pose, joints, side) &&
                  on_side(parents, joints, side),
              "forward_kinematics (", side.tag, "): tensors must be on one ", side.tag, " device");
}

// grad_rot (B, J, 3, 3), or (B, J - 1, 3, 3) for joints 1..J-1 (the root's gradient zero);
// grad_pj (B, J, 3), or empty for zeros. Returns the first joint grad_rot holds (0 or 1).
inline int64_t check_fk_grads(const at::Tensor& grad_rot, const at::Tensor& grad_pj,
                              const at::Tensor& grad_rel, const at::Tensor& joints,
                              const KernelSide& side) {
  const int64_t B = joints.size(0), J = joints.size(1);
  const int64_t rot_first = J > 0 && grad_rot.dim() == 4 && grad_rot.size(1) == J - 1 ? 1 : 0;
  TORCH_CHECK(grad_rot.sizes() == at::IntArrayRef({B, J - rot_first, 3, 3}) &&
                  grad_rot.is_contiguous() &&
                  ((grad_pj.dim() == 1 && grad_pj.size(0) == 0) ||
                   grad_pj.sizes() == joints.sizes()) &&
                  grad_pj.is_contiguous() &&
                  grad_rel.sizes() == at::IntArrayRef({B, J, 4, 4}) && grad_rel.is_contiguous(),
              "forward_kinematics (", side.tag,
              "): gradients must be contiguous and shaped as the outputs (grad_rot_mats may "
              "leave out the root joint, grad_posed_joints may be empty for zeros)");
  TORCH_CHECK(grad_rot.scalar_type() == joints.scalar_type() &&
                  grad_pj.scalar_type() == joints.scalar_type() &&
                  grad_rel.scalar_type() == joints.scalar_type() &&
                  on_side(grad_rot, joints, side) && on_side(grad_pj, joints, side) &&
                  on_side(grad_rel, joints, side),
              "forward_kinematics (", side.tag,
              "): gradients must be in the joints' dtype, on their device");
  return rot_first;
}

inline void check_skin(const at::Tensor& points, const at::Tensor& weights,
                       const at::Tensor& transforms, const KernelSide& side) {
  TORCH_CHECK(points.dim() == 3 && points.size(2) == 3 && points.is_contiguous(),
              "skin_points (", side.tag, "): points must be a contiguous (B, N, 3) tensor");
  const int64_t B = points.size(0), N = points.size(1);
  TORCH_CHECK(transforms.dim() == 4 && transforms.size(0) == B && transforms.size(2) == 4 &&
                  transforms.size(3) == 4 && transforms.is_contiguous(),
              "skin_points (", side.tag, "): transforms must be a contiguous (B, J, 4, 4) tensor");
  TORCH_CHECK(weights.dim() == 3 && (weights.size(0) == 1 || weights.size(0) == B) &&
                  weights.size(1) == N && weights.size(2) == transforms.size(1) &&
                  weights.is_contiguous(),
              "skin_points (", side.tag, "): weights must be a contiguous (1 or B, N, J) tensor");
  TORCH_CHECK(weights.scalar_type() == points.scalar_type() &&
                  transforms.scalar_type() == points.scalar_type(),
              "skin_points (", side.tag, "): dtype mismatch");
  TORCH_CHECK(on_side(points, points, side) && on_side(weights, points, side) &&
                  on_side(transforms, points, side),
              "skin_points (", side.tag, "): tensors must be on one ", side.tag, " device");
}

inline void check_skin_grad(const at::Tensor& grad_out, const at::Tensor& points,
                            const KernelSide& side) {
  TORCH_CHECK(grad_out.sizes() == points.sizes() && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == points.scalar_type() &&
                  on_side(grad_out, points, side),
              "skin_points (", side.tag, "): grad_out must be a contiguous (B, N, 3) tensor");
}

inline void check_blend(const at::Tensor& base, const at::Tensor& coeffs, const at::Tensor& dirs,
                        const KernelSide& side) {
  TORCH_CHECK(coeffs.dim() == 2 && coeffs.is_contiguous() && dirs.dim() == 2 &&
                  dirs.is_contiguous() && dirs.size(0) == coeffs.size(1),
              "blend_shapes (", side.tag,
              "): coeffs must be a contiguous (B, F) and dirs a contiguous (F, C) tensor");
  TORCH_CHECK(base.dim() == 2 && base.is_contiguous() &&
                  (base.size(0) == 1 || base.size(0) == coeffs.size(0)) &&
                  base.size(1) == dirs.size(1),
              "blend_shapes (", side.tag,
              "): base (gradient) must be a contiguous (1 or B, C) tensor");
  TORCH_CHECK(base.scalar_type() == coeffs.scalar_type() &&
                  dirs.scalar_type() == coeffs.scalar_type() &&
                  at::isFloatingType(coeffs.scalar_type()),
              "blend_shapes (", side.tag, "): dtype mismatch");
  TORCH_CHECK(on_side(coeffs, coeffs, side) && on_side(dirs, coeffs, side) &&
                  on_side(base, coeffs, side),
              "blend_shapes (", side.tag, "): tensors must be on one ", side.tag, " device");
}

// The backward's grad_out: (B, C), one row per coeffs row (never broadcast).
inline void check_blend_grad(const at::Tensor& grad_out, const at::Tensor& coeffs,
                             const at::Tensor& dirs, const KernelSide& side) {
  check_blend(grad_out, coeffs, dirs, side);
  TORCH_CHECK(grad_out.size(0) == coeffs.size(0), "blend_shapes (", side.tag,
              "): grad_out must be a contiguous (B, C) tensor");
}

inline void check_shape_blend(const at::Tensor& v_template, const at::Tensor& betas,
                              const at::Tensor& shapedirs, const at::Tensor& regressor,
                              const KernelSide& side) {
  TORCH_CHECK(v_template.dim() == 2 && v_template.size(1) == 3 && v_template.is_contiguous(),
              "shape_blend (", side.tag, "): v_template must be a contiguous (V, 3) tensor");
  const int64_t V = v_template.size(0);
  TORCH_CHECK(betas.dim() == 2 && betas.is_contiguous(), "shape_blend (", side.tag,
              "): betas must be a contiguous (B, NB) tensor");
  TORCH_CHECK(shapedirs.dim() == 3 && shapedirs.size(0) == V && shapedirs.size(1) == 3 &&
                  shapedirs.size(2) == betas.size(1) && shapedirs.is_contiguous(),
              "shape_blend (", side.tag, "): shapedirs must be a contiguous (V, 3, NB) tensor");
  TORCH_CHECK(regressor.dim() == 2 && regressor.size(1) == V && regressor.is_contiguous(),
              "shape_blend (", side.tag, "): J_regressor must be a contiguous (J, V) tensor");
  TORCH_CHECK(betas.scalar_type() == v_template.scalar_type() &&
                  shapedirs.scalar_type() == v_template.scalar_type() &&
                  regressor.scalar_type() == v_template.scalar_type() &&
                  at::isFloatingType(v_template.scalar_type()),
              "shape_blend (", side.tag, "): dtype mismatch");
  TORCH_CHECK(on_side(v_template, v_template, side) && on_side(betas, v_template, side) &&
                  on_side(shapedirs, v_template, side) && on_side(regressor, v_template, side),
              "shape_blend (", side.tag, "): tensors must be on one ", side.tag, " device");
}

// The backward's gradients: grad_v_shaped (B, V, 3) and grad_regressed (J, 3 + 3 NB).
inline void check_shape_blend_grad(const at::Tensor& grad_v_shaped,
                                   const at::Tensor& grad_regressed,
                                   const at::Tensor& v_template, const at::Tensor& betas,
                                   const at::Tensor& regressor, const KernelSide& side) {
  TORCH_CHECK(grad_v_shaped.dim() == 3 && grad_v_shaped.size(0) == betas.size(0) &&
                  grad_v_shaped.size(1) == v_template.size(0) && grad_v_shaped.size(2) == 3 &&
                  grad_v_shaped.is_contiguous() &&
                  grad_v_shaped.scalar_type() == v_template.scalar_type() &&
                  on_side(grad_v_shaped, v_template, side),
              "shape_blend (", side.tag, "): grad_v_shaped must be a contiguous (B, V, 3) tensor");
  TORCH_CHECK(grad_regressed.dim() == 2 && grad_regressed.size(0) == regressor.size(0) &&
                  grad_regressed.size(1) == 3 + 3 * betas.size(1) &&
                  grad_regressed.is_contiguous() &&
                  grad_regressed.scalar_type() == v_template.scalar_type() &&
                  on_side(grad_regressed, v_template, side),
              "shape_blend (", side.tag,
              "): grad_regressed must be a contiguous (J, 3 + 3 NB) tensor");
}

}  // namespace skinning
}  // namespace portrait_engine
