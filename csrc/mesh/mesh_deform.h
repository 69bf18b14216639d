// Math of mesh_deform (3DPortraitGAN's posed-to-canonical transfer), shared by the CPU
// (mesh_deform_cpu.cpp) and CUDA (mesh_deform_cuda.cu) kernels. See
// docs/kernel_contract_skinning.md.
//
// Per point p and triangle (v0, v1, v2):
//   distance  squared Euclidean point-to-triangle distance: the plane distance when p projects
//             inside the triangle, else the nearest edge (a degenerate triangle is its edges);
//   frame     x = unit(v1 - v0), y = unit((v1 - v0) x (v2 - v0)), z = x cross y; it exists when
//             |v1 - v0| > 0 and |n| > 0;
//   transfer  p' = c0 + sum_k <p - v0, e_k> e'_k with (e_k) the posed frame and (e'_k) the
//             canonical frame of the same face.
//   search    the nearest face among a cell's candidates, ties -> lowest face index (by an
//             explicit comparison, so the result does not depend on the order of the
//             candidates: ascending on the CPU, arbitrary on the GPU);
// The grid helpers bin faces into a uniform grid of cells (see mesh_deform_cpu.cpp). The
// per-point functions at the end (deform_point, deform_point_backward) are the whole per-point
// work of both kernels; the kernels only differ in how they build the grid and how they add the
// vertex gradients (serially on the CPU, by atomics on the GPU).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common.h"

namespace portrait_engine {
namespace mesh {

template <typename T>
HOST_DEVICE PE_INLINE T sqrt_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

template <typename T>
struct Vec3 {
  T x, y, z;
};

template <typename T>
HOST_DEVICE PE_INLINE Vec3<T> make(T x, T y, T z) {
  Vec3<T> v;
  v.x = x;
  v.y = y;
  v.z = z;
  return v;
}

template <typename T>
HOST_DEVICE PE_INLINE Vec3<T> operator-(const Vec3<T>& a, const Vec3<T>& b) {
  return make(a.x - b.x, a.y - b.y, a.z - b.z);
}

template <typename T>
HOST_DEVICE PE_INLINE Vec3<T> operator+(const Vec3<T>& a, const Vec3<T>& b) {
  return make(a.x + b.x, a.y + b.y, a.z + b.z);
}

template <typename T>
HOST_DEVICE PE_INLINE Vec3<T> operator*(T s, const Vec3<T>& a) {
  return make(s * a.x, s * a.y, s * a.z);
}

template <typename T>
HOST_DEVICE PE_INLINE T dot(const Vec3<T>& a, const Vec3<T>& b) {
  return a.x * b.x + a.y * b.y + a.z * b.z;
}

template <typename T>
HOST_DEVICE PE_INLINE Vec3<T> cross(const Vec3<T>& a, const Vec3<T>& b) {
  return make(a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x);
}

template <typename T, typename scalar_t>
HOST_DEVICE PE_INLINE Vec3<T> load3(const scalar_t* p) {
  return make(static_cast<T>(p[0]), static_cast<T>(p[1]), static_cast<T>(p[2]));
}

// Squared distance from p to the segment ab (the point a when a == b).
template <typename T>
HOST_DEVICE PE_INLINE T segment_distance2(const Vec3<T>& p, const Vec3<T>& a, const Vec3<T>& b) {
  const Vec3<T> ab = b - a;
  const T denom = dot(ab, ab);
  T t = denom > T(0) ? dot(p - a, ab) / denom : T(0);
  t = t < T(0) ? T(0) : (t > T(1) ? T(1) : t);
  const Vec3<T> d = p - (a + t * ab);
  return dot(d, d);
}

template <typename T>
HOST_DEVICE PE_INLINE T point_triangle_distance2(const Vec3<T>& p, const Vec3<T>& v0,
                                                 const Vec3<T>& v1, const Vec3<T>& v2) {
  const Vec3<T> e0 = v1 - v0, e1 = v2 - v1, e2 = v0 - v2;
  const Vec3<T> n = cross(e0, v2 - v0);
  const T nn = dot(n, n);
  const bool inside = nn > T(0) && dot(cross(e0, p - v0), n) >= T(0) &&
                      dot(cross(e1, p - v1), n) >= T(0) && dot(cross(e2, p - v2), n) >= T(0);
  if (inside) {
    const T h = dot(n, p - v0);
    return h * h / nn;
  }
  T d = segment_distance2(p, v0, v1);
  const T d1 = segment_distance2(p, v1, v2);
  const T d2 = segment_distance2(p, v2, v0);
  d = d1 < d ? d1 : d;
  return d2 < d ? d2 : d;
}

template <typename T>
struct Frame {
  Vec3<T> x, y, z;
  Vec3<T> e, n;  // v1 - v0 and (v1 - v0) x (v2 - v0), for the backward
  T ne, nn;      // |e| and |n|
  bool valid;
};

template <typename T>
HOST_DEVICE PE_INLINE Frame<T> triangle_frame(const Vec3<T>& v0, const Vec3<T>& v1,
                                              const Vec3<T>& v2) {
  Frame<T> f;
  f.e = v1 - v0;
  f.n = cross(f.e, v2 - v0);
  const T ee = dot(f.e, f.e), nn = dot(f.n, f.n);
  f.valid = ee > T(0) && nn > T(0);
  f.ne = sqrt_of(f.valid ? ee : T(1));
  f.nn = sqrt_of(f.valid ? nn : T(1));
  f.x = (T(1) / f.ne) * f.e;
  f.y = (T(1) / f.nn) * f.n;
  f.z = cross(f.x, f.y);
  return f;
}

// p' = c0 + sum_k <p - v0, a_k> b_k.
template <typename T>
HOST_DEVICE PE_INLINE Vec3<T> transfer(const Vec3<T>& p, const Vec3<T>& v0, const Frame<T>& a,
                                       const Vec3<T>& c0, const Frame<T>& b) {
  const Vec3<T> l = p - v0;
  return c0 + dot(l, a.x) * b.x + dot(l, a.y) * b.y + dot(l, a.z) * b.z;
}

// Backward of a frame: given the gradients of (x, y, z), the gradients of (v0, v1, v2).
template <typename T>
HOST_DEVICE PE_INLINE void frame_backward(const Frame<T>& f, const Vec3<T>& v0, const Vec3<T>& v2,
                                          Vec3<T> gx, Vec3<T> gy, const Vec3<T>& gz,
                                          Vec3<T>& g0, Vec3<T>& g1, Vec3<T>& g2) {
  // z = x cross y
  gx = gx + cross(f.y, gz);
  gy = gy + cross(gz, f.x);
  // x = e / |e|, y = n / |n|
  const Vec3<T> ge0 = (T(1) / f.ne) * (gx - dot(gx, f.x) * f.x);
  const Vec3<T> gn = (T(1) / f.nn) * (gy - dot(gy, f.y) * f.y);
  // n = e cross s, s = v2 - v0
  const Vec3<T> s = v2 - v0;
  const Vec3<T> ge = ge0 + cross(s, gn);
  const Vec3<T> gs = cross(gn, f.e);
  g1 = ge;
  g2 = gs;
  g0 = make(-(ge.x + gs.x), -(ge.y + gs.y), -(ge.z + gs.z));
}

// Gradients of one transferred point: the point, the posed face's and the canonical face's
// three vertices.
template <typename T>
HOST_DEVICE PE_INLINE void transfer_backward(const Vec3<T>& p, const Vec3<T>& v0,
                                             const Vec3<T>& v2, const Frame<T>& a,
                                             const Vec3<T>& c0, const Vec3<T>& c2,
                                             const Frame<T>& b, const Vec3<T>& g, Vec3<T>& gp,
                                             Vec3<T> gv[3], Vec3<T> gc[3]) {
  const Vec3<T> l = p - v0;
  const T s0 = dot(g, b.x), s1 = dot(g, b.y), s2 = dot(g, b.z);
  const T q0 = dot(l, a.x), q1 = dot(l, a.y), q2 = dot(l, a.z);
  gp = s0 * a.x + s1 * a.y + s2 * a.z;
  frame_backward(a, v0, v2, s0 * l, s1 * l, s2 * l, gv[0], gv[1], gv[2]);
  gv[0] = gv[0] - gp;
  frame_backward(b, c0, c2, q0 * g, q1 * g, q2 * g, gc[0], gc[1], gc[2]);
  gc[0] = gc[0] + g;
}

// ------------------------------------------------------------------------------------------
// Uniform grid over the faces' bounding boxes grown by the thickness
// ------------------------------------------------------------------------------------------

// At most 64 cells per axis (plus one for rounding): at most 65^3 cells per batch element.
constexpr int64_t kMaxCellsPerAxis = 64;

template <typename T>
struct GridSpec {
  T origin[3];
  T inv_cell;
  int64_t dims[3];  // all 0: no grid (every point lies outside it)
};

// How far a face's bounding box is grown: a hair beyond the thickness, so rounding never drops
// a face within reach from a cell.
template <typename T>
HOST_DEVICE PE_INLINE T grown_thickness(T thickness) {
  return thickness * T(1.0001);
}

// The grid over [lo, hi] (the union of the grown face boxes of one batch element): cubic cells
// of side max(thickness, largest extent / kMaxCellsPerAxis). A non-finite extent (non-finite
// vertices) gives no grid: dims 0, and point_cell then places no point in it. Host code: the
// CPU kernel calls it with bounds it computed, the CUDA launcher with bounds from the device.
template <typename T>
inline GridSpec<T> make_grid_spec(const T lo[3], const T hi[3], T thickness) {
  GridSpec<T> g;
  T extent = T(0);
  for (int axis = 0; axis < 3; ++axis) extent = std::max(extent, hi[axis] - lo[axis]);
  if (!std::isfinite(static_cast<double>(extent))) {
    for (int axis = 0; axis < 3; ++axis) {
      g.origin[axis] = T(0);
      g.dims[axis] = 0;
    }
    g.inv_cell = T(0);
    return g;
  }
  const T cell = std::max(thickness, extent / T(kMaxCellsPerAxis));
  g.inv_cell = T(1) / cell;
  for (int axis = 0; axis < 3; ++axis) {
    g.origin[axis] = lo[axis];
    const int64_t d = static_cast<int64_t>(std::ceil((hi[axis] - lo[axis]) / cell));
    g.dims[axis] = std::min<int64_t>(kMaxCellsPerAxis + 1, std::max<int64_t>(1, d));
  }
  return g;
}

template <typename T>
inline int64_t cell_count(const GridSpec<T>& g) {
  return g.dims[0] * g.dims[1] * g.dims[2];
}

template <typename T>
HOST_DEVICE PE_INLINE int64_t clamp_cell(T coordinate, const GridSpec<T>& g, int axis) {
  const T u = (coordinate - g.origin[axis]) * g.inv_cell;
  int64_t c = static_cast<int64_t>(floor(static_cast<double>(u)));
  return c < 0 ? 0 : (c >= g.dims[axis] ? g.dims[axis] - 1 : c);
}

// The cell of a point, or -1 when the point lies outside the grid (no face within reach).
template <typename T>
HOST_DEVICE PE_INLINE int64_t point_cell(const Vec3<T>& p, const GridSpec<T>& g) {
  const T coords[3] = {p.x, p.y, p.z};
  int64_t cell[3];
  for (int axis = 0; axis < 3; ++axis) {
    const T u = (coords[axis] - g.origin[axis]) * g.inv_cell;
    // !(u >= 0) also rejects NaN coordinates
    if (!(u >= T(0)) || !(u < static_cast<T>(g.dims[axis]))) return -1;
    int64_t c = static_cast<int64_t>(u);
    cell[axis] = c >= g.dims[axis] ? g.dims[axis] - 1 : c;
  }
  return (cell[2] * g.dims[1] + cell[1]) * g.dims[0] + cell[0];
}

// ------------------------------------------------------------------------------------------
// Per point: search, transfer, and the transfer's backward
// ------------------------------------------------------------------------------------------

template <typename T, typename scalar_t>
HOST_DEVICE PE_INLINE void store3(scalar_t* p, const Vec3<T>& v) {
  p[0] = static_cast<scalar_t>(v.x);
  p[1] = static_cast<scalar_t>(v.y);
  p[2] = static_cast<scalar_t>(v.z);
}

// The tie rule of the search: face f at squared distance d2 replaces the best so far when it is
// nearer, or as near with a lower index. Ties -> lowest face index whatever the candidate order.
template <typename T>
HOST_DEVICE PE_INLINE bool nearer(T d2, int64_t f, T best, int64_t best_face) {
  return d2 < best || (d2 == best && f < best_face);
}

// The nearest face to p among candidates[begin, end) (face ids into `faces`, (F, 3) vertex ids
// into `verts`, (V, 3)) when it is nearer than the thickness, else -1.
template <typename T, typename scalar_t>
HOST_DEVICE PE_INLINE int64_t nearest_face(const Vec3<T>& p, const scalar_t* verts,
                                           const int64_t* faces, const int32_t* candidates,
                                           int64_t begin, int64_t end, T thickness) {
  T best = std::numeric_limits<T>::infinity();
  int64_t best_face = -1;
  for (int64_t k = begin; k < end; ++k) {
    const int64_t f = candidates[k];
    const int64_t* tri = faces + f * 3;
    const T d2 = point_triangle_distance2(p, load3<T>(verts + tri[0] * 3),
                                          load3<T>(verts + tri[1] * 3),
                                          load3<T>(verts + tri[2] * 3));
    if (nearer(d2, f, best, best_face)) {
      best = d2;
      best_face = f;
    }
  }
  return best_face >= 0 && sqrt_of(best) < thickness ? best_face : -1;
}

// The forward of one point p of one batch element (verts / canon: that element's (V, 3) posed
// and canonical vertices; cell_start / cell_faces: its grid's cell lists). Writes the moved
// point to `result` (p itself when no face is within the thickness, or when either triangle of
// the chosen face has no frame) and returns the face it moved through, or -1.
template <typename T, typename scalar_t>
HOST_DEVICE PE_INLINE int64_t deform_point(const Vec3<T>& p, const GridSpec<T>& grid,
                                           const int64_t* cell_start,
                                           const int32_t* cell_faces, const scalar_t* verts,
                                           const scalar_t* canon, const int64_t* faces,
                                           T thickness, Vec3<T>& result) {
  result = p;
  const int64_t cell = point_cell(p, grid);  // box culling: outside the grid, no face in reach
  if (cell < 0) return -1;
  const int64_t face = nearest_face(p, verts, faces, cell_faces, cell_start[cell],
                                    cell_start[cell + 1], thickness);
  if (face < 0) return -1;
  const int64_t* tri = faces + face * 3;
  const Vec3<T> v0 = load3<T>(verts + tri[0] * 3);
  const Vec3<T> c0 = load3<T>(canon + tri[0] * 3);
  const Frame<T> a = triangle_frame(v0, load3<T>(verts + tri[1] * 3), load3<T>(verts + tri[2] * 3));
  const Frame<T> b = triangle_frame(c0, load3<T>(canon + tri[1] * 3), load3<T>(canon + tri[2] * 3));
  if (!(a.valid && b.valid)) return -1;  // no frame: the point stays where it is
  result = transfer(p, v0, a, c0, b);
  return face;
}

// The backward of one point moved through `face` (the forward's face index, >= 0): the
// gradient of the point, and those of the face's three posed and three canonical vertices.
template <typename T, typename scalar_t>
HOST_DEVICE PE_INLINE void deform_point_backward(const Vec3<T>& p, const Vec3<T>& g,
                                                 const scalar_t* verts, const scalar_t* canon,
                                                 const int64_t* tri, Vec3<T>& gp, Vec3<T> gv[3],
                                                 Vec3<T> gc[3]) {
  const Vec3<T> v0 = load3<T>(verts + tri[0] * 3), v2 = load3<T>(verts + tri[2] * 3);
  const Vec3<T> c0 = load3<T>(canon + tri[0] * 3), c2 = load3<T>(canon + tri[2] * 3);
  const Frame<T> a = triangle_frame(v0, load3<T>(verts + tri[1] * 3), v2);
  const Frame<T> b = triangle_frame(c0, load3<T>(canon + tri[1] * 3), c2);
  transfer_backward(p, v0, v2, a, c0, c2, b, g, gp, gv, gc);
}

// Adds a point's six vertex gradients into the (V, 3) accumulators of its batch element with
// add(T* target, T value): a plain += on the CPU (serial per batch element), atomicAdd on the GPU.
template <typename T, typename Add>
HOST_DEVICE PE_INLINE void scatter_face_gradients(const int64_t* tri, const Vec3<T> gv[3],
                                                  const Vec3<T> gc[3], T* acc_v, T* acc_c,
                                                  Add add) {
  for (int k = 0; k < 3; ++k) {
    T* av = acc_v + tri[k] * 3;
    T* ac = acc_c + tri[k] * 3;
    add(av, gv[k].x);
    add(av + 1, gv[k].y);
    add(av + 2, gv[k].z);
    add(ac, gc[k].x);
    add(ac + 1, gc[k].y);
    add(ac + 2, gc[k].z);
  }
}

}  // namespace mesh
}  // namespace portrait_engine
