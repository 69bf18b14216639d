// CPU kernels of portrait_engine::mesh_deform_{forward,backward}
// (contract: docs/kernel_contract_skinning.md; shared math: mesh_deform.h).
//
// Forward, per batch element: the posed faces are binned into a uniform grid (each face into
// every cell that its bounding box grown by the thickness touches; a counting pass, a prefix
// sum and a fill in ascending face order, so every cell lists its faces in ascending order).
// Then, in parallel over the points, each point tests only the faces of its own cell: exact
// (a face nearer than the thickness is always listed there), ties -> lowest face index (the
// shared rule of mesh_deform.h), and a point outside the grid is returned unchanged without
// testing anything (the box culling). Cell size: the thickness, but at least 1/64 of the
// grid's largest extent (at most 64^3 cells).
// Backward: the gradient of each transferred point, from the face chosen by the forward (no
// second search). Vertex gradients are scattered serially per batch element (parallel over the
// batch), so they are deterministic.
// The per-point work (deform_point, deform_point_backward) is mesh_deform.h's, shared with the
// CUDA kernels; this file holds the grid build and the loops.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "mesh/checks.h"
#include "mesh/mesh_deform.h"

namespace portrait_engine {
namespace mesh {
namespace {

template <typename T>
struct Grid {
  GridSpec<T> spec;
  std::vector<int64_t> start;  // cells + 1
  std::vector<int32_t> faces;  // face ids, ascending within a cell
};

template <typename T, typename scalar_t>
void build_grid(const scalar_t* verts, const int64_t* faces, int64_t F, T thickness, Grid<T>& g) {
  std::vector<T> box(F * 6);
  const T grow = grown_thickness(thickness);
  T lo[3] = {std::numeric_limits<T>::infinity(), std::numeric_limits<T>::infinity(),
             std::numeric_limits<T>::infinity()};
  T hi[3] = {-lo[0], -lo[1], -lo[2]};
  for (int64_t f = 0; f < F; ++f) {
    for (int axis = 0; axis < 3; ++axis) {
      T mn = std::numeric_limits<T>::infinity(), mx = -mn;
      for (int k = 0; k < 3; ++k) {
        const T c = static_cast<T>(verts[faces[f * 3 + k] * 3 + axis]);
        mn = std::min(mn, c);
        mx = std::max(mx, c);
      }
      box[f * 6 + axis] = mn - grow;
      box[f * 6 + 3 + axis] = mx + grow;
      lo[axis] = std::min(lo[axis], mn - grow);
      hi[axis] = std::max(hi[axis], mx + grow);
    }
  }
  g.spec = make_grid_spec(lo, hi, thickness);
  const int64_t cells = cell_count(g.spec);
  // no grid (non-finite vertices): no cell lists; point_cell places no point in it
  g.start.assign(cells + 1, 0);
  if (cells == 0) return;
  auto for_cells = [&](int64_t f, auto&& fn) {
    int64_t c0[3], c1[3];
    for (int axis = 0; axis < 3; ++axis) {
      c0[axis] = clamp_cell(box[f * 6 + axis], g.spec, axis);
      c1[axis] = clamp_cell(box[f * 6 + 3 + axis], g.spec, axis);
    }
    for (int64_t z = c0[2]; z <= c1[2]; ++z)
      for (int64_t y = c0[1]; y <= c1[1]; ++y)
        for (int64_t x = c0[0]; x <= c1[0]; ++x) fn((z * g.spec.dims[1] + y) * g.spec.dims[0] + x);
  };
  for (int64_t f = 0; f < F; ++f) for_cells(f, [&](int64_t c) { ++g.start[c + 1]; });
  for (int64_t c = 0; c < cells; ++c) g.start[c + 1] += g.start[c];
  g.faces.resize(g.start[cells]);
  std::vector<int64_t> cursor(g.start.begin(), g.start.end() - 1);
  for (int64_t f = 0; f < F; ++f) {
    for_cells(f, [&](int64_t c) { g.faces[cursor[c]++] = static_cast<int32_t>(f); });
  }
}

template <typename scalar_t>
void forward_impl(const at::Tensor& points, const at::Tensor& posed, const at::Tensor& canonical,
                  const at::Tensor& faces, double thickness, at::Tensor& out,
                  at::Tensor& face_index) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = points.size(0), N = points.size(1), V = posed.size(1), F = faces.size(0);
  const scalar_t* p_ptr = points.data_ptr<scalar_t>();
  const scalar_t* v_ptr = posed.data_ptr<scalar_t>();
  const scalar_t* c_ptr = canonical.data_ptr<scalar_t>();
  const int64_t* f_ptr = faces.data_ptr<int64_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  int64_t* i_ptr = face_index.data_ptr<int64_t>();
  const T thick = static_cast<T>(thickness);
  for (int64_t b = 0; b < B; ++b) {
    Grid<T> grid;
    const scalar_t* verts = v_ptr + b * V * 3;
    const scalar_t* canon = c_ptr + b * V * 3;
    build_grid<T>(verts, f_ptr, F, thick, grid);
    at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t idx = b * N + n;
        Vec3<T> result;
        i_ptr[idx] = deform_point(load3<T>(p_ptr + idx * 3), grid.spec, grid.start.data(),
                                  grid.faces.data(), verts, canon, f_ptr, thick, result);
        store3(o_ptr + idx * 3, result);
      }
    });
  }
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& points, const at::Tensor& posed,
                   const at::Tensor& canonical, const at::Tensor& faces,
                   const at::Tensor& face_index, at::Tensor& grad_points, at::Tensor& grad_posed,
                   at::Tensor& grad_canonical) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = points.size(0), N = points.size(1), V = posed.size(1);
  const scalar_t* g_ptr = grad_out.data_ptr<scalar_t>();
  const scalar_t* p_ptr = points.data_ptr<scalar_t>();
  const scalar_t* v_ptr = posed.data_ptr<scalar_t>();
  const scalar_t* c_ptr = canonical.data_ptr<scalar_t>();
  const int64_t* f_ptr = faces.data_ptr<int64_t>();
  const int64_t* i_ptr = face_index.data_ptr<int64_t>();
  scalar_t* gp_ptr = grad_points.data_ptr<scalar_t>();
  scalar_t* gv_ptr = grad_posed.data_ptr<scalar_t>();
  scalar_t* gc_ptr = grad_canonical.data_ptr<scalar_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc_v(V * 3), acc_c(V * 3);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(acc_v.begin(), acc_v.end(), T(0));
      std::fill(acc_c.begin(), acc_c.end(), T(0));
      const scalar_t* verts = v_ptr + b * V * 3;
      const scalar_t* canon = c_ptr + b * V * 3;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t idx = b * N + n;
        const Vec3<T> g = load3<T>(g_ptr + idx * 3);
        const int64_t f = i_ptr[idx];
        Vec3<T> gp = g;  // a point left where it was: the identity's gradient
        if (f >= 0) {
          const int64_t* tri = f_ptr + f * 3;
          Vec3<T> gv[3], gc[3];
          deform_point_backward(load3<T>(p_ptr + idx * 3), g, verts, canon, tri, gp, gv, gc);
          scatter_face_gradients(tri, gv, gc, acc_v.data(), acc_c.data(),
                                 [](T* target, T value) { *target += value; });
        }
        store3(gp_ptr + idx * 3, gp);
      }
      for (int64_t k = 0; k < V * 3; ++k) {
        gv_ptr[b * V * 3 + k] = static_cast<scalar_t>(acc_v[k]);
        gc_ptr[b * V * 3 + k] = static_cast<scalar_t>(acc_c[k]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> mesh_deform_forward_cpu(const at::Tensor& points,
                                                           const at::Tensor& posed,
                                                           const at::Tensor& canonical,
                                                           const at::Tensor& faces,
                                                           double thickness) {
  check_inputs(points, posed, canonical, faces, kCpuSide);
  check_thickness(thickness, kCpuSide);
  at::Tensor out = new_output(points.sizes(), points.options());
  at::Tensor face_index =
      new_output({points.size(0), points.size(1)}, points.options().dtype(at::kLong));
  if (points.numel() == 0) return {out, face_index};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(),
                                  "mesh_deform_forward_cpu", [&] {
                                    forward_impl<scalar_t>(points, posed, canonical, faces,
                                                           thickness, out, face_index);
                                  });
  return {out, face_index};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mesh_deform_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& points, const at::Tensor& posed,
    const at::Tensor& canonical, const at::Tensor& faces, const at::Tensor& face_index) {
  check_inputs(points, posed, canonical, faces, kCpuSide);
  check_backward(grad_out, face_index, points, kCpuSide);
  at::Tensor grad_points = new_output(points.sizes(), points.options());
  at::Tensor grad_posed = new_output(posed.sizes(), posed.options());
  at::Tensor grad_canonical = new_output(canonical.sizes(), canonical.options());
  if (points.size(0) == 0) return {grad_points, grad_posed, grad_canonical};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(),
                                  "mesh_deform_backward_cpu", [&] {
                                    backward_impl<scalar_t>(grad_out, points, posed, canonical,
                                                            faces, face_index, grad_points,
                                                            grad_posed, grad_canonical);
                                  });
  return {grad_points, grad_posed, grad_canonical};
}

}  // namespace
}  // namespace mesh
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("mesh_deform_forward", &portrait_engine::mesh::mesh_deform_forward_cpu);
  m.impl("mesh_deform_backward", &portrait_engine::mesh::mesh_deform_backward_cpu);
}
