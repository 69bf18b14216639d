// CUDA kernels of portrait_engine::mesh_deform_{forward,backward}
// (contract: docs/kernel_contract_skinning.md; shared math: mesh_deform.h, the same functions
// the CPU kernels call).
//
// Forward: the same uniform grid as the CPU kernel (each posed face in every cell its box grown
// by the thickness touches; cell size max(thickness, extent / 64)), built on the device:
//   1. face_boxes: one thread per (b, f) writes the grown box; the per-batch bounds come from
//      at::amin / at::amax and are copied to the host (6 B numbers: one small sync) to size the
//      grids exactly as the CPU does (GridSpec per batch element);
//   2. count: one thread per (b, f) adds 1 to each cell its box touches (integer atomics: the
//      counts, and so the layout, are deterministic); an exclusive scan (at::cumsum) gives the
//      cell starts; fill: one thread per (b, f) writes its id into its cells (slot order within
//      a cell is arbitrary, which is why the search compares (distance, face id)
//      lexicographically -- mesh_deform.h's tie rule: the result does not depend on it);
//   3. search: one thread per point tests the faces of its cell, then transfers
//      (mesh_deform.h's deform_point, the CPU kernel's per-point function).
// Backward: one thread per point computes its gradients and adds the six vertex gradients with
// atomicAdd (fp32 atomics: the vertex gradients can differ run to run in the last bits; the
// CPU and Triton backends are deterministic).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "mesh/checks.h"
#include "mesh/mesh_deform.h"

namespace portrait_engine {
namespace mesh {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

// Grown boxes (B, F, 6) of the posed faces.
template <typename scalar_t, typename T>
__global__ void face_boxes_kernel(const scalar_t* __restrict__ verts, const int64_t* __restrict__ faces,
                                  int64_t B, int64_t V, int64_t F, T grow, T* __restrict__ boxes) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * F) return;
  const int64_t b = i / F, f = i % F;
  const scalar_t* v = verts + b * V * 3;
  for (int axis = 0; axis < 3; ++axis) {
    T mn = static_cast<T>(v[faces[f * 3] * 3 + axis]), mx = mn;
    for (int k = 1; k < 3; ++k) {
      const T c = static_cast<T>(v[faces[f * 3 + k] * 3 + axis]);
      mn = c < mn ? c : mn;
      mx = c > mx ? c : mx;
    }
    boxes[i * 6 + axis] = mn - grow;
    boxes[i * 6 + 3 + axis] = mx + grow;
  }
}

template <typename T>
__device__ __forceinline__ void cell_range(const T* box, const GridSpec<T>& g, int64_t c0[3],
                                           int64_t c1[3]) {
  for (int axis = 0; axis < 3; ++axis) {
    c0[axis] = clamp_cell(box[axis], g, axis);
    c1[axis] = clamp_cell(box[3 + axis], g, axis);
  }
}

// mode 0: count (atomicAdd on counts); mode 1: fill (slots from cursor).
template <typename T>
__global__ void bin_faces_kernel(const T* __restrict__ boxes, const GridSpec<T>* __restrict__ specs,
                                 const int64_t* __restrict__ cell_base, int64_t B, int64_t F,
                                 int mode, int* __restrict__ counts, int* __restrict__ cursor,
                                 int32_t* __restrict__ cell_faces) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * F) return;
  const int64_t b = i / F, f = i % F;
  const GridSpec<T> g = specs[b];
  if (g.dims[0] == 0) return;  // no grid (non-finite vertices)
  int64_t c0[3], c1[3];
  cell_range(boxes + i * 6, g, c0, c1);
  for (int64_t z = c0[2]; z <= c1[2]; ++z) {
    for (int64_t y = c0[1]; y <= c1[1]; ++y) {
      for (int64_t x = c0[0]; x <= c1[0]; ++x) {
        const int64_t cell = cell_base[b] + (z * g.dims[1] + y) * g.dims[0] + x;
        if (mode == 0) {
          atomicAdd(counts + cell, 1);
        } else {
          const int slot = atomicAdd(cursor + cell, 1);
          cell_faces[slot] = static_cast<int32_t>(f);
        }
      }
    }
  }
}

template <typename scalar_t, typename T>
__global__ void search_kernel(const scalar_t* __restrict__ points, const scalar_t* __restrict__ posed,
                              const scalar_t* __restrict__ canonical,
                              const int64_t* __restrict__ faces,
                              const GridSpec<T>* __restrict__ specs,
                              const int64_t* __restrict__ cell_base,
                              const int64_t* __restrict__ cell_start,
                              const int32_t* __restrict__ cell_faces, int64_t B, int64_t N, int64_t V,
                              T thickness, scalar_t* __restrict__ out,
                              int64_t* __restrict__ face_index) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * N) return;
  const int64_t b = idx / N;
  Vec3<T> result;
  face_index[idx] = deform_point(load3<T>(points + idx * 3), specs[b], cell_start + cell_base[b],
                                 cell_faces, posed + b * V * 3, canonical + b * V * 3, faces,
                                 thickness, result);
  store3(out + idx * 3, result);
}

template <typename scalar_t, typename T>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_out,
                                const scalar_t* __restrict__ points,
                                const scalar_t* __restrict__ posed,
                                const scalar_t* __restrict__ canonical,
                                const int64_t* __restrict__ faces,
                                const int64_t* __restrict__ face_index, int64_t B, int64_t N,
                                int64_t V, scalar_t* __restrict__ grad_points, T* __restrict__ acc_v,
                                T* __restrict__ acc_c) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * N) return;
  const int64_t b = idx / N;
  const Vec3<T> g = load3<T>(grad_out + idx * 3);
  const int64_t f = face_index[idx];
  Vec3<T> gp = g;  // a point left where it was: the identity's gradient
  if (f >= 0) {
    const int64_t* tri = faces + f * 3;
    Vec3<T> gv[3], gc[3];
    deform_point_backward(load3<T>(points + idx * 3), g, posed + b * V * 3,
                          canonical + b * V * 3, tri, gp, gv, gc);
    scatter_face_gradients(tri, gv, gc, acc_v + b * V * 3, acc_c + b * V * 3,
                           [](T* target, T value) { atomicAdd(target, value); });
  }
  store3(grad_points + idx * 3, gp);
}

template <typename scalar_t>
void forward_impl(const at::Tensor& points, const at::Tensor& posed, const at::Tensor& canonical,
                  const at::Tensor& faces, double thickness, at::Tensor& out,
                  at::Tensor& face_index) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = points.size(0), N = points.size(1), V = posed.size(1), F = faces.size(0);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto acc = points.options().dtype(std::is_same<T, double>::value ? at::kDouble : at::kFloat);
  const T thick = static_cast<T>(thickness);
  at::Tensor boxes = at::empty({B, F, 6}, acc);
  face_boxes_kernel<scalar_t, T><<<blocks_for(B * F), kThreads, 0, stream>>>(
      posed.data_ptr<scalar_t>(), faces.data_ptr<int64_t>(), B, V, F, grown_thickness(thick),
      boxes.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // per-batch bounds, to the host (6 B values) to size the grids as the CPU kernel does
  at::Tensor bounds =
      at::cat({boxes.narrow(2, 0, 3).amin(1), boxes.narrow(2, 3, 3).amax(1)}, 1).to(at::kCPU);
  const T* bd = bounds.data_ptr<T>();
  std::vector<GridSpec<T>> specs(B);
  std::vector<int64_t> base(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    specs[b] = make_grid_spec(bd + b * 6, bd + b * 6 + 3, thick);
    base[b + 1] = base[b] + cell_count(specs[b]);
  }
  const int64_t total_cells = base[B];
  at::Tensor spec_t = at::empty({static_cast<int64_t>(B * sizeof(GridSpec<T>))},
                                points.options().dtype(at::kByte).device(at::kCPU));
  std::memcpy(spec_t.data_ptr(), specs.data(), B * sizeof(GridSpec<T>));
  spec_t = spec_t.to(points.device());
  at::Tensor base_t = at::tensor(base, points.options().dtype(at::kLong).device(at::kCPU))
                          .to(points.device());
  at::Tensor counts = at::zeros({total_cells + 1}, points.options().dtype(at::kInt));
  const auto* spec_ptr = reinterpret_cast<const GridSpec<T>*>(spec_t.data_ptr());
  bin_faces_kernel<T><<<blocks_for(B * F), kThreads, 0, stream>>>(
      boxes.data_ptr<T>(), spec_ptr, base_t.data_ptr<int64_t>(), B, F, 0,
      counts.data_ptr<int>() + 1, nullptr, nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor start = counts.cumsum(0, at::kLong);  // (total_cells + 1): exclusive starts
  const int64_t entries = start[total_cells].item<int64_t>();
  at::Tensor cursor = start.narrow(0, 0, total_cells).to(at::kInt);
  at::Tensor cell_faces = at::empty({std::max<int64_t>(entries, 1)}, points.options().dtype(at::kInt));
  bin_faces_kernel<T><<<blocks_for(B * F), kThreads, 0, stream>>>(
      boxes.data_ptr<T>(), spec_ptr, base_t.data_ptr<int64_t>(), B, F, 1, nullptr,
      cursor.data_ptr<int>(), cell_faces.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  search_kernel<scalar_t, T><<<blocks_for(B * N), kThreads, 0, stream>>>(
      points.data_ptr<scalar_t>(), posed.data_ptr<scalar_t>(), canonical.data_ptr<scalar_t>(),
      faces.data_ptr<int64_t>(), spec_ptr, base_t.data_ptr<int64_t>(), start.data_ptr<int64_t>(),
      cell_faces.data_ptr<int32_t>(), B, N, V, thick, out.data_ptr<scalar_t>(),
      face_index.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> mesh_deform_forward_cuda(const at::Tensor& points,
                                                            const at::Tensor& posed,
                                                            const at::Tensor& canonical,
                                                            const at::Tensor& faces,
                                                            double thickness) {
  check_inputs(points, posed, canonical, faces, kCudaSide);
  check_thickness(thickness, kCudaSide);
  TORCH_CHECK(faces.size(0) < std::numeric_limits<int32_t>::max(),
              "mesh_deform (cuda): too many faces");
  const c10::cuda::CUDAGuard guard(points.device());
  at::Tensor out = new_output(points.sizes(), points.options());
  at::Tensor face_index =
      new_output({points.size(0), points.size(1)}, points.options().dtype(at::kLong));
  if (points.numel() == 0) return {out, face_index};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(),
                                  "mesh_deform_forward_cuda", [&] {
                                    forward_impl<scalar_t>(points, posed, canonical, faces,
                                                           thickness, out, face_index);
                                  });
  return {out, face_index};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mesh_deform_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& points, const at::Tensor& posed,
    const at::Tensor& canonical, const at::Tensor& faces, const at::Tensor& face_index) {
  check_inputs(points, posed, canonical, faces, kCudaSide);
  check_backward(grad_out, face_index, points, kCudaSide);
  const c10::cuda::CUDAGuard guard(points.device());
  const int64_t B = points.size(0), N = points.size(1), V = posed.size(1);
  const auto acc = points.options().dtype(acc_dtype(points));
  at::Tensor grad_points = new_output(points.sizes(), points.options());
  at::Tensor acc_v = at::zeros({B, V, 3}, acc);
  at::Tensor acc_c = at::zeros({B, V, 3}, acc);
  if (B * N > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, points.scalar_type(), "mesh_deform_backward_cuda", [&] {
          using T = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t, T><<<blocks_for(B * N), kThreads, 0, stream>>>(
              grad_out.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(),
              posed.data_ptr<scalar_t>(), canonical.data_ptr<scalar_t>(),
              faces.data_ptr<int64_t>(), face_index.data_ptr<int64_t>(), B, N, V,
              grad_points.data_ptr<scalar_t>(), acc_v.data_ptr<T>(), acc_c.data_ptr<T>());
        });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_points, acc_v.to(posed.scalar_type()), acc_c.to(canonical.scalar_type())};
}

}  // namespace
}  // namespace mesh
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  m.impl("mesh_deform_forward", &portrait_engine::mesh::mesh_deform_forward_cuda);
  m.impl("mesh_deform_backward", &portrait_engine::mesh::mesh_deform_backward_cuda);
}
