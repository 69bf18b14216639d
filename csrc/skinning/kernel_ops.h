// The skinning kernel ops as the C++ host paths of lbs call them (lbs_fused.cpp and the direct
// kernels' lbs_direct.h): typed dispatcher handles, looked up once (their schemas,
// csrc/skinning/schema.cpp, are registered when the extension loads), and the pose rows the
// forward-kinematics kernel reads.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace portrait_engine {
namespace skinning {

using Tensor = at::Tensor;
using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;

template <typename Signature>
inline c10::TypedOperatorHandle<Signature> kernel_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The kernel ops' signatures (csrc/skinning/schema.cpp).
using TensorRef = const Tensor&;
using FkForward = Tensor3(TensorRef, TensorRef, TensorRef, bool);
using FkBackward = Tensor2(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, bool);
using SkinForward = Tensor(TensorRef, TensorRef, TensorRef, bool);
using SkinBackward = Tensor3(TensorRef, TensorRef, TensorRef, TensorRef, bool);
using BlendForward = Tensor(TensorRef, TensorRef, TensorRef);
using BlendBackward = Tensor2(TensorRef, TensorRef, TensorRef, bool);
using ShapeForward = Tensor2(TensorRef, TensorRef, TensorRef, TensorRef);
using ShapeBackward = Tensor4(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef);

// lbs's own host ops (lbs_fused.cpp; lbs_direct_cpu.cpp defines the direct ones' schemas, the
// same), as lbs_autograd.cpp calls them.
using LbsForward = std::tuple<Tensor, Tensor, std::vector<Tensor>>(
    TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, bool,
    int64_t);
using LbsBackward = std::vector<Tensor>(const std::optional<Tensor>&,
                                        const std::optional<Tensor>&, TensorRef, TensorRef,
                                        TensorRef, TensorRef, TensorRef, TensorRef, TensorRef,
                                        TensorRef, at::TensorList, bool, int64_t,
                                        std::array<bool, 7>);

struct KernelOps {
  c10::TypedOperatorHandle<FkForward> fk_forward =
      kernel_op<FkForward>("portrait_engine::forward_kinematics_forward");
  c10::TypedOperatorHandle<FkBackward> fk_backward =
      kernel_op<FkBackward>("portrait_engine::forward_kinematics_backward");
  c10::TypedOperatorHandle<SkinForward> skin_forward =
      kernel_op<SkinForward>("portrait_engine::skin_points_forward");
  c10::TypedOperatorHandle<SkinBackward> skin_backward =
      kernel_op<SkinBackward>("portrait_engine::skin_points_backward");
  c10::TypedOperatorHandle<BlendForward> blend_forward =
      kernel_op<BlendForward>("portrait_engine::blend_shapes_forward");
  c10::TypedOperatorHandle<BlendBackward> blend_backward =
      kernel_op<BlendBackward>("portrait_engine::blend_shapes_backward");
  c10::TypedOperatorHandle<ShapeForward> shape_forward =
      kernel_op<ShapeForward>("portrait_engine::shape_blend_forward");
  c10::TypedOperatorHandle<ShapeBackward> shape_backward =
      kernel_op<ShapeBackward>("portrait_engine::shape_blend_backward");
  c10::TypedOperatorHandle<LbsForward> lbs_fused_forward =
      kernel_op<LbsForward>("portrait_engine::lbs_fused_forward");
  c10::TypedOperatorHandle<LbsBackward> lbs_fused_backward =
      kernel_op<LbsBackward>("portrait_engine::lbs_fused_backward");
  c10::TypedOperatorHandle<LbsForward> lbs_direct_forward =
      kernel_op<LbsForward>("portrait_engine::lbs_direct_forward");
  c10::TypedOperatorHandle<LbsBackward> lbs_direct_backward =
      kernel_op<LbsBackward>("portrait_engine::lbs_direct_backward");
};

inline const KernelOps& ops() {
  static const KernelOps kOps;
  return kOps;
}

// The pose rows the forward-kinematics kernel reads: (batch, J, 3) axis-angle or (batch, J, 3, 3)
// rotations, one pose row expanded to the batch.
inline Tensor pose_rows(const Tensor& pose, int64_t batch, int64_t J, bool pose2rot) {
  const Tensor rows = pose2rot ? pose.reshape({pose.size(0), J, 3}).expand({batch, J, 3})
                               : pose.reshape({pose.size(0), J, 3, 3}).expand({batch, J, 3, 3});
  return rows.contiguous();
}

}  // namespace skinning
}  // namespace portrait_engine
