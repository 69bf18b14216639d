"""Importance sampling and sample merging: the public ops, their registration and autograd.

``sample_importance`` (EG3D's ``sample_importance`` + ``sample_pdf``) and ``merge_samples``
(EG3D's ``unify_samples``, for any number of per-sample tensors). Formulas: the reference,
``portrait_engine/ops/reference/importance.py``; kernels: ``kernels/importance.py`` (Triton) and
``csrc/importance/`` (C++ CPU and CUDA); contract: ``docs/kernel_contract_importance.md``.

The uniform draws are made here, in PyTorch, with the caller's generator, and handed to every
backend: all backends transform the same ``u`` and agree to rounding.

``merge_samples`` is three kernel ops: ``merge_samples_index`` gives, for every sample of
either set, its position in the merged list (a rank found by binary search in the other
sorted set: no sort); ``merge_samples_scatter`` writes one tensor's samples to those
positions; its backward, ``merge_samples_gather``, reads them back. The merge is a
permutation, so both directions are plain copies: no atomics, deterministic. On a GPU both
kernels stream their destination contiguously (the scatter through the inverse permutation),
so they run near copy bandwidth (the layout and why: the contract's "GPU copies").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from portrait_engine import _backend, _extension
from portrait_engine.ops import _validation as v
from portrait_engine.ops._library import eager, register_native_pair, register_pair
from portrait_engine.ops.reference.importance import (
    importance_uniforms,
    merge_samples_reference,
    sample_importance_reference,
)

# --------------------------------------------------------------------------------------------
# Kernel-level custom ops (prepared inputs; no validation)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("portrait_engine::sample_importance_triton", mutates_args=())
def _triton_sample_importance(
    depths: torch.Tensor, weights: torch.Tensor, u: torch.Tensor, sort: bool
) -> torch.Tensor:
    from portrait_engine.kernels import importance as kernels

    return kernels.sample_importance(depths, weights, u, sort)


@torch.library.custom_op("portrait_engine::merge_samples_triton_index", mutates_args=())
def _triton_merge_index(
    depths1: torch.Tensor, depths2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import importance as kernels

    return kernels.merge_index(depths1, depths2)


@torch.library.custom_op("portrait_engine::merge_samples_triton_scatter", mutates_args=())
def _triton_merge_scatter(
    values1: torch.Tensor, values2: torch.Tensor, positions1: torch.Tensor, positions2: torch.Tensor
) -> torch.Tensor:
    from portrait_engine.kernels import importance as kernels

    return kernels.merge_scatter(values1, values2, positions1, positions2)


@torch.library.custom_op("portrait_engine::merge_samples_triton_gather", mutates_args=())
def _triton_merge_gather(
    grad: torch.Tensor, positions1: torch.Tensor, positions2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import importance as kernels

    return kernels.merge_gather(grad, positions1, positions2)


def _fake_sample_importance(depths, weights, u, sort):
    return depths.new_empty(u.shape)


def _fake_merge_index(depths1, depths2):
    return (
        depths1.new_empty(depths1.shape, dtype=torch.int32),
        depths2.new_empty(depths2.shape, dtype=torch.int32),
    )


def _fake_merge_scatter(values1, values2, positions1, positions2):
    rays, first, channels = values1.shape
    return values1.new_empty((rays, first + values2.shape[1], channels))


def _fake_merge_gather(grad, positions1, positions2):
    rays, _, channels = grad.shape
    return (
        grad.new_empty((rays, positions1.shape[1], channels)),
        grad.new_empty((rays, positions2.shape[1], channels)),
    )


def _setup_scatter(ctx, inputs, output):
    _, _, positions1, positions2 = inputs
    ctx.save_for_backward(positions1, positions2)


def _make_scatter_autograd(gather_op):
    def backward(ctx, grad):
        positions1, positions2 = ctx.saved_tensors
        grad1, grad2 = gather_op(grad.contiguous(), positions1, positions2)
        return grad1, grad2, None, None

    return backward


_SCATTER_REGISTRATION = dict(
    fake_forward=_fake_merge_scatter,
    fake_backward=_fake_merge_gather,
    setup_context=_setup_scatter,
    make_backward=_make_scatter_autograd,
)
torch.library.register_fake("portrait_engine::sample_importance_triton")(_fake_sample_importance)
torch.library.register_fake("portrait_engine::merge_samples_triton_index")(_fake_merge_index)
register_pair(
    "merge_samples_triton_scatter", "merge_samples_triton_gather", **_SCATTER_REGISTRATION
)
_NATIVE_REGISTERED = register_native_pair(
    "merge_samples_scatter", "merge_samples_gather", **_SCATTER_REGISTRATION
)
for _op, _fake in (
    ("sample_importance", _fake_sample_importance),
    ("merge_samples_index", _fake_merge_index),
):
    if _extension.has_op(_op):
        torch.library.register_fake(f"portrait_engine::{_op}")(_fake)


# --------------------------------------------------------------------------------------------
# sample_importance
# --------------------------------------------------------------------------------------------


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    # eager only: reading the answer back is a device sync (and a graph break when compiling).
    # One reduction, no mask tensor: the sum is finite when every element is (an overflow of
    # finite values to inf is confirmed element-wise before anything is raised).
    if torch.compiler.is_compiling() or tensor.numel() == 0:
        return
    if not bool(torch.isfinite(tensor.sum())):
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(f"{name} must be finite (no NaN or inf), got {bad} such elements")


def _validate_importance(depths, weights, n_importance, deterministic, generator, sort):
    v.check_tensor("depths", depths)
    v.check_tensor("weights", weights)
    v.check_rank("depths", depths, (4,), "(B, R, S, 1)")
    v.check_rank("weights", weights, (4,), "(B, R, S-1, 1)")
    if depths.shape[-1] != 1:
        raise ValueError(f"depths must have shape (B, R, S, 1), got {tuple(depths.shape)}")
    batch, rays, samples, _ = depths.shape
    if samples < 4:
        raise ValueError(
            "depths must hold at least 4 samples per ray (S >= 4: the pdf is built from the "
            f"S-3 inner interval weights, as in EG3D), got {tuple(depths.shape)}"
        )
    if tuple(weights.shape) != (batch, rays, samples - 1, 1):
        raise ValueError(
            f"weights must have shape (B, R, S-1, 1) = {(batch, rays, samples - 1, 1)} for depths "
            f"{tuple(depths.shape)}, got {tuple(weights.shape)}"
        )
    v.check_float("depths", depths)
    v.check_float("weights", weights)
    v.check_same_device(("depths", "weights"), depths, weights)
    v.check_same_dtype(("depths", "weights"), depths, weights)
    if isinstance(n_importance, bool) or not isinstance(n_importance, int):
        raise TypeError(f"n_importance must be an int, got {type(n_importance).__name__}")
    if n_importance < 0:
        raise ValueError(f"n_importance must be >= 0, got {n_importance}")
    _check_flag("deterministic", deterministic)
    _check_flag("sort", sort)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        if torch.device(generator.device).type != depths.device.type:
            raise ValueError(
                f"generator must be on the device of depths, got generator on {generator.device} "
                f"and depths on {depths.device}"
            )
    _check_finite("weights", weights)


def sample_importance(
    depths: torch.Tensor,
    weights: torch.Tensor,
    n_importance: int,
    *,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    sort: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Importance samples along rays from the coarse pass (EG3D's ``sample_importance``).

    Args:
        depths: ``(B, R, S, 1)`` coarse sample depths of each ray, S >= 4.
        weights: ``(B, R, S-1, 1)`` the ray marcher's interval weights (``ray_march``'s third
            output), same dtype and device; finite. (Depths are not checked for finiteness:
            a ray with a NaN or infinite depth gets unspecified samples, which may differ
            between backends, as its running maximum under ``sort`` does.)
        n_importance: samples to draw per ray (0 gives an empty ``(B, R, 0, 1)``).
        deterministic: draw ``u = linspace(0, 1, n_importance)`` for every ray instead of
            ``U[0, 1)`` (EG3D's ``det=True``).
        generator: the ``torch.Generator`` of the random draws (on the device of ``depths``);
            ``None`` uses the global generator, as EG3D's ``torch.rand`` does.
        sort: return each ray's samples in increasing depth (the draws are sorted first: the
            same samples, in order, ready for :func:`merge_samples`).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``; ``None`` uses the
            backend in force.

    Returns:
        ``(B, R, n_importance, 1)`` depths in the dtype of ``depths``, never differentiable.
        Weights smoothed by max-pool 2 / avg-pool 2, + 0.01; a piecewise-linear inverse CDF over
        the interval midpoints with the inner S-3 weights (+1e-5); ``searchsorted(right=True)``
        (formulas: :mod:`portrait_engine.ops.reference.importance`). Computed in fp32 (fp64 for
        fp64 inputs). The draws are one ``torch.rand(B·R, n_importance)`` in float32, the same
        for every backend.
    """
    _validate_importance(depths, weights, n_importance, deterministic, generator, sort)
    batch, rays, samples, _ = depths.shape
    u = importance_uniforms(
        batch * rays,
        n_importance,
        deterministic=deterministic,
        generator=generator,
        device=depths.device,
    )
    name = _backend.resolve(backend, depths.device, "sample_importance")
    if name == "torch" or batch * rays * n_importance == 0:
        return sample_importance_reference(depths, weights, n_importance, sort=sort, u=u)
    flat_depths = depths.detach().reshape(batch * rays, samples).contiguous()
    flat_weights = weights.detach().reshape(batch * rays, samples - 1).contiguous()
    if name == "triton":
        op = torch.ops.portrait_engine.sample_importance_triton
    else:
        op = torch.ops.portrait_engine.sample_importance
    fine = op(flat_depths, flat_weights, u, sort)
    return fine.reshape(batch, rays, n_importance, 1)


# --------------------------------------------------------------------------------------------
# merge_samples
# --------------------------------------------------------------------------------------------


# Depth tensors known to be sorted along their sample axis and finite, with their version
# counter then: those that passed _check_sorted and are finite, merge_samples' outputs of two
# such tensors, and those sorted by construction (the renderer's coarse depths between fixed
# limits, through mark_sorted). The check is two passes over the tensor and, on a GPU, a device
# sync per merge; a tensor object is checked again only after an in-place change (its version
# counter moves). Writes through ``.data`` or shared storage that bypass the version counter
# are not seen, as for lbs's tree. Inference-mode tensors have no version counter: always
# checked. (sample_importance's outputs are not marked: absurd weights can overflow its pdf
# into NaN, which only the check sees.)
_KNOWN_SORTED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _trackable(depths: torch.Tensor) -> bool:
    return not torch.compiler.is_compiling() and not depths.is_inference()


def mark_sorted(depths: torch.Tensor) -> torch.Tensor:
    """Record ``depths`` ``(B, R, S, 1)`` as sorted along S for every ray and finite, so
    :func:`merge_samples` does not check it again (only for depths sorted by construction)."""
    if _trackable(depths):
        _KNOWN_SORTED[depths] = depths._version
    return depths


def _known_sorted(depths: torch.Tensor) -> bool:
    # compiled code never checks (nor marks); inference tensors have no version counter
    return _trackable(depths) and _KNOWN_SORTED.get(depths) == depths._version


def _check_sorted(name: str, depths: torch.Tensor) -> None:
    # eager only, like the finiteness check: a merge needs each ray's depths non-decreasing.
    # One comparison pass: a NaN compares false, so it fails the test too.
    if torch.compiler.is_compiling() or depths.numel() == 0 or _known_sorted(depths):
        return
    if depths.shape[-2] == 1:
        ordered = ~torch.isnan(depths).any()
    else:
        ordered = (depths[..., 1:, :] >= depths[..., :-1, :]).all()
    # sorted and without NaN, it is finite when each ray's first and last depths are (inf is
    # allowed through, but a merge of it is not known to be finite): read back with the
    # order in one transfer (one device sync, as the order alone took)
    ends = torch.cat((depths[..., :1, :], depths[..., -1:, :]), dim=-2)
    ordered, finite = torch.stack((ordered, torch.isfinite(ends).all())).tolist()
    if not ordered:
        if bool(torch.isnan(depths).any()):
            raise ValueError(f"{name} must not contain NaN")
        raise ValueError(
            f"{name} must be sorted (non-decreasing) along the sample axis of each ray; "
            "sample_importance(..., sort=True) gives sorted fine depths"
        )
    if finite:
        mark_sorted(depths)


def _mark_merged(merged: torch.Tensor, depths1: torch.Tensor, depths2: torch.Tensor):
    """The merge of two depth tensors known sorted and finite is too."""
    if _known_sorted(depths1) and _known_sorted(depths2):
        mark_sorted(merged)
    return merged


def _validate_merge(depths1, depths2, values1, values2):
    for name, depths in (("depths1", depths1), ("depths2", depths2)):
        v.check_tensor(name, depths)
        v.check_rank(name, depths, (4,), "(B, R, S, 1)")
        if depths.shape[-1] != 1:
            raise ValueError(f"{name} must have shape (B, R, S, 1), got {tuple(depths.shape)}")
        v.check_float(name, depths)
    if depths1.shape[:2] != depths2.shape[:2]:
        raise ValueError(
            "depths1 and depths2 must have the same (B, R), got "
            f"{tuple(depths1.shape)} and {tuple(depths2.shape)}"
        )
    v.check_same_device(("depths1", "depths2"), depths1, depths2)
    v.check_same_dtype(("depths1", "depths2"), depths1, depths2)
    for name, values in (("values1", values1), ("values2", values2)):
        if isinstance(values, torch.Tensor) or not isinstance(values, (tuple, list)):
            raise TypeError(
                f"{name} must be a tuple or list of tensors, got {type(values).__name__}"
            )
    if len(values1) != len(values2):
        raise ValueError(
            "values1 and values2 must hold the same number of tensors, got "
            f"{len(values1)} and {len(values2)}"
        )
    for k, (first, second) in enumerate(zip(values1, values2, strict=True)):
        for name, value, depths in (
            (f"values1[{k}]", first, depths1),
            (f"values2[{k}]", second, depths2),
        ):
            v.check_tensor(name, value)
            v.check_rank(name, value, (4,), "(B, R, S, C)")
            if value.shape[:3] != depths.shape[:3]:
                raise ValueError(
                    f"{name} must have shape (B, R, S, C) with (B, R, S) = "
                    f"{tuple(depths.shape[:3])} of its depths, got {tuple(value.shape)}"
                )
            v.check_float(name, value)
            v.check_same_device((name, "depths1"), value, depths1)
        if first.shape[-1] != second.shape[-1]:
            raise ValueError(
                f"values1[{k}] and values2[{k}] must have the same channel count C, got "
                f"{tuple(first.shape)} and {tuple(second.shape)}"
            )
        v.check_same_dtype((f"values1[{k}]", f"values2[{k}]"), first, second)
    _check_sorted("depths1", depths1)
    _check_sorted("depths2", depths2)


def merge_samples(
    depths1: torch.Tensor,
    depths2: torch.Tensor,
    values1: Sequence[torch.Tensor] = (),
    values2: Sequence[torch.Tensor] = (),
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Merge two depth-sorted sample sets of every ray (EG3D's ``unify_samples``).

    Args:
        depths1: ``(B, R, S1, 1)`` the first set's depths (the coarse samples), sorted
            (non-decreasing) along S1 for every ray.
        depths2: ``(B, R, S2, 1)`` the second set's depths (the fine samples), sorted too.
        values1: per-sample tensors of the first set, each ``(B, R, S1, C_k)`` (colours,
            densities, ...); ``values2[k]`` ``(B, R, S2, C_k)`` pairs with ``values1[k]``
            (same C_k and dtype).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``; ``None`` uses the
            backend in force.

    Returns:
        ``(depths, values)``: the merged depths ``(B, R, S1+S2, 1)`` in depth order and a
        tuple of the merged values ``(B, R, S1+S2, C_k)``, each the samples of both sets in the
        same order. Equal depths keep the first set's sample first. Gradients flow to every
        value tensor and to the depths (the merge is a permutation: its backward is a gather).
    """
    _validate_merge(depths1, depths2, values1, values2)
    name = _backend.resolve(backend, depths1.device, "merge_samples_index")
    if name == "torch":
        merged_depths, merged = merge_samples_reference(
            depths1, depths2, tuple(values1), tuple(values2)
        )
        return _mark_merged(merged_depths, depths1, depths2), merged

    batch, rays, first, _ = depths1.shape
    second = depths2.shape[2]
    n_rays = batch * rays
    flat1 = depths1.reshape(n_rays, first)
    flat2 = depths2.reshape(n_rays, second)
    if name == "triton":
        ops = torch.ops.portrait_engine
        index, scatter = ops.merge_samples_triton_index, eager(ops.merge_samples_triton_scatter)
    else:
        ops = torch.ops.portrait_engine
        index, scatter = ops.merge_samples_index, eager(ops.merge_samples_scatter)
    positions1, positions2 = index(flat1.detach().contiguous(), flat2.detach().contiguous())

    def merge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        channels = a.shape[-1]
        out = scatter(
            a.reshape(n_rays, first, channels).contiguous(),
            b.reshape(n_rays, second, channels).contiguous(),
            positions1,
            positions2,
        )
        return out.reshape(batch, rays, first + second, channels)

    merged_depths = _mark_merged(merge(depths1, depths2), depths1, depths2)
    return merged_depths, tuple(merge(a, b) for a, b in zip(values1, values2, strict=True))
