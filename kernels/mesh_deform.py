"""Triton kernels of ``portrait_engine.ops.mesh_deform`` (3DPortraitGAN's point transfer).

What they compute (contract: ``docs/kernel_contract_skinning.md``): for each point the posed
face nearest by point-to-triangle distance (ties -> lowest face index); if that distance is
below the thickness, the point's coordinates in the face's frame re-expanded in the canonical
face's frame, else the point unchanged.

Design:

* The search is a tiled brute force with box culling. The launcher sorts the faces of each
  batch element along a Morton curve of their centres (so a tile of faces is spatially
  compact) and computes every tile's bounding box grown by the thickness. A program owns
  ``BLOCK_N`` consecutive points (ray samples: spatially coherent) and skips every face tile
  whose grown box misses the points' box; a point outside every grown box is returned
  unchanged without a single distance. The tested tiles give a ``(BLOCK_N, BLOCK_F)`` table of
  squared distances reduced to a running (distance, original face id) minimum, compared
  lexicographically, so ties go to the lowest original index whatever the tile order.
  (The C++ kernels use a uniform grid instead; in Triton the per-lane candidate lists of a grid
  diverge, while whole tiles keep the lanes in step.)
* The transfer gathers the chosen face's six vertices and applies the two frames per lane.
* Backward: per point, the gradient of the point and of the six vertices (18 values) into a
  buffer that the launcher scatters with ``index_add_`` (deterministic on the CPU; on CUDA it
  uses atomics).

Math in fp32 (fp64 for fp64 inputs); index math int64; every load and store masked.
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

_INF = tl.constexpr(float("inf"))


@triton.jit
def _dot(ax, ay, az, bx, by, bz):
    return ax * bx + ay * by + az * bz


@triton.jit
def _cross(ax, ay, az, bx, by, bz):
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


@triton.jit
def _segment_distance2(px, py, pz, ax, ay, az, bx, by, bz):
    ex = bx - ax
    ey = by - ay
    ez = bz - az
    denom = _dot(ex, ey, ez, ex, ey, ez)
    t = _dot(px - ax, py - ay, pz - az, ex, ey, ez) / tl.where(denom > 0, denom, 1.0)
    t = tl.where(denom > 0, t, 0.0)
    t = tl.minimum(tl.maximum(t, 0.0), 1.0)
    dx = px - (ax + t * ex)
    dy = py - (ay + t * ey)
    dz = pz - (az + t * ez)
    return _dot(dx, dy, dz, dx, dy, dz)


@triton.jit
def _triangle_distance2(px, py, pz, x0, y0, z0, x1, y1, z1, x2, y2, z2):
    nx, ny, nz = _cross(x1 - x0, y1 - y0, z1 - z0, x2 - x0, y2 - y0, z2 - z0)
    nn = _dot(nx, ny, nz, nx, ny, nz)
    cx, cy, cz = _cross(x1 - x0, y1 - y0, z1 - z0, px - x0, py - y0, pz - z0)
    s0 = _dot(cx, cy, cz, nx, ny, nz)
    cx, cy, cz = _cross(x2 - x1, y2 - y1, z2 - z1, px - x1, py - y1, pz - z1)
    s1 = _dot(cx, cy, cz, nx, ny, nz)
    cx, cy, cz = _cross(x0 - x2, y0 - y2, z0 - z2, px - x2, py - y2, pz - z2)
    s2 = _dot(cx, cy, cz, nx, ny, nz)
    inside = (nn > 0) & (s0 >= 0) & (s1 >= 0) & (s2 >= 0)
    h = _dot(nx, ny, nz, px - x0, py - y0, pz - z0)
    plane = h * h / tl.where(nn > 0, nn, 1.0)
    edge = tl.minimum(
        tl.minimum(
            _segment_distance2(px, py, pz, x0, y0, z0, x1, y1, z1),
            _segment_distance2(px, py, pz, x1, y1, z1, x2, y2, z2),
        ),
        _segment_distance2(px, py, pz, x2, y2, z2, x0, y0, z0),
    )
    return tl.where(inside, plane, edge)


@triton.jit
def _point_block(points_ptr, N, COMPUTE: tl.constexpr, BLOCK_N: tl.constexpr):
    """The program's block of points (program ids: point block, batch element): its offsets,
    mask and coordinates."""
    pid = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    n_points = tl.cast(N, tl.int64)
    offs = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = offs < n_points
    px, py, pz = _load_xyz(points_ptr + (b * n_points + offs) * 3, mask, COMPUTE)
    return pid, b, n_points, offs, mask, px, py, pz


@triton.jit
def _search_kernel(
    points_ptr,
    tri_ptr,
    ids_ptr,
    tile_box_ptr,
    best_ptr,
    N,
    F,
    n_tiles,
    thickness,
    COMPUTE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    """best[b, n] = the original id of the nearest face within the thickness, else -1."""
    pid, b, n_points, offs, mask, px, py, pz = _point_block(points_ptr, N, COMPUTE, BLOCK_N)
    n_faces = tl.cast(F, tl.int64)
    # the points' box (masked lanes repeat a real point's coordinates; NaN points are dropped)
    valid = mask & (px == px) & (py == py) & (pz == pz)
    lo_x = tl.min(tl.where(valid, px, _INF), axis=0)
    lo_y = tl.min(tl.where(valid, py, _INF), axis=0)
    lo_z = tl.min(tl.where(valid, pz, _INF), axis=0)
    hi_x = tl.max(tl.where(valid, px, -_INF), axis=0)
    hi_y = tl.max(tl.where(valid, py, -_INF), axis=0)
    hi_z = tl.max(tl.where(valid, pz, -_INF), axis=0)
    best_d = tl.full((BLOCK_N,), _INF, COMPUTE)
    best_id = tl.full((BLOCK_N,), 2147483647, tl.int64)
    offs_f = tl.arange(0, BLOCK_F).to(tl.int64)
    for t in range(0, n_tiles):
        box = tile_box_ptr + (b * n_tiles + t) * 6
        overlap = (
            (tl.load(box + 0) <= hi_x)
            & (tl.load(box + 1) <= hi_y)
            & (tl.load(box + 2) <= hi_z)
            & (tl.load(box + 3) >= lo_x)
            & (tl.load(box + 4) >= lo_y)
            & (tl.load(box + 5) >= lo_z)
        )
        if overlap:
            f = t * BLOCK_F + offs_f
            fmask = f < n_faces
            tri = tri_ptr + (b * n_faces + f) * 9
            x0 = tl.load(tri + 0, mask=fmask, other=0.0)[None, :]
            y0 = tl.load(tri + 1, mask=fmask, other=0.0)[None, :]
            z0 = tl.load(tri + 2, mask=fmask, other=0.0)[None, :]
            x1 = tl.load(tri + 3, mask=fmask, other=0.0)[None, :]
            y1 = tl.load(tri + 4, mask=fmask, other=0.0)[None, :]
            z1 = tl.load(tri + 5, mask=fmask, other=0.0)[None, :]
            x2 = tl.load(tri + 6, mask=fmask, other=0.0)[None, :]
            y2 = tl.load(tri + 7, mask=fmask, other=0.0)[None, :]
            z2 = tl.load(tri + 8, mask=fmask, other=0.0)[None, :]
            ids = tl.load(ids_ptr + b * n_faces + f, mask=fmask, other=2147483647)[None, :]
            d = _triangle_distance2(
                px[:, None], py[:, None], pz[:, None], x0, y0, z0, x1, y1, z1, x2, y2, z2
            )
            d = tl.where(fmask[None, :], d, _INF)
            tile_d = tl.min(d, axis=1)
            tile_id = tl.min(tl.where(d == tile_d[:, None], ids, 2147483647), axis=1)
            better = (tile_d < best_d) | ((tile_d == best_d) & (tile_id < best_id))
            best_d = tl.where(better, tile_d, best_d)
            best_id = tl.where(better, tile_id, best_id)
    chosen = (tl.sqrt(best_d) < thickness) & valid
    tl.store(best_ptr + b * n_points + offs, tl.where(chosen, best_id, -1), mask=mask)


@triton.jit
def _frame(x0, y0, z0, x1, y1, z1, x2, y2, z2):
    ex = x1 - x0
    ey = y1 - y0
    ez = z1 - z0
    nx, ny, nz = _cross(ex, ey, ez, x2 - x0, y2 - y0, z2 - z0)
    ee = _dot(ex, ey, ez, ex, ey, ez)
    nn = _dot(nx, ny, nz, nx, ny, nz)
    valid = (ee > 0) & (nn > 0)
    ne = tl.sqrt(tl.where(valid, ee, 1.0))
    nl = tl.sqrt(tl.where(valid, nn, 1.0))
    ax = ex / ne
    ay = ey / ne
    az = ez / ne
    bx = nx / nl
    by = ny / nl
    bz = nz / nl
    cx, cy, cz = _cross(ax, ay, az, bx, by, bz)
    return ax, ay, az, bx, by, bz, cx, cy, cz, ne, nl, valid


@triton.jit
def _load_face(verts_ptr, faces_ptr, b, n_verts, face, mask, COMPUTE: tl.constexpr):
    i0 = tl.load(faces_ptr + face * 3 + 0, mask=mask, other=0)
    i1 = tl.load(faces_ptr + face * 3 + 1, mask=mask, other=0)
    i2 = tl.load(faces_ptr + face * 3 + 2, mask=mask, other=0)
    v = verts_ptr + b * n_verts * 3
    x0 = tl.load(v + i0 * 3 + 0, mask=mask, other=0.0).to(COMPUTE)
    y0 = tl.load(v + i0 * 3 + 1, mask=mask, other=0.0).to(COMPUTE)
    z0 = tl.load(v + i0 * 3 + 2, mask=mask, other=0.0).to(COMPUTE)
    x1 = tl.load(v + i1 * 3 + 0, mask=mask, other=0.0).to(COMPUTE)
    y1 = tl.load(v + i1 * 3 + 1, mask=mask, other=0.0).to(COMPUTE)
    z1 = tl.load(v + i1 * 3 + 2, mask=mask, other=0.0).to(COMPUTE)
    x2 = tl.load(v + i2 * 3 + 0, mask=mask, other=0.0).to(COMPUTE)
    y2 = tl.load(v + i2 * 3 + 1, mask=mask, other=0.0).to(COMPUTE)
    z2 = tl.load(v + i2 * 3 + 2, mask=mask, other=0.0).to(COMPUTE)
    return x0, y0, z0, x1, y1, z1, x2, y2, z2


@triton.jit
def _face_pair(posed_ptr, canonical_ptr, faces_ptr, face_ptr, b, n_points, n_verts, offs, mask,
               COMPUTE: tl.constexpr):  # fmt: skip
    """Each lane's face (``face_ptr``: the search's or the forward's index, -1 for none), whether
    it has one, and that face's posed (x, y, z) and canonical (u, v, w) vertices."""
    face = tl.load(face_ptr + b * n_points + offs, mask=mask, other=-1)
    has = mask & (face >= 0)
    face = tl.maximum(face, 0)
    x0, y0, z0, x1, y1, z1, x2, y2, z2 = _load_face(
        posed_ptr, faces_ptr, b, n_verts, face, has, COMPUTE
    )
    u0, v0, w0, u1, v1, w1, u2, v2, w2 = _load_face(
        canonical_ptr, faces_ptr, b, n_verts, face, has, COMPUTE
    )
    return (
        face, has, x0, y0, z0, x1, y1, z1, x2, y2, z2, u0, v0, w0, u1, v1, w1, u2, v2, w2,
    )  # fmt: skip


@triton.jit
def _transfer_kernel(
    points_ptr,
    posed_ptr,
    canonical_ptr,
    faces_ptr,
    best_ptr,
    out_ptr,
    index_ptr,
    N,
    V,
    COMPUTE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid, b, n_points, offs, mask, px, py, pz = _point_block(points_ptr, N, COMPUTE, BLOCK_N)
    n_verts = tl.cast(V, tl.int64)
    (
        face, has, x0, y0, z0, x1, y1, z1, x2, y2, z2, u0, v0, w0, u1, v1, w1, u2, v2, w2,
    ) = _face_pair(
        posed_ptr, canonical_ptr, faces_ptr, best_ptr, b, n_points, n_verts, offs, mask, COMPUTE
    )  # fmt: skip
    ax, ay, az, bx, by, bz, cx, cy, cz, _, _, valid_a = _frame(x0, y0, z0, x1, y1, z1, x2, y2, z2)
    ax2, ay2, az2, bx2, by2, bz2, cx2, cy2, cz2, _, _, valid_b = _frame(
        u0, v0, w0, u1, v1, w1, u2, v2, w2
    )
    lx = px - x0
    ly = py - y0
    lz = pz - z0
    q0 = _dot(lx, ly, lz, ax, ay, az)
    q1 = _dot(lx, ly, lz, bx, by, bz)
    q2 = _dot(lx, ly, lz, cx, cy, cz)
    ox = u0 + q0 * ax2 + q1 * bx2 + q2 * cx2
    oy = v0 + q0 * ay2 + q1 * by2 + q2 * cy2
    oz = w0 + q0 * az2 + q1 * bz2 + q2 * cz2
    moved = has & valid_a & valid_b
    ox = tl.where(moved, ox, px)
    oy = tl.where(moved, oy, py)
    oz = tl.where(moved, oz, pz)
    o = out_ptr + (b * n_points + offs) * 3
    tl.store(o + 0, ox.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o + 1, oy.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o + 2, oz.to(out_ptr.dtype.element_ty), mask=mask)
    face_out = tl.where(moved, face, -1)
    tl.store(index_ptr + b * n_points + offs, face_out, mask=mask)


@triton.jit
def _frame_backward(
    ax, ay, az, bx, by, bz, cx, cy, cz, ne, nl, ex, ey, ez, sx, sy, sz, gax, gay, gaz, gbx, gby,
    gbz, gcx, gcy, gcz,
):  # fmt: skip
    """Gradients (g0, g1, g2) of the three vertices from those of the frame (a, b, c)."""
    # c = a x b
    tx, ty, tz = _cross(bx, by, bz, gcx, gcy, gcz)
    gax = gax + tx
    gay = gay + ty
    gaz = gaz + tz
    tx, ty, tz = _cross(gcx, gcy, gcz, ax, ay, az)
    gbx = gbx + tx
    gby = gby + ty
    gbz = gbz + tz
    # a = e / |e|, b = n / |n|
    da = _dot(gax, gay, gaz, ax, ay, az)
    gex = (gax - da * ax) / ne
    gey = (gay - da * ay) / ne
    gez = (gaz - da * az) / ne
    db = _dot(gbx, gby, gbz, bx, by, bz)
    gnx = (gbx - db * bx) / nl
    gny = (gby - db * by) / nl
    gnz = (gbz - db * bz) / nl
    # n = e x s
    tx, ty, tz = _cross(sx, sy, sz, gnx, gny, gnz)
    gex = gex + tx
    gey = gey + ty
    gez = gez + tz
    gsx, gsy, gsz = _cross(gnx, gny, gnz, ex, ey, ez)
    return -(gex + gsx), -(gey + gsy), -(gez + gsz), gex, gey, gez, gsx, gsy, gsz


@triton.jit
def _backward_kernel(
    grad_out_ptr,
    points_ptr,
    posed_ptr,
    canonical_ptr,
    faces_ptr,
    index_ptr,
    grad_points_ptr,
    contrib_ptr,
    N,
    V,
    COMPUTE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid, b, n_points, offs, mask, px, py, pz = _point_block(points_ptr, N, COMPUTE, BLOCK_N)
    n_verts = tl.cast(V, tl.int64)
    gx, gy, gz = _load_xyz(grad_out_ptr + (b * n_points + offs) * 3, mask, COMPUTE)
    (
        face, has, x0, y0, z0, x1, y1, z1, x2, y2, z2, u0, v0, w0, u1, v1, w1, u2, v2, w2,
    ) = _face_pair(
        posed_ptr, canonical_ptr, faces_ptr, index_ptr, b, n_points, n_verts, offs, mask, COMPUTE
    )  # fmt: skip
    ax, ay, az, bx, by, bz, cx, cy, cz, ne, nl, _ = _frame(x0, y0, z0, x1, y1, z1, x2, y2, z2)
    ax2, ay2, az2, bx2, by2, bz2, cx2, cy2, cz2, ne2, nl2, _ = _frame(
        u0, v0, w0, u1, v1, w1, u2, v2, w2
    )
    lx = px - x0
    ly = py - y0
    lz = pz - z0
    s0 = _dot(gx, gy, gz, ax2, ay2, az2)
    s1 = _dot(gx, gy, gz, bx2, by2, bz2)
    s2 = _dot(gx, gy, gz, cx2, cy2, cz2)
    q0 = _dot(lx, ly, lz, ax, ay, az)
    q1 = _dot(lx, ly, lz, bx, by, bz)
    q2 = _dot(lx, ly, lz, cx, cy, cz)
    gpx = s0 * ax + s1 * bx + s2 * cx
    gpy = s0 * ay + s1 * by + s2 * cy
    gpz = s0 * az + s1 * bz + s2 * cz
    p0x, p0y, p0z, p1x, p1y, p1z, p2x, p2y, p2z = _frame_backward(
        ax, ay, az, bx, by, bz, cx, cy, cz, ne, nl, x1 - x0, y1 - y0, z1 - z0,
        x2 - x0, y2 - y0, z2 - z0, s0 * lx, s0 * ly, s0 * lz, s1 * lx, s1 * ly, s1 * lz,
        s2 * lx, s2 * ly, s2 * lz,
    )  # fmt: skip
    c0x, c0y, c0z, c1x, c1y, c1z, c2x, c2y, c2z = _frame_backward(
        ax2, ay2, az2, bx2, by2, bz2, cx2, cy2, cz2, ne2, nl2, u1 - u0, v1 - v0, w1 - w0,
        u2 - u0, v2 - v0, w2 - w0, q0 * gx, q0 * gy, q0 * gz, q1 * gx, q1 * gy, q1 * gz,
        q2 * gx, q2 * gy, q2 * gz,
    )  # fmt: skip
    out_ty = grad_points_ptr.dtype.element_ty
    gp = grad_points_ptr + (b * n_points + offs) * 3
    tl.store(gp + 0, tl.where(has, gpx, gx).to(out_ty), mask=mask)
    tl.store(gp + 1, tl.where(has, gpy, gy).to(out_ty), mask=mask)
    tl.store(gp + 2, tl.where(has, gpz, gz).to(out_ty), mask=mask)
    c = contrib_ptr + (b * n_points + offs) * 18
    zero = tl.zeros((BLOCK_N,), COMPUTE)
    tl.store(c + 0, tl.where(has, p0x - gpx, zero), mask=mask)
    tl.store(c + 1, tl.where(has, p0y - gpy, zero), mask=mask)
    tl.store(c + 2, tl.where(has, p0z - gpz, zero), mask=mask)
    tl.store(c + 3, tl.where(has, p1x, zero), mask=mask)
    tl.store(c + 4, tl.where(has, p1y, zero), mask=mask)
    tl.store(c + 5, tl.where(has, p1z, zero), mask=mask)
    tl.store(c + 6, tl.where(has, p2x, zero), mask=mask)
    tl.store(c + 7, tl.where(has, p2y, zero), mask=mask)
    tl.store(c + 8, tl.where(has, p2z, zero), mask=mask)
    tl.store(c + 9, tl.where(has, c0x + gx, zero), mask=mask)
    tl.store(c + 10, tl.where(has, c0y + gy, zero), mask=mask)
    tl.store(c + 11, tl.where(has, c0z + gz, zero), mask=mask)
    tl.store(c + 12, tl.where(has, c1x, zero), mask=mask)
    tl.store(c + 13, tl.where(has, c1y, zero), mask=mask)
    tl.store(c + 14, tl.where(has, c1z, zero), mask=mask)
    tl.store(c + 15, tl.where(has, c2x, zero), mask=mask)
    tl.store(c + 16, tl.where(has, c2y, zero), mask=mask)
    tl.store(c + 17, tl.where(has, c2z, zero), mask=mask)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _blocks(count: int) -> tuple[int, int]:
    """``(BLOCK_N, BLOCK_F)``: large under the interpreter (its cost is per program)."""
    if _interpreting():
        return max(16, min(256, triton.next_power_of_2(max(count, 1)))), 64
    return 64, 32


def _morton_order(centres: torch.Tensor) -> torch.Tensor:
    """Per batch element, the permutation of faces along a 10-bit-per-axis Morton curve."""
    lo = centres.amin(dim=1, keepdim=True)
    hi = centres.amax(dim=1, keepdim=True)
    cells = ((centres - lo) / (hi - lo).clamp_min(1e-30) * 1023).clamp(0, 1023).long()
    code = torch.zeros(centres.shape[:2], dtype=torch.int64, device=centres.device)
    for bit in range(10):
        for axis in range(3):
            code |= ((cells[..., axis] >> bit) & 1) << (3 * bit + axis)
    # stable: equal codes keep ascending face ids (the search breaks ties by id anyway)
    return torch.sort(code, dim=1, stable=True).indices


def mesh_deform_forward(points, posed_vertices, canonical_vertices, faces, thickness: float):
    """``(out (B, N, 3), face_index (B, N) int64)``; inputs contiguous, ``faces`` int64."""
    batch, count = points.shape[:2]
    n_faces = faces.shape[0]
    device = points.device
    compute = _compute_dtype(points.dtype)
    out = empty_output(points.shape, dtype=points.dtype, device=device)
    face_index = torch.empty((batch, count), dtype=torch.int64, device=device)
    if batch == 0 or count == 0:
        return out, face_index
    block_n, block_f = _blocks(count)
    tri = posed_vertices.to(compute)[:, faces].reshape(batch, n_faces, 3, 3)  # (B, F, 3, 3)
    order = _morton_order(tri.mean(2))
    tri = torch.gather(tri, 1, order[:, :, None, None].expand(-1, -1, 3, 3)).contiguous()
    ids = order.contiguous()
    tiles = triton.cdiv(n_faces, block_f)
    padded = torch.nn.functional.pad(
        tri.reshape(batch, n_faces, 9), (0, 0, 0, tiles * block_f - n_faces)
    )
    padded = padded.view(batch, tiles, block_f, 3, 3)
    valid = (torch.arange(tiles * block_f, device=device) < n_faces).view(1, tiles, block_f, 1, 1)
    # NaN vertices make a box that nothing overlaps (comparisons with NaN are false)
    big = torch.tensor(float("inf"), dtype=compute, device=device)
    lo = torch.where(valid, padded, big).amin(dim=(2, 3)) - thickness * 1.0001
    hi = torch.where(valid, padded, -big).amax(dim=(2, 3)) + thickness * 1.0001
    tile_box = torch.cat([lo, hi], dim=-1).contiguous()  # (B, tiles, 6)
    best = torch.empty((batch, count), dtype=torch.int64, device=device)
    tl_compute = tl.float64 if compute == torch.float64 else tl.float32
    grid = (triton.cdiv(count, block_n), batch)
    with _device_guard(points):
        _search_kernel[grid](
            points, tri, ids, tile_box, best, count, n_faces, tiles, float(thickness),
            COMPUTE=tl_compute, BLOCK_N=block_n, BLOCK_F=block_f,
        )  # fmt: skip
        _transfer_kernel[grid](
            points, posed_vertices, canonical_vertices, faces, best, out, face_index,
            count, posed_vertices.shape[1], COMPUTE=tl_compute, BLOCK_N=block_n,
        )  # fmt: skip
    return out, face_index


def mesh_deform_backward(grad_out, points, posed_vertices, canonical_vertices, faces, face_index):
    """``(grad_points, grad_posed_vertices, grad_canonical_vertices)``."""
    batch, count = points.shape[:2]
    n_verts = posed_vertices.shape[1]
    device = points.device
    compute = _compute_dtype(points.dtype)
    grad_points = empty_output(points.shape, dtype=points.dtype, device=device)
    grad_posed = torch.zeros((batch, n_verts, 3), dtype=compute, device=device)
    grad_canonical = torch.zeros((batch, n_verts, 3), dtype=compute, device=device)
    if batch and count:
        block_n, _ = _blocks(count)
        contrib = torch.empty((batch, count, 18), dtype=compute, device=device)
        tl_compute = tl.float64 if compute == torch.float64 else tl.float32
        with _device_guard(points):
            _backward_kernel[(triton.cdiv(count, block_n), batch)](
                grad_out, points, posed_vertices, canonical_vertices, faces, face_index,
                grad_points, contrib, count, n_verts, COMPUTE=tl_compute, BLOCK_N=block_n,
            )  # fmt: skip
        corners = faces[face_index.clamp_min(0)]  # (B, N, 3); unchosen points add zeros
        flat = (corners + (torch.arange(batch, device=device) * n_verts)[:, None, None]).reshape(-1)
        contrib = contrib.view(batch, count, 2, 3, 3)  # (posed, canonical) x corner x xyz
        grad_posed.view(-1, 3).index_add_(0, flat, contrib[:, :, 0].reshape(-1, 3))
        grad_canonical.view(-1, 3).index_add_(0, flat, contrib[:, :, 1].reshape(-1, 3))
    return (
        grad_points,
        grad_posed.to(posed_vertices.dtype),
        grad_canonical.to(canonical_vertices.dtype),
    )
