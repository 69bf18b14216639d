"""Linear blend skinning: the public ops ``lbs`` and ``skin_points``, registration, autograd.

``lbs`` is ``smplx.lbs.lbs`` (same arguments, results and gradients) built from two fused
kernels under the dense blend-shape products (``torch`` GEMMs for Triton; for the native
backend the ``blend_shapes`` op: cuBLAS on a GPU; on the CPU one BLAS call per product from a
batch of 8, streamed AVX-512 passes over the blend shapes below it):

* ``forward_kinematics``: Rodrigues of every joint, the chain of global transforms along the
  kinematic tree and the relative transforms, in one launch (one program per batch element
  walks the J joints; smplx launches a few kernels per joint);
* ``skin_points``: per point, ``Σ_j w_j A_j`` blended and applied on the fly; smplx
  materialises the ``(B, V, 4, 4)`` per-vertex transforms, these kernels never do.

Kernels: ``kernels/skinning.py`` (Triton), ``csrc/skinning/`` (C++ CPU and CUDA); contract in
``docs/kernel_contract_skinning.md``.
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

from portrait_engine import _backend, _extension
from portrait_engine.ops import _validation as v
from portrait_engine.ops._library import eager, register_native_pair, register_pair
from portrait_engine.ops.reference.skinning import lbs_reference, skin_points_reference

# --------------------------------------------------------------------------------------------
# Kernel-level custom ops (prepared inputs; no validation)
#
# skin_points: points (B, N, 3), weights (Bw, N, J) with Bw in {1, B}, transforms (B, J, 4, 4),
#   all contiguous and of one dtype. The forward returns (B, N, 3); the backward (which
#   recomputes the blended transforms in the accumulation dtype) returns (grad_points,
#   grad_weights (Bw, N, J), grad_transforms) with a zero bottom row (only the affine rows
#   are read).
# forward_kinematics: pose (B, J, 3) axis-angle (pose2rot) or (B, J, 3, 3) rotations, joints
#   (B, J, 3), parents (J,) int64 with parents[0] = -1 and parents[i] < i. Returns
#   (rot_mats (B, J, 3, 3), posed_joints (B, J, 3), rel_transforms (B, J, 4, 4)).
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("portrait_engine::skin_points_triton_forward", mutates_args=())
def _skin_triton_forward(
    points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor, inverse: bool
) -> torch.Tensor:
    from portrait_engine.kernels import skinning as kernels

    return kernels.skin_points_forward(points, weights, transforms, inverse)


@torch.library.custom_op("portrait_engine::skin_points_triton_backward", mutates_args=())
def _skin_triton_backward(
    grad_out: torch.Tensor,
    points: torch.Tensor,
    weights: torch.Tensor,
    transforms: torch.Tensor,
    inverse: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import skinning as kernels

    return kernels.skin_points_backward(grad_out, points, weights, transforms, inverse)


def _skin_fake_forward(points, weights, transforms, inverse):
    return points.new_empty(points.shape)


def _skin_fake_backward(grad_out, points, weights, transforms, inverse):
    return (
        points.new_empty(points.shape),
        weights.new_empty(weights.shape),
        transforms.new_empty(transforms.shape),
    )


def _skin_setup_context(ctx, inputs, output):
    points, weights, transforms, inverse = inputs
    ctx.save_for_backward(points, weights, transforms)
    ctx.inverse = inverse


def _skin_make_autograd(backward_op):
    def backward(ctx, grad_out):
        points, weights, transforms = ctx.saved_tensors
        grads = backward_op(grad_out.contiguous(), points, weights, transforms, ctx.inverse)
        return (*grads, None)

    return backward


_SKIN_REGISTRATION = dict(
    fake_forward=_skin_fake_forward,
    fake_backward=_skin_fake_backward,
    setup_context=_skin_setup_context,
    make_backward=_skin_make_autograd,
)
register_pair("skin_points_triton_forward", "skin_points_triton_backward", **_SKIN_REGISTRATION)
_SKIN_NATIVE = register_native_pair(
    "skin_points_forward", "skin_points_backward", **_SKIN_REGISTRATION
)


@torch.library.custom_op("portrait_engine::forward_kinematics_triton_forward", mutates_args=())
def _fk_triton_forward(
    pose: torch.Tensor, joints: torch.Tensor, parents: torch.Tensor, pose2rot: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import skinning as kernels

    return kernels.forward_kinematics_forward(pose, joints, parents, pose2rot)


@torch.library.custom_op("portrait_engine::forward_kinematics_triton_backward", mutates_args=())
def _fk_triton_backward(
    grad_rot_mats: torch.Tensor,
    grad_posed_joints: torch.Tensor,
    grad_rel_transforms: torch.Tensor,
    pose: torch.Tensor,
    joints: torch.Tensor,
    parents: torch.Tensor,
    pose2rot: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import skinning as kernels

    return kernels.forward_kinematics_backward(
        grad_rot_mats, grad_posed_joints, grad_rel_transforms, pose, joints, parents, pose2rot
    )


def _fk_fake_forward(pose, joints, parents, pose2rot):
    batch, num_joints = joints.shape[:2]
    return (
        joints.new_empty((batch, num_joints, 3, 3)),
        joints.new_empty((batch, num_joints, 3)),
        joints.new_empty((batch, num_joints, 4, 4)),
    )


def _fk_fake_backward(grad_rot, grad_joints, grad_rel, pose, joints, parents, pose2rot):
    return pose.new_empty(pose.shape), joints.new_empty(joints.shape)


def _fk_setup_context(ctx, inputs, output):
    pose, joints, parents, pose2rot = inputs
    ctx.save_for_backward(pose, joints, parents)
    ctx.pose2rot = pose2rot


def _fk_make_autograd(backward_op):
    def backward(ctx, grad_rot, grad_joints, grad_rel):
        pose, joints, parents = ctx.saved_tensors
        # an output that did not reach the loss arrives as None (or zeros, under compile)
        grad_rot = torch.zeros_like(grad_rot) if grad_rot is None else grad_rot
        grad_joints = torch.zeros_like(grad_joints) if grad_joints is None else grad_joints
        grad_rel = torch.zeros_like(grad_rel) if grad_rel is None else grad_rel
        grad_pose, grad_joints = backward_op(
            grad_rot.contiguous(),
            grad_joints.contiguous(),
            grad_rel.contiguous(),
            pose,
            joints,
            parents,
            ctx.pose2rot,
        )
        return grad_pose, grad_joints, None, None

    return backward


_FK_REGISTRATION = dict(
    fake_forward=_fk_fake_forward,
    fake_backward=_fk_fake_backward,
    setup_context=_fk_setup_context,
    make_backward=_fk_make_autograd,
)
register_pair(
    "forward_kinematics_triton_forward", "forward_kinematics_triton_backward", **_FK_REGISTRATION
)
_FK_NATIVE = register_native_pair(
    "forward_kinematics_forward", "forward_kinematics_backward", **_FK_REGISTRATION
)


# blend_shapes (native only): base (1 or B, C), coeffs (B, F), dirs (F, C), contiguous, one
#   dtype; returns base + coeffs @ dirs (B, C). The backward returns (grad_coeffs (B, F),
#   grad_dirs (F, C), or an empty tensor when dirs_grad is False: model tensors without grad,
#   as in GAN training, skip their (F, C) gradient); base's gradient is grad_out itself.


def _blend_fake_forward(base, coeffs, dirs):
    return coeffs.new_empty((coeffs.shape[0], dirs.shape[1]))


def _blend_fake_backward(grad_out, coeffs, dirs, dirs_grad):
    return coeffs.new_empty(coeffs.shape), dirs.new_empty(dirs.shape if dirs_grad else (0,))


def _blend_setup_context(ctx, inputs, output):
    base, coeffs, dirs = inputs
    ctx.save_for_backward(coeffs, dirs)
    ctx.base_rows = base.shape[0]


def _blend_make_autograd(backward_op):
    def backward(ctx, grad_out):
        coeffs, dirs = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dirs_grad = ctx.needs_input_grad[2]
        grad_coeffs, grad_dirs = backward_op(grad_out, coeffs, dirs, dirs_grad)
        if ctx.base_rows != grad_out.shape[0]:  # a base shared by the batch
            grad_base = grad_out.sum(0, keepdim=True)
        else:
            grad_base = grad_out
        return grad_base, grad_coeffs, grad_dirs if dirs_grad else None

    return backward


_BLEND_NATIVE = register_native_pair(
    "blend_shapes_forward",
    "blend_shapes_backward",
    fake_forward=_blend_fake_forward,
    fake_backward=_blend_fake_backward,
    setup_context=_blend_setup_context,
    make_backward=_blend_make_autograd,
)


# shape_blend (native only): v_template (V, 3), betas (B, NB), shapedirs (V, 3, NB), J_regressor
#   (J, V), contiguous, one dtype; returns v_shaped = T + S β (B, V, 3) and regressed =
#   𝒥 [T | S] (J, 3 + 3 NB), from which lbs forms the joints 𝒥 T + (𝒥 S) β. The backward takes
#   both outputs' gradients and returns those of the four inputs.


def _shape_fake_forward(v_template, betas, shapedirs, J_regressor):
    return (
        v_template.new_empty((betas.shape[0], v_template.shape[0], 3)),
        v_template.new_empty((J_regressor.shape[0], 3 + 3 * betas.shape[1])),
    )


def _shape_fake_backward(grad_v_shaped, grad_regressed, v_template, betas, shapedirs, J_regressor):
    return tuple(t.new_empty(t.shape) for t in (v_template, betas, shapedirs, J_regressor))


def _shape_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _shape_make_autograd(backward_op):
    def backward(ctx, grad_v_shaped, grad_regressed):
        v_template, betas, shapedirs, J_regressor = ctx.saved_tensors
        # an output that did not reach the loss arrives as None
        if grad_v_shaped is None:
            grad_v_shaped = v_template.new_zeros((betas.shape[0], v_template.shape[0], 3))
        if grad_regressed is None:
            grad_regressed = v_template.new_zeros((J_regressor.shape[0], 3 + 3 * betas.shape[1]))
        return backward_op(
            grad_v_shaped.contiguous(),
            grad_regressed.contiguous(),
            v_template,
            betas,
            shapedirs,
            J_regressor,
        )

    return backward


_SHAPE_NATIVE = register_native_pair(
    "shape_blend_forward",
    "shape_blend_backward",
    fake_forward=_shape_fake_forward,
    fake_backward=_shape_fake_backward,
    setup_context=_shape_setup_context,
    make_backward=_shape_make_autograd,
)


# lbs_fused (native only, eager mode): _LBS's forward and backward as one C++ op each
# (csrc/skinning/lbs_fused.cpp): at SMPL's size native lbs on a GPU is bound by host-side work
_FUSED_NATIVE = _extension.has_op("lbs_fused_forward") and _extension.has_op("lbs_fused_backward")


# lbs_autograd (csrc/skinning/lbs_autograd.cpp): the fused path's autograd node in C++, for
# native lbs in eager mode without autocast, on these devices. On the CPU (2-core Zen 4, in one
# process, alternated with _LBS) lbs fwd+bwd went 2.20 -> 2.16 ms at SMPL's B = 1 and 11.22 ->
# 10.97 ms at B = 32. Not yet on CUDA: not yet run on a GPU (there lbs is bound by host-side
# work; tests/ops/test_skinning_cuda.py has the check that enabling it waits for).
_AUTOGRAD_DEVICES = ("cpu",) if (_FUSED_NATIVE and _extension.has_op("lbs_autograd")) else ()

# the route's number in the fused ops' schema
_ROUTE_INDEX = {"direct": 0, "kernel": 1, "regressed": 2, "rows": 3}

# lbs_direct (native on a GPU, eager mode): the fused ops' algebra as a few kernels of our own
# (csrc/skinning/lbs_direct.h): 4 launches forward and at most 7 backward, no cuBLAS call, where
# the fused ops make about 30 calls a step; on the CPU the same functions run as a twin that the
# tests check (not a fast path there). The inputs they take (lbs_direct.h's eligible(), which
# refuses any other): one dtype, float or double; a (V, 3) template; as many betas rows as pose
# rows, 1 to _DIRECT_MAX_BATCH (beyond, the GPU is busy enough for cuBLAS's products to pay);
# 2 to 64 joints (SMPL-X has 55); the direct or rows route (the GPU's up to 256 shapes).
_DIRECT_NATIVE = _extension.has_op("lbs_direct_forward") and _extension.has_op(
    "lbs_direct_backward"
)
_DIRECT_DEVICES = ("cuda",)
_DIRECT_MAX_BATCH = 64


def _direct_takes(betas, pose, v_template, J_regressor, route_index) -> bool:
    return (
        _DIRECT_NATIVE
        and betas.device.type in _DIRECT_DEVICES
        and betas.dtype in (torch.float32, torch.float64)
        and v_template.dim() == 2
        and route_index in (0, 3)
        and pose.shape[0] == betas.shape[0]
        and 1 <= betas.shape[0] <= _DIRECT_MAX_BATCH
        and 2 <= J_regressor.shape[0] <= 64
        and betas.shape[1] >= 1
    )


def _fused_choice(betas, pose, v_template, shapedirs, posedirs, J_regressor):
    """(route index, direct): the shape part's route and whether the direct kernels take the
    inputs, for the fused ops and lbs_autograd alike."""
    route = _ROUTE_INDEX[_shape_route("native", betas, v_template)]
    return route, _direct_takes(betas, pose, v_template, J_regressor, route)


def _fused_fake_forward(
    betas, pose, v_template, shapedirs, posedirs, J_regressor, lbs_weights, parents, pose2rot, route
):
    num_joints, num_verts = J_regressor.shape
    rows = max(betas.shape[0], v_template.shape[0] if v_template.dim() == 3 else 1)
    batch = max(rows, pose.shape[0])
    stacked = 3 + 3 * betas.shape[1]
    shape_saved = {
        "direct": [betas.new_empty((rows, 3, num_verts))],
        "kernel": [betas.new_empty((num_joints, stacked))],
        "regressed": [
            betas.new_empty((num_joints, stacked)),
            betas.new_empty((num_verts, stacked)),
        ],
        "rows": [betas.new_empty((1, num_verts * 3))],
    }[list(_ROUTE_INDEX)[route]]
    saved = [
        betas.new_empty((batch, num_joints, 3)),
        betas.new_empty((batch, num_joints, 4, 4)),
        betas.new_empty((batch, (num_joints - 1) * 9)),
        betas.new_empty((batch, num_verts, 3)),
        *shape_saved,
    ]
    return betas.new_empty((batch, num_verts, 3)), betas.new_empty((batch, num_joints, 3)), saved


def _fused_fake_backward(
    grad_vertices,
    grad_joints,
    betas,
    pose,
    v_template,
    shapedirs,
    posedirs,
    J_regressor,
    lbs_weights,
    parents,
    saved,
    pose2rot,
    route,
    needs,
):
    shapes = (
        betas.shape,
        pose.shape,
        v_template.shape,
        shapedirs.shape,
        posedirs.shape,
        J_regressor.shape,
        lbs_weights.shape,
    )
    return [
        betas.new_empty(shape if need else (0,)) for shape, need in zip(shapes, needs, strict=True)
    ]


def _autograd_fake(*args):
    """lbs_autograd's fake: the fused forward's outputs without the saved list (its arguments
    are the fused forward's, then ``direct``)."""
    vertices, joints, _ = _fused_fake_forward(*args[:-1])
    return vertices, joints


if _extension.has_op("lbs_autograd"):
    torch.library.register_fake("portrait_engine::lbs_autograd")(_autograd_fake)
if _FUSED_NATIVE:
    torch.library.register_fake("portrait_engine::lbs_fused_forward")(_fused_fake_forward)
    torch.library.register_fake("portrait_engine::lbs_fused_backward")(_fused_fake_backward)
if _DIRECT_NATIVE:  # the same schemas and saved tensors (the direct or rows route's)
    torch.library.register_fake("portrait_engine::lbs_direct_forward")(_fused_fake_forward)
    torch.library.register_fake("portrait_engine::lbs_direct_backward")(_fused_fake_backward)


def _skin_op(name: str):
    if name == "triton":
        return torch.ops.portrait_engine.skin_points_triton_forward
    return torch.ops.portrait_engine.skin_points_forward


def _fk_op(name: str):
    if name == "triton":
        return torch.ops.portrait_engine.forward_kinematics_triton_forward
    return torch.ops.portrait_engine.forward_kinematics_forward


def _skin_backward_op(name: str):
    if name == "triton":
        return torch.ops.portrait_engine.skin_points_triton_backward
    return torch.ops.portrait_engine.skin_points_backward


def _fk_backward_op(name: str):
    if name == "triton":
        return torch.ops.portrait_engine.forward_kinematics_triton_backward
    return torch.ops.portrait_engine.forward_kinematics_backward


# --------------------------------------------------------------------------------------------
# skin_points
# --------------------------------------------------------------------------------------------


def _check_size(name: str, tensor: torch.Tensor, dim: int, size: int, what: str) -> None:
    if tensor.shape[dim] != size:
        raise ValueError(
            f"{name} must have {what} = {size} (dimension {dim}), got shape {tuple(tensor.shape)}"
        )


def _validate_skin(points, weights, transforms) -> None:
    v.check_tensor("points", points)
    v.check_tensor("weights", weights)
    v.check_tensor("transforms", transforms)
    v.check_rank("points", points, (3,), "(B, N, 3)")
    v.check_rank("weights", weights, (2, 3), "(N, J) or (B, N, J)")
    v.check_rank("transforms", transforms, (4,), "(B, J, 4, 4)")
    _check_size("points", points, 2, 3, "3 coordinates")
    if tuple(transforms.shape[2:]) != (4, 4):
        raise ValueError(f"transforms must have shape (B, J, 4, 4), got {tuple(transforms.shape)}")
    batch, count = points.shape[:2]
    _check_size("transforms", transforms, 0, batch, "the batch size B of points")
    _check_size("weights", weights, -2, count, "the point count N of points")
    _check_size("weights", weights, -1, transforms.shape[1], "the joint count J of transforms")
    if weights.dim() == 3:
        _check_size("weights", weights, 0, batch, "the batch size B of points")
    if transforms.shape[1] == 0:
        raise ValueError(f"transforms must hold at least one joint, got {tuple(transforms.shape)}")
    for name, tensor in (("points", points), ("weights", weights), ("transforms", transforms)):
        v.check_float(name, tensor)
    v.check_same_device(("points", "weights"), points, weights)
    v.check_same_device(("points", "transforms"), points, transforms)
    v.check_same_dtype(("points", "weights"), points, weights)
    v.check_same_dtype(("points", "transforms"), points, transforms)


def skin_points(
    points: torch.Tensor,
    weights: torch.Tensor,
    transforms: torch.Tensor,
    *,
    inverse: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Blend per-joint transforms by per-point weights and apply them (the LBS core).

    Args:
        points: ``(B, N, 3)``.
        weights: ``(N, J)`` shared by the batch, or ``(B, N, J)`` (skinning weights; they need
            not sum to one).
        transforms: ``(B, J, 4, 4)`` per-joint affine transforms (the bottom row is not read;
            its gradient is zero), e.g. the relative transforms of forward kinematics.
        inverse: apply the inverse of each point's blended transform (posed -> rest space).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``; ``None``: the one in
            force.

    Returns:
        ``(B, N, 3)``: with ``M = Σ_j w_j T_j[:3, :3]`` and ``t = Σ_j w_j T_j[:3, 3]``,
        ``M p + t`` (``inverse=False``) or ``M⁻¹ (p − t)``. fp16 / bf16 accumulate in fp32.
        Gradients flow to all three inputs. A singular blended matrix with ``inverse=True``
        gives inf / NaN for that point, as ``torch.linalg.solve`` raises for it.
    """
    _validate_skin(points, weights, transforms)
    if not isinstance(inverse, bool):
        raise TypeError(f"inverse must be a bool, got {type(inverse).__name__}")
    name = _backend.resolve(backend, points.device, "skin_points_forward")
    if name == "torch":
        return skin_points_reference(points, weights, transforms, inverse)
    if points.shape[1] == 0 and points.shape[0] > 0:
        # nothing to skin, but keep the graph connected to the inputs
        return points + 0 * transforms.sum() + 0 * weights.sum()
    w = weights.unsqueeze(0) if weights.dim() == 2 else weights
    return eager(_skin_op(name))(
        points.contiguous(), w.contiguous(), transforms.contiguous(), inverse
    )


# --------------------------------------------------------------------------------------------
# lbs
# --------------------------------------------------------------------------------------------


def _validate_lbs(
    betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights, pose2rot
):
    named = dict(
        betas=betas,
        pose=pose,
        v_template=v_template,
        shapedirs=shapedirs,
        posedirs=posedirs,
        J_regressor=J_regressor,
        parents=parents,
        lbs_weights=lbs_weights,
    )
    for name, tensor in named.items():
        v.check_tensor(name, tensor)
    if not isinstance(pose2rot, bool):
        raise TypeError(f"pose2rot must be a bool, got {type(pose2rot).__name__}")
    v.check_rank("betas", betas, (2,), "(B, NB)")
    v.check_rank("v_template", v_template, (2, 3), "(V, 3) or (B, V, 3)")
    v.check_rank("shapedirs", shapedirs, (3,), "(V, 3, NB)")
    v.check_rank("posedirs", posedirs, (2,), "((J - 1) * 9, V * 3)")
    v.check_rank("J_regressor", J_regressor, (2,), "(J, V)")
    v.check_rank("parents", parents, (1,), "(J,)")
    v.check_rank("lbs_weights", lbs_weights, (2,), "(V, J)")
    num_joints, num_verts = J_regressor.shape
    if num_joints == 0:
        raise ValueError(
            f"J_regressor must hold at least one joint, got {tuple(J_regressor.shape)}"
        )
    _check_size("v_template", v_template, -2, num_verts, "the vertex count V of J_regressor")
    _check_size("v_template", v_template, -1, 3, "3 coordinates")
    _check_size("shapedirs", shapedirs, 0, num_verts, "the vertex count V of J_regressor")
    _check_size("shapedirs", shapedirs, 1, 3, "3 coordinates")
    _check_size("shapedirs", shapedirs, 2, betas.shape[1], "the shape count NB of betas")
    _check_size("posedirs", posedirs, 0, (num_joints - 1) * 9, "(J - 1) * 9 pose features")
    _check_size("posedirs", posedirs, 1, num_verts * 3, "V * 3")
    _check_size("parents", parents, 0, num_joints, "the joint count J of J_regressor")
    _check_size("lbs_weights", lbs_weights, 0, num_verts, "the vertex count V of J_regressor")
    _check_size("lbs_weights", lbs_weights, 1, num_joints, "the joint count J of J_regressor")
    if pose2rot:
        if pose.dim() != 2 or pose.shape[1] != num_joints * 3:
            raise ValueError(
                f"pose must have shape (B, J * 3) = (B, {num_joints * 3}) of axis-angle "
                f"rotations with pose2rot=True, got {tuple(pose.shape)}"
            )
    elif pose.numel() != pose.shape[0] * num_joints * 9 or pose.dim() not in (2, 3, 4):
        raise ValueError(
            f"pose must hold (B, J, 3, 3) = (B, {num_joints}, 3, 3) rotation matrices with "
            f"pose2rot=False, got {tuple(pose.shape)}"
        )
    batch = max(betas.shape[0], pose.shape[0])
    for tensor in (betas, pose):
        if tensor.shape[0] not in (1, batch):
            raise ValueError(
                f"betas and pose must have the same batch size (or 1), got betas "
                f"{tuple(betas.shape)} and pose {tuple(pose.shape)}"
            )
    if v_template.dim() == 3 and v_template.shape[0] not in (1, batch):
        raise ValueError(
            f"v_template must have batch size 1 or B = {batch}, got {tuple(v_template.shape)}"
        )
    if parents.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"parents must be an integer tensor (int32 or int64), got {parents.dtype}")
    floats = {k: t for k, t in named.items() if k != "parents"}
    for name, tensor in floats.items():
        v.check_float(name, tensor)
    for name, tensor in floats.items():
        v.check_same_dtype(("betas", name), betas, tensor)
    for name, tensor in named.items():
        v.check_same_device(("betas", name), betas, tensor)
    if torch.compiler.is_compiling():  # the tree's values are data; checked in eager mode
        return
    _check_tree(parents)


# Signatures (pose2rot and every input's shape, dtype and device) that passed _validate_lbs:
# its checks read nothing else but the tree's values (checked per tensor below), and at SMPL's
# size on a GPU lbs is bound by host-side work, of which the ~40 checks were ~10 % (2-core CPU,
# 12-vertex model, 2026-11-27: ~20 of ~230 µs per forward+backward). Bounded: cleared when full.
_VALID_LBS_SIGNATURES: set = set()
_MAX_SIGNATURES = 256


def _validate_lbs_cached(*args):
    """_validate_lbs, skipped for a signature that passed before (the tree still checked)."""
    *tensors, pose2rot = args
    if (
        torch.compiler.is_compiling()
        or type(pose2rot) is not bool  # 1 == True: the key would not tell them apart
        or not all(isinstance(t, torch.Tensor) for t in tensors)
    ):
        return _validate_lbs(*args)
    key = (pose2rot, *[(t.shape, t.dtype, t.device) for t in tensors])
    if key in _VALID_LBS_SIGNATURES:
        _check_tree(tensors[6])
        return
    _validate_lbs(*args)
    if len(_VALID_LBS_SIGNATURES) >= _MAX_SIGNATURES:
        _VALID_LBS_SIGNATURES.clear()
    _VALID_LBS_SIGNATURES.add(key)


# parents tensors whose values were checked, with their version counter then. Reading a GPU
# tensor's values waits for the GPU: done on every call, it serialised lbs's kernel launches
# with the previous call's GPU work (H200 profile, 2026-11-26). A tensor object is checked
# again only after an in-place change (its version counter moves).
_CHECKED_TREES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _check_tree(parents: torch.Tensor) -> None:
    version = parents._version
    if _CHECKED_TREES.get(parents) == version:
        return
    parent_list = parents.tolist()
    if parent_list[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parent_list) if i > 0):
        raise ValueError(
            "parents must describe a kinematic tree in topological order (parents[0] = -1, "
            f"0 <= parents[i] < i), got {parent_list}"
        )
    _CHECKED_TREES[parents] = version


# --------------------------------------------------------------------------------------------
# lbs as one autograd node
#
# The forward runs the kernels under one torch.autograd.Function and its backward calls the
# kernels' backward ops with hand-written products between them. As separate autograd nodes
# (the kernels' own autograd, and the products, views, broadcasts and concatenations between
# them) the Python autograd cost more than the kernels at B = 1: on the CPU, native lbs
# forward+backward on a 12-vertex model took ~500 µs; on a GPU that CPU time bounds the wall
# time (H100, 2026-11-26: 1.26 ms at B = 1 against well under 1 ms of kernels).
#
# The shape blend shapes and the joints take one of three routes (_shape_route):
#   "kernel":    the CPU shape_blend kernel (native, a (V, 3) template, B > NB): T + S β and
#                𝒥 [T | S] in one pass; joints 𝒥 T + (𝒥 S) β from its (J, 3 + 3 NB) result;
#   "regressed": the same algebra with torch products (a (V, 3) template, B > NB): the
#                regressor meets the (V, 3 + 3 NB) blend shapes once, cheaper than B shapes;
#   "direct":    up to NB shapes (or a batch of templates), J = 𝒥 v_shaped per shape, with
#                v_shaped moved to (B, 3, V) first: the BLAS runs 𝒥 (J, V) x v_shaped (V, 3)
#                with its stride-3 inner dimension ~3x slower than (3, V) x 𝒥ᵀ plus the copy
#                (this CPU: 110 vs 34 µs at SMPL's size), and the same holds for the backward.
#                On a GPU also for B > NB up to _GPU_DIRECT_MAX_BATCH shapes: there lbs is bound
#                by its host-side work, a launch each ATen call (H100, 2026-11-27: 0.37 ms of
#                kernels in 1.74 ms of wall time at B = 32), and "regressed" makes about 7 more
#                (the concatenation, the 𝒥 [T | S] and β products, their sums) than "direct",
#                whose extra arithmetic (B · 3V · J multiply-adds) is microseconds there.
#   "rows":      a GPU's route for one shape (a (V, 3) template, one betas row): J = 𝒥 v_shaped
#                on v_shaped's own (V, 3) rows, no (3, V) copy, and the joints come out
#                contiguous for the kinematics kernel (no second copy); the backward's two
#                regressor products take the same rows (addmm: no separate add). Three fewer
#                launches than "direct"; the stride-3 products that "direct" avoids on the CPU
#                cost a GPU next to nothing at this size.
# --------------------------------------------------------------------------------------------

# Above it "regressed" on a GPU: "direct" keeps a (B, 3, V) copy of v_shaped for the backward
_GPU_DIRECT_MAX_BATCH = 256


def _shape_route(name, betas, v_template) -> str:
    gpu = betas.device.type != "cpu"
    if gpu and v_template.dim() == 2 and betas.shape[0] == 1:
        return "rows"
    if v_template.dim() == 3 or betas.shape[0] <= betas.shape[1]:
        return "direct"
    if gpu and betas.shape[0] <= _GPU_DIRECT_MAX_BATCH:
        return "direct"
    if name == "native" and _SHAPE_NATIVE and not gpu:
        # CPU only: the CUDA shape_blend (correct on the H100, 2026-11-26) is the same cuBLAS
        # products as the "regressed" route plus a concatenation, so it gains nothing there
        return "kernel"
    return "regressed"


def _shape_forward(route, betas, v_template, shapedirs, J_regressor):
    """v_shaped ``(Bv, V·3)``, joints ``(Bv, J, 3)`` and what the backward keeps: the route's
    tensors."""
    num_joints, num_verts = J_regressor.shape
    if route == "kernel":
        v_shaped, regressed = torch.ops.portrait_engine.shape_blend_forward(
            v_template.contiguous(),
            betas.contiguous(),
            shapedirs.contiguous(),
            J_regressor.contiguous(),
        )
        v_shaped = v_shaped.view(betas.shape[0], num_verts * 3)
        saved = (regressed,)
    else:
        template = v_template.reshape(-1, num_verts * 3)
        shape_dirs = shapedirs.reshape(num_verts * 3, -1)
        if template.shape[0] in (1, betas.shape[0]):
            v_shaped = torch.addmm(template, betas, shape_dirs.t())
        else:  # a batch of templates for one betas row
            v_shaped = template + torch.mm(betas, shape_dirs.t())
        if route == "rows":  # one shape: 𝒥 (J, V) x v_shaped (V, 3), contiguous (1, J, 3)
            joints = torch.mm(J_regressor, v_shaped.view(num_verts, 3)).unsqueeze(0)
            return v_shaped, joints, (v_shaped,)
        if route == "direct":
            # (Bv, 3, V): the regressor's products run on rows of V (see above)
            columns = v_shaped.view(-1, num_verts, 3).transpose(1, 2).contiguous()
            joints = torch.matmul(columns, J_regressor.t()).transpose(1, 2)
            return v_shaped, joints, (columns,)
        # 𝒥 [T | S] as one (J, 3 + 3·NB) product (BLAS runs an N = 3 product far below speed)
        stacked = torch.cat([v_template, shapedirs.reshape(num_verts, -1)], dim=1)
        regressed = torch.mm(J_regressor, stacked)
        saved = (regressed, stacked)
    offsets = torch.mm(betas, regressed[:, 3:].reshape(num_joints * 3, -1).t())
    joints = regressed[:, :3] + offsets.view(-1, num_joints, 3)
    return v_shaped, joints, saved


def _shape_backward(needs, grad_shaped, grad_joints, inputs, route, saved):
    """Gradients of (betas, v_template, shapedirs, J_regressor) from those of v_shaped
    ``(Bv, V·3)`` and the joints ``(Bv, J, 3)``; ``saved`` as _shape_forward returned it."""
    betas, v_template, shapedirs, J_regressor = inputs
    need_betas, need_template, need_dirs, need_regressor = needs
    num_joints, num_verts = J_regressor.shape
    rows = grad_shaped.shape[0]
    grad_betas = grad_regressor = None
    if route == "rows":
        (v_shaped,) = saved
        grad_joints = grad_joints.view(num_joints, 3)
        # v_shaped's gradient plus 𝒥ᵀ dJ, the add in the product
        grad_shaped = torch.addmm(grad_shaped.view(num_verts, 3), J_regressor.t(), grad_joints)
        grad_shaped = grad_shaped.view(1, num_verts * 3)
        if need_regressor:
            grad_regressor = torch.mm(grad_joints, v_shaped.view(num_verts, 3).t())
        grad_template_joints = grad_dirs_joints = None
    elif route == "direct":
        (columns,) = saved
        rows_of_grad = grad_joints.transpose(1, 2)  # (Bv, 3, J)
        grad_columns = torch.matmul(rows_of_grad, J_regressor)  # (Bv, 3, V)
        grad_shaped = grad_shaped.view(rows, num_verts, 3) + grad_columns.transpose(1, 2)
        grad_shaped = grad_shaped.view(rows, num_verts * 3)
        if need_regressor:
            grad_regressor = torch.mm(
                rows_of_grad.permute(2, 0, 1).reshape(num_joints, rows * 3),
                columns.reshape(rows * 3, num_verts),
            )
        grad_template_joints = grad_dirs_joints = None
    else:
        regressed = saved[0]
        flat = grad_joints.reshape(rows, num_joints * 3)
        if need_betas:  # through the joints' (𝒥 S) β
            grad_betas = torch.mm(flat, regressed[:, 3:].reshape(num_joints * 3, -1))
        grad_template_joints = grad_dirs_joints = None
        if need_template or need_dirs or need_regressor:
            grad_regressed = torch.cat(
                [grad_joints.sum(0), torch.mm(flat.t(), betas).view(num_joints, -1)], dim=1
            )
            if route == "kernel":
                grad_template, grad_betas_kernel, grad_dirs, grad_regressor = (
                    torch.ops.portrait_engine.shape_blend_backward(
                        grad_shaped.view(rows, num_verts, 3).contiguous(),
                        grad_regressed,
                        v_template.contiguous(),
                        betas.contiguous(),
                        shapedirs.contiguous(),
                        J_regressor.contiguous(),
                    )
                )
                if need_betas:
                    grad_betas = grad_betas + grad_betas_kernel
                return grad_betas, grad_template, grad_dirs, grad_regressor
            stacked = saved[1]
            if need_regressor:
                grad_regressor = torch.mm(grad_regressed, stacked.t())
            if need_template or need_dirs:
                grad_stacked = torch.mm(J_regressor.t(), grad_regressed)  # (V, 3 + 3·NB)
                grad_template_joints = grad_stacked[:, :3]
                grad_dirs_joints = grad_stacked[:, 3:].reshape(shapedirs.shape)
        # (model tensors without gradients, as in GAN training: the kernel's pass over the
        # blend shapes and the regressor is skipped; β's gradient is two small products)
    # v_shaped = T + S β
    template_rows = 1 if v_template.dim() == 2 else v_template.shape[0]
    shape_dirs = shapedirs.reshape(num_verts * 3, -1)
    # the gradient that meets β: summed over the templates of one betas row
    per_betas = grad_shaped if betas.shape[0] == rows else grad_shaped.sum(0, keepdim=True)
    grad_dirs = None
    grad_betas_shaped = torch.mm(per_betas, shape_dirs) if need_betas else None
    if need_dirs:
        grad_dirs = torch.mm(per_betas.t(), betas).view(shapedirs.shape)
    if grad_betas_shaped is not None:
        grad_betas = grad_betas_shaped if grad_betas is None else grad_betas + grad_betas_shaped
    grad_template = None
    if need_template:
        grad_template = grad_shaped if template_rows == rows else grad_shaped.sum(0)
        grad_template = grad_template.view(v_template.shape)
        if grad_template_joints is not None:
            grad_template = grad_template + grad_template_joints
    if grad_dirs is not None and grad_dirs_joints is not None:
        grad_dirs = grad_dirs + grad_dirs_joints
    return grad_betas, grad_template, grad_dirs, grad_regressor


# 3x3 identities per (dtype, device), for v_posed's pose features R - I: torch.eye is an
# allocation and two kernel launches on CUDA on every call, and lbs at SMPL size is bound by
# such host-side work on a GPU (H100, 2026-11-27: 0.37 ms of kernels in 2.3 ms of wall time)
_IDENTITIES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _identity3(like: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return torch.eye(3, dtype=like.dtype, device=like.device)
    key = (like.dtype, like.device)
    ident = _IDENTITIES.get(key)
    if ident is None:
        # made on the CPU and copied with a blocking copy: in place before any stream reads it
        ident = torch.eye(3, dtype=like.dtype).to(like.device)
        _IDENTITIES[key] = ident
    return ident


class _LBS(torch.autograd.Function):
    """Native / Triton lbs: the shape blend shapes and joints (_shape_forward), forward
    kinematics, the pose blend shapes ``v_posed = v_shaped + P vec(R_{1:} - I)`` and skinning
    as one autograd node (see above)."""

    @staticmethod
    def forward(ctx, *args):
        # (betas, pose, v_template, shapedirs, posedirs, J_regressor, lbs_weights, parents,
        # pose2rot, name): run_forward's arguments
        if torch.compiler.is_compiling():
            return _LBS.run_forward(ctx, *args)
        if args[-1] == "native" and _FUSED_NATIVE:
            return _LBS.run_fused_forward(ctx, *args[:-1])
        # the kernel ops straight to their kernels: their own autograd wrappers (Python, one
        # per op) would only find grad mode off and redispatch (~35 µs of the CPU forward)
        with torch._C._AutoDispatchBelowAutograd():
            return _LBS.run_forward(ctx, *args)

    @staticmethod
    def run_fused_forward(ctx, *args):
        """Native lbs in eager mode: run_forward and backward's calls from C++, one op each
        (csrc/skinning/lbs_fused.cpp), the same kernels, algebra and route. ``args``:
        run_forward's but the backend name, the fused ops' order (betas, pose, v_template,
        shapedirs, posedirs, J_regressor, lbs_weights, parents, pose2rot)."""
        route, direct = _fused_choice(*args[:6])
        ops = torch.ops.portrait_engine
        forward = ops.lbs_direct_forward if direct else ops.lbs_fused_forward
        vertices, posed_joints, saved = forward.default(*args, route)
        ctx.save_for_backward(*args[:8], *saved)
        ctx.meta = (args[8], route)
        ctx.direct = direct
        ctx.fused = True
        # an output that does not reach the loss arrives as None, not as zeros made here: the
        # fused backward takes it as zeros without them (a launch fewer on a GPU)
        ctx.set_materialize_grads(False)
        return vertices, posed_joints

    @staticmethod
    def fused_backward(ctx, grad_vertices, grad_posed_joints):
        inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad[:7]
        ops = torch.ops.portrait_engine
        backward = ops.lbs_direct_backward if ctx.direct else ops.lbs_fused_backward
        grads = backward.default(
            grad_vertices, grad_posed_joints, *inputs[:8], inputs[8:], *ctx.meta, needs
        )
        return (
            *(g if need else None for g, need in zip(grads, needs, strict=True)),
            None,
            None,
            None,
        )

    @staticmethod
    def run_forward(
        ctx,
        betas,
        pose,
        v_template,
        shapedirs,
        posedirs,
        J_regressor,
        lbs_weights,
        parents,
        pose2rot,
        name,
    ):
        native_blend = name == "native" and _BLEND_NATIVE
        route = _shape_route(name, betas, v_template)
        v_shaped, joints, shape_saved = _shape_forward(
            route, betas, v_template, shapedirs, J_regressor
        )
        batch = max(v_shaped.shape[0], pose.shape[0])
        num_joints, num_verts = J_regressor.shape
        if pose2rot:
            kernel_pose = pose.reshape(pose.shape[0], num_joints, 3).expand(batch, -1, -1)
        else:
            kernel_pose = pose.reshape(pose.shape[0], num_joints, 3, 3).expand(batch, -1, -1, -1)
        kernel_pose = kernel_pose.contiguous()
        kernel_joints = joints.expand(batch, -1, -1).contiguous()
        tree = parents.to(torch.int64)
        rot_mats, posed_joints, transforms = _fk_op(name)(
            kernel_pose, kernel_joints, tree, pose2rot
        )
        pose_feature = (rot_mats[:, 1:] - _identity3(rot_mats)).reshape(batch, -1)
        # v_posed = v_shaped + P vec(R - I), the add fused into the product (native CPU: the
        # BLAS, or below a batch of 8 streamed passes; csrc/skinning/skinning_cpu.cpp says why)
        posedirs = posedirs.contiguous()
        if native_blend:
            v_posed = torch.ops.portrait_engine.blend_shapes_forward(
                v_shaped.contiguous(), pose_feature, posedirs
            )
        else:
            v_posed = torch.addmm(v_shaped, pose_feature, posedirs)
        v_posed = v_posed.view(batch, num_verts, 3)
        weights = lbs_weights.unsqueeze(0).contiguous()
        vertices = _skin_op(name)(v_posed, weights, transforms, False)
        ctx.save_for_backward(
            betas,
            v_template,
            shapedirs,
            J_regressor,
            kernel_pose,
            kernel_joints,
            tree,
            transforms,
            pose_feature,
            posedirs,
            v_posed,
            weights,
            *shape_saved,
        )
        ctx.meta = (pose2rot, name, native_blend, route, v_shaped.shape[0], pose.shape)
        return vertices, posed_joints

    @staticmethod
    def backward(ctx, grad_vertices, grad_posed_joints):
        if grad_vertices is None and grad_posed_joints is None:
            # the fused path does not materialize missing gradients: none reached either output
            return (None,) * 10
        device_type = (
            grad_vertices if grad_vertices is not None else grad_posed_joints
        ).device.type
        if torch.is_autocast_enabled(device_type):
            # a backward under autocast: the products in the forward's dtype, as lbs() ran them
            with torch.autocast(device_type, enabled=False):
                return _LBS.run_backward(ctx, grad_vertices, grad_posed_joints)
        return _LBS.run_backward(ctx, grad_vertices, grad_posed_joints)

    @staticmethod
    def run_backward(ctx, grad_vertices, grad_posed_joints):
        if getattr(ctx, "fused", False):
            return _LBS.fused_backward(ctx, grad_vertices, grad_posed_joints)
        (
            betas,
            v_template,
            shapedirs,
            J_regressor,
            kernel_pose,
            kernel_joints,
            tree,
            transforms,
            pose_feature,
            posedirs,
            v_posed,
            weights,
            *shape_saved,
        ) = ctx.saved_tensors
        pose2rot, name, native_blend, route, shaped_rows, pose_shape = ctx.meta
        (
            need_betas,
            need_pose,
            need_template,
            need_dirs,
            need_posedirs,
            need_regressor,
            need_weights,
        ) = ctx.needs_input_grad[:7]
        need_shape = need_betas or need_template or need_dirs or need_regressor
        batch, num_joints = kernel_joints.shape[:2]
        if grad_vertices is None:
            grad_vertices = torch.zeros_like(v_posed)
        grad_v_posed, grad_weights, grad_transforms = _skin_backward_op(name)(
            grad_vertices.contiguous(), v_posed, weights, transforms, False
        )
        grad_v_posed = grad_v_posed.view(batch, -1)
        grad_posedirs = None
        if native_blend:
            grad_feature, grad_posedirs = torch.ops.portrait_engine.blend_shapes_backward(
                grad_v_posed, pose_feature, posedirs, need_posedirs
            )
        else:
            grad_feature = torch.mm(grad_v_posed, posedirs.t())
            if need_posedirs:
                grad_posedirs = torch.mm(pose_feature.t(), grad_v_posed)
        grad_pose = grad_joints = None
        if need_pose or need_shape:
            # the root's rotation gets no gradient from the pose features: one padding kernel
            # (zeros + a slice copy were two launches and two Python-level calls)
            grad_rot = torch.nn.functional.pad(
                grad_feature.view(batch, num_joints - 1, 9), (0, 0, 1, 0)
            ).view(batch, num_joints, 3, 3)
            if grad_posed_joints is None:
                grad_posed_joints = torch.zeros_like(kernel_joints)
            grad_kernel_pose, grad_joints = _fk_backward_op(name)(
                grad_rot,
                grad_posed_joints.contiguous(),
                grad_transforms,
                kernel_pose,
                kernel_joints,
                tree,
                pose2rot,
            )
            if need_pose:
                if pose_shape[0] != batch:  # one pose for the batch
                    grad_kernel_pose = grad_kernel_pose.sum(0, keepdim=True)
                grad_pose = grad_kernel_pose.reshape(pose_shape)
            if shaped_rows != batch:  # one shape for the batch
                grad_joints = grad_joints.sum(0, keepdim=True)
        grad_betas = grad_template = grad_dirs = grad_regressor = None
        if need_shape:
            grad_shaped = grad_v_posed
            if shaped_rows != batch:
                grad_shaped = grad_shaped.sum(0, keepdim=True)
            grad_betas, grad_template, grad_dirs, grad_regressor = _shape_backward(
                (need_betas, need_template, need_dirs, need_regressor),
                grad_shaped,
                grad_joints,
                (betas, v_template, shapedirs, J_regressor),
                route,
                shape_saved,
            )
        return (
            grad_betas if need_betas else None,
            grad_pose,
            grad_template if need_template else None,
            grad_dirs if need_dirs else None,
            grad_posedirs if need_posedirs else None,
            grad_regressor if need_regressor else None,
            grad_weights[0] if need_weights else None,
            None,
            None,
            None,
        )


def lbs(
    betas: torch.Tensor,
    pose: torch.Tensor,
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor,
    J_regressor: torch.Tensor,
    parents: torch.Tensor,
    lbs_weights: torch.Tensor,
    *,
    pose2rot: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SMPL linear blend skinning: ``smplx.lbs.lbs`` with fused kernels.

    Args (smplx's order and shapes):
        betas: ``(B, NB)`` shape coefficients.
        pose: ``(B, J·3)`` axis-angle per joint (``pose2rot=True``) or ``(B, J, 3, 3)``
            rotation matrices (``pose2rot=False``).
        v_template: ``(V, 3)`` (or ``(B, V, 3)``) template vertices.
        shapedirs: ``(V, 3, NB)`` shape blend shapes.
        posedirs: ``((J−1)·9, V·3)`` pose blend shapes.
        J_regressor: ``(J, V)`` joint regressor.
        parents: ``(J,)`` integer kinematic tree, ``parents[0] = -1``, ``parents[i] < i``.
        lbs_weights: ``(V, J)`` skinning weights.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``.

    Returns:
        ``(vertices (B, V, 3), joints (B, J, 3))`` as smplx:
        ``v_shaped = T + Σ β_l S_l``, ``J = 𝒥 v_shaped``, Rodrigues rotations,
        ``v_posed = v_shaped + P vec(R_{1:} − I)``, forward kinematics, and
        ``v = Σ_j w_j A_j (v_posed, 1)``. Differentiable w.r.t. every float input.
    """
    _validate_lbs_cached(
        betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights, pose2rot
    )
    # the skinning schema file defines forward_kinematics and skin_points together
    name = _backend.resolve(backend, betas.device, "forward_kinematics_forward")
    batch = max(betas.shape[0], pose.shape[0])
    num_joints = J_regressor.shape[0]
    if batch == 0 or min(betas.shape[0], pose.shape[0]) == 0:
        # smplx's reshapes fail on an empty batch; the result is simply empty
        empty = betas.new_empty(0, 3)
        return empty.new_empty(0, v_template.shape[-2], 3), empty.new_empty(0, num_joints, 3)
    if name == "torch" or v_template.shape[-2] == 0:
        # (a model of no vertices: the kernels' (B, V·3) reshapes have no size to infer; smplx's
        # formulas give the joints of an empty mesh, all at the origin before posing)
        return lbs_reference(
            betas,
            pose,
            v_template,
            shapedirs,
            posedirs,
            J_regressor,
            parents,
            lbs_weights,
            pose2rot,
        )
    args = (
        betas,
        pose,
        v_template,
        shapedirs,
        posedirs,
        J_regressor,
        lbs_weights,
        parents,
        pose2rot,
        name,
    )
    device_type = betas.device.type
    if torch.is_autocast_enabled(device_type):
        # the kernels take one dtype, and autocast would run the shape part's products in
        # fp16 / bf16 beside the fp32 pose: lbs computes in its inputs' dtype (the kernels
        # accumulate half inputs in fp32 anyway)
        with torch.autocast(device_type, enabled=False):
            return _LBS.apply(*args)
    if (
        name == "native"
        and _FUSED_NATIVE
        and device_type in _AUTOGRAD_DEVICES
        and not torch.compiler.is_compiling()
    ):
        # the fused path's autograd node in C++ (csrc/skinning/lbs_autograd.cpp); args is in
        # the fused ops' order, the backend name last
        return tuple(
            torch.ops.portrait_engine.lbs_autograd.default(*args[:-1], *_fused_choice(*args[:6]))
        )
    return _LBS.apply(*args)
