// CUDA kernels of portrait_engine::{forward_kinematics,skin_points}_{forward,backward}
// (contract: docs/kernel_contract_skinning.md; shared math: skinning.h, the same functions the
// CPU kernels call).
//
// forward_kinematics: one thread per batch element walks its J joints (the chain is serial;
// B = 32 threads is a single warp, and the whole launch is a few microseconds, replacing
// smplx's ~5 kernels per joint). Rotations, global transforms and their gradients live in
// per-thread workspaces in the accumulation type: slices of shared memory while the chain fits
// (J up to 511 forward, 195 backward for float), else global memory.
// skin_points forward: one thread per (b, n); M = sum_j w_j A_j in registers.
// skin_points backward, shared weights (lbs's case): one thread per (b, n) writes grad_points
// and dM, the gradient of its blended transform, into a point-major (N, B, 12) workspace; the
// reductions over points are then two cuBLAS GEMMs on its (N, B * 12) view (skin_reduce.h, as
// on the CPU). The per-block reduction below took 133 us at lbs's B = 32 on an H100 (2026-11-26
// profile: 24 joints x 12 warp-shuffle sums and two barriers per joint, plus a (B, N, J)
// grad_weights workspace summed over b), where the GEMMs are 2 x 127 MFLOP.
// skin_points backward, batched weights: one thread per (b, n) writes grad_points and its row
// of grad_weights; each block reduces sum_points w_j dM for every (j, k) by warp shuffles, then
// across its warps in a fixed order, into a (B, blocks, J, 12) partial that at::sum reduces.
// No atomics on either path: deterministic.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "skinning/checks.h"
#include "skinning/skin_reduce.h"
#include "skinning/skinning.h"

namespace portrait_engine {
namespace skinning {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Shared memory the chain kernels take per block (the default limit, without an opt-in).
constexpr int64_t kFkSharedBytes = 48 * 1024;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxGridY = 65535;

// The chain's workspaces: a slice of dynamic shared memory per thread when it fits (smem_stride
// > 0: values per thread, odd so that the threads' slices start in different banks), else
// global memory. Each joint of the walk reads and writes its workspace many times,
// serially: from global memory (L1/L2 round trips of hundreds of cycles) the walk took 0.10 ms
// forward and 0.21 ms backward at B = 32 on an H100 (2026-11-26 lbs profile), where the
// arithmetic is a few microseconds.
extern __shared__ __align__(16) unsigned char fk_shared[];

// Values per thread in shared memory for `values` workspace values per chain (0: does not fit).
template <typename T>
int64_t fk_shared_stride(int64_t values) {
  const int64_t stride = values | 1;  // odd in words of T: 4- and 8-byte slices conflict-free
  return stride * static_cast<int64_t>(sizeof(T)) <= kFkSharedBytes ? stride : 0;
}

// Threads per block of the chain kernels: as many slices as fit in kFkSharedBytes (at most 64).
template <typename T>
int fk_threads(int64_t stride) {
  if (stride == 0) return 64;
  const int64_t fit = kFkSharedBytes / (stride * static_cast<int64_t>(sizeof(T)));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(64, fit)));
}

template <typename scalar_t, typename T>
__global__ void fk_forward_kernel(const scalar_t* __restrict__ pose,
                                  const scalar_t* __restrict__ joints,
                                  const int64_t* __restrict__ parents, int64_t B, int64_t J,
                                  bool pose2rot, int64_t smem_stride, T* __restrict__ rot_ws,
                                  T* __restrict__ jnt_ws, T* __restrict__ g_ws,
                                  scalar_t* __restrict__ rot_out, scalar_t* __restrict__ pj_out,
                                  scalar_t* __restrict__ rel_out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  T* rot = rot_ws + b * J * 9;
  T* jnt = jnt_ws + b * J * 3;
  T* G = g_ws + b * J * 12;
  if (smem_stride > 0) {
    rot = reinterpret_cast<T*>(fk_shared) + threadIdx.x * smem_stride;
    jnt = rot + J * 9;
    G = jnt + J * 3;
  }
  const int64_t pose_stride = J * (pose2rot ? 3 : 9);
  forward_kinematics_element(pose + b * pose_stride, joints + b * J * 3, parents, J, pose2rot,
                             rot, jnt, G, rot_out + b * J * 9, pj_out + b * J * 3,
                             rel_out + b * J * 16);
}

template <typename scalar_t, typename T>
__global__ void fk_backward_kernel(const scalar_t* __restrict__ grad_rot, int64_t rot_first,
                                   const scalar_t* __restrict__ grad_pj,
                                   const scalar_t* __restrict__ grad_rel,
                                   const scalar_t* __restrict__ pose,
                                   const scalar_t* __restrict__ joints,
                                   const int64_t* __restrict__ parents, int64_t B, int64_t J,
                                   bool pose2rot, int64_t smem_stride, T* __restrict__ ws,
                                   scalar_t* __restrict__ gpose, scalar_t* __restrict__ gjoints) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  T* w = smem_stride > 0 ? reinterpret_cast<T*>(fk_shared) + threadIdx.x * smem_stride
                         : ws + b * J * kChainBackwardWorkspace;
  const int64_t pose_stride = J * (pose2rot ? 3 : 9);
  forward_kinematics_backward_element(grad_rot + b * (J - rot_first) * 9, rot_first,
                                      grad_pj ? grad_pj + b * J * 3 : nullptr,
                                      grad_rel + b * J * 16, pose + b * pose_stride,
                                      joints + b * J * 3, parents, J, pose2rot, w,
                                      gpose + b * pose_stride, gjoints + b * J * 3);
}

template <typename scalar_t, typename T>
__global__ void skin_forward_kernel(const scalar_t* __restrict__ points,
                                    const scalar_t* __restrict__ weights,
                                    const scalar_t* __restrict__ transforms, int64_t B,
                                    int64_t N, int64_t J, int64_t weights_batch_stride,
                                    bool inverse, scalar_t* __restrict__ out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {  // gridDim.y is at most 65535
    T M[12];
    blend<T>(weights + b * weights_batch_stride + n * J, transforms + b * J * 16, J, M);
    const int64_t idx = b * N + n;
    const T p[3] = {static_cast<T>(points[idx * 3]), static_cast<T>(points[idx * 3 + 1]),
                    static_cast<T>(points[idx * 3 + 2])};
    T o[3];
    skin_point(M, p, inverse, o);
    for (int c = 0; c < 3; ++c) out[idx * 3 + c] = static_cast<scalar_t>(o[c]);
  }
}

// One point's backward, shared by the two kernels below: its blended transform from its
// weights w and the batch element's transforms A, grad_points[idx] written, dM returned.
template <typename scalar_t, typename T>
__device__ __forceinline__ void point_backward(const scalar_t* __restrict__ grad_out,
                                               const scalar_t* __restrict__ points,
                                               const scalar_t* w, const scalar_t* A, int64_t J,
                                               int64_t idx, bool inverse,
                                               scalar_t* __restrict__ grad_points, T dM[12]) {
  T M[12];
  blend<T>(w, A, J, M);
  const T p[3] = {static_cast<T>(points[idx * 3]), static_cast<T>(points[idx * 3 + 1]),
                  static_cast<T>(points[idx * 3 + 2])};
  const T g[3] = {static_cast<T>(grad_out[idx * 3]), static_cast<T>(grad_out[idx * 3 + 1]),
                  static_cast<T>(grad_out[idx * 3 + 2])};
  T gp[3];
  skin_point_backward(M, p, g, inverse, gp, dM);
  for (int c = 0; c < 3; ++c) grad_points[idx * 3 + c] = static_cast<scalar_t>(gp[c]);
}

// Shared weights: thread t = b * N + n (a warp's transform reads are broadcasts), dM to
// row n * B + b of the point-major workspace.
template <typename scalar_t, typename T>
__global__ void skin_backward_shared_kernel(const scalar_t* __restrict__ grad_out,
                                            const scalar_t* __restrict__ points,
                                            const scalar_t* __restrict__ weights,
                                            const scalar_t* __restrict__ transforms, int64_t B,
                                            int64_t N, int64_t J, bool inverse,
                                            scalar_t* __restrict__ grad_points,
                                            T* __restrict__ dM_ws) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * N) return;
  const int64_t b = idx / N, n = idx - b * N;
  T dM[12];
  point_backward<scalar_t, T>(grad_out, points, weights + n * J, transforms + b * J * 16, J, idx,
                              inverse, grad_points, dM);
  T* out = dM_ws + (n * B + b) * 12;
  if constexpr (std::is_same_v<T, float>) {
    // three 16-byte stores: rows are 48 bytes apart from a 16-byte aligned allocation
    float4* out4 = reinterpret_cast<float4*>(out);
    for (int q = 0; q < 3; ++q) {
      out4[q] = make_float4(dM[4 * q], dM[4 * q + 1], dM[4 * q + 2], dM[4 * q + 3]);
    }
  } else {
    for (int k = 0; k < 12; ++k) out[k] = dM[k];
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kFullMask, v, offset);
  return v;
}

template <typename scalar_t, typename T>
__global__ void skin_backward_kernel(const scalar_t* __restrict__ grad_out,
                                     const scalar_t* __restrict__ points,
                                     const scalar_t* __restrict__ weights,
                                     const scalar_t* __restrict__ transforms, int64_t B,
                                     int64_t N, int64_t J, int64_t weights_batch_stride,
                                     bool inverse, scalar_t* __restrict__ grad_points,
                                     scalar_t* __restrict__ grad_weights,
                                     T* __restrict__ partial) {
  __shared__ T warp_sums[kWarps][12];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = n < N;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // b is uniform over the block, so the barriers below are reached by all its threads
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {  // gridDim.y is at most 65535
    const scalar_t* w = weights + b * weights_batch_stride + (active ? n : 0) * J;
    const scalar_t* A = transforms + b * J * 16;
    T dM[12];
    for (int k = 0; k < 12; ++k) dM[k] = T(0);
    if (active) {
      point_backward<scalar_t, T>(grad_out, points, w, A, J, b * N + n, inverse, grad_points, dM);
    }
    const int64_t blocks = gridDim.x;
    for (int64_t j = 0; j < J; ++j) {
      const T wj = active ? static_cast<T>(w[j]) : T(0);
      if (active) {
        T s = T(0);
        for (int k = 0; k < 12; ++k) s += static_cast<T>(A[j * 16 + k]) * dM[k];
        grad_weights[(b * N + n) * J + j] = static_cast<scalar_t>(s);
      }
      for (int k = 0; k < 12; ++k) {
        const T v = warp_sum(wj * dM[k]);
        if (lane == 0) warp_sums[warp][k] = v;
      }
      __syncthreads();
      if (threadIdx.x < 12) {
        T total = T(0);
        for (int i = 0; i < kWarps; ++i) total += warp_sums[i][threadIdx.x];
        partial[((b * blocks + blockIdx.x) * J + j) * 12 + threadIdx.x] = total;
      }
      __syncthreads();
    }
  }
}


std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_kinematics_forward_cuda(
    const at::Tensor& pose, const at::Tensor& joints, const at::Tensor& parents, bool pose2rot) {
  check_fk(pose, joints, parents, pose2rot, kCudaSide);
  const c10::cuda::CUDAGuard guard(joints.device());
  const int64_t B = joints.size(0), J = joints.size(1);
  at::Tensor rot = new_output({B, J, 3, 3}, joints.options());
  at::Tensor pj = new_output({B, J, 3}, joints.options());
  at::Tensor rel = new_output({B, J, 4, 4}, joints.options());
  if (B == 0 || J == 0) return {rot, pj, rel};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, joints.scalar_type(), "forward_kinematics_forward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        const int64_t stride = fk_shared_stride<T>(J * 24);
        // global workspaces only when the chain does not fit in shared memory
        at::Tensor ws = at::empty({stride > 0 ? 0 : B * J * 24},
                                  joints.options().dtype(acc_dtype(joints)));
        T* w = ws.data_ptr<T>();
        const int threads = fk_threads<T>(stride);
        const int blocks = static_cast<int>((B + threads - 1) / threads);
        const size_t shared = stride > 0 ? threads * stride * sizeof(T) : 0;
        fk_forward_kernel<scalar_t, T><<<blocks, threads, shared, stream>>>(
            pose.data_ptr<scalar_t>(), joints.data_ptr<scalar_t>(), parents.data_ptr<int64_t>(),
            B, J, pose2rot, stride, w, w + B * J * 9, w + B * J * 12, rot.data_ptr<scalar_t>(),
            pj.data_ptr<scalar_t>(), rel.data_ptr<scalar_t>());
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rot, pj, rel};
}

std::tuple<at::Tensor, at::Tensor> forward_kinematics_backward_cuda(
    const at::Tensor& grad_rot, const at::Tensor& grad_pj, const at::Tensor& grad_rel,
    const at::Tensor& pose, const at::Tensor& joints, const at::Tensor& parents, bool pose2rot) {
  check_fk(pose, joints, parents, pose2rot, kCudaSide);
  const c10::cuda::CUDAGuard guard(joints.device());
  const int64_t B = joints.size(0), J = joints.size(1);
  const int64_t rot_first = check_fk_grads(grad_rot, grad_pj, grad_rel, joints, kCudaSide);
  at::Tensor grad_pose = new_output(pose.sizes(), pose.options());
  at::Tensor grad_joints = new_output(joints.sizes(), joints.options());
  if (B == 0 || J == 0) return {grad_pose, grad_joints};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, joints.scalar_type(), "forward_kinematics_backward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        const int64_t stride = fk_shared_stride<T>(J * kChainBackwardWorkspace);
        at::Tensor ws = at::empty({stride > 0 ? 0 : B * J * kChainBackwardWorkspace},
                                  joints.options().dtype(acc_dtype(joints)));
        const int threads = fk_threads<T>(stride);
        const int blocks = static_cast<int>((B + threads - 1) / threads);
        const size_t shared = stride > 0 ? threads * stride * sizeof(T) : 0;
        fk_backward_kernel<scalar_t, T><<<blocks, threads, shared, stream>>>(
            grad_rot.data_ptr<scalar_t>(), rot_first,
            grad_pj.numel() > 0 ? grad_pj.data_ptr<scalar_t>() : nullptr,
            grad_rel.data_ptr<scalar_t>(), pose.data_ptr<scalar_t>(), joints.data_ptr<scalar_t>(),
            parents.data_ptr<int64_t>(), B, J, pose2rot, stride, ws.data_ptr<T>(),
            grad_pose.data_ptr<scalar_t>(), grad_joints.data_ptr<scalar_t>());
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_pose, grad_joints};
}


at::Tensor skin_points_forward_cuda(const at::Tensor& points, const at::Tensor& weights,
                                    const at::Tensor& transforms, bool inverse) {
  check_skin(points, weights, transforms, kCudaSide);
  const c10::cuda::CUDAGuard guard(points.device());
  at::Tensor out = new_output(points.sizes(), points.options());
  const int64_t B = points.size(0), N = points.size(1), J = transforms.size(1);
  if (B == 0 || N == 0) return out;
  const int64_t wstride = weights.size(0) == 1 ? 0 : N * J;
  const dim3 grid(static_cast<unsigned>((N + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min<int64_t>(B, kMaxGridY)));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(),
                                  "skin_points_forward_cuda", [&] {
                                    using T = at::opmath_type<scalar_t>;
                                    skin_forward_kernel<scalar_t, T><<<grid, kThreads, 0, stream>>>(
                                        points.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
                                        transforms.data_ptr<scalar_t>(), B, N, J, wstride,
                                        inverse, out.data_ptr<scalar_t>());
                                  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> skin_points_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& points, const at::Tensor& weights,
    const at::Tensor& transforms, bool inverse) {
  check_skin(points, weights, transforms, kCudaSide);
  check_skin_grad(grad_out, points, kCudaSide);
  const c10::cuda::CUDAGuard guard(points.device());
  const int64_t B = points.size(0), N = points.size(1), J = transforms.size(1);
  at::Tensor grad_points = new_output(points.sizes(), points.options());
  if (B == 0 || N == 0) {
    return {grad_points, at::zeros_like(weights), at::zeros_like(transforms)};
  }
  const auto acc = points.options().dtype(acc_dtype(points));
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (weights.size(0) == 1) {
    at::Tensor dM = at::empty({N, B, 12}, acc);
    const int64_t blocks = (B * N + kThreads - 1) / kThreads;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, points.scalar_type(), "skin_points_backward_cuda", [&] {
          using T = at::opmath_type<scalar_t>;
          skin_backward_shared_kernel<scalar_t, T>
              <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
                  grad_out.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(),
                  weights.data_ptr<scalar_t>(), transforms.data_ptr<scalar_t>(), B, N, J,
                  inverse, grad_points.data_ptr<scalar_t>(), dM.data_ptr<T>());
        });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const bool capturing =
        c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
    auto [grad_weights, grad_transforms] = skin_reductions(dM, weights, transforms, !capturing);
    return {grad_points, grad_weights, grad_transforms};
  }
  at::Tensor grad_weights = new_output(weights.sizes(), weights.options());
  const int64_t blocks = (N + kThreads - 1) / kThreads;
  at::Tensor partial = at::empty({B, blocks, J, 12}, acc);
  const dim3 grid(static_cast<unsigned>(blocks),
                  static_cast<unsigned>(std::min<int64_t>(B, kMaxGridY)));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, points.scalar_type(), "skin_points_backward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        skin_backward_kernel<scalar_t, T><<<grid, kThreads, 0, stream>>>(
            grad_out.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(),
            weights.data_ptr<scalar_t>(), transforms.data_ptr<scalar_t>(), B, N, J, N * J, inverse,
            grad_points.data_ptr<scalar_t>(), grad_weights.data_ptr<scalar_t>(),
            partial.data_ptr<T>());
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor grad_transforms = at::zeros(transforms.sizes(), acc);
  grad_transforms.narrow(2, 0, 3).copy_(partial.sum(1).view({B, J, 3, 4}));
  return {grad_points, grad_weights, grad_transforms.to(transforms.scalar_type())};
}

// blend_shapes: out = base + coeffs @ dirs; cuBLAS runs the products as they are.
at::Tensor blend_shapes_forward_cuda(const at::Tensor& base, const at::Tensor& coeffs,
                                     const at::Tensor& dirs) {
  check_blend(base, coeffs, dirs, kCudaSide);
  const c10::cuda::CUDAGuard guard(coeffs.device());
  return at::addmm(base, coeffs, dirs);
}

std::tuple<at::Tensor, at::Tensor> blend_shapes_backward_cuda(const at::Tensor& grad_out,
                                                              const at::Tensor& coeffs,
                                                              const at::Tensor& dirs,
                                                              bool dirs_grad) {
  check_blend_grad(grad_out, coeffs, dirs, kCudaSide);
  const c10::cuda::CUDAGuard guard(coeffs.device());
  at::Tensor grad_dirs = dirs_grad ? at::mm(coeffs.t(), grad_out) : at::empty({0}, dirs.options());
  return {at::mm(grad_out, dirs.t()), grad_dirs};
}

// shape_blend: v_shaped = T + S β and regressed = 𝒥 [T | S] (contract in shape_blend_cpu.cpp);
// cuBLAS runs the products as they are.
std::tuple<at::Tensor, at::Tensor> shape_blend_forward_cuda(const at::Tensor& v_template,
                                                            const at::Tensor& betas,
                                                            const at::Tensor& shapedirs,
                                                            const at::Tensor& regressor) {
  check_shape_blend(v_template, betas, shapedirs, regressor, kCudaSide);
  const c10::cuda::CUDAGuard guard(v_template.device());
  const int64_t B = betas.size(0), V = v_template.size(0);
  const at::Tensor dirs = shapedirs.view({V * 3, -1});
  at::Tensor v_shaped = at::addmm(v_template.view({1, V * 3}), betas, dirs.t()).view({B, V, 3});
  at::Tensor regressed =
      at::mm(regressor, at::cat({v_template, shapedirs.view({V, -1})}, /*dim=*/1));
  return {v_shaped, regressed};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shape_blend_backward_cuda(
    const at::Tensor& grad_v_shaped, const at::Tensor& grad_regressed,
    const at::Tensor& v_template, const at::Tensor& betas, const at::Tensor& shapedirs,
    const at::Tensor& regressor) {
  check_shape_blend(v_template, betas, shapedirs, regressor, kCudaSide);
  check_shape_blend_grad(grad_v_shaped, grad_regressed, v_template, betas, regressor, kCudaSide);
  const c10::cuda::CUDAGuard guard(v_template.device());
  const int64_t B = betas.size(0), V = v_template.size(0);
  const at::Tensor g = grad_v_shaped.view({B, V * 3});
  // the gradient of 𝒥 [T | S] w.r.t. [T | S], (V, 3 + 3 NB)
  const at::Tensor regressed_side = at::mm(regressor.t(), grad_regressed);
  at::Tensor grad_tmpl = (g.sum(0).view({V, 3}) + regressed_side.narrow(1, 0, 3)).contiguous();
  at::Tensor grad_dirs = at::addmm(regressed_side.narrow(1, 3, regressed_side.size(1) - 3)
                                       .reshape({V * 3, -1}),
                                   g.t(), betas)
                             .view(shapedirs.sizes());
  at::Tensor grad_regressor =
      at::mm(grad_regressed, at::cat({v_template, shapedirs.view({V, -1})}, /*dim=*/1).t());
  at::Tensor grad_betas = at::mm(g, shapedirs.view({V * 3, -1}));
  return {grad_tmpl, grad_betas, grad_dirs.contiguous(), grad_regressor};
}

}  // namespace
}  // namespace skinning
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  m.impl("forward_kinematics_forward", &portrait_engine::skinning::forward_kinematics_forward_cuda);
  m.impl("forward_kinematics_backward",
         &portrait_engine::skinning::forward_kinematics_backward_cuda);
  m.impl("skin_points_forward", &portrait_engine::skinning::skin_points_forward_cuda);
  m.impl("skin_points_backward", &portrait_engine::skinning::skin_points_backward_cuda);
  m.impl("blend_shapes_forward", &portrait_engine::skinning::blend_shapes_forward_cuda);
  m.impl("blend_shapes_backward", &portrait_engine::skinning::blend_shapes_backward_cuda);
  m.impl("shape_blend_forward", &portrait_engine::skinning::shape_blend_forward_cuda);
  m.impl("shape_blend_backward", &portrait_engine::skinning::shape_blend_backward_cuda);
}
