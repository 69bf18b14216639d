// CUDA kernels of portrait_engine::sample_importance and merge_samples_{index,scatter,gather}
// (contract: docs/kernel_contract_importance.md; shared math: importance.h, the same functions
// the CPU kernels run).
//
//   * sample_importance: ONE WARP PER RAY (sample_importance_warp_kernel). The 32 lanes stage
//     the ray's depths and weights in shared memory (coalesced loads), build the smoothed bin
//     weights in parallel, their total by a butterfly reduction and the K + 1 cdf entries by a
//     warp inclusive scan (chunks of 32 lanes, the carry passed on by a shuffle), into shared
//     memory. Each lane then inverts its own draws (k = lane, lane + 32, ...): a binary search
//     over the shared cdf and the interpolation of importance.h. With `sort` no draw is moved
//     before it is inverted: each lane ranks its draws by counting (rank = #{j : u_j < u_k} +
//     #{j < k : u_j == u_k}, n broadcast reads of the shared draws: 48 compares per draw at
//     EG3D's n = 48), writes the sample to shared slot `rank` (the inverse cdf of the sorted
//     draws, as the reference computes it: the sample is a function of its draw alone), and the
//     running maximum is a warp inclusive max-scan over those slots in order, 32 at a time with
//     the carry of the previous chunk. The output rows are written coalesced.
//     Summation order: the total is a tree (lane partial sums, then a butterfly) and the cdf a
//     Kogge-Stone scan of pdf = b / total, where the reference runs torch.sum / torch.cumsum and
//     the CPU kernel sequential sums: the cdf entries differ by a few ulp (the contract allows
//     any order; the sample is continuous in the cdf, so the samples differ by rounding).
//     Shared memory per warp: the cdf and (sort) the ranked samples in acc_t, (sort) the draws
//     in float, the depths and weights in scalar_t: about 1 KiB at S = n = 48 in fp32, so 8
//     warps per block; fewer warps per block where a ray needs more, and the thread-per-ray
//     kernel below where one ray needs more than 48 KiB (fp32: S + n beyond about 4000).
//   * sample_importance_thread_kernel (the fallback for very long rays): one thread per ray, its
//     cdf and (sort) insertion-sorted draws in a global workspace (N, S - 2 + n), then a serial
//     walk of binary searches and the running maximum.
//   * merge_samples_index: one thread per sample of either list (N * (S1 + S2) threads), a
//     binary search in the other list of its ray.
//   * merge_samples_scatter / gather: one thread per (sample, channel) element: consecutive
//     threads copy consecutive channels of a row, so the rows move coalesced.
// No atomics anywhere: every output element has exactly one writer.

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

#include "importance/checks.h"
#include "importance/importance.h"

namespace portrait_engine {
namespace importance {
namespace {

constexpr int kThreads = 256;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>(ceil_div(n, kThreads)); }



constexpr int kWarpSize = 32;
constexpr unsigned int kFullMask = 0xffffffffu;
constexpr int kMaxWarpsPerBlock = 8;
// Dynamic shared memory a block may use without the opt-in attribute (every GPU since sm_20).
constexpr size_t kSharedLimit = 48 * 1024;

// Byte offsets of one warp's arrays in its slice of the block's shared memory, and the slice's
// size (every array 16-byte aligned). `ranked` and `draws` are empty without `sort`.
struct RayLayout {
  int64_t cdf, ranked, draws, depths, weights, bytes;
};

int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

RayLayout ray_layout(int64_t acc_size, int64_t scalar_size, int64_t samples, int64_t draws,
                     bool sort) {
  RayLayout layout{};
  int64_t at = 0;
  layout.cdf = at;
  at += align16((samples - 2) * acc_size);
  layout.ranked = at;
  at += sort ? align16(draws * acc_size) : 0;
  layout.draws = at;
  at += sort ? align16(draws * static_cast<int64_t>(sizeof(float))) : 0;
  layout.depths = at;
  at += align16(samples * scalar_size);
  layout.weights = at;
  at += align16((samples - 1) * scalar_size);
  layout.bytes = at;
  return layout;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(kFullMask, value, offset);
  }
  return value;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_inclusive_sum(acc_t value, int lane) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const acc_t earlier = __shfl_up_sync(kFullMask, value, offset);
    if (lane >= offset) value = earlier + value;
  }
  return value;
}

// Running maximum along the lanes, with importance.h's max_of(earlier, later) as the
// sequential loops apply it.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_inclusive_max(acc_t value, int lane) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const acc_t earlier = __shfl_up_sync(kFullMask, value, offset);
    if (lane >= offset) value = max_of(earlier, value);
  }
  return value;
}

template <typename scalar_t, typename acc_t>
__global__ void sample_importance_warp_kernel(const scalar_t* __restrict__ depths,
                                              const scalar_t* __restrict__ weights,
                                              const float* __restrict__ u,
                                              scalar_t* __restrict__ out, int64_t rays,
                                              int64_t samples, int64_t draws, bool sort,
                                              RayLayout layout) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + warp;
  // r is the same for the whole warp: a warp leaves whole, so the full-mask shuffles below
  // always see 32 lanes
  if (r >= rays) return;
  unsigned char* slice = shared_bytes + warp * layout.bytes;
  acc_t* cdf = reinterpret_cast<acc_t*>(slice + layout.cdf);
  scalar_t* z = reinterpret_cast<scalar_t*>(slice + layout.depths);
  scalar_t* w = reinterpret_cast<scalar_t*>(slice + layout.weights);

  const int64_t n_weights = samples - 1;
  const scalar_t* z_ray = depths + r * samples;
  const scalar_t* w_ray = weights + r * n_weights;
  for (int64_t j = lane; j < samples; j += kWarpSize) z[j] = z_ray[j];
  for (int64_t j = lane; j < n_weights; j += kWarpSize) w[j] = w_ray[j];
  __syncwarp();

  // bin k weighs smoothed weight k + 1 (+ 1e-5), k = 0..bins-1; samples >= 4 gives bins >= 1
  const int64_t bins = samples - 3;
  acc_t partial = acc_t(0);
  for (int64_t k = lane; k < bins; k += kWarpSize) {
    partial += smoothed_weight<scalar_t, acc_t>(w, k + 1, n_weights) + pdf_eps<acc_t>();
  }
  const acc_t total = warp_sum(partial);
  if (lane == 0) cdf[0] = acc_t(0);
  acc_t carry = acc_t(0);
  for (int64_t k0 = 0; k0 < bins; k0 += kWarpSize) {
    const int64_t k = k0 + lane;
    acc_t pdf = acc_t(0);
    if (k < bins) {
      pdf = (smoothed_weight<scalar_t, acc_t>(w, k + 1, n_weights) + pdf_eps<acc_t>()) / total;
    }
    const acc_t running = carry + warp_inclusive_sum(pdf, lane);
    if (k < bins) cdf[k + 1] = running;
    carry = __shfl_sync(kFullMask, running, kWarpSize - 1);
  }
  __syncwarp();

  const float* u_ray = u + r * draws;
  scalar_t* o = out + r * draws;
  if (!sort) {
    for (int64_t k = lane; k < draws; k += kWarpSize) {
      const acc_t uk = static_cast<acc_t>(u_ray[k]);
      o[k] = static_cast<scalar_t>(inverse_cdf_sample<scalar_t, acc_t>(z, cdf, bins, uk));
    }
    return;
  }

  float* drawn = reinterpret_cast<float*>(slice + layout.draws);
  acc_t* ranked = reinterpret_cast<acc_t*>(slice + layout.ranked);
  for (int64_t k = lane; k < draws; k += kWarpSize) drawn[k] = u_ray[k];
  __syncwarp();
  // the rank of draw k in the ascending order (ties by index): a permutation of 0..draws-1.
  // 32-bit counters in this n^2 / 32 loop: the draws fit shared memory, so n < 2^31.
  const int n_draws = static_cast<int>(draws);
  for (int k = lane; k < n_draws; k += kWarpSize) {
    const float x = drawn[k];
    int rank = 0;
    for (int j = 0; j < n_draws; ++j) {
      const float y = drawn[j];
      rank += (y < x || (y == x && j < k)) ? 1 : 0;
    }
    ranked[rank] = inverse_cdf_sample<scalar_t, acc_t>(z, cdf, bins, static_cast<acc_t>(x));
  }
  __syncwarp();
  acc_t before = acc_t(0);  // the running maximum of the previous chunks
  for (int64_t k0 = 0; k0 < draws; k0 += kWarpSize) {
    const int64_t k = k0 + lane;
    // lanes past the end follow every real sample: their value never reaches a real one
    acc_t t = k < draws ? ranked[k] : static_cast<acc_t>(-INFINITY);
    t = warp_inclusive_max(t, lane);
    if (k0 > 0) t = max_of(before, t);
    if (k < draws) o[k] = static_cast<scalar_t>(t);
    before = __shfl_sync(kFullMask, t, kWarpSize - 1);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void sample_importance_thread_kernel(const scalar_t* __restrict__ depths,
                                                const scalar_t* __restrict__ weights,
                                                const float* __restrict__ u,
                                                acc_t* __restrict__ workspace,
                                                scalar_t* __restrict__ out, int64_t rays,
                                                int64_t samples, int64_t draws, bool sort) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rays) return;
  acc_t* cdf = workspace + r * (samples - 2 + (sort ? draws : 0));
  acc_t* sorted_u = cdf + (samples - 2);
  const scalar_t* z = depths + r * samples;
  const int64_t bins = build_cdf<scalar_t, acc_t>(weights + r * (samples - 1), samples - 1, cdf);
  const float* ur = u + r * draws;
  if (sort) {
    for (int64_t k = 0; k < draws; ++k) sorted_u[k] = static_cast<acc_t>(ur[k]);
    insertion_sort(sorted_u, draws);
  }
  scalar_t* o = out + r * draws;
  acc_t running = acc_t(0);
  for (int64_t k = 0; k < draws; ++k) {
    const acc_t uk = sort ? sorted_u[k] : static_cast<acc_t>(ur[k]);
    acc_t t = inverse_cdf_sample<scalar_t, acc_t>(z, cdf, bins, uk);
    if (sort) {
      running = k == 0 ? t : max_of(running, t);
      t = running;
    }
    o[k] = static_cast<scalar_t>(t);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void merge_index_kernel(const scalar_t* __restrict__ d1, const scalar_t* __restrict__ d2,
                                   int32_t* __restrict__ p1, int32_t* __restrict__ p2,
                                   int64_t rays, int64_t first, int64_t second) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_ray = first + second;
  if (idx >= rays * per_ray) return;
  const int64_t r = idx / per_ray;
  const int64_t s = idx - r * per_ray;
  if (s < first) {
    const acc_t depth = static_cast<acc_t>(d1[r * first + s]);
    p1[r * first + s] = static_cast<int32_t>(
        merged_position_first<scalar_t, acc_t>(s, depth, d2 + r * second, second));
  } else {
    const int64_t j = s - first;
    const acc_t depth = static_cast<acc_t>(d2[r * second + j]);
    p2[r * second + j] = static_cast<int32_t>(
        merged_position_second<scalar_t, acc_t>(j, depth, d1 + r * first, first));
  }
}

// Rows of one list <-> merged rows: merged row = (row / per_ray) * total + positions[row].
template <typename scalar_t, bool kScatter>
__global__ void copy_rows_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst,
                                 const int32_t* __restrict__ positions, int64_t rows,
                                 int64_t per_ray, int64_t total, int64_t channels) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * channels) return;
  const int64_t row = idx / channels;
  const int64_t c = idx - row * channels;
  const int64_t merged = (row / per_ray) * total + static_cast<int64_t>(positions[row]);
  if (kScatter) {
    dst[merged * channels + c] = src[idx];
  } else {
    dst[idx] = src[merged * channels + c];
  }
}

at::Tensor sample_importance_cuda(const at::Tensor& depths, const at::Tensor& weights,
                                  const at::Tensor& u, bool sort) {
  const c10::cuda::CUDAGuard guard(depths.device());
  check_sample_importance(depths, weights, u, kCudaSide);
  const int64_t rays = depths.size(0), samples = depths.size(1), draws = u.size(1);
  at::Tensor out = new_output({rays, draws}, depths.options());
  if (rays == 0 || draws == 0) return out;
  const at::ScalarType acc = acc_dtype(depths);
  const RayLayout layout = ray_layout(at::elementSize(acc), depths.element_size(), samples,
                                      draws, sort);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(depths.device().index()).stream();
  if (layout.bytes <= static_cast<int64_t>(kSharedLimit)) {
    int warps = kMaxWarpsPerBlock;
    while (warps > 1 && warps * layout.bytes > static_cast<int64_t>(kSharedLimit)) warps /= 2;
    const auto blocks = static_cast<unsigned int>(ceil_div(rays, warps));
    const size_t shared = static_cast<size_t>(warps * layout.bytes);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, depths.scalar_type(), "sample_importance_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          sample_importance_warp_kernel<scalar_t, acc_t>
              <<<blocks, warps * kWarpSize, shared, stream>>>(
                  depths.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), u.data_ptr<float>(),
                  out.data_ptr<scalar_t>(), rays, samples, draws, sort, layout);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
    return out;
  }
  at::Tensor workspace = at::empty({rays, samples - 2 + (sort ? draws : 0)},
                                   depths.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, depths.scalar_type(), "sample_importance_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        sample_importance_thread_kernel<scalar_t, acc_t>
            <<<blocks_for(rays), kThreads, 0, stream>>>(
                depths.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), u.data_ptr<float>(),
                workspace.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), rays, samples, draws,
                sort);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_samples_index_cuda(const at::Tensor& depths1,
                                                            const at::Tensor& depths2) {
  const c10::cuda::CUDAGuard guard(depths1.device());
  check_merge_index(depths1, depths2, kCudaSide);
  const int64_t rays = depths1.size(0), first = depths1.size(1), second = depths2.size(1);
  at::Tensor positions1 = new_output({rays, first}, depths1.options().dtype(at::kInt));
  at::Tensor positions2 = new_output({rays, second}, depths1.options().dtype(at::kInt));
  const int64_t n = rays * (first + second);
  if (n == 0) return {positions1, positions2};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(depths1.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, depths1.scalar_type(), "merge_samples_index_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        merge_index_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
            depths1.data_ptr<scalar_t>(), depths2.data_ptr<scalar_t>(),
            positions1.data_ptr<int32_t>(), positions2.data_ptr<int32_t>(), rays, first, second);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {positions1, positions2};
}


template <bool kScatter>
void launch_copy(const at::Tensor& src, at::Tensor& dst, const at::Tensor& positions,
                 int64_t per_ray, int64_t total, int64_t channels, cudaStream_t stream) {
  const int64_t rows = positions.numel();
  if (rows == 0 || channels == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, src.scalar_type(), "merge_samples_copy_cuda", [&] {
        copy_rows_kernel<scalar_t, kScatter>
            <<<blocks_for(rows * channels), kThreads, 0, stream>>>(
                src.data_ptr<scalar_t>(), dst.data_ptr<scalar_t>(),
                positions.data_ptr<int32_t>(), rows, per_ray, total, channels);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

at::Tensor merge_samples_scatter_cuda(const at::Tensor& values1, const at::Tensor& values2,
                                      const at::Tensor& positions1,
                                      const at::Tensor& positions2) {
  const c10::cuda::CUDAGuard guard(values1.device());
  check_merge_scatter(values1, values2, positions1, positions2, kCudaSide);
  const int64_t rays = values1.size(0), first = values1.size(1), second = values2.size(1);
  const int64_t channels = values1.size(2);
  const int64_t total = first + second;
  at::Tensor out = new_output({rays, total, channels}, values1.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(values1.device().index()).stream();
  launch_copy<true>(values1, out, positions1, first, total, channels, stream);
  launch_copy<true>(values2, out, positions2, second, total, channels, stream);
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_samples_gather_cuda(const at::Tensor& grad,
                                                             const at::Tensor& positions1,
                                                             const at::Tensor& positions2) {
  const c10::cuda::CUDAGuard guard(grad.device());
  check_merge_gather(grad, positions1, positions2, kCudaSide);
  const int64_t rays = grad.size(0), total = grad.size(1), channels = grad.size(2);
  const int64_t first = positions1.size(1), second = positions2.size(1);
  at::Tensor grad1 = new_output({rays, first, channels}, grad.options());
  at::Tensor grad2 = new_output({rays, second, channels}, grad.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad.device().index()).stream();
  launch_copy<false>(grad, grad1, positions1, first, total, channels, stream);
  launch_copy<false>(grad, grad2, positions2, second, total, channels, stream);
  return {grad1, grad2};
}

}  // namespace
}  // namespace importance
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  m.impl("sample_importance", &portrait_engine::importance::sample_importance_cuda);
  m.impl("merge_samples_index", &portrait_engine::importance::merge_samples_index_cuda);
  m.impl("merge_samples_scatter", &portrait_engine::importance::merge_samples_scatter_cuda);
  m.impl("merge_samples_gather", &portrait_engine::importance::merge_samples_gather_cuda);
}
