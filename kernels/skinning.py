"""Triton kernels of linear blend skinning (``portrait_engine.ops.skinning``).

What they compute (contract: ``docs/kernel_contract_skinning.md``):

* ``forward_kinematics``: per batch element, Rodrigues of every joint's axis-angle (smplx's
  formula, ``θ = |r + 1e-8|``), the chain ``G_i = G_parent(i) [R_i | j_i − j_parent(i)]`` and the
  relative transforms ``A_i = [Rg_i | tg_i − Rg_i j_i]``, in one launch. The batch is the
  vector dimension: a program owns ``BLOCK_B`` batch elements and walks the J joints in order,
  keeping the global transforms in a small fp32 workspace it re-reads by parent index (each
  lane only reads what it wrote itself). The backward recomputes the chain, then walks it in
  reverse, accumulating the gradients of the parents' global transforms in a workspace, and
  finishes with the Rodrigues backward of every joint.
* ``skin_points``: per point, ``M = Σ_j w_j A_j`` formed in registers (12 vectors over a block
  of points, never stored), then ``M (p, 1)`` or ``M⁻¹ (p − t)`` (adjugate inverse). The
  backward gives ``grad_points`` per point and writes per-program partial sums of
  ``grad_transforms`` (and, for weights shared by the batch, per-batch ``grad_weights``) that
  the launcher reduces with ``torch.sum`` in a fixed order: no atomics, deterministic.

All math is fp32 (fp64 for fp64 inputs), index math int64, every load and store masked.
Launchers pick large blocks under the interpreter (its cost is per program instance).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from portrait_engine.kernels._alloc import empty_output
from portrait_engine.kernels._device import load_xyz as _load_xyz
from portrait_engine.kernels._launch import compute_dtype as _compute_dtype
from portrait_engine.kernels._launch import device_guard as _device_guard
from portrait_engine.kernels._launch import interpreting as _interpreting

# --------------------------------------------------------------------------------------------
# Forward kinematics
# --------------------------------------------------------------------------------------------


@triton.jit
def _rodrigues(r0, r1, r2):
    a0 = r0 + 1e-8
    a1 = r1 + 1e-8
    a2 = r2 + 1e-8
    angle = tl.sqrt(a0 * a0 + a1 * a1 + a2 * a2)
    kx = r0 / angle
    ky = r1 / angle
    kz = r2 / angle
    s = tl.sin(angle)
    c1 = 1.0 - tl.cos(angle)
    # R = I + s K + c1 K^2 with K = [[0, -kz, ky], [kz, 0, -kx], [-ky, kx, 0]]
    r00 = 1.0 + c1 * (-kz * kz - ky * ky)
    r01 = -s * kz + c1 * (ky * kx)
    r02 = s * ky + c1 * (kz * kx)
    r10 = s * kz + c1 * (kx * ky)
    r11 = 1.0 + c1 * (-kz * kz - kx * kx)
    r12 = -s * kx + c1 * (kz * ky)
    r20 = -s * ky + c1 * (kx * kz)
    r21 = s * kx + c1 * (ky * kz)
    r22 = 1.0 + c1 * (-ky * ky - kx * kx)
    return r00, r01, r02, r10, r11, r12, r20, r21, r22


@triton.jit
def _rodrigues_backward(r0, r1, r2, d00, d01, d02, d10, d11, d12, d20, d21, d22):
    a0 = r0 + 1e-8
    a1 = r1 + 1e-8
    a2 = r2 + 1e-8
    angle = tl.sqrt(a0 * a0 + a1 * a1 + a2 * a2)
    kx = r0 / angle
    ky = r1 / angle
    kz = r2 / angle
    s = tl.sin(angle)
    c = tl.cos(angle)
    c1 = 1.0 - c
    # K entries (row-major): k01 = -kz, k02 = ky, k10 = kz, k12 = -kx, k20 = -ky, k21 = kx
    # K^2 = k k^T - |k|^2 I
    kk = kx * kx + ky * ky + kz * kz
    q00 = kx * kx - kk
    q11 = ky * ky - kk
    q22 = kz * kz - kk
    q01 = kx * ky
    q02 = kx * kz
    q12 = ky * kz
    dangle = c * (d01 * -kz + d02 * ky + d10 * kz + d12 * -kx + d20 * -ky + d21 * kx) + s * (
        d00 * q00
        + d11 * q11
        + d22 * q22
        + (d01 + d10) * q01
        + (d02 + d20) * q02
        + (d12 + d21) * q12
    )
    # dK = s dR + c1 S with S = dR K^T + K^T dR; only off-diagonal entries feed dk
    # (dkx = dK21 - dK12, dky = dK02 - dK20, dkz = dK10 - dK01). S_ij = (row i of dR) . (row j
    # of K) + (column i of K) . (column j of dR), K's rows (0, -kz, ky), (kz, 0, -kx),
    # (-ky, kx, 0)
    s01 = (d00 * kz - d02 * kx) + (kz * d11 - ky * d21)
    s10 = (-d11 * kz + d12 * ky) + (-kz * d00 + kx * d20)
    s21 = (d20 * kz - d22 * kx) + (ky * d01 - kx * d11)
    s12 = (-d10 * ky + d11 * kx) + (-kz * d02 + kx * d22)
    s02 = (-d00 * ky + d01 * kx) + (kz * d12 - ky * d22)
    s20 = (-d21 * kz + d22 * ky) + (ky * d00 - kx * d10)
    dkx = (s * d21 + c1 * s21) - (s * d12 + c1 * s12)
    dky = (s * d02 + c1 * s02) - (s * d20 + c1 * s20)
    dkz = (s * d10 + c1 * s10) - (s * d01 + c1 * s01)
    inv = 1.0 / angle
    dangle = dangle - (dkx * r0 + dky * r1 + dkz * r2) * inv * inv
    g0 = dkx * inv + dangle * a0 * inv
    g1 = dky * inv + dangle * a1 * inv
    g2 = dkz * inv + dangle * a2 * inv
    return g0, g1, g2


@triton.jit
def _tile_index(BLOCK_B: tl.constexpr):
    rows = tl.arange(0, 4)[None, :, None]
    cols = tl.arange(0, 4)[None, None, :]
    return rows, cols


@triton.jit
def _matmul4(a, b):
    # (BLOCK_B, 4, 4) x (BLOCK_B, 4, 4) per lane
    return tl.sum(a[:, :, :, None] * b[:, None, :, :], axis=2)


@triton.jit
def _rotation_into(rot_ws, base, mask, pose_ptr, POSE2ROT: tl.constexpr):
    """Rodrigues (or a copy of the given matrices) into the fp32 rotation workspace."""
    if POSE2ROT:
        r0 = tl.load(pose_ptr + base * 3 + 0, mask=mask, other=0.0).to(rot_ws.dtype.element_ty)
        r1 = tl.load(pose_ptr + base * 3 + 1, mask=mask, other=0.0).to(rot_ws.dtype.element_ty)
        r2 = tl.load(pose_ptr + base * 3 + 2, mask=mask, other=0.0).to(rot_ws.dtype.element_ty)
        m00, m01, m02, m10, m11, m12, m20, m21, m22 = _rodrigues(r0, r1, r2)
        tl.store(rot_ws + base * 9 + 0, m00, mask=mask)
        tl.store(rot_ws + base * 9 + 1, m01, mask=mask)
        tl.store(rot_ws + base * 9 + 2, m02, mask=mask)
        tl.store(rot_ws + base * 9 + 3, m10, mask=mask)
        tl.store(rot_ws + base * 9 + 4, m11, mask=mask)
        tl.store(rot_ws + base * 9 + 5, m12, mask=mask)
        tl.store(rot_ws + base * 9 + 6, m20, mask=mask)
        tl.store(rot_ws + base * 9 + 7, m21, mask=mask)
        tl.store(rot_ws + base * 9 + 8, m22, mask=mask)
    else:
        k = tl.arange(0, 16)[None, :]
        km = mask[:, None] & (k < 9)
        values = tl.load(pose_ptr + base[:, None] * 9 + k, mask=km, other=0.0)
        tl.store(rot_ws + base[:, None] * 9 + k, values.to(rot_ws.dtype.element_ty), mask=km)


@triton.jit
def _local_transform(rot_ws, joints_ptr, base, pbase, is_root, mask3, rows, cols):
    """[R_i | j_i - j_parent] as a (BLOCK_B, 4, 4) tile (the root: [R_0 | j_0])."""
    top = rows < 3
    rot = tl.load(
        rot_ws + base[:, None, None] * 9 + rows * 3 + cols, mask=mask3 & top & (cols < 3), other=0.0
    )
    jv = tl.load(joints_ptr + base[:, None, None] * 3 + rows, mask=mask3 & top, other=0.0)
    jp = tl.load(
        joints_ptr + pbase[:, None, None] * 3 + rows, mask=mask3 & top & (is_root == 0), other=0.0
    )
    # upcast before subtracting (half-precision arithmetic is not reliable in the interpreter)
    t = jv.to(rot_ws.dtype.element_ty) - jp.to(rot_ws.dtype.element_ty)
    local = tl.where(cols == 3, t, rot)
    return tl.where((rows == 3) & (cols == 3), 1.0, local)


@triton.jit
def _parent_transform(g_ws, pbase, is_root, mask3, rows, cols):
    loaded = tl.load(g_ws + pbase[:, None, None] * 16 + rows * 4 + cols, mask=mask3, other=0.0)
    identity = tl.where(rows == cols, 1.0, 0.0)
    return tl.where(is_root != 0, identity, loaded)


@triton.jit
def _fk_forward_kernel(
    pose_ptr,
    joints_ptr,
    parents_ptr,
    rot_ws,
    g_ws,
    pj_ptr,
    rel_ptr,
    B,
    J,
    POSE2ROT: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    mask = offs_b < B
    mask3 = mask[:, None, None]
    n_joints = tl.cast(J, tl.int64)
    rows, cols = _tile_index(BLOCK_B)
    for i in range(0, J):
        base = offs_b * n_joints + i
        _rotation_into(rot_ws, base, mask, pose_ptr, POSE2ROT)
        tl.debug_barrier()
        parent = tl.load(parents_ptr + i)
        is_root = (offs_b * 0 + i) == 0
        is_root3 = is_root[:, None, None].to(tl.int32)
        pbase = offs_b * n_joints + tl.maximum(parent, 0)
        local = _local_transform(rot_ws, joints_ptr, base, pbase, is_root3, mask3, rows, cols)
        g = _matmul4(_parent_transform(g_ws, pbase, is_root3, mask3, rows, cols), local)
        tl.store(g_ws + base[:, None, None] * 16 + rows * 4 + cols, g, mask=mask3)
        tl.debug_barrier()
        # posed joint = the translation column; relative transform = G - [0 | G (j, 0)]
        jh = tl.load(
            joints_ptr + base[:, None, None] * 3 + cols, mask=mask3 & (cols < 3), other=0.0
        ).to(g.dtype)  # (BLOCK_B, 1, 4): (j, 0)
        gj = tl.sum(g * jh, axis=2)  # (BLOCK_B, 4): G (j, 0)
        rel = tl.where(cols == 3, g - gj[:, :, None], g)
        tl.store(
            rel_ptr + base[:, None, None] * 16 + rows * 4 + cols,
            rel.to(rel_ptr.dtype.element_ty),
            mask=mask3,
        )
        translation = tl.sum(tl.where(cols == 3, g, 0.0), axis=2)  # (BLOCK_B, 4)
        r2 = tl.arange(0, 4)[None, :]
        tl.store(
            pj_ptr + base[:, None] * 3 + r2,
            translation.to(pj_ptr.dtype.element_ty),
            mask=mask[:, None] & (r2 < 3),
        )


@triton.jit
def _fk_backward_kernel(
    pose_ptr,
    joints_ptr,
    parents_ptr,
    grad_rot_ptr,
    grad_pj_ptr,
    grad_rel_ptr,
    rot_ws,
    g_ws,
    dg_ws,
    drot_ws,
    dj_ws,
    grad_pose_ptr,
    grad_joints_ptr,
    B,
    J,
    POSE2ROT: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    mask = offs_b < B
    mask3 = mask[:, None, None]
    n_joints = tl.cast(J, tl.int64)
    rows, cols = _tile_index(BLOCK_B)
    top = rows < 3
    r2 = tl.arange(0, 4)[None, :]
    mask2 = mask[:, None] & (r2 < 3)
    # 1. the chain again, and the gradients of the global transforms from each joint's outputs
    for i in range(0, J):
        base = offs_b * n_joints + i
        _rotation_into(rot_ws, base, mask, pose_ptr, POSE2ROT)
        tl.debug_barrier()
        parent = tl.load(parents_ptr + i)
        is_root3 = ((offs_b * 0 + i) == 0)[:, None, None].to(tl.int32)
        pbase = offs_b * n_joints + tl.maximum(parent, 0)
        local = _local_transform(rot_ws, joints_ptr, base, pbase, is_root3, mask3, rows, cols)
        g = _matmul4(_parent_transform(g_ws, pbase, is_root3, mask3, rows, cols), local)
        tl.store(g_ws + base[:, None, None] * 16 + rows * 4 + cols, g, mask=mask3)
        tl.debug_barrier()
        d_rel = tl.load(
            grad_rel_ptr + base[:, None, None] * 16 + rows * 4 + cols, mask=mask3 & top, other=0.0
        ).to(g.dtype)
        u = tl.sum(tl.where(cols == 3, d_rel, 0.0), axis=2)  # (BLOCK_B, 4): dRel[:, 3]
        jh = tl.load(
            joints_ptr + base[:, None, None] * 3 + cols, mask=mask3 & (cols < 3), other=0.0
        ).to(g.dtype)
        d_pj = tl.load(grad_pj_ptr + base[:, None] * 3 + r2, mask=mask2, other=0.0).to(g.dtype)
        dg = d_rel - u[:, :, None] * jh + tl.where(cols == 3, d_pj[:, :, None], 0.0)
        tl.store(dg_ws + base[:, None, None] * 16 + rows * 4 + cols, dg, mask=mask3)
        dj = -tl.sum(g * u[:, :, None], axis=1)  # (BLOCK_B, 4): -Rg^T dRel[:, 3]
        tl.store(dj_ws + base[:, None] * 4 + r2, dj, mask=mask2)
    tl.debug_barrier()
    # 2. reverse: dL_i = G_p^T dG_i, dG_p += dG_i L_i^T, dj_i += dt, dj_p -= dt
    for step in range(0, J - 1):
        i = J - 1 - step
        base = offs_b * n_joints + i
        parent = tl.load(parents_ptr + i)
        pbase = offs_b * n_joints + parent
        zero3 = (offs_b * 0)[:, None, None].to(tl.int32)
        local = _local_transform(rot_ws, joints_ptr, base, pbase, zero3, mask3, rows, cols)
        gp = tl.load(g_ws + pbase[:, None, None] * 16 + rows * 4 + cols, mask=mask3, other=0.0)
        dg = tl.load(dg_ws + base[:, None, None] * 16 + rows * 4 + cols, mask=mask3, other=0.0)
        dl = tl.sum(gp[:, :, :, None] * dg[:, :, None, :], axis=1)  # G_p^T dG_i
        tl.store(
            drot_ws + base[:, None, None] * 9 + rows * 3 + cols,
            dl,
            mask=mask3 & top & (cols < 3),
        )
        dt = tl.sum(tl.where(cols == 3, dl, 0.0), axis=2)  # (BLOCK_B, 4)
        dgp = tl.load(dg_ws + pbase[:, None, None] * 16 + rows * 4 + cols, mask=mask3, other=0.0)
        dgp += tl.sum(dg[:, :, None, :] * local[:, None, :, :], axis=3)  # dG_i L_i^T
        tl.store(dg_ws + pbase[:, None, None] * 16 + rows * 4 + cols, dgp, mask=mask3)
        dji = tl.load(dj_ws + base[:, None] * 4 + r2, mask=mask2, other=0.0)
        tl.store(dj_ws + base[:, None] * 4 + r2, dji + dt, mask=mask2)
        tl.debug_barrier()
        djp = tl.load(dj_ws + pbase[:, None] * 4 + r2, mask=mask2, other=0.0)
        tl.store(dj_ws + pbase[:, None] * 4 + r2, djp - dt, mask=mask2)
        tl.debug_barrier()
    # 3. the root, then every joint's rotation gradient through Rodrigues
    base0 = offs_b * n_joints
    dg0 = tl.load(dg_ws + base0[:, None, None] * 16 + rows * 4 + cols, mask=mask3, other=0.0)
    tl.store(
        drot_ws + base0[:, None, None] * 9 + rows * 3 + cols, dg0, mask=mask3 & top & (cols < 3)
    )
    dj0 = tl.load(dj_ws + base0[:, None] * 4 + r2, mask=mask2, other=0.0)
    tl.store(
        dj_ws + base0[:, None] * 4 + r2,
        dj0 + tl.sum(tl.where(cols == 3, dg0, 0.0), axis=2),
        mask=mask2,
    )
    tl.debug_barrier()
    for i in range(0, J):
        base = offs_b * n_joints + i
        dj = tl.load(dj_ws + base[:, None] * 4 + r2, mask=mask2, other=0.0)
        tl.store(
            grad_joints_ptr + base[:, None] * 3 + r2,
            dj.to(grad_joints_ptr.dtype.element_ty),
            mask=mask2,
        )
        k = tl.arange(0, 16)[None, :]
        km = mask[:, None] & (k < 9)
        d = tl.load(drot_ws + base[:, None] * 9 + k, mask=km, other=0.0)
        d += tl.load(grad_rot_ptr + base[:, None] * 9 + k, mask=km, other=0.0).to(d.dtype)
        if POSE2ROT:
            tl.store(drot_ws + base[:, None] * 9 + k, d, mask=km)
            tl.debug_barrier()
            dr = drot_ws + base * 9
            r0 = tl.load(pose_ptr + base * 3 + 0, mask=mask, other=0.0).to(d.dtype)
            r1 = tl.load(pose_ptr + base * 3 + 1, mask=mask, other=0.0).to(d.dtype)
            r2_ = tl.load(pose_ptr + base * 3 + 2, mask=mask, other=0.0).to(d.dtype)
            g0, g1, g2 = _rodrigues_backward(
                r0,
                r1,
                r2_,
                tl.load(dr + 0, mask=mask, other=0.0),
                tl.load(dr + 1, mask=mask, other=0.0),
                tl.load(dr + 2, mask=mask, other=0.0),
                tl.load(dr + 3, mask=mask, other=0.0),
                tl.load(dr + 4, mask=mask, other=0.0),
                tl.load(dr + 5, mask=mask, other=0.0),
                tl.load(dr + 6, mask=mask, other=0.0),
                tl.load(dr + 7, mask=mask, other=0.0),
                tl.load(dr + 8, mask=mask, other=0.0),
            )
            out_ty = grad_pose_ptr.dtype.element_ty
            tl.store(grad_pose_ptr + base * 3 + 0, g0.to(out_ty), mask=mask)
            tl.store(grad_pose_ptr + base * 3 + 1, g1.to(out_ty), mask=mask)
            tl.store(grad_pose_ptr + base * 3 + 2, g2.to(out_ty), mask=mask)
        else:
            tl.store(
                grad_pose_ptr + base[:, None] * 9 + k,
                d.to(grad_pose_ptr.dtype.element_ty),
                mask=km,
            )


def _fk_block(batch: int) -> int:
    if _interpreting():
        return max(2, min(64, triton.next_power_of_2(max(batch, 1))))
    return 32


def forward_kinematics_forward(pose, joints, parents, pose2rot: bool):
    """``(rot_mats (B, J, 3, 3), posed_joints (B, J, 3), rel_transforms (B, J, 4, 4))``."""
    batch, num_joints = joints.shape[:2]
    compute = _compute_dtype(joints.dtype)
    device = joints.device
    rot_ws = torch.empty((batch, num_joints, 3, 3), dtype=compute, device=device)
    g_ws = torch.empty((batch, num_joints, 16), dtype=compute, device=device)
    pj = empty_output((batch, num_joints, 3), dtype=joints.dtype, device=device)
    rel = empty_output((batch, num_joints, 4, 4), dtype=joints.dtype, device=device)
    if batch and num_joints:
        block = _fk_block(batch)
        with _device_guard(joints):
            _fk_forward_kernel[(triton.cdiv(batch, block),)](
                pose, joints, parents, rot_ws, g_ws, pj, rel, batch, num_joints,
                POSE2ROT=pose2rot, BLOCK_B=block,
            )  # fmt: skip
    return rot_ws.to(joints.dtype), pj, rel


def forward_kinematics_backward(grad_rot, grad_pj, grad_rel, pose, joints, parents, pose2rot):
    """``(grad_pose, grad_joints)`` of :func:`forward_kinematics_forward`."""
    batch, num_joints = joints.shape[:2]
    compute = _compute_dtype(joints.dtype)
    device = joints.device
    rot_ws = torch.empty((batch, num_joints, 9), dtype=compute, device=device)
    g_ws = torch.empty((batch, num_joints, 16), dtype=compute, device=device)
    dg_ws = torch.empty((batch, num_joints, 16), dtype=compute, device=device)
    drot_ws = torch.empty((batch, num_joints, 9), dtype=compute, device=device)
    dj_ws = torch.empty((batch, num_joints, 4), dtype=compute, device=device)
    grad_pose = empty_output(pose.shape, dtype=pose.dtype, device=device)
    grad_joints = empty_output(joints.shape, dtype=joints.dtype, device=device)
    if batch and num_joints:
        block = _fk_block(batch)
        with _device_guard(joints):
            _fk_backward_kernel[(triton.cdiv(batch, block),)](
                pose, joints, parents, grad_rot, grad_pj, grad_rel, rot_ws, g_ws, dg_ws,
                drot_ws, dj_ws, grad_pose, grad_joints, batch, num_joints,
                POSE2ROT=pose2rot, BLOCK_B=block,
            )  # fmt: skip
    return grad_pose, grad_joints


# --------------------------------------------------------------------------------------------
# skin_points
# --------------------------------------------------------------------------------------------


@triton.jit
def _blend(w_row, a_base, J, mask, COMPUTE: tl.constexpr, BLOCK_N: tl.constexpr):
    """M = Σ_j w_j A_j for a block of points: 12 vectors (the top rows of M)."""
    m0 = tl.zeros((BLOCK_N,), COMPUTE)
    m1 = tl.zeros((BLOCK_N,), COMPUTE)
    m2 = tl.zeros((BLOCK_N,), COMPUTE)
    m3 = tl.zeros((BLOCK_N,), COMPUTE)
    m4 = tl.zeros((BLOCK_N,), COMPUTE)
    m5 = tl.zeros((BLOCK_N,), COMPUTE)
    m6 = tl.zeros((BLOCK_N,), COMPUTE)
    m7 = tl.zeros((BLOCK_N,), COMPUTE)
    m8 = tl.zeros((BLOCK_N,), COMPUTE)
    m9 = tl.zeros((BLOCK_N,), COMPUTE)
    m10 = tl.zeros((BLOCK_N,), COMPUTE)
    m11 = tl.zeros((BLOCK_N,), COMPUTE)
    for j in range(0, J):
        w = tl.load(w_row + j, mask=mask, other=0.0).to(COMPUTE)
        a = a_base + j * 16
        m0 += w * tl.load(a + 0).to(COMPUTE)
        m1 += w * tl.load(a + 1).to(COMPUTE)
        m2 += w * tl.load(a + 2).to(COMPUTE)
        m3 += w * tl.load(a + 3).to(COMPUTE)
        m4 += w * tl.load(a + 4).to(COMPUTE)
        m5 += w * tl.load(a + 5).to(COMPUTE)
        m6 += w * tl.load(a + 6).to(COMPUTE)
        m7 += w * tl.load(a + 7).to(COMPUTE)
        m8 += w * tl.load(a + 8).to(COMPUTE)
        m9 += w * tl.load(a + 9).to(COMPUTE)
        m10 += w * tl.load(a + 10).to(COMPUTE)
        m11 += w * tl.load(a + 11).to(COMPUTE)
    return m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11


@triton.jit
def _inverse3(a, b, c, d, e, f, g, h, i):
    c0 = e * i - f * h
    c1 = f * g - d * i
    c2 = d * h - e * g
    rdet = 1.0 / (a * c0 + b * c1 + c * c2)
    return (
        c0 * rdet,
        (c * h - b * i) * rdet,
        (b * f - c * e) * rdet,
        c1 * rdet,
        (a * i - c * g) * rdet,
        (c * d - a * f) * rdet,
        c2 * rdet,
        (b * g - a * h) * rdet,
        (a * e - b * d) * rdet,
    )


@triton.jit
def _skin_block_prologue(
    points_ptr,
    weights_ptr,
    transforms_ptr,
    N,
    J,
    weights_batch_stride,
    COMPUTE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The program's block of points (program ids: point block, batch element): its offsets,
    mask, weight rows, transforms, the 12 blended values per point and the points."""
    pid = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    n_points = tl.cast(N, tl.int64)
    n_joints = tl.cast(J, tl.int64)
    offs = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = offs < n_points
    w_row = weights_ptr + b * tl.cast(weights_batch_stride, tl.int64) + offs * n_joints
    a_base = transforms_ptr + b * n_joints * 16
    m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11 = _blend(
        w_row, a_base, J, mask, COMPUTE, BLOCK_N
    )
    x, y, z = _load_xyz(points_ptr + (b * n_points + offs) * 3, mask, COMPUTE)
    return (
        pid, b, n_points, n_joints, offs, mask, w_row, a_base,
        m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, x, y, z,
    )  # fmt: skip


@triton.jit
def _skin_inverse(mask, m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, x, y, z):
    """``M⁻¹ (p − t)`` and the inverse ``M⁻¹`` (row-major) of each lane's blended transform."""
    # padded lanes blend nothing (M = 0): give them the identity, not a division by zero
    m0 = tl.where(mask, m0, 1.0)
    m5 = tl.where(mask, m5, 1.0)
    m10 = tl.where(mask, m10, 1.0)
    i0, i1, i2, i3, i4, i5, i6, i7, i8 = _inverse3(m0, m1, m2, m4, m5, m6, m8, m9, m10)
    qx = x - m3
    qy = y - m7
    qz = z - m11
    ox = i0 * qx + i1 * qy + i2 * qz
    oy = i3 * qx + i4 * qy + i5 * qz
    oz = i6 * qx + i7 * qy + i8 * qz
    return ox, oy, oz, i0, i1, i2, i3, i4, i5, i6, i7, i8


@triton.jit
def _skin_forward_kernel(
    points_ptr,
    weights_ptr,
    transforms_ptr,
    out_ptr,
    N,
    J,
    weights_batch_stride,
    INVERSE: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    (
        pid, b, n_points, n_joints, offs, mask, w_row, a_base,
        m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, x, y, z,
    ) = _skin_block_prologue(
        points_ptr, weights_ptr, transforms_ptr, N, J, weights_batch_stride, COMPUTE, BLOCK_N
    )  # fmt: skip
    if INVERSE:
        ox, oy, oz, _, _, _, _, _, _, _, _, _ = _skin_inverse(
            mask, m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, x, y, z
        )
    else:
        ox = m0 * x + m1 * y + m2 * z + m3
        oy = m4 * x + m5 * y + m6 * z + m7
        oz = m8 * x + m9 * y + m10 * z + m11
    o = out_ptr + (b * n_points + offs) * 3
    tl.store(o + 0, ox.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o + 1, oy.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o + 2, oz.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _skin_backward_kernel(
    grad_out_ptr,
    points_ptr,
    weights_ptr,
    transforms_ptr,
    grad_points_ptr,
    grad_weights_ptr,
    partial_ptr,
    N,
    J,
    weights_batch_stride,
    INVERSE: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    (
        pid, b, n_points, n_joints, offs, mask, w_row, a_base,
        m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, x, y, z,
    ) = _skin_block_prologue(
        points_ptr, weights_ptr, transforms_ptr, N, J, weights_batch_stride, COMPUTE, BLOCK_N
    )  # fmt: skip
    n_blocks = tl.num_programs(0).to(tl.int64)
    gx, gy, gz = _load_xyz(grad_out_ptr + (b * n_points + offs) * 3, mask, COMPUTE)
    if INVERSE:
        ox, oy, oz, i0, i1, i2, i3, i4, i5, i6, i7, i8 = _skin_inverse(
            mask, m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, x, y, z
        )
        # g' = M^-T g; dM = -g' (out, 1)^T
        px = i0 * gx + i3 * gy + i6 * gz
        py = i1 * gx + i4 * gy + i7 * gz
        pz = i2 * gx + i5 * gy + i8 * gz
        ux = -px
        uy = -py
        uz = -pz
        vx = ox
        vy = oy
        vz = oz
    else:
        # gp = M^T g; dM = g (p, 1)^T
        px = m0 * gx + m4 * gy + m8 * gz
        py = m1 * gx + m5 * gy + m9 * gz
        pz = m2 * gx + m6 * gy + m10 * gz
        ux = gx
        uy = gy
        uz = gz
        vx = x
        vy = y
        vz = z
    # padded lanes (w = 0, M = 0: an infinite inverse) must add nothing to the partial sums
    ux = tl.where(mask, ux, 0.0)
    uy = tl.where(mask, uy, 0.0)
    uz = tl.where(mask, uz, 0.0)
    vx = tl.where(mask, vx, 0.0)
    vy = tl.where(mask, vy, 0.0)
    vz = tl.where(mask, vz, 0.0)
    gp = grad_points_ptr + (b * n_points + offs) * 3
    tl.store(gp + 0, px.to(grad_points_ptr.dtype.element_ty), mask=mask)
    tl.store(gp + 1, py.to(grad_points_ptr.dtype.element_ty), mask=mask)
    tl.store(gp + 2, pz.to(grad_points_ptr.dtype.element_ty), mask=mask)
    # dM = u (v, 1)^T: grad_w_j = <A_j, dM>, partial grad_A_j = Σ_points w_j dM
    gw_row = grad_weights_ptr + (b * n_points + offs) * n_joints
    part = partial_ptr + ((b * n_blocks + pid) * n_joints) * 12
    for j in range(0, J):
        a = a_base + j * 16
        s = ux * (
            tl.load(a + 0).to(COMPUTE) * vx
            + tl.load(a + 1).to(COMPUTE) * vy
            + tl.load(a + 2).to(COMPUTE) * vz
            + tl.load(a + 3).to(COMPUTE)
        )
        s += uy * (
            tl.load(a + 4).to(COMPUTE) * vx
            + tl.load(a + 5).to(COMPUTE) * vy
            + tl.load(a + 6).to(COMPUTE) * vz
            + tl.load(a + 7).to(COMPUTE)
        )
        s += uz * (
            tl.load(a + 8).to(COMPUTE) * vx
            + tl.load(a + 9).to(COMPUTE) * vy
            + tl.load(a + 10).to(COMPUTE) * vz
            + tl.load(a + 11).to(COMPUTE)
        )
        tl.store(gw_row + j, s.to(grad_weights_ptr.dtype.element_ty), mask=mask)
        w = tl.load(w_row + j, mask=mask, other=0.0).to(COMPUTE)
        wu_x = w * ux
        wu_y = w * uy
        wu_z = w * uz
        pj = part + j * 12
        tl.store(pj + 0, tl.sum(wu_x * vx, axis=0))
        tl.store(pj + 1, tl.sum(wu_x * vy, axis=0))
        tl.store(pj + 2, tl.sum(wu_x * vz, axis=0))
        tl.store(pj + 3, tl.sum(wu_x, axis=0))
        tl.store(pj + 4, tl.sum(wu_y * vx, axis=0))
        tl.store(pj + 5, tl.sum(wu_y * vy, axis=0))
        tl.store(pj + 6, tl.sum(wu_y * vz, axis=0))
        tl.store(pj + 7, tl.sum(wu_y, axis=0))
        tl.store(pj + 8, tl.sum(wu_z * vx, axis=0))
        tl.store(pj + 9, tl.sum(wu_z * vy, axis=0))
        tl.store(pj + 10, tl.sum(wu_z * vz, axis=0))
        tl.store(pj + 11, tl.sum(wu_z, axis=0))


def _skin_block(count: int) -> int:
    if _interpreting():
        return max(16, min(4096, triton.next_power_of_2(max(count, 1))))
    return 128


def _tl_compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def skin_points_forward(points, weights, transforms, inverse: bool):
    """``(B, N, 3)``: ``points`` ``(B, N, 3)``, ``weights`` ``(1 or B, N, J)``, ``transforms``
    ``(B, J, 4, 4)``, all contiguous."""
    batch, count = points.shape[:2]
    joints = transforms.shape[1]
    out = empty_output(points.shape, dtype=points.dtype, device=points.device)
    if batch and count:
        block = _skin_block(count)
        w_stride = 0 if weights.shape[0] == 1 else count * joints
        with _device_guard(points):
            _skin_forward_kernel[(triton.cdiv(count, block), batch)](
                points, weights, transforms, out, count, joints, w_stride,
                INVERSE=inverse, COMPUTE=_tl_compute(points.dtype), BLOCK_N=block,
            )  # fmt: skip
    return out


def skin_points_backward(grad_out, points, weights, transforms, inverse: bool):
    """``(grad_points, grad_weights, grad_transforms)`` of :func:`skin_points_forward`."""
    batch, count = points.shape[:2]
    joints = transforms.shape[1]
    device = points.device
    compute = _compute_dtype(points.dtype)
    grad_points = empty_output(points.shape, dtype=points.dtype, device=device)
    if batch == 0 or count == 0:
        return grad_points, torch.zeros_like(weights), torch.zeros_like(transforms)
    block = _skin_block(count)
    blocks = triton.cdiv(count, block)
    shared = weights.shape[0] == 1
    # per-batch grad_weights (summed over the batch below when the weights are shared)
    grad_weights = empty_output(
        (batch, count, joints), dtype=compute if shared else weights.dtype, device=device
    )
    partial = torch.empty((batch, blocks, joints, 12), dtype=compute, device=device)
    w_stride = 0 if shared else count * joints
    with _device_guard(points):
        _skin_backward_kernel[(blocks, batch)](
            grad_out, points, weights, transforms, grad_points, grad_weights, partial,
            count, joints, w_stride,
            INVERSE=inverse, COMPUTE=_tl_compute(points.dtype), BLOCK_N=block,
        )  # fmt: skip
    if shared:
        grad_weights = grad_weights.sum(0, keepdim=True).to(weights.dtype)
    grad_transforms = torch.zeros(transforms.shape, dtype=compute, device=device)
    grad_transforms[:, :, :3, :] = partial.sum(1).view(batch, joints, 3, 4)
    return grad_points, grad_weights, grad_transforms.to(transforms.dtype)
