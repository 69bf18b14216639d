// portrait_engine::lbs_fused_{forward,backward}: native lbs's host-side work in C++, one
// dispatcher call per direction (contract: docs/kernel_contract_skinning.md, "lbs on a GPU").
//
// At SMPL's size native lbs is bound by its host-side work on a GPU, not by its kernels (H100,
// 2026-11-27: 0.37 ms of kernels in 2.34 ms of wall time at B = 32). That work was the Python
// of ops/skinning.py's _LBS: about 40 Python-level tensor calls around the kernel ops
// (forward_kinematics, blend_shapes, shape_blend, skin_points). These two ops make the same
// calls, in the same order and with the same algebra, from C++: the ATen products and views
// and the kernel ops through the dispatcher (a C++ dispatch is a fraction of a Python-level
// call). The Python _LBS keeps the autograd node, the routes' Python twin (the Triton backend
// and torch.compile trace it) and the validation.
//
// Device-generic (CompositeExplicitAutograd): every call below dispatches on its tensors, so
// one registration serves the CPU and CUDA kernels.
//
//   lbs_fused_forward(betas, pose, v_template, shapedirs, posedirs, J_regressor, lbs_weights,
//                     parents, pose2rot, route) -> (vertices (B, V, 3), joints (B, J, 3), saved)
//   lbs_fused_backward(grad_vertices?, grad_joints?, betas, pose, v_template, shapedirs,
//                      posedirs, J_regressor, lbs_weights, parents, saved, pose2rot, route,
//                      needs[7]) -> 7 gradients
//
// Inputs as lbs validated them (shapes, one dtype and device, a topological tree). `saved` is
// the forward's list, handed back unchanged. The gradients follow lbs's float inputs in
// _LBS's order (betas, pose, v_template, shapedirs, posedirs, J_regressor, lbs_weights); one
// whose `needs` flag is false is an empty tensor (and not computed).
//
// The shape part takes the route _LBS's _shape_route chose (ops/skinning.py says why each):
//   0 direct:    a batch of templates or up to NB shapes; joints from v_shaped as (B, 3, V)
//                (on the CPU with a (V, 3) template: shape_direct.h's passes);
//   1 kernel:    CPU, a (V, 3) template and B > NB: the shape_blend kernel;
//   2 regressed: the same algebra from ATen products (a GPU's for B > 256);
//   3 rows:      a GPU's for one shape: joints from v_shaped's own (V, 3) rows.
// Neither op has an autograd formula of its own: they run inside lbs's autograd node (called
// directly on inputs that need gradients, their results are not differentiable).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "constant_cache.h"
#include "skinning/kernel_ops.h"
#include "skinning/shape_direct.h"

#include <array>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace portrait_engine {
namespace skinning {
namespace {

using Tensor = at::Tensor;

// 3x3 identities per (dtype, device), for the pose features R - I (constant_cache.h).
const Tensor& identity3(const Tensor& like) {
  return cached_constant(like.options(),
                         [](const at::TensorOptions& options) { return at::eye(3, options); });
}

// The shape part's route, as _LBS's _shape_route chose it (0 direct, 1 kernel, 2 regressed,
// 3 rows: one place decides, for both paths); all but direct need a single (V, 3) template,
// rows one betas row.
enum class Route { kDirect = 0, kKernel = 1, kRegressed = 2, kRows = 3 };

Route shape_route(int64_t route, const Tensor& v_template, const Tensor& betas, const char* op) {
  TORCH_CHECK(route >= 0 && route <= 3, op,
              ": route must be 0 (direct), 1 (kernel), 2 (regressed) or 3 (rows), got ", route);
  TORCH_CHECK(route == 0 || v_template.dim() == 2, op,
              ": the kernel, regressed and rows routes need a (V, 3) v_template, got ",
              v_template.sizes());
  TORCH_CHECK(route != 3 || betas.size(0) == 1, op,
              ": the rows route takes one betas row, got ", betas.size(0));
  return static_cast<Route>(route);
}

// Length of lbs_fused_forward's saved list per route: 4 tensors, then the route's.
size_t saved_count(Route route) { return route == Route::kRegressed ? 6 : 5; }

// Rows of v_shaped: the betas rows, or the templates' when one betas row meets a batch of them.
int64_t shaped_rows(const Tensor& betas, const Tensor& v_template) {
  const int64_t templates = v_template.dim() == 3 ? v_template.size(0) : 1;
  return std::max(betas.size(0), templates);
}

// The shape part's forward: v_shaped (Bv, V * 3), joints (Bv, J, 3); appends what its backward
// reads to `saved`.
Tensor2 shape_forward(Route route, const Tensor& betas, const Tensor& v_template,
                      const Tensor& shapedirs, const Tensor& J_regressor,
                      std::vector<Tensor>& saved) {
  const int64_t J = J_regressor.size(0), V = J_regressor.size(1);
  Tensor v_shaped, regressed;
  if (route == Route::kKernel) {
    auto [shaped, reg] = ops().shape_forward.call(v_template.contiguous(), betas.contiguous(),
                                                  shapedirs.contiguous(),
                                                  J_regressor.contiguous());
    v_shaped = shaped.view({betas.size(0), V * 3});
    regressed = reg;
    saved.push_back(regressed);
  } else if (route == Route::kDirect &&
             shape_direct_cpu_takes(betas, v_template, shapedirs, J_regressor)) {
    // the CPU's one pass (shape_direct.h): the same v_shaped, columns and joints
    auto [shaped, columns, joints] =
        shape_direct_forward_cpu(v_template, betas, shapedirs, J_regressor);
    saved.push_back(columns);
    return {shaped, joints};
  } else {
    const Tensor templ = v_template.reshape({-1, V * 3});
    const Tensor dirs = shapedirs.reshape({V * 3, -1});
    if (templ.size(0) == 1 || templ.size(0) == betas.size(0)) {
      v_shaped = at::addmm(templ, betas, dirs.t());
    } else {  // a batch of templates for one betas row
      v_shaped = templ + at::mm(betas, dirs.t());
    }
    if (route == Route::kRows) {  // one shape: (J, V) x (V, 3), contiguous (1, J, 3)
      Tensor joints = at::mm(J_regressor, v_shaped.view({V, 3})).unsqueeze(0);
      saved.push_back(v_shaped);
      return {v_shaped, joints};
    }
    if (route == Route::kDirect) {
      Tensor columns = v_shaped.view({-1, V, 3}).transpose(1, 2).contiguous();
      Tensor joints = at::matmul(columns, J_regressor.t()).transpose(1, 2);
      saved.push_back(columns);
      return {v_shaped, joints};
    }
    const Tensor stacked = at::cat({v_template, shapedirs.reshape({V, -1})}, 1);
    regressed = at::mm(J_regressor, stacked);
    saved.push_back(regressed);
    saved.push_back(stacked);
  }
  const Tensor offsets = at::mm(betas, regressed.narrow(1, 3, regressed.size(1) - 3)
                                           .reshape({J * 3, -1})
                                           .t());
  Tensor joints = regressed.narrow(1, 0, 3) + offsets.view({-1, J, 3});
  return {v_shaped, joints};
}

// Gradients of (betas, v_template, shapedirs, J_regressor) from those of v_shaped (Bv, V * 3)
// and the joints (Bv, J, 3); undefined where not needed.
Tensor4 shape_backward(Route route, const bool needs[4], const Tensor& grad_shaped_in,
                       const Tensor& grad_joints, const Tensor& betas, const Tensor& v_template,
                       const Tensor& shapedirs, const Tensor& J_regressor, const Tensor* saved) {
  const bool need_betas = needs[0], need_template = needs[1], need_dirs = needs[2],
             need_regressor = needs[3];
  const int64_t J = J_regressor.size(0), V = J_regressor.size(1);
  const int64_t rows = grad_shaped_in.size(0);
  Tensor grad_shaped = grad_shaped_in;
  Tensor grad_betas, grad_regressor, grad_template_joints, grad_dirs_joints;
  if (route == Route::kRows) {
    const Tensor& v_shaped = saved[0];
    const Tensor grad_rows = grad_joints.view({J, 3});
    // v_shaped's gradient plus J_regressorᵀ dJ, the add in the product
    grad_shaped = at::addmm(grad_shaped.view({V, 3}), J_regressor.t(), grad_rows).view({1, V * 3});
    if (need_regressor) grad_regressor = at::mm(grad_rows, v_shaped.view({V, 3}).t());
  } else if (route == Route::kDirect &&
             shape_direct_cpu_takes(betas, v_template, shapedirs, J_regressor)) {
    auto [g_betas, g_template, g_dirs, g_regressor] = shape_direct_backward_cpu(
        grad_shaped, grad_joints, saved[0], v_template, betas, shapedirs, J_regressor,
        {need_betas, need_template, need_dirs, need_regressor});
    return {g_betas, g_template, g_dirs, g_regressor};
  } else if (route == Route::kDirect) {
    const Tensor& columns = saved[0];
    const Tensor rows_of_grad = grad_joints.transpose(1, 2);  // (Bv, 3, J)
    const Tensor grad_columns = at::matmul(rows_of_grad, J_regressor);  // (Bv, 3, V)
    grad_shaped = (grad_shaped.view({rows, V, 3}) + grad_columns.transpose(1, 2))
                      .view({rows, V * 3});
    if (need_regressor) {
      grad_regressor = at::mm(rows_of_grad.permute({2, 0, 1}).reshape({J, rows * 3}),
                              columns.reshape({rows * 3, V}));
    }
  } else {
    const Tensor& regressed = saved[0];
    const Tensor flat = grad_joints.reshape({rows, J * 3});
    if (need_betas) {  // through the joints' (J S) beta
      grad_betas =
          at::mm(flat, regressed.narrow(1, 3, regressed.size(1) - 3).reshape({J * 3, -1}));
    }
    if (need_template || need_dirs || need_regressor) {
      const Tensor grad_regressed =
          at::cat({grad_joints.sum(0), at::mm(flat.t(), betas).view({J, -1})}, 1);
      if (route == Route::kKernel) {
        auto [g_template, g_betas, g_dirs, g_regressor] = ops().shape_backward.call(
            grad_shaped.view({rows, V, 3}).contiguous(), grad_regressed,
            v_template.contiguous(), betas.contiguous(), shapedirs.contiguous(),
            J_regressor.contiguous());
        if (need_betas) grad_betas = grad_betas + g_betas;
        return {grad_betas, g_template, g_dirs, g_regressor};
      }
      const Tensor& stacked = saved[1];
      if (need_regressor) grad_regressor = at::mm(grad_regressed, stacked.t());
      if (need_template || need_dirs) {
        const Tensor grad_stacked = at::mm(J_regressor.t(), grad_regressed);  // (V, 3 + 3 NB)
        grad_template_joints = grad_stacked.narrow(1, 0, 3);
        grad_dirs_joints =
            grad_stacked.narrow(1, 3, grad_stacked.size(1) - 3).reshape(shapedirs.sizes());
      }
    }
  }
  // v_shaped = T + S beta
  const int64_t template_rows = v_template.dim() == 2 ? 1 : v_template.size(0);
  const Tensor dirs = shapedirs.reshape({V * 3, -1});
  // the gradient that meets beta: summed over the templates of one betas row
  const Tensor per_betas =
      betas.size(0) == rows ? grad_shaped : grad_shaped.sum(0, /*keepdim=*/true);
  if (need_betas) {
    const Tensor from_shaped = at::mm(per_betas, dirs);
    grad_betas = grad_betas.defined() ? grad_betas + from_shaped : from_shaped;
  }
  Tensor grad_dirs, grad_template;
  if (need_dirs) {
    grad_dirs = at::mm(per_betas.t(), betas).view(shapedirs.sizes());
    if (grad_dirs_joints.defined()) grad_dirs = grad_dirs + grad_dirs_joints;
  }
  if (need_template) {
    grad_template = (template_rows == rows ? grad_shaped : grad_shaped.sum(0))
                        .view(v_template.sizes());
    if (grad_template_joints.defined()) grad_template = grad_template + grad_template_joints;
  }
  return {grad_betas, grad_template, grad_dirs, grad_regressor};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> lbs_fused_forward(
    const Tensor& betas, const Tensor& pose, const Tensor& v_template, const Tensor& shapedirs,
    const Tensor& posedirs, const Tensor& J_regressor, const Tensor& lbs_weights,
    const Tensor& parents, bool pose2rot, int64_t route_index) {
  const Route route = shape_route(route_index, v_template, betas, "lbs_fused_forward");
  // the calls below go straight to their kernels (lbs's own autograd node is above this op)
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t J = J_regressor.size(0), V = J_regressor.size(1);
  std::vector<Tensor> shape_saved;
  auto [v_shaped, joints] = shape_forward(route, betas, v_template, shapedirs, J_regressor,
                                          shape_saved);
  const int64_t batch = std::max(v_shaped.size(0), pose.size(0));
  const Tensor kernel_pose = pose_rows(pose, batch, J, pose2rot);
  const Tensor kernel_joints = joints.expand({batch, J, 3}).contiguous();
  const Tensor tree = parents.to(at::kLong);
  auto [rot_mats, posed_joints, transforms] =
      ops().fk_forward.call(kernel_pose, kernel_joints, tree, pose2rot);
  const Tensor pose_feature =
      (rot_mats.narrow(1, 1, J - 1) - identity3(rot_mats)).reshape({batch, -1});
  const Tensor dirs = posedirs.contiguous();
  // v_posed = v_shaped + P vec(R - I), the add fused into the product
  const Tensor v_posed =
      ops().blend_forward.call(v_shaped.contiguous(), pose_feature, dirs).view({batch, V, 3});
  const Tensor weights = lbs_weights.unsqueeze(0).contiguous();
  Tensor vertices = ops().skin_forward.call(v_posed, weights, transforms, false);
  // not the inputs' views (kernel_pose, tree, dirs, weights): an op's outputs may not alias
  // its inputs; the backward forms them again from the inputs (free for contiguous ones)
  std::vector<Tensor> saved = {kernel_joints, transforms, pose_feature, v_posed};
  saved.insert(saved.end(), shape_saved.begin(), shape_saved.end());
  return {vertices, posed_joints, saved};
}

std::vector<Tensor> lbs_fused_backward(const std::optional<Tensor>& grad_vertices_in,
                                       const std::optional<Tensor>& grad_joints_in,
                                       const Tensor& betas, const Tensor& pose,
                                       const Tensor& v_template, const Tensor& shapedirs,
                                       const Tensor& posedirs, const Tensor& J_regressor,
                                       const Tensor& lbs_weights, const Tensor& parents,
                                       at::TensorList saved,
                                       bool pose2rot, int64_t route_index,
                                       std::array<bool, 7> needs) {
  const Route route = shape_route(route_index, v_template, betas, "lbs_fused_backward");
  TORCH_CHECK(saved.size() == saved_count(route), "lbs_fused_backward: saved must be ",
              "lbs_fused_forward's list of ", saved_count(route), " tensors for this route, got ",
              saved.size());
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor& kernel_joints = saved[0];
  const Tensor& transforms = saved[1];
  const Tensor& pose_feature = saved[2];
  const Tensor& v_posed = saved[3];
  const int64_t batch = kernel_joints.size(0), J = kernel_joints.size(1);
  const Tensor kernel_pose = pose_rows(pose, batch, J, pose2rot);
  const Tensor tree = parents.to(at::kLong);
  const Tensor dirs = posedirs.contiguous();
  const Tensor weights = lbs_weights.unsqueeze(0).contiguous();
  const bool need_betas = needs[0], need_pose = needs[1], need_template = needs[2],
             need_dirs = needs[3], need_posedirs = needs[4], need_regressor = needs[5],
             need_weights = needs[6];
  const bool need_shape = need_betas || need_template || need_dirs || need_regressor;
  const int64_t rows = shaped_rows(betas, v_template);

  const Tensor grad_vertices = grad_vertices_in.has_value() && grad_vertices_in->defined()
                                   ? grad_vertices_in->contiguous()
                                   : at::zeros_like(v_posed);
  auto [grad_v_posed3, grad_weights, grad_transforms] =
      ops().skin_backward.call(grad_vertices, v_posed, weights, transforms, false);
  const Tensor grad_v_posed = grad_v_posed3.view({batch, -1});
  auto [grad_feature, grad_posedirs] =
      ops().blend_backward.call(grad_v_posed, pose_feature, dirs, need_posedirs);

  Tensor grad_pose, grad_joints;
  if (need_pose || need_shape) {
    // the pose features leave out the root's rotation: the kernel takes the gradient of
    // joints 1..J-1 as it is (no padded copy), and an empty one for unused posed joints (no
    // zeros): two and one fewer launches on a GPU, where lbs is bound by host-side work
    const Tensor grad_rot = grad_feature.contiguous().view({batch, J - 1, 3, 3});
    const Tensor grad_posed_joints = grad_joints_in.has_value() && grad_joints_in->defined()
                                         ? grad_joints_in->contiguous()
                                         : at::empty({0}, kernel_joints.options());
    auto [grad_kernel_pose, grad_kernel_joints] = ops().fk_backward.call(
        grad_rot, grad_posed_joints, grad_transforms, kernel_pose, kernel_joints, tree,
        pose2rot);
    if (need_pose) {
      if (pose.size(0) != batch) grad_kernel_pose = grad_kernel_pose.sum(0, /*keepdim=*/true);
      grad_pose = grad_kernel_pose.reshape(pose.sizes());
    }
    grad_joints = rows != batch ? grad_kernel_joints.sum(0, /*keepdim=*/true) : grad_kernel_joints;
  }
  Tensor grad_betas, grad_template, grad_shapedirs, grad_regressor;
  if (need_shape) {
    const Tensor grad_shaped = rows != batch ? grad_v_posed.sum(0, /*keepdim=*/true) : grad_v_posed;
    const bool shape_needs[4] = {need_betas, need_template, need_dirs, need_regressor};
    std::tie(grad_betas, grad_template, grad_shapedirs, grad_regressor) =
        shape_backward(route, shape_needs, grad_shaped, grad_joints, betas, v_template,
                       shapedirs, J_regressor, saved.data() + 4);
  }
  const auto empty = [&](bool need, const Tensor& grad) {
    return need ? grad : at::empty({0}, betas.options());
  };
  return {empty(need_betas, grad_betas),
          empty(need_pose, grad_pose),
          empty(need_template, grad_template),
          empty(need_dirs, grad_shapedirs),
          empty(need_posedirs, grad_posedirs),
          empty(need_regressor, grad_regressor),
          empty(need_weights, need_weights ? grad_weights[0] : Tensor())};
}

}  // namespace
}  // namespace skinning
}  // namespace portrait_engine

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def(
      "lbs_fused_forward(Tensor betas, Tensor pose, Tensor v_template, Tensor shapedirs, "
      "Tensor posedirs, Tensor J_regressor, Tensor lbs_weights, Tensor parents, bool pose2rot, "
      "int route) -> (Tensor, Tensor, Tensor[])");
  m.def(
      "lbs_fused_backward(Tensor? grad_vertices, Tensor? grad_joints, Tensor betas, Tensor pose, "
      "Tensor v_template, Tensor shapedirs, Tensor posedirs, Tensor J_regressor, "
      "Tensor lbs_weights, Tensor parents, Tensor[] saved, bool pose2rot, int route, "
      "bool[7] needs) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(portrait_engine, CompositeExplicitAutograd, m) {
  m.impl("lbs_fused_forward", &portrait_engine::skinning::lbs_fused_forward);
  m.impl("lbs_fused_backward", &portrait_engine::skinning::lbs_fused_backward);
}
