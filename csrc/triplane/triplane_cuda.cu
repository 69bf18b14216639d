// CUDA kernels of portrait_engine::triplane_sample_{forward,backward}
// (contract: docs/kernel_contract_triplane.md; per-element math: triplane.h).
//
// Thread mapping: one thread per (point, channel), channels fastest: flat index
// i = (b * N + n) * C + c. The planes are channels-last, so the 32 lanes of a warp read
// consecutive channels of the same corner texel: for C = 32 (fp32) a warp is one point and
// every corner load is one fully used 128-byte line; for other C (33, 5, ...) a warp spans
// a few points and each corner load still touches only a few contiguous segments. The
// coordinate math (projection, floor, weights, bounds) is recomputed by every lane of a point;
// it is a few dozen FLOPs on warp-uniform (broadcast) loads of the point and of proj, cheap next
// to the 4 or 8 gathers per plane, and it keeps the kernel free of shared memory and of any
// assumption on C.
//
// Forward: each thread sums its channel over the planes (reduce_mean) or writes one value per
// plane, in the accumulation type, and casts once.
//
// Backward (one kernel):
//   * grad_planes (accumulation dtype, zero-initialised): atomicAdd of w * g per in-bounds
//     corner and channel (fp32 / fp64 atomics; lanes of a warp hit consecutive addresses).
//   * grad_points: each thread computes its channel's share of dL/dpoint (3 values, already
//     projected through proj and summed over planes); the shares of one point are summed with a
//     segmented warp-shuffle reduction (the lanes of a point are contiguous in the warp), and
//     the first lane of each point's segment in the warp atomically adds the sum into
//     grad_points (one atomic per point per warp it spans: 1 for C <= 32 aligned, C / 32 else).
//
// Index math is int64 throughout. Loops are grid-strided over whole blocks so that every lane
// of a warp takes part in the shuffles (inactive tail lanes contribute zeros).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>

#include "triplane/checks.h"
#include "triplane/triplane.h"

namespace portrait_engine {

std::string cuda_build_info() {
  return "cuda_version=" + std::to_string(CUDART_VERSION / 1000) + "." +
         std::to_string((CUDART_VERSION % 1000) / 10) +
         ";nvcc=" + std::to_string(__CUDACC_VER_MAJOR__) + "." +
         std::to_string(__CUDACC_VER_MINOR__);
}

namespace triplane {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    triplane_forward_kernel(const scalar_t* __restrict__ planes,
                            const scalar_t* __restrict__ points, const acc_t* __restrict__ proj,
                            scalar_t* __restrict__ out, int64_t B, int64_t P, int64_t N,
                            Geometry geo, bool trilinear, bool reduce_mean, bool nan_propagate) {
  const int64_t C = geo.C;
  const int64_t total = B * N * C;
  const int64_t plane_numel = geo.plane_numel();
  const int ncorners = num_corners(trilinear);
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(P);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t c = i % C;
    const int64_t bn = i / C;
    const int64_t b = bn / N, n = bn % N;
    const acc_t px = static_cast<acc_t>(points[bn * 3 + 0]);
    const acc_t py = static_cast<acc_t>(points[bn * 3 + 1]);
    const acc_t pz = static_cast<acc_t>(points[bn * 3 + 2]);
    acc_t sum = acc_t(0);
    for (int64_t p = 0; p < P; ++p) {
      acc_t gx, gy, gz;
      project(px, py, pz, proj + p * 9, gx, gy, gz);
      const Footprint<acc_t> f = make_footprint(gx, gy, gz, trilinear, geo);
      const scalar_t* base = planes + (b * P + p) * plane_numel + c;
      acc_t v = acc_t(0);
      if (nan_propagate && f.nonfinite) {
        v = quiet_nan<acc_t>();
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          if (k < ncorners) {
            const Corner<acc_t> cr = corner(f, k, geo);
            if (cr.valid) v += cr.w * static_cast<acc_t>(base[cr.offset]);
          }
        }
      }
      if (reduce_mean) {
        sum += v;
      } else {
        out[((b * P + p) * N + n) * C + c] = static_cast<scalar_t>(v);
      }
    }
    if (reduce_mean) out[i] = static_cast<scalar_t>(sum * inv_p);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    triplane_backward_kernel(const scalar_t* __restrict__ grad_out,
                             const scalar_t* __restrict__ planes,
                             const scalar_t* __restrict__ points, const acc_t* __restrict__ proj,
                             acc_t* __restrict__ grad_planes, acc_t* __restrict__ grad_points,
                             int64_t B, int64_t P, int64_t N, Geometry geo, bool trilinear,
                             bool reduce_mean, bool nan_propagate) {
  const int64_t C = geo.C;
  const int64_t total = B * N * C;
  const int64_t plane_numel = geo.plane_numel();
  const int ncorners = num_corners(trilinear);
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(P);
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // `start` is uniform across the block, so whole warps iterate together.
  for (int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x; start < total;
       start += stride) {
    const int64_t i = start + threadIdx.x;
    const bool active = i < total;
    // Point id of this lane; -1 for inactive lanes (they never match an active lane).
    const int64_t bn = active ? i / C : int64_t(-1);
    acc_t gp0 = acc_t(0), gp1 = acc_t(0), gp2 = acc_t(0);
    if (active) {
      const int64_t c = i - bn * C;
      const int64_t b = bn / N, n = bn % N;
      const acc_t px = static_cast<acc_t>(points[bn * 3 + 0]);
      const acc_t py = static_cast<acc_t>(points[bn * 3 + 1]);
      const acc_t pz = static_cast<acc_t>(points[bn * 3 + 2]);
      const acc_t g_mean = reduce_mean ? static_cast<acc_t>(grad_out[i]) * inv_p : acc_t(0);
      for (int64_t p = 0; p < P; ++p) {
        const acc_t g =
            reduce_mean ? g_mean : static_cast<acc_t>(grad_out[((b * P + p) * N + n) * C + c]);
        acc_t gx, gy, gz;
        project(px, py, pz, proj + p * 9, gx, gy, gz);
        const Footprint<acc_t> f = make_footprint(gx, gy, gz, trilinear, geo);
        const int64_t base = (b * P + p) * plane_numel + c;
        acc_t dix = acc_t(0), diy = acc_t(0), diz = acc_t(0);
        if (!f.nonfinite) {  // a non-finite sample has no corner in bounds
#pragma unroll
          for (int k = 0; k < 8; ++k) {
            if (k < ncorners) {
              const Corner<acc_t> cr = corner(f, k, geo);
              if (cr.valid) {
                const acc_t v = static_cast<acc_t>(planes[base + cr.offset]);
                atomicAdd(grad_planes + base + cr.offset, cr.w * g);
                dix += cr.dwx * v;
                diy += cr.dwy * v;
                diz += cr.dwz * v;
              }
            }
          }
        }
        add_point_grad(dix * g, diy * g, diz * g, nan_propagate && f.nonfinite, trilinear,
                       proj + p * 9, geo, gp0, gp1, gp2);
      }
    }
    // Segmented reduction: after the step with offset o, a lane holds the sum over the lanes
    // [lane, lane + 2o) of its own point (its point's lanes are contiguous).
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int64_t other = __shfl_down_sync(kFullMask, bn, offset);
      const acc_t o0 = __shfl_down_sync(kFullMask, gp0, offset);
      const acc_t o1 = __shfl_down_sync(kFullMask, gp1, offset);
      const acc_t o2 = __shfl_down_sync(kFullMask, gp2, offset);
      if (lane + offset < 32 && other == bn) {
        gp0 += o0;
        gp1 += o1;
        gp2 += o2;
      }
    }
    const int64_t previous = __shfl_up_sync(kFullMask, bn, 1);
    if (active && (lane == 0 || previous != bn)) {
      atomicAdd(grad_points + bn * 3 + 0, gp0);
      atomicAdd(grad_points + bn * 3 + 1, gp1);
      atomicAdd(grad_points + bn * 3 + 2, gp2);
    }
  }
}


// Blocks for `total` threads, grid-strided beyond a cap (the kernels loop).
unsigned int num_blocks(int64_t total) {
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(wanted, 1), 1 << 22));
}

at::Tensor triplane_sample_forward_cuda(const at::Tensor& planes, const at::Tensor& points,
                                        const at::Tensor& proj_in, bool trilinear,
                                        bool reduce_mean, bool nan_propagate) {
  const c10::cuda::CUDAGuard guard(planes.device());
  const at::Tensor proj = proj_in.contiguous();
  const Sizes z = check_inputs(planes, points, proj, kCudaSide);
  at::Tensor out = reduce_mean ? at::empty({z.B, z.N, z.geo.C}, planes.options())
                               : at::empty({z.B, z.P, z.N, z.geo.C}, planes.options());
  if (poison_outputs()) out.fill_(std::numeric_limits<double>::quiet_NaN());
  const int64_t total = z.B * z.N * z.geo.C;
  if (total == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(planes.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_sample_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        triplane_forward_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            planes.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(), proj.data_ptr<acc_t>(),
            out.data_ptr<scalar_t>(), z.B, z.P, z.N, z.geo, trilinear, reduce_mean,
            nan_propagate);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& points,
    const at::Tensor& proj_in, bool trilinear, bool reduce_mean, bool nan_propagate,
    bool points_grad) {
  // points_grad=false allows zeros for grad_points; this kernel computes them anyway (they
  // come from the same corner reads as the plane gradient, in the same thread)
  (void)points_grad;
  const c10::cuda::CUDAGuard guard(planes.device());
  const at::Tensor proj = proj_in.contiguous();
  const Sizes z = check_inputs(planes, points, proj, kCudaSide);
  check_grad_out(grad_out, planes, z, reduce_mean, kCudaSide);
  const auto acc = acc_dtype(planes);
  at::Tensor grad_planes = at::zeros(planes.sizes(), planes.options().dtype(acc));
  at::Tensor grad_points = at::zeros(points.sizes(), points.options().dtype(acc));
  const int64_t total = z.B * z.N * z.geo.C;
  if (total == 0) return {grad_planes, grad_points};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(planes.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_sample_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        triplane_backward_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            grad_out.data_ptr<scalar_t>(), planes.data_ptr<scalar_t>(),
            points.data_ptr<scalar_t>(), proj.data_ptr<acc_t>(), grad_planes.data_ptr<acc_t>(),
            grad_points.data_ptr<acc_t>(), z.B, z.P, z.N, z.geo, trilinear, reduce_mean,
            nan_propagate);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_planes, grad_points};
}

}  // namespace
}  // namespace triplane
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  m.impl("triplane_sample_forward", &portrait_engine::triplane::triplane_sample_forward_cuda);
  m.impl("triplane_sample_backward", &portrait_engine::triplane::triplane_sample_backward_cuda);
}
