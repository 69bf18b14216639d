"""References of linear blend skinning (SMPL's ``lbs``), ``skin_points`` and ``mesh_deform``.

Written from the published formulas:

* SMPL (Loper et al. 2015) as implemented by ``smplx.lbs.lbs``: shape blend shapes
  ``v_shaped = T + Σ_l β_l S_l``, joints ``J = 𝒥 v_shaped``, Rodrigues rotations
  ``R = I + sin θ K + (1 − cos θ) K²`` (``θ = |r + 1e-8|``, ``K`` the cross-product matrix of
  ``r / θ``), pose blend shapes ``v_posed = v_shaped + P · vec(R_{1:} − I)``, forward
  kinematics along the kinematic tree ``G_i = G_{parent(i)} [R_i | J_i − J_parent(i)]``,
  relative transforms ``A_i = G_i − [0 | G_i (J_i, 0)ᵀ]`` and skinning
  ``v = Σ_j w_j A_j (v_posed, 1)``.
* 3DPortraitGAN's observation-to-canonical transfer (``ImportanceRenderer.
  get_deformed_coordinate``): the nearest posed triangle, its frame
  ``x = unit(v1 − v0)``, ``y = unit((v1 − v0) × (v2 − v0))``, ``z = x × y``, and the point's
  coordinates in that frame re-expanded in the canonical triangle's frame.
"""

from __future__ import annotations

import math

import torch

# SMPL's kinematic tree: the parent of each of the 24 joints (-1 for the pelvis).
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def batch_rodrigues_reference(rot_vecs: torch.Tensor) -> torch.Tensor:
    """``(N, 3)`` axis-angle -> ``(N, 3, 3)`` rotations, smplx's formula exactly.

    ``θ = |r + 1e-8|`` (the offset keeps the norm differentiable at 0), ``k = r / θ``,
    ``R = I + sin θ [k]× + (1 − cos θ) [k]×²``.
    """
    angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)
    rot_dir = rot_vecs / angle
    cos = torch.cos(angle).unsqueeze(1)
    sin = torch.sin(angle).unsqueeze(1)
    rx, ry, rz = torch.split(rot_dir, 1, dim=1)
    zeros = torch.zeros_like(rx)
    skew = torch.cat([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(-1, 3, 3)
    ident = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device).unsqueeze(0)
    return ident + sin * skew + (1 - cos) * torch.bmm(skew, skew)


def forward_kinematics_reference(
    rot_mats: torch.Tensor, joints: torch.Tensor, parents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics along a kinematic tree (smplx ``batch_rigid_transform``).

    ``rot_mats`` ``(B, J, 3, 3)`` local rotations, ``joints`` ``(B, J, 3)`` rest joints,
    ``parents`` ``(J,)`` with ``parents[0] = -1`` and ``parents[i] < i``. Returns the posed
    joints ``(B, J, 3)`` (translation of the global transform ``G_i``) and the relative
    transforms ``A_i = G_i − [0 | G_i (J_i, 0)ᵀ]`` ``(B, J, 4, 4)``, which map rest-pose points
    to posed points.
    """
    batch, num_joints = joints.shape[:2]
    parent_list = [int(p) for p in parents.tolist()]
    rel_joints = joints.clone()
    rel_joints[:, 1:] = joints[:, 1:] - joints[:, parent_list[1:]]
    bottom = joints.new_zeros(batch, num_joints, 1, 4)
    bottom[..., 3] = 1
    local = torch.cat(
        [torch.cat([rot_mats, rel_joints.unsqueeze(-1)], dim=-1), bottom], dim=-2
    )  # (B, J, 4, 4)
    chain = [local[:, 0]]
    for i in range(1, num_joints):
        chain.append(torch.matmul(chain[parent_list[i]], local[:, i]))
    transforms = torch.stack(chain, dim=1)
    posed_joints = transforms[:, :, :3, 3]
    joints_homogen = torch.cat([joints, joints.new_zeros(batch, num_joints, 1)], dim=-1)
    offset = torch.matmul(transforms, joints_homogen.unsqueeze(-1))  # (B, J, 4, 1)
    rel_transforms = transforms.clone()
    rel_transforms[..., 3:] = transforms[..., 3:] - offset
    return posed_joints, rel_transforms


def lbs_reference(
    betas: torch.Tensor,
    pose: torch.Tensor,
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor,
    J_regressor: torch.Tensor,
    parents: torch.Tensor,
    lbs_weights: torch.Tensor,
    pose2rot: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SMPL linear blend skinning, the same computation as ``smplx.lbs.lbs``.

    Shapes (smplx's): ``betas`` ``(B, NB)``, ``pose`` ``(B, J·3)`` axis-angle (or
    ``(B, J, 3, 3)`` / ``(B, J·9)`` rotations with ``pose2rot=False``), ``v_template``
    ``(V, 3)`` or ``(B, V, 3)``, ``shapedirs`` ``(V, 3, NB)``, ``posedirs`` ``((J−1)·9, V·3)``,
    ``J_regressor`` ``(J, V)``, ``parents`` ``(J,)``, ``lbs_weights`` ``(V, J)``.
    Returns ``vertices`` ``(B, V, 3)`` and posed ``joints`` ``(B, J, 3)``.
    """
    batch = max(betas.shape[0], pose.shape[0])
    v_shaped = v_template + torch.einsum("bl,mkl->bmk", betas, shapedirs)
    joints = torch.einsum("bik,ji->bjk", v_shaped, J_regressor)
    ident = torch.eye(3, dtype=v_shaped.dtype, device=v_shaped.device)
    if pose2rot:
        rot_mats = batch_rodrigues_reference(pose.reshape(-1, 3)).view(batch, -1, 3, 3)
    else:
        rot_mats = pose.reshape(batch, -1, 3, 3)
    pose_feature = (rot_mats[:, 1:] - ident).reshape(batch, -1)
    v_posed = v_shaped + torch.matmul(pose_feature, posedirs).view(batch, -1, 3)
    posed_joints, transforms = forward_kinematics_reference(rot_mats, joints, parents)
    weights = lbs_weights.unsqueeze(0).expand(batch, -1, -1)
    num_joints = J_regressor.shape[0]
    per_vertex = torch.matmul(weights, transforms.view(batch, num_joints, 16)).view(batch, -1, 4, 4)
    homogen = torch.cat([v_posed, v_posed.new_ones(batch, v_posed.shape[1], 1)], dim=2)
    vertices = torch.matmul(per_vertex, homogen.unsqueeze(-1))[:, :, :3, 0]
    return vertices, posed_joints


def skin_points_reference(
    points: torch.Tensor,
    weights: torch.Tensor,
    transforms: torch.Tensor,
    inverse: bool = False,
) -> torch.Tensor:
    """Blend per-joint affine transforms per point and apply them (or their inverse).

    ``points`` ``(B, N, 3)``, ``weights`` ``(N, J)`` or ``(B, N, J)``, ``transforms``
    ``(B, J, 4, 4)`` (only the top 3 rows are read: affine transforms). With
    ``M = Σ_j w_j T_j[:3, :3]`` and ``t = Σ_j w_j T_j[:3, 3]``: ``M p + t``, or with
    ``inverse=True`` ``M⁻¹ (p − t)``. fp16 / bf16 are computed in float32.
    """
    dtype = points.dtype
    compute = _compute_dtype(dtype)
    if weights.dim() == 2:
        weights = weights.unsqueeze(0)
    blended = torch.einsum("bnj,bjrc->bnrc", weights.to(compute), transforms[:, :, :3].to(compute))
    rot, trans = blended[..., :3], blended[..., 3]
    p = points.to(compute)
    if inverse:
        out = torch.linalg.solve(rot, (p - trans).unsqueeze(-1)).squeeze(-1)
    else:
        out = torch.matmul(rot, p.unsqueeze(-1)).squeeze(-1) + trans
    return out.to(dtype)


# --------------------------------------------------------------------------------------------
# mesh_deform
# --------------------------------------------------------------------------------------------


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def _segment_distance2(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance from ``p`` to the segment ``ab`` (a point when ``a == b``)."""
    ab = b - a
    denom = _dot(ab, ab)
    t = torch.where(denom > 0, _dot(p - a, ab) / torch.where(denom > 0, denom, 1), 0)
    t = t.clamp(0, 1)
    d = p - (a + t.unsqueeze(-1) * ab)
    return _dot(d, d)


def point_triangle_distance2(
    p: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor
) -> torch.Tensor:
    """Squared Euclidean distance from points to triangles (broadcasting over leading dims).

    If the projection of ``p`` on the triangle's plane falls inside the triangle (every edge
    sees it on the inner side of the normal ``n = (v1 − v0) × (v2 − v0)``), the distance is
    ``(n · (p − v0))² / |n|²``; otherwise the nearest of the three edges. A degenerate triangle
    (``n = 0``) is the union of its edges.
    """
    e0, e1, e2 = v1 - v0, v2 - v1, v0 - v2
    n = torch.cross(e0, v2 - v0, dim=-1)
    nn = _dot(n, n)
    inside = (
        (_dot(torch.cross(e0, p - v0, dim=-1), n) >= 0)
        & (_dot(torch.cross(e1, p - v1, dim=-1), n) >= 0)
        & (_dot(torch.cross(e2, p - v2, dim=-1), n) >= 0)
        & (nn > 0)
    )
    plane = _dot(n, p - v0) ** 2 / torch.where(nn > 0, nn, 1)
    edges = torch.minimum(
        torch.minimum(_segment_distance2(p, v0, v1), _segment_distance2(p, v1, v2)),
        _segment_distance2(p, v2, v0),
    )
    return torch.where(inside, plane, edges)


def nearest_faces_reference(
    points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: for each point the nearest face (ties -> lowest index) and its distance.

    ``points`` ``(B, N, 3)``, ``vertices`` ``(B, V, 3)``, ``faces`` ``(F, 3)`` ->
    ``(index (B, N) int64, distance (B, N))``. Points are processed in chunks of ``chunk`` to
    bound the ``(B, chunk, F)`` distance table.
    """
    tri = vertices[:, faces.long()]  # (B, F, 3, 3)
    v0, v1, v2 = (tri[:, None, :, k] for k in range(3))
    indices, distances = [], []
    for start in range(0, points.shape[1], chunk):
        p = points[:, start : start + chunk, None, :]
        d2 = point_triangle_distance2(p, v0, v1, v2)  # (B, n, F)
        value, index = d2.min(dim=-1)  # first minimum: ties -> lowest face index
        indices.append(index)
        distances.append(value.sqrt())
    if not indices:
        empty = points.new_zeros(points.shape[:2])
        return empty.long(), empty
    return torch.cat(indices, dim=1), torch.cat(distances, dim=1)


def nearest_two_distances(
    points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, chunk: int = 2048
) -> torch.Tensor:
    """``(B, N, 2)``: each point's distances to its nearest and second-nearest face (brute
    force, chunked like :func:`nearest_faces_reference`). Where the two are (nearly) equal the
    choice of face is a tie that float rounding decides: tests and benchmarks leave such points
    out of their comparisons."""
    tri = vertices[:, faces.long()]
    v0, v1, v2 = (tri[:, None, :, k] for k in range(3))
    pairs = []
    for start in range(0, points.shape[1], chunk):
        d2 = point_triangle_distance2(points[:, start : start + chunk, None, :], v0, v1, v2)
        pairs.append(d2.topk(min(2, d2.shape[-1]), dim=-1, largest=False).values.sqrt())
    if not pairs:
        return points.new_zeros(*points.shape[:2], 2)
    two = torch.cat(pairs, dim=1)
    return two if two.shape[-1] == 2 else torch.cat([two, torch.full_like(two, math.inf)], -1)


def triangle_frames(v0: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor):
    """The frame ``(x, y, z)`` of triangles and whether it exists (non-degenerate triangle).

    ``x = unit(v1 − v0)``, ``y = unit((v1 − v0) × (v2 − v0))``, ``z = x × y``
    (3DPortraitGAN's convention). Degenerate triangles (zero edge or zero area) get a zero
    frame and ``valid = False``.
    """
    e = v1 - v0
    n = torch.cross(e, v2 - v0, dim=-1)
    ee, nn = _dot(e, e), _dot(n, n)
    valid = (ee > 0) & (nn > 0)
    x = e / torch.where(valid, ee, 1).sqrt().unsqueeze(-1)
    y = n / torch.where(valid, nn, 1).sqrt().unsqueeze(-1)
    z = torch.cross(x, y, dim=-1)
    return x, y, z, valid


def mesh_deform_reference(
    points: torch.Tensor,
    posed_vertices: torch.Tensor,
    canonical_vertices: torch.Tensor,
    faces: torch.Tensor,
    thickness: float,
) -> torch.Tensor:
    """3DPortraitGAN's observation-to-canonical transfer of sample points, by brute force.

    ``points`` ``(B, N, 3)``, ``posed_vertices`` and ``canonical_vertices`` ``(B, V, 3)``,
    ``faces`` ``(F, 3)``. For each point ``p``: the posed face ``f`` nearest by Euclidean
    point-to-triangle distance ``d`` (ties -> lowest index). If ``d < thickness`` and both
    frames of ``f`` exist: with the posed frame ``(x, y, z)`` at ``v0`` and the canonical frame
    ``(x', y', z')`` at ``v0'``, ``p' = v0' + Σ_k ⟨p − v0, e_k⟩ e'_k``. Otherwise ``p`` is
    returned unchanged. The choice of ``f`` is not differentiated (as the published code's
    ``no_grad`` search); gradients flow to the points and both vertex sets through the frames.
    """
    dtype = points.dtype
    compute = _compute_dtype(dtype)
    p = points.to(compute)
    posed = posed_vertices.to(compute)
    canonical = canonical_vertices.to(compute)
    faces = faces.long()
    if canonical.dim() == 2:
        canonical = canonical.unsqueeze(0).expand_as(posed)
    with torch.no_grad():
        index, distance = nearest_faces_reference(p, posed, faces)
    chosen = faces[index]  # (B, N, 3)
    batch_index = torch.arange(p.shape[0], device=p.device)[:, None, None]
    pv = posed[batch_index, chosen]  # (B, N, 3, 3)
    cv = canonical[batch_index, chosen]
    px, py, pz, p_valid = triangle_frames(pv[..., 0, :], pv[..., 1, :], pv[..., 2, :])
    cx, cy, cz, c_valid = triangle_frames(cv[..., 0, :], cv[..., 1, :], cv[..., 2, :])
    local = p - pv[..., 0, :]
    moved = (
        cv[..., 0, :]
        + _dot(local, px).unsqueeze(-1) * cx
        + _dot(local, py).unsqueeze(-1) * cy
        + _dot(local, pz).unsqueeze(-1) * cz
    )
    inside = (distance < thickness) & p_valid & c_valid
    return torch.where(inside.unsqueeze(-1), moved, p).to(dtype)
