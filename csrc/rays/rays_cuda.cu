// CUDA kernels of portrait_engine::ray_march_{forward,backward} and ray_sample_{forward,backward}
// (contract: docs/kernel_contract_rays.md; shared math: rays.h).
//
// ray_march: a group of G lanes (8 or 32, within one warp) owns a ray; lane l holds channels
// l, l + G, ... (CPL = ceil(C / G) per lane, C <= 256), so a sample's C colours are one
// coalesced row read. The scalar recurrence (interval, transmittance, totals) is evaluated by
// every lane of the group from the same broadcast loads -- cheaper than exchanging it -- and lane
// 0 writes the per-ray / per-sample scalars. The forward needs no communication between lanes;
// the backward's ⟨g, c_mid⟩ per sample is a butterfly of log2(G) shuffles within the group.
// No atomics, no shared memory: results are deterministic. Index math is int64.
//
// ray_sample: one thread per (batch element, pixel); its backward, see ray_sample_backward_kernel.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "rays/checks.h"
#include "rays/rays.h"

namespace portrait_engine {
namespace rays {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxChannels = 256;

// The lanes of this thread's group, for __shfl_xor_sync: a whole group exits or stays together.
template <int G>
__device__ PE_INLINE unsigned group_mask() {
  if constexpr (G == 32) {
    return 0xffffffffu;
  } else {
    const unsigned lane_in_warp = threadIdx.x % 32;
    return ((1u << G) - 1u) << (lane_in_warp / G * G);
  }
}

template <int G, typename acc_t>
__device__ PE_INLINE acc_t group_sum(acc_t v, unsigned mask) {
#pragma unroll
  for (int offset = G / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(mask, v, offset, G);
  return v;
}

template <typename scalar_t, typename acc_t, int G, int CPL>
__global__ void __launch_bounds__(kThreads)
    ray_march_forward_kernel(const scalar_t* __restrict__ colors,
                             const scalar_t* __restrict__ densities,
                             const scalar_t* __restrict__ depths,
                             const acc_t* __restrict__ depth_range, scalar_t* __restrict__ rgb,
                             scalar_t* __restrict__ depth, scalar_t* __restrict__ weights,
                             acc_t* __restrict__ totals, int64_t n_rays, int64_t S, int64_t C,
                             bool white_back, bool scale_rgb) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t ray = thread / G;
  const int lane = static_cast<int>(thread % G);
  if (ray >= n_rays) return;
  const scalar_t* c = colors + ray * S * C;
  const scalar_t* s = densities + ray * S;
  const scalar_t* z = depths + ray * S;
  scalar_t* w_out = weights + ray * (S - 1);

  acc_t prev[CPL], acc[CPL];
#pragma unroll
  for (int j = 0; j < CPL; ++j) {
    const int64_t k = lane + j * G;
    prev[j] = k < C ? static_cast<acc_t>(c[k]) : acc_t(0);
    acc[j] = acc_t(0);
  }
  acc_t s0 = static_cast<acc_t>(s[0]), z0 = static_cast<acc_t>(z[0]);
  acc_t transmittance = acc_t(1), total = acc_t(0), depth_sum = acc_t(0);
#pragma unroll 2
  for (int64_t i = 1; i < S; ++i) {
    const acc_t s1 = static_cast<acc_t>(s[i]), z1 = static_cast<acc_t>(z[i]);
    const Interval<acc_t> iv = interval(s0, s1, z0, z1);
    const acc_t w = iv.alpha * transmittance;
    const scalar_t* ci = c + i * C;
#pragma unroll
    for (int j = 0; j < CPL; ++j) {
      const int64_t k = lane + j * G;
      const acc_t next = k < C ? static_cast<acc_t>(ci[k]) : acc_t(0);
      acc[j] += w * ((prev[j] + next) / acc_t(2));
      prev[j] = next;
    }
    total += w;
    depth_sum += w * ((z0 + z1) / acc_t(2));
    if (lane == 0) w_out[i - 1] = static_cast<scalar_t>(w);
    transmittance = transmittance * iv.p;
    s0 = s1;
    z0 = z1;
  }
  acc_t* tot = totals + ray * (C + 2);
#pragma unroll
  for (int j = 0; j < CPL; ++j) {
    const int64_t k = lane + j * G;
    if (k < C) {
      tot[k] = acc[j];
      rgb[ray * C + k] = static_cast<scalar_t>(finish_rgb(acc[j], total, white_back, scale_rgb));
    }
  }
  if (lane == 0) {
    tot[C] = total;
    tot[C + 1] = depth_sum;
    depth[ray] = static_cast<scalar_t>(
        composite_depth(depth_sum, total, depth_range[0], depth_range[1]));
  }
}

template <typename scalar_t, typename acc_t, int G, int CPL>
__global__ void __launch_bounds__(kThreads)
    ray_march_backward_kernel(const scalar_t* __restrict__ grad_rgb,
                              const scalar_t* __restrict__ grad_depth,    // or nullptr
                              const scalar_t* __restrict__ grad_weights,  // or nullptr
                              const scalar_t* __restrict__ colors,
                              const scalar_t* __restrict__ densities,
                              const scalar_t* __restrict__ depths,
                              const acc_t* __restrict__ depth_range,
                              const acc_t* __restrict__ totals,
                              scalar_t* __restrict__ grad_colors,
                              scalar_t* __restrict__ grad_densities, int64_t n_rays, int64_t S,
                              int64_t C, bool white_back, bool scale_rgb) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t ray = thread / G;
  const int lane = static_cast<int>(thread % G);
  if (ray >= n_rays) return;
  const unsigned mask = group_mask<G>();
  const scalar_t* c = colors + ray * S * C;
  const scalar_t* s = densities + ray * S;
  const scalar_t* z = depths + ray * S;
  const scalar_t* gw = grad_weights != nullptr ? grad_weights + ray * (S - 1) : nullptr;
  const acc_t* tot = totals + ray * (C + 2);
  scalar_t* gc = grad_colors + ray * S * C;
  scalar_t* gs = grad_densities + ray * S;

  acc_t g[CPL], prev[CPL];
  acc_t g_sum = acc_t(0), g_dot_rgb = acc_t(0);
#pragma unroll
  for (int j = 0; j < CPL; ++j) {
    const int64_t k = lane + j * G;
    g[j] = k < C ? static_cast<acc_t>(grad_rgb[ray * C + k]) : acc_t(0);
    prev[j] = k < C ? static_cast<acc_t>(c[k]) : acc_t(0);
    g_sum += g[j];
    g_dot_rgb += k < C ? g[j] * tot[k] : acc_t(0);
  }
  g_sum = group_sum<G>(g_sum, mask);
  g_dot_rgb = group_sum<G>(g_dot_rgb, mask);
  const acc_t total = tot[C], depth_sum = tot[C + 1];
  const GradTerms<acc_t> t =
      grad_terms(grad_depth != nullptr ? static_cast<acc_t>(grad_depth[ray]) : acc_t(0), g_sum,
                 total, depth_sum, depth_range[0], depth_range[1], white_back, scale_rgb);

  // pre-pass: Σ w_i ∂L/∂weights_i (densities and depths only); skipped when no gradient
  // reached the weights
  acc_t weights_term = acc_t(0);
  if (gw != nullptr) {
    acc_t s0 = static_cast<acc_t>(s[0]), z0 = static_cast<acc_t>(z[0]);
    acc_t transmittance = acc_t(1);
#pragma unroll 2
    for (int64_t i = 1; i < S; ++i) {
      const acc_t s1 = static_cast<acc_t>(s[i]), z1 = static_cast<acc_t>(z[i]);
      const Interval<acc_t> iv = interval(s0, s1, z0, z1);
      weights_term += iv.alpha * transmittance * static_cast<acc_t>(gw[i - 1]);
      transmittance = transmittance * iv.p;
      s0 = s1;
      z0 = z1;
    }
  }
  const acc_t grand = t.scale * g_dot_rgb + t.a * total + t.b * depth_sum + weights_term;

  acc_t s0 = static_cast<acc_t>(s[0]), z0 = static_cast<acc_t>(z[0]);
  acc_t transmittance = acc_t(1), prefix = acc_t(0), gx_prev = acc_t(0), w_prev = acc_t(0);
  const acc_t half_scale = t.scale / acc_t(2);
  for (int64_t i = 1; i < S; ++i) {
    const acc_t s1 = static_cast<acc_t>(s[i]), z1 = static_cast<acc_t>(z[i]);
    const Interval<acc_t> iv = interval(s0, s1, z0, z1);
    const acc_t w = iv.alpha * transmittance;
    const scalar_t* ci = c + i * C;
    scalar_t* gci = gc + (i - 1) * C;
    const acc_t wc = half_scale * (w_prev + w);
    acc_t dot = acc_t(0);
#pragma unroll
    for (int j = 0; j < CPL; ++j) {
      const int64_t k = lane + j * G;
      const acc_t next = k < C ? static_cast<acc_t>(ci[k]) : acc_t(0);
      dot += g[j] * ((prev[j] + next) / acc_t(2));
      prev[j] = next;
      if (k < C) gci[k] = static_cast<scalar_t>(wc * g[j]);
    }
    dot = group_sum<G>(dot, mask);
    const acc_t gamma =
        t.scale * dot + t.a + t.b * ((z0 + z1) / acc_t(2)) +
        (gw != nullptr ? static_cast<acc_t>(gw[i - 1]) : acc_t(0));
    prefix += w * gamma;
    const acc_t gx = grad_x(iv.e, iv.p, iv.dtau, gamma, transmittance, grand - prefix);
    if (lane == 0) gs[i - 1] = static_cast<scalar_t>(acc_t(0.5) * (gx_prev + gx));
    transmittance = transmittance * iv.p;
    gx_prev = gx;
    w_prev = w;
    s0 = s1;
    z0 = z1;
  }
  scalar_t* last = gc + (S - 1) * C;
  const acc_t wc = half_scale * w_prev;
#pragma unroll
  for (int j = 0; j < CPL; ++j) {
    const int64_t k = lane + j * G;
    if (k < C) last[k] = static_cast<scalar_t>(wc * g[j]);
  }
  if (lane == 0) gs[S - 1] = static_cast<scalar_t>(acc_t(0.5) * gx_prev);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    ray_sample_kernel(const scalar_t* __restrict__ cam2world,
                      const scalar_t* __restrict__ intrinsics, scalar_t* __restrict__ origins,
                      scalar_t* __restrict__ directions, int64_t n, int64_t resolution) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= n) return;
  const int64_t pixels = resolution * resolution;
  const int64_t b = idx / pixels, pixel = idx % pixels;
  const scalar_t* mb = cam2world + b * 16;
  const scalar_t* k = intrinsics + b * 9;
  acc_t m[12];
#pragma unroll
  for (int j = 0; j < 12; ++j) m[j] = static_cast<acc_t>(mb[j]);
  acc_t dir[3];
  ray_direction(m, static_cast<acc_t>(k[0]), static_cast<acc_t>(k[1]), static_cast<acc_t>(k[2]),
                static_cast<acc_t>(k[4]), static_cast<acc_t>(k[5]), pixel / resolution,
                pixel % resolution, resolution, dir);
#pragma unroll
  for (int j = 0; j < 3; ++j) {
    directions[idx * 3 + j] = static_cast<scalar_t>(dir[j]);
    origins[idx * 3 + j] = mb[4 * j + 3];
  }
}

// ------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------

// The channels of a ray live in the registers of one warp.
void check_channels(const MarchSizes& z) {
  TORCH_CHECK(z.C <= kMaxChannels, "ray_march (cuda): at most ", kMaxChannels,
              " channels, got ", z.C);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls fn.template operator()<G, CPL>() for the group size and channels per lane of C.
template <typename Fn>
void dispatch_channels(int64_t C, Fn&& fn) {
  if (C <= 8) {
    fn.template operator()<8, 1>();
  } else if (C <= 32) {
    fn.template operator()<32, 1>();
  } else if (C <= 64) {
    fn.template operator()<32, 2>();
  } else if (C <= 128) {
    fn.template operator()<32, 4>();
  } else {
    fn.template operator()<32, 8>();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ray_march_forward_cuda(
    const at::Tensor& colors, const at::Tensor& densities, const at::Tensor& depths,
    const at::Tensor& depth_range, bool white_back, bool scale_rgb) {
  const c10::cuda::CUDAGuard guard(colors.device());
  const MarchSizes z = check_march(colors, densities, depths, depth_range, kCudaSide);
  check_channels(z);
  const auto options = colors.options();
  at::Tensor rgb = new_output({z.B, z.R, z.C}, options);
  at::Tensor depth = new_output({z.B, z.R, 1}, options);
  at::Tensor weights = new_output({z.B, z.R, z.S - 1, 1}, options);
  at::Tensor totals = new_output({z.B, z.R, z.C + 2}, options.dtype(acc_dtype(colors)));
  const int64_t n_rays = z.B * z.R;
  if (n_rays == 0) return {rgb, depth, weights, totals};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(colors.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, colors.scalar_type(), "ray_march_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        dispatch_channels(z.C, [&]<int G, int CPL>() {
          const auto blocks = static_cast<unsigned int>(ceil_div(n_rays * G, kThreads));
          ray_march_forward_kernel<scalar_t, acc_t, G, CPL><<<blocks, kThreads, 0, stream>>>(
              colors.data_ptr<scalar_t>(), densities.data_ptr<scalar_t>(),
              depths.data_ptr<scalar_t>(), depth_range.data_ptr<acc_t>(),
              rgb.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
              totals.data_ptr<acc_t>(), n_rays, z.S, z.C, white_back, scale_rgb);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return {rgb, depth, weights, totals};
}

std::tuple<at::Tensor, at::Tensor> ray_march_backward_cuda(
    const at::Tensor& grad_rgb, const c10::optional<at::Tensor>& grad_depth,
    const c10::optional<at::Tensor>& grad_weights, const at::Tensor& colors,
    const at::Tensor& densities, const at::Tensor& depths, const at::Tensor& depth_range,
    const at::Tensor& totals, bool white_back, bool scale_rgb) {
  const c10::cuda::CUDAGuard guard(colors.device());
  const MarchSizes z = check_march(colors, densities, depths, depth_range, kCudaSide);
  check_channels(z);
  check_march_backward(grad_rgb, grad_depth, grad_weights, totals, colors, z, kCudaSide);
  const auto dtype = colors.scalar_type();
  const auto device = colors.device();
  at::Tensor grad_colors = new_output(colors.sizes(), colors.options());
  at::Tensor grad_densities = new_output(densities.sizes(), densities.options());
  const int64_t n_rays = z.B * z.R;
  if (n_rays == 0) return {grad_colors, grad_densities};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "ray_march_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_channels(z.C, [&]<int G, int CPL>() {
      const auto blocks = static_cast<unsigned int>(ceil_div(n_rays * G, kThreads));
      ray_march_backward_kernel<scalar_t, acc_t, G, CPL><<<blocks, kThreads, 0, stream>>>(
          grad_rgb.data_ptr<scalar_t>(), optional_data<scalar_t>(grad_depth),
          optional_data<scalar_t>(grad_weights), colors.data_ptr<scalar_t>(),
          densities.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
          depth_range.data_ptr<acc_t>(), totals.data_ptr<acc_t>(),
          grad_colors.data_ptr<scalar_t>(), grad_densities.data_ptr<scalar_t>(), n_rays, z.S, z.C,
          white_back, scale_rgb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_colors, grad_densities};
}

// ray_sample backward: block (chunk, b) sums its kSampleChunk rays' kSampleGrads gradient terms
// (a strided serial sum per thread, then a fixed shuffle + shared-memory tree) into one partial;
// a second kernel adds each batch element's partials in chunk order. No atomics: deterministic.
constexpr int64_t kSampleChunk = 4096;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    ray_sample_backward_kernel(const scalar_t* __restrict__ grad_origins,
                               const scalar_t* __restrict__ grad_directions,
                               const scalar_t* __restrict__ cam2world,
                               const scalar_t* __restrict__ intrinsics,
                               acc_t* __restrict__ partial, int64_t resolution) {
  __shared__ acc_t s_sums[kThreads / 32][kSampleGrads];
  const int64_t b = blockIdx.y, chunk = blockIdx.x, pixels = resolution * resolution;
  acc_t m[12];
#pragma unroll
  for (int j = 0; j < 12; ++j) m[j] = static_cast<acc_t>(cam2world[b * 16 + j]);
  const scalar_t* k = intrinsics + b * 9;
  const acc_t fx = static_cast<acc_t>(k[0]), sk = static_cast<acc_t>(k[1]);
  const acc_t cx = static_cast<acc_t>(k[2]), fy = static_cast<acc_t>(k[4]);
  const acc_t cy = static_cast<acc_t>(k[5]);
  acc_t acc[kSampleGrads];
#pragma unroll
  for (int j = 0; j < kSampleGrads; ++j) acc[j] = acc_t(0);
  const int64_t last = min(pixels, (chunk + 1) * kSampleChunk);
  for (int64_t pixel = chunk * kSampleChunk + threadIdx.x; pixel < last; pixel += kThreads) {
    const int64_t idx = (b * pixels + pixel) * 3;
    const acc_t g_o[3] = {static_cast<acc_t>(grad_origins[idx]),
                          static_cast<acc_t>(grad_origins[idx + 1]),
                          static_cast<acc_t>(grad_origins[idx + 2])};
    const acc_t g_d[3] = {static_cast<acc_t>(grad_directions[idx]),
                          static_cast<acc_t>(grad_directions[idx + 1]),
                          static_cast<acc_t>(grad_directions[idx + 2])};
    ray_sample_grad(m, fx, sk, cx, fy, cy, pixel / resolution, pixel % resolution, resolution,
                    g_o, g_d, acc);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < kSampleGrads; ++j) {
    acc_t v = acc[j];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) s_sums[warp][j] = v;
  }
  __syncthreads();
  if (threadIdx.x < kSampleGrads) {
    acc_t total = acc_t(0);
    for (int w = 0; w < kThreads / 32; ++w) total += s_sums[w][threadIdx.x];
    partial[(b * gridDim.x + chunk) * kSampleGrads + threadIdx.x] = total;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void ray_sample_finish_kernel(const acc_t* __restrict__ partial, int64_t batch,
                                         int64_t chunks, scalar_t* __restrict__ grad_m,
                                         scalar_t* __restrict__ grad_k) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  acc_t total[kSampleGrads];
  for (int j = 0; j < kSampleGrads; ++j) total[j] = acc_t(0);
  for (int64_t c = 0; c < chunks; ++c) {
    for (int j = 0; j < kSampleGrads; ++j) total[j] += partial[(b * chunks + c) * kSampleGrads + j];
  }
  write_sample_grads(total, grad_m + b * 16, grad_k + b * 9);
}

std::tuple<at::Tensor, at::Tensor> ray_sample_backward_cuda(const at::Tensor& grad_origins,
                                                            const at::Tensor& grad_directions,
                                                            const at::Tensor& cam2world,
                                                            const at::Tensor& intrinsics,
                                                            int64_t resolution) {
  const c10::cuda::CUDAGuard guard(cam2world.device());
  check_ray_sample(cam2world, intrinsics, resolution, kCudaSide);
  check_ray_sample_grads(grad_origins, grad_directions, cam2world, resolution, kCudaSide);
  const int64_t B = cam2world.size(0), M = resolution * resolution;
  at::Tensor grad_m = new_output({B, 4, 4}, cam2world.options());
  at::Tensor grad_k = new_output({B, 3, 3}, intrinsics.options());
  if (B == 0) return {grad_m, grad_k};
  TORCH_CHECK(B <= 65535, "ray_sample backward (cuda): at most 65535 cameras per call");
  const int64_t chunks = ceil_div(M, kSampleChunk);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(cam2world.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, cam2world.scalar_type(), "ray_sample_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        at::Tensor partial = at::empty({B, chunks, kSampleGrads},
                                       cam2world.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        const dim3 grid(static_cast<unsigned int>(chunks), static_cast<unsigned int>(B));
        ray_sample_backward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
            grad_origins.data_ptr<scalar_t>(), grad_directions.data_ptr<scalar_t>(),
            cam2world.data_ptr<scalar_t>(), intrinsics.data_ptr<scalar_t>(),
            partial.data_ptr<acc_t>(), resolution);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const auto blocks = static_cast<unsigned int>(ceil_div(B, kThreads));
        ray_sample_finish_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
            partial.data_ptr<acc_t>(), B, chunks, grad_m.data_ptr<scalar_t>(),
            grad_k.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_m, grad_k};
}

std::tuple<at::Tensor, at::Tensor> ray_sample_forward_cuda(const at::Tensor& cam2world,
                                                           const at::Tensor& intrinsics,
                                                           int64_t resolution) {
  const c10::cuda::CUDAGuard guard(cam2world.device());
  check_ray_sample(cam2world, intrinsics, resolution, kCudaSide);
  const int64_t B = cam2world.size(0), M = resolution * resolution;
  at::Tensor origins = new_output({B, M, 3}, cam2world.options());
  at::Tensor directions = new_output({B, M, 3}, cam2world.options());
  if (B == 0) return {origins, directions};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(cam2world.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, cam2world.scalar_type(), "ray_sample_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto blocks = static_cast<unsigned int>(ceil_div(B * M, kThreads));
        ray_sample_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
            cam2world.data_ptr<scalar_t>(), intrinsics.data_ptr<scalar_t>(),
            origins.data_ptr<scalar_t>(), directions.data_ptr<scalar_t>(), B * M, resolution);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {origins, directions};
}

}  // namespace
}  // namespace rays
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  m.impl("ray_march_forward", &portrait_engine::rays::ray_march_forward_cuda);
  m.impl("ray_march_backward", &portrait_engine::rays::ray_march_backward_cuda);
  m.impl("ray_sample_forward", &portrait_engine::rays::ray_sample_forward_cuda);
  m.impl("ray_sample_backward", &portrait_engine::rays::ray_sample_backward_cuda);
}
