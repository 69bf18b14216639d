// portrait_engine::lbs_autograd: native lbs's autograd node in C++ (eager mode on the CPU).
//
//   lbs_autograd(betas, pose, v_template, shapedirs, posedirs, J_regressor, lbs_weights, parents,
//                pose2rot, route, direct) -> (vertices (B, V, 3), joints (B, J, 3))
//
// The same forward and backward as ops/skinning.py's _LBS on its fused path (run_fused_forward
// and fused_backward): lbs_fused_{forward,backward}, or lbs_direct_* with `direct`, the same
// saved tensors, `needs` from the inputs that need gradients, missing output gradients not
// materialised. What it removes is the Python around them: the autograd.Function's apply, the
// ctx bookkeeping, the 13 saved tensors packed and unpacked by Python, and the backward's Python
// call. On the 2-core Zen 4 the Python-level calls spent ~150 µs forward and ~170 µs backward
// around the fused ops at SMPL's B = 1; this node saved 40-80 µs of that (2.20 -> 2.16 ms per
// step, in one process, alternated with _LBS), and ~0.25 ms at B = 32 (11.22 -> 10.97 ms).
//
// Inputs as lbs validated them; lbs() chooses the route and `direct` (_shape_route,
// _direct_takes) and calls this op only in eager mode without autocast (torch.compile traces
// the Python path). Its backward is not differentiable: the ops it calls have no autograd
// formula, so a second derivative through it fails (as through _LBS).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "skinning/kernel_ops.h"

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace portrait_engine {
namespace skinning {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The fused forward, or the direct kernels' (same schema and saved tensors).
std::tuple<Tensor, Tensor, std::vector<Tensor>> lbs_forward(
    const Tensor& betas, const Tensor& pose, const Tensor& v_template, const Tensor& shapedirs,
    const Tensor& posedirs, const Tensor& J_regressor, const Tensor& lbs_weights,
    const Tensor& parents, bool pose2rot, int64_t route, bool direct) {
  const auto& op = direct ? ops().lbs_direct_forward : ops().lbs_fused_forward;
  return op.call(betas, pose, v_template, shapedirs, posedirs, J_regressor, lbs_weights, parents,
                 pose2rot, route);
}

constexpr size_t kInputs = 8;  // the tensors saved first: lbs's eight tensor inputs

class LbsFunction : public torch::autograd::Function<LbsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& betas, const Tensor& pose,
                               const Tensor& v_template, const Tensor& shapedirs,
                               const Tensor& posedirs, const Tensor& J_regressor,
                               const Tensor& lbs_weights, const Tensor& parents, bool pose2rot,
                               int64_t route, bool direct) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [vertices, joints, saved] = lbs_forward(betas, pose, v_template, shapedirs, posedirs,
                                                 J_regressor, lbs_weights, parents, pose2rot,
                                                 route, direct);
    variable_list to_save = {betas,     pose,        v_template,  shapedirs,
                             posedirs,  J_regressor, lbs_weights, parents};
    to_save.insert(to_save.end(), saved.begin(), saved.end());
    ctx->save_for_backward(to_save);
    ctx->saved_data["pose2rot"] = pose2rot;
    ctx->saved_data["route"] = route;
    ctx->saved_data["direct"] = direct;
    ctx->set_materialize_grads(false);
    return {vertices, joints};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(11);
    const bool have_vertices = grads[0].defined(), have_joints = grads[1].defined();
    if (!have_vertices && !have_joints) return out;  // neither output reached the loss
    std::array<bool, 7> needs{};
    bool any = false;
    for (size_t i = 0; i < needs.size(); ++i) any = (needs[i] = ctx->needs_input_grad(i)) || any;
    if (!any) return out;
    const variable_list saved = ctx->get_saved_variables();
    const bool direct = ctx->saved_data["direct"].toBool();
    const auto& op = direct ? ops().lbs_direct_backward : ops().lbs_fused_backward;
    const std::vector<Tensor> rest(saved.begin() + kInputs, saved.end());
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::vector<Tensor> result = op.call(
        have_vertices ? std::optional<Tensor>(grads[0]) : std::nullopt,
        have_joints ? std::optional<Tensor>(grads[1]) : std::nullopt, saved[0], saved[1],
        saved[2], saved[3], saved[4], saved[5], saved[6], saved[7], rest,
        ctx->saved_data["pose2rot"].toBool(), ctx->saved_data["route"].toInt(), needs);
    for (size_t i = 0; i < needs.size(); ++i) {
      if (needs[i]) out[i] = result[i];
    }
    return out;
  }
};

std::tuple<Tensor, Tensor> lbs_autograd(const Tensor& betas, const Tensor& pose,
                                        const Tensor& v_template, const Tensor& shapedirs,
                                        const Tensor& posedirs, const Tensor& J_regressor,
                                        const Tensor& lbs_weights, const Tensor& parents,
                                        bool pose2rot, int64_t route, bool direct) {
  variable_list result = LbsFunction::apply(betas, pose, v_template, shapedirs, posedirs,
                                            J_regressor, lbs_weights, parents, pose2rot, route,
                                            direct);
  return {result[0], result[1]};
}

// Below autograd (no gradient to record, e.g. under inference mode): the forward alone.
std::tuple<Tensor, Tensor> lbs_no_autograd(const Tensor& betas, const Tensor& pose,
                                           const Tensor& v_template, const Tensor& shapedirs,
                                           const Tensor& posedirs, const Tensor& J_regressor,
                                           const Tensor& lbs_weights, const Tensor& parents,
                                           bool pose2rot, int64_t route, bool direct) {
  auto [vertices, joints, saved] = lbs_forward(betas, pose, v_template, shapedirs, posedirs,
                                               J_regressor, lbs_weights, parents, pose2rot, route,
                                               direct);
  return {vertices, joints};
}

}  // namespace
}  // namespace skinning
}  // namespace portrait_engine

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def(
      "lbs_autograd(Tensor betas, Tensor pose, Tensor v_template, Tensor shapedirs, "
      "Tensor posedirs, Tensor J_regressor, Tensor lbs_weights, Tensor parents, bool pose2rot, "
      "int route, bool direct) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(portrait_engine, Autograd, m) {
  m.impl("lbs_autograd", &portrait_engine::skinning::lbs_autograd);
}

TORCH_LIBRARY_IMPL(portrait_engine, CompositeExplicitAutograd, m) {
  m.impl("lbs_autograd", &portrait_engine::skinning::lbs_no_autograd);
}
