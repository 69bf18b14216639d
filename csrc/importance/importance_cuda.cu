// CUDA kernels of portrait_engine::sample_importance and merge_samples_{index,scatter,gather}
// (contract: docs/kernel_contract_importance.md; shared math: importance.h, the same functions
// the CPU kernels run).
//
//   * sample_importance: one thread per ray. It writes the ray's K + 1 cdf entries to a global
//     workspace (N, S - 2 + n) (read back from L1 / L2 by the same thread) and, with `sort`, its
//     draws there too, insertion-sorted; then walks its draws: binary search, interpolation,
//     and with `sort` a running maximum, which needs the draws of a ray in order in one thread. At the target size (65536 rays, 48 + 48 samples) that is
//     65536 threads, enough to fill an H100; the per-thread loops are short (46 + 48).
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



template <typename scalar_t, typename acc_t>
__global__ void sample_importance_kernel(const scalar_t* __restrict__ depths,
                                         const scalar_t* __restrict__ weights,
                                         const float* __restrict__ u, acc_t* __restrict__ workspace,
                                         scalar_t* __restrict__ out, int64_t rays, int64_t samples,
                                         int64_t draws, bool sort) {
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
  at::Tensor workspace = at::empty({rays, samples - 2 + (sort ? draws : 0)},
                                   depths.options().dtype(acc));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(depths.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, depths.scalar_type(), "sample_importance_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        sample_importance_kernel<scalar_t, acc_t><<<blocks_for(rays), kThreads, 0, stream>>>(
            depths.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), u.data_ptr<float>(),
            workspace.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), rays, samples, draws, sort);
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
