// CUDA kernels of portrait_engine::render_rays_{forward,backward}
// (contract: docs/render_rays.md; per-sample and per-ray math: render.h, shared with the CPU).
//
// Thread mapping: one thread per ray; the thread sweeps its S samples front to back (forward),
// or recomputes them in a second sweep (backward), keeping two samples' arrays (features,
// hidden pre-activations, decoder outputs) in thread-local storage: nothing per sample goes to
// global memory. The decoder's effective weights are staged once per block in shared memory
// (fp32); the planes are read channels-last in their own dtype (fp32 / bf16 / fp16) and every
// sum is accumulated in fp32.
//
// Sizes: EG3D's decoder (C = 32, Hd = 64, O = 33) gets an instantiation with compile-time sizes
// (constant trip counts once render.h's force-inlined functions are inlined); every other size
// runs the generic instantiation with runtime loops over arrays of at most kMaxC / kMaxHidden /
// kMaxOut values.
//
// Backward:
//   * decoder weights: every sample's gradient terms are summed over the warp with shuffles,
//     lane 0 adds them to the block's fp32 accumulators in shared memory (atomicAdd), and each
//     block writes its sums to a row of a (blocks, n) buffer summed by at::sum (fixed order);
//   * grad_planes, default: fp32 atomicAdd of w / P · df per valid corner and channel (a warp's
//     lanes are different rays, whose corners rarely coincide: no pre-reduction across lanes);
//   * grad_planes, deterministic: the sweep writes each sample's df (C values) to a scratch
//     buffer instead; a second kernel adds w / P · df into a 64-bit fixed-point copy of the
//     gradient with integer atomics (associative, so the result does not depend on the order),
//     with a power-of-two scale chosen on the device from max |df| and the number of
//     contributions so that no sum can overflow; the sums are then converted to fp32. Costs
//     B·R·S·C fp32 of scratch and 8 bytes per plane element.
//   * grad_points: owned by the ray's thread, plain stores.
// Inactive lanes of the last warp run the sweep on a valid ray with zero output gradients, so
// every lane reaches every shuffle.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "render/checks.h"
#include "render/render.h"

namespace portrait_engine {
namespace render {
namespace {

constexpr int kThreads = 128;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxC = 64;
constexpr int kMaxHidden = 128;
constexpr int kMaxOut = 65;

// The shared checks plus the CUDA kernels' own limits: no float64, and the decoder sizes the
// generic instantiation's per-thread arrays hold.
Sizes check_cuda_inputs(const at::Tensor& planes, const at::Tensor& points,
                        const at::Tensor& depths, const at::Tensor& proj, const at::Tensor& w1,
                        const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                        const at::Tensor& noise, bool trilinear) {
  TORCH_CHECK(planes.scalar_type() != at::kDouble,
              "render_rays (cuda): float64 runs on the CPU kernels only");
  const Sizes z =
      check_inputs(planes, points, depths, proj, w1, b1, w2, b2, noise, trilinear, kCudaSide);
  TORCH_CHECK(z.C <= kMaxC && z.Hd <= kMaxHidden && z.O <= kMaxOut,
              "render_rays (cuda): at most ", kMaxC, " plane channels, ", kMaxHidden,
              " hidden units and ", kMaxOut - 1, " output features, got C = ", z.C, ", Hd = ",
              z.Hd, ", Co = ", z.Co);
  return z;
}

// float32, float16 and bfloat16 planes (float64 runs on the CPU only).
#define PE_RENDER_DISPATCH_CASES(...)                \
  AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)          \
  AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)           \
  AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)

bool eg3d_sizes(const Sizes& z) { return z.C == 32 && z.Hd == 64 && z.O == 33; }

int num_blocks(int64_t rays) {
  const int64_t blocks = (rays + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535)));
}

// Stage w1, b1, w2 transposed (Hd, O: render.h's w2t) and b2 into shared memory.
__device__ __forceinline__ void load_decoder(float* s_weights, const float* w1, const float* b1,
                                             const float* w2, const float* b2, int C, int Hd,
                                             int O) {
  const int n1 = Hd * C, n2 = O * Hd;
  for (int i = threadIdx.x; i < n1; i += blockDim.x) s_weights[i] = w1[i];
  for (int i = threadIdx.x; i < Hd; i += blockDim.x) s_weights[n1 + i] = b1[i];
  for (int i = threadIdx.x; i < n2; i += blockDim.x) {
    const int o = i / Hd, j = i % Hd;
    s_weights[n1 + Hd + j * O + o] = w2[i];
  }
  for (int i = threadIdx.x; i < O; i += blockDim.x) s_weights[n1 + Hd + n2 + i] = b2[i];
}

template <typename scalar_t>
__device__ __forceinline__ RayInputs<scalar_t, float> ray_inputs(
    const scalar_t* planes, const float* proj, const float* points, const float* depths,
    const float* noise, const float* s_weights, const Sizes& z, int64_t ray, bool use_crop,
    float crop_limit, int color_activation, int C, int Hd, int O) {
  RayInputs<scalar_t, float> in;
  in.planes_b = planes + (ray / z.R) * z.d.P * z.d.geo.plane_numel();
  in.proj = proj;
  in.points = points + ray * z.S * 3;
  in.depths = depths + ray * z.S;
  in.noise = noise != nullptr ? noise + ray * z.S : nullptr;
  in.w1 = s_weights;
  in.b1 = s_weights + Hd * C;
  in.w2t = in.b1 + Hd;
  in.b2 = in.w2t + O * Hd;
  in.S = z.S;
  in.use_crop = use_crop;
  in.crop_limit = crop_limit;
  in.color_activation = color_activation;
  return in;
}

template <typename scalar_t, int MC, int MH, int MO, bool kFixed>
__global__ void __launch_bounds__(kThreads)
    render_forward_kernel(const scalar_t* __restrict__ planes, const float* __restrict__ points,
                          const float* __restrict__ depths, const float* __restrict__ proj,
                          const float* __restrict__ w1, const float* __restrict__ b1,
                          const float* __restrict__ w2, const float* __restrict__ b2,
                          const float* __restrict__ noise, Sizes z, bool use_crop,
                          float crop_limit, bool white_back, bool scale_rgb,
                          int color_activation, bool full_weights,
                          float* __restrict__ features, float* __restrict__ depth_raw,
                          float* __restrict__ weights) {
  extern __shared__ float s_weights[];
  const int C = kFixed ? MC : z.C;
  const int Hd = kFixed ? MH : z.Hd;
  const int O = kFixed ? MO : z.O;
  load_decoder(s_weights, w1, b1, w2, b2, C, Hd, O);
  __syncthreads();
  float fa[MC], fb[MC], ha[MH], hb[MH], da[MH], db[MH], outa[MO], outb[MO], sa[MO], sb[MO];
  float rgb[MO];
  Sample<float> a, b;
  a.f = fa, a.hidden = ha, a.dsp = da, a.out = outa, a.sig = sa;
  b.f = fb, b.hidden = hb, b.dsp = db, b.out = outb, b.sig = sb;
  const int64_t rays = z.B * z.R;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t ray = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; ray < rays;
       ray += stride) {
    const RayInputs<scalar_t, float> in = ray_inputs(planes, proj, points, depths, noise,
                                                     s_weights, z, ray, use_crop, crop_limit,
                                                     color_activation, C, Hd, O);
    float total, depth_sum;
    float* full = full_weights ? weights + ray * (z.S - 1) : nullptr;
    ray_forward(in, z.d, C, Hd, O, a, b, rgb, full, total, depth_sum);
    for (int c = 0; c < O - 1; ++c) {
      features[ray * (O - 1) + c] = rays::finish_rgb(rgb[c], total, white_back, scale_rgb);
    }
    depth_raw[ray] = depth_sum / total;  // NaN where total = 0: the front-end handles it
    if (!full_weights) weights[ray] = total;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// The backward's Sink (render.h): where a sample's gradients go.
template <typename scalar_t>
struct CudaSink {
  float* s_grads;         // block accumulators: w1 (Hd, C), b1, w2 (O, Hd), b2
  float* grad_planes_b;   // the ray's batch element (non-deterministic mode)
  float* df_ray;          // the ray's (S, C) df rows (deterministic mode), else nullptr
  float* grad_points_ray; // (S, 3)
  int64_t plane_numel;
  bool active;
  int C, Hd, O;
  int lane;

  __device__ __forceinline__ void add(float* target, float v) {
    v = warp_sum(v);
    if (lane == 0) atomicAdd(target, v);
  }
  __device__ void decoder(const float* f, const float* hidden, const float* dout,
                          const float* dpre) {
    float* gw1 = s_grads;
    float* gb1 = gw1 + Hd * C;
    float* gw2 = gb1 + Hd;
    float* gb2 = gw2 + O * Hd;
    for (int o = 0; o < O; ++o) add(gb2 + o, dout[o]);
    for (int j = 0; j < Hd; ++j) {
      const float h = hidden[j];
      for (int o = 0; o < O; ++o) add(gw2 + o * Hd + j, dout[o] * h);
      add(gb1 + j, dpre[j]);
      for (int c = 0; c < C; ++c) add(gw1 + j * C + c, dpre[j] * f[c]);
    }
  }
  __device__ void plane(int64_t p, int64_t offset, float weight, const float* df) {
    if (!active || df_ray != nullptr) return;
    float* target = grad_planes_b + p * plane_numel + offset;
    for (int c = 0; c < C; ++c) atomicAdd(target + c, weight * df[c]);
  }
  __device__ void point(int64_t s, float gp0, float gp1, float gp2, const float* df) {
    if (!active) return;
    grad_points_ray[s * 3 + 0] = gp0;
    grad_points_ray[s * 3 + 1] = gp1;
    grad_points_ray[s * 3 + 2] = gp2;
    if (df_ray != nullptr) {
      for (int c = 0; c < C; ++c) df_ray[s * C + c] = df[c];
    }
  }
};

template <typename scalar_t, int MC, int MH, int MO, bool kFixed>
__global__ void __launch_bounds__(kThreads)
    render_backward_kernel(const float* __restrict__ grad_features,
                           const float* __restrict__ grad_depth,
                           const float* __restrict__ grad_weights,
                           const scalar_t* __restrict__ planes, const float* __restrict__ points,
                           const float* __restrict__ depths, const float* __restrict__ proj,
                           const float* __restrict__ w1, const float* __restrict__ b1,
                           const float* __restrict__ w2, const float* __restrict__ b2,
                           const float* __restrict__ noise, const float* __restrict__ features,
                           const float* __restrict__ depth_raw, const float* __restrict__ weights,
                           Sizes z, bool use_crop, float crop_limit, bool white_back,
                           bool scale_rgb, int color_activation, bool full_weights,
                           float* __restrict__ grad_planes,
                           float* __restrict__ df_scratch, float* __restrict__ grad_points,
                           float* __restrict__ block_grads) {
  extern __shared__ float shared[];
  const int C = kFixed ? MC : z.C;
  const int Hd = kFixed ? MH : z.Hd;
  const int O = kFixed ? MO : z.O;
  const int64_t n_decoder = z.n_decoder();
  float* s_weights = shared;
  float* s_grads = shared + n_decoder;
  load_decoder(s_weights, w1, b1, w2, b2, C, Hd, O);
  for (int64_t i = threadIdx.x; i < n_decoder; i += blockDim.x) s_grads[i] = 0.0f;
  __syncthreads();

  float fa[MC], fb[MC], ha[MH], hb[MH], da[MH], db[MH], outa[MO], outb[MO], sa[MO], sb[MO];
  float dout[MO], dpre[MH], df[MC], g[MO];
  Sample<float> a, b;
  a.f = fa, a.hidden = ha, a.dsp = da, a.out = outa, a.sig = sa;
  b.f = fb, b.hidden = hb, b.dsp = db, b.out = outb, b.sig = sb;
  const int64_t rays = z.B * z.R;
  const int64_t n_weights = full_weights ? z.S - 1 : 1;
  const int64_t plane_numel = z.d.geo.plane_numel();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // `start` is uniform across the block, so whole warps iterate together
  for (int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x; start < rays;
       start += stride) {
    const int64_t own = start + threadIdx.x;
    const bool active = own < rays;
    const int64_t ray = active ? own : rays - 1;
    const RayInputs<scalar_t, float> in = ray_inputs(planes, proj, points, depths, noise,
                                                     s_weights, z, ray, use_crop, crop_limit,
                                                     color_activation, C, Hd, O);
    for (int c = 0; c < O - 1; ++c) g[c] = active ? grad_features[ray * (O - 1) + c] : 0.0f;
    const float* gw = grad_weights + ray * n_weights;
    const float* w = weights + ray * n_weights;
    float weight_sum = 0.0f, weighted_gw = 0.0f;
    for (int64_t i = 0; i < n_weights; ++i) {
      weight_sum += w[i];
      weighted_gw += gw[i] * w[i];
    }
    RayGrad<float> rg = ray_grad(g, features + ray * (O - 1), O - 1,
                                 active ? grad_depth[ray] : 0.0f, depth_raw[ray], weight_sum,
                                 active ? weighted_gw : 0.0f, white_back, scale_rgb);
    // an inactive lane reads its neighbour's grad_w: zero its whole gradient instead
    const float zero_w[1] = {0.0f};
    CudaSink<scalar_t> sink{s_grads,
                            grad_planes + (ray / z.R) * z.d.P * plane_numel,
                            df_scratch != nullptr ? df_scratch + ray * z.S * C : nullptr,
                            grad_points + ray * z.S * 3,
                            plane_numel,
                            active,
                            C,
                            Hd,
                            O,
                            static_cast<int>(threadIdx.x & 31)};
    ray_backward(in, z.d, C, Hd, O, a, b, rg, g, active ? gw : zero_w, active && full_weights,
                 dout, dpre, df, sink);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n_decoder; i += blockDim.x) {
    block_grads[blockIdx.x * n_decoder + i] = s_grads[i];
  }
}

// Deterministic grad_planes: one thread per (sample, channel); fixed-point integer atomics.
template <typename scalar_t>
__global__ void __launch_bounds__(256)
    scatter_fixed_point_kernel(const float* __restrict__ df, const float* __restrict__ points,
                               const float* __restrict__ proj, const float* __restrict__ max_abs,
                               Sizes z, unsigned long long* __restrict__ fixed) {
  const int64_t C = z.C;
  const int64_t samples = z.B * z.R * z.S;
  const int64_t total = samples * C;
  const int ncorners = triplane::num_corners(z.d.trilinear);
  const int64_t plane_numel = z.d.geo.plane_numel();
  // |w / P · df| <= max|df|; at most `samples * P * corners` terms meet in one element
  const double bound = static_cast<double>(*max_abs) *
                       static_cast<double>(samples * z.d.P * ncorners) + 1e-300;
  int exponent;
  frexp(bound, &exponent);  // bound < 2^exponent
  const double scale = ldexp(1.0, 62 - exponent);
  const float inv_p = 1.0f / static_cast<float>(z.d.P);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t n = i / C, c = i % C;
    const int64_t b = n / (z.R * z.S);
    const float v = df[i];
    for (int64_t p = 0; p < z.d.P; ++p) {
      float gx, gy, gz;
      triplane::project(points[n * 3 + 0], points[n * 3 + 1], points[n * 3 + 2], proj + p * 9,
                        gx, gy, gz);
      const triplane::Footprint<float> fp =
          triplane::make_footprint(gx, gy, gz, z.d.trilinear, z.d.geo);
      if (fp.nonfinite) continue;
      for (int k = 0; k < ncorners; ++k) {
        const triplane::Corner<float> cr = triplane::corner(fp, k, z.d.geo);
        if (!cr.valid) continue;
        const double term = static_cast<double>(cr.w * inv_p) * static_cast<double>(v) * scale;
        const long long q = __double2ll_rn(term);
        atomicAdd(fixed + (b * z.d.P + p) * plane_numel + cr.offset + c,
                  static_cast<unsigned long long>(q));
      }
    }
  }
}

__global__ void fixed_point_to_float_kernel(const long long* __restrict__ fixed,
                                            const float* __restrict__ max_abs, Sizes z,
                                            int64_t n, float* __restrict__ out) {
  const int64_t samples = z.B * z.R * z.S;
  const double bound = static_cast<double>(*max_abs) *
                       static_cast<double>(samples * z.d.P * triplane::num_corners(z.d.trilinear)) +
                       1e-300;
  int exponent;
  frexp(bound, &exponent);
  const double inv_scale = ldexp(1.0, exponent - 62);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = static_cast<float>(static_cast<double>(fixed[i]) * inv_scale);
  }
}

template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> render_rays_forward_cuda(
    const at::Tensor& planes, const at::Tensor& points, const at::Tensor& depths,
    const at::Tensor& proj_in, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, const at::Tensor& noise, bool trilinear, bool use_crop,
    double crop_limit, bool white_back, bool scale_rgb, int64_t color_activation,
    bool full_weights) {
  check_color_activation(color_activation, kCudaSide);
  const c10::cuda::CUDAGuard guard(planes.device());
  const at::Tensor proj = proj_in.contiguous();
  const Sizes z =
      check_cuda_inputs(planes, points, depths, proj, w1, b1, w2, b2, noise, trilinear);
  const auto options = points.options();
  at::Tensor features = new_output({z.B, z.R, z.Co}, options);
  at::Tensor depth_raw = new_output({z.B, z.R, 1}, options);
  at::Tensor weights = new_output({z.B, z.R, full_weights ? z.S - 1 : 1}, options);
  const int64_t rays = z.B * z.R;
  if (rays == 0) return {features, depth_raw, weights};
  const size_t smem = static_cast<size_t>(z.n_decoder()) * sizeof(float);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(planes.device().index()).stream();
  const float* noise_ptr = noise.numel() > 0 ? noise.data_ptr<float>() : nullptr;
  AT_DISPATCH_SWITCH(
      planes.scalar_type(), "render_rays_forward_cuda", PE_RENDER_DISPATCH_CASES(([&] {
        auto launch = [&](auto kernel) {
          allow_shared(kernel, smem);
          kernel<<<num_blocks(rays), kThreads, smem, stream>>>(
              planes.data_ptr<scalar_t>(), points.data_ptr<float>(), depths.data_ptr<float>(),
              proj.data_ptr<float>(), w1.data_ptr<float>(), b1.data_ptr<float>(),
              w2.data_ptr<float>(), b2.data_ptr<float>(), noise_ptr, z, use_crop,
              static_cast<float>(crop_limit), white_back, scale_rgb,
              static_cast<int>(color_activation), full_weights, features.data_ptr<float>(),
              depth_raw.data_ptr<float>(), weights.data_ptr<float>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (eg3d_sizes(z)) {
          launch(render_forward_kernel<scalar_t, 32, 64, 33, true>);
        } else {
          launch(render_forward_kernel<scalar_t, kMaxC, kMaxHidden, kMaxOut, false>);
        }
      })));
  return {features, depth_raw, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
render_rays_backward_cuda(const at::Tensor& grad_features, const at::Tensor& grad_depth,
                          const at::Tensor& grad_weights, const at::Tensor& planes,
                          const at::Tensor& points, const at::Tensor& depths,
                          const at::Tensor& proj_in, const at::Tensor& w1, const at::Tensor& b1,
                          const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& noise,
                          const at::Tensor& features, const at::Tensor& depth_raw,
                          const at::Tensor& weights, bool trilinear, bool use_crop,
                          double crop_limit, bool white_back, bool scale_rgb,
                          int64_t color_activation, bool full_weights, bool deterministic) {
  check_color_activation(color_activation, kCudaSide);
  const c10::cuda::CUDAGuard guard(planes.device());
  const at::Tensor proj = proj_in.contiguous();
  const Sizes z =
      check_cuda_inputs(planes, points, depths, proj, w1, b1, w2, b2, noise, trilinear);
  check_backward_tensors(grad_features, grad_depth, grad_weights, features, depth_raw, weights,
                         planes, z, full_weights, kCudaSide);

  const auto f32 = points.options();
  at::Tensor grad_planes = at::zeros(planes.sizes(), f32);
  at::Tensor grad_points = at::zeros(points.sizes(), f32);
  const int64_t n_decoder = z.n_decoder();
  at::Tensor grad_decoder = at::zeros({n_decoder}, f32);
  const int64_t rays = z.B * z.R;
  if (rays > 0) {
    const int blocks = num_blocks(rays);
    at::Tensor block_grads = at::empty({blocks, n_decoder}, f32);
    at::Tensor df_scratch;
    if (deterministic) df_scratch = at::empty({rays * z.S, z.C}, f32);
    const size_t smem = 2 * static_cast<size_t>(n_decoder) * sizeof(float);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream(planes.device().index()).stream();
    const float* noise_ptr = noise.numel() > 0 ? noise.data_ptr<float>() : nullptr;
    AT_DISPATCH_SWITCH(
        planes.scalar_type(), "render_rays_backward_cuda", PE_RENDER_DISPATCH_CASES(([&] {
          auto launch = [&](auto kernel) {
            allow_shared(kernel, smem);
            kernel<<<blocks, kThreads, smem, stream>>>(
                grad_features.data_ptr<float>(), grad_depth.data_ptr<float>(),
                grad_weights.data_ptr<float>(), planes.data_ptr<scalar_t>(),
                points.data_ptr<float>(), depths.data_ptr<float>(), proj.data_ptr<float>(),
                w1.data_ptr<float>(), b1.data_ptr<float>(), w2.data_ptr<float>(),
                b2.data_ptr<float>(), noise_ptr, features.data_ptr<float>(),
                depth_raw.data_ptr<float>(), weights.data_ptr<float>(), z, use_crop,
                static_cast<float>(crop_limit), white_back, scale_rgb,
                static_cast<int>(color_activation), full_weights, grad_planes.data_ptr<float>(),
                deterministic ? df_scratch.data_ptr<float>() : nullptr,
                grad_points.data_ptr<float>(), block_grads.data_ptr<float>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          };
          if (eg3d_sizes(z)) {
            launch(render_backward_kernel<scalar_t, 32, 64, 33, true>);
          } else {
            launch(render_backward_kernel<scalar_t, kMaxC, kMaxHidden, kMaxOut, false>);
          }
          if (deterministic) {
            at::Tensor max_abs = df_scratch.abs().amax().reshape({1});
            at::Tensor fixed = at::zeros(planes.sizes(), planes.options().dtype(at::kLong));
            const int64_t total = rays * z.S * z.C;
            const int scatter_blocks = static_cast<int>(
                std::max<int64_t>(1, std::min<int64_t>((total + 255) / 256, 65535)));
            scatter_fixed_point_kernel<scalar_t><<<scatter_blocks, 256, 0, stream>>>(
                df_scratch.data_ptr<float>(), points.data_ptr<float>(), proj.data_ptr<float>(),
                max_abs.data_ptr<float>(), z,
                reinterpret_cast<unsigned long long*>(fixed.data_ptr<int64_t>()));
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            const int64_t n = fixed.numel();
            const int convert_blocks = static_cast<int>(
                std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 65535)));
            fixed_point_to_float_kernel<<<convert_blocks, 256, 0, stream>>>(
                reinterpret_cast<const long long*>(fixed.data_ptr<int64_t>()),
                max_abs.data_ptr<float>(), z, n, grad_planes.data_ptr<float>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        })));
    grad_decoder = block_grads.sum(0);
  }
  const int64_t n1 = static_cast<int64_t>(z.Hd) * z.C, n2 = static_cast<int64_t>(z.O) * z.Hd;
  at::Tensor gw1 = grad_decoder.narrow(0, 0, n1).view({z.Hd, z.C}).clone();
  at::Tensor gb1 = grad_decoder.narrow(0, n1, z.Hd).clone();
  at::Tensor gw2 = grad_decoder.narrow(0, n1 + z.Hd, n2).view({z.O, z.Hd}).clone();
  at::Tensor gb2 = grad_decoder.narrow(0, n1 + z.Hd + n2, z.O).clone();
  return {grad_planes, grad_points, gw1, gb1, gw2, gb2};
}

}  // namespace
}  // namespace render
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  m.impl("render_rays_forward", &portrait_engine::render::render_rays_forward_cuda);
  m.impl("render_rays_backward", &portrait_engine::render::render_rays_backward_cuda);
}
