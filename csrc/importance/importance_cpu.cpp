// CPU kernels of portrait_engine::sample_importance and merge_samples_{index,scatter,gather}
// (contract: docs/kernel_contract_importance.md; shared math: importance.h).
//
// Every kernel is an at::parallel_for over rays: a task owns whole rays, so nothing is reduced
// across tasks and the result does not depend on the number of threads.
//   * sample_importance: per ray, the K + 1 cdf entries into a task-local buffer, then one
//     binary search and interpolation per draw (with sort: the ray's draws insertion-sorted
//     first, and a running maximum).
//   * merge_samples_index: per ray, the merged position of every sample by binary search in
//     the other list (the same rank formula as the CUDA kernel; no sort).
//   * merge_samples_scatter / gather: per ray, row copies of C channels to / from the
//     positions.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "importance/checks.h"
#include "importance/importance.h"

namespace portrait_engine {
namespace importance {
namespace {


// rays per parallel_for chunk: about 16k elements of work per chunk
int64_t ray_grain(int64_t per_ray) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(per_ray, 1)); }


at::Tensor sample_importance_cpu(const at::Tensor& depths, const at::Tensor& weights,
                                 const at::Tensor& u, bool sort) {
  check_sample_importance(depths, weights, u, kCpuSide);
  const int64_t rays = depths.size(0), samples = depths.size(1), draws = u.size(1);
  at::Tensor out = new_output({rays, draws}, depths.options());
  if (rays == 0 || draws == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, depths.scalar_type(), "sample_importance_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* z_ptr = depths.data_ptr<scalar_t>();
        const scalar_t* w_ptr = weights.data_ptr<scalar_t>();
        const float* u_ptr = u.data_ptr<float>();
        scalar_t* out_ptr = out.data_ptr<scalar_t>();
        at::parallel_for(0, rays, ray_grain(samples + draws), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> cdf(samples), ray_u(draws);
          for (int64_t r = begin; r < end; ++r) {
            const scalar_t* z = z_ptr + r * samples;
            const int64_t bins = build_cdf<scalar_t, acc_t>(w_ptr + r * (samples - 1),
                                                            samples - 1, cdf.data());
            const float* ur = u_ptr + r * draws;
            for (int64_t k = 0; k < draws; ++k) ray_u[k] = static_cast<acc_t>(ur[k]);
            if (sort) insertion_sort(ray_u.data(), draws);
            scalar_t* o = out_ptr + r * draws;
            acc_t running = acc_t(0);
            for (int64_t k = 0; k < draws; ++k) {
              acc_t t = inverse_cdf_sample<scalar_t, acc_t>(z, cdf.data(), bins, ray_u[k]);
              if (sort) {
                running = k == 0 ? t : max_of(running, t);
                t = running;
              }
              o[k] = static_cast<scalar_t>(t);
            }
          }
        });
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_samples_index_cpu(const at::Tensor& depths1,
                                                           const at::Tensor& depths2) {
  check_merge_index(depths1, depths2, kCpuSide);
  const int64_t rays = depths1.size(0), first = depths1.size(1), second = depths2.size(1);
  at::Tensor positions1 = new_output({rays, first}, depths1.options().dtype(at::kInt));
  at::Tensor positions2 = new_output({rays, second}, depths1.options().dtype(at::kInt));
  if (rays == 0) return {positions1, positions2};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, depths1.scalar_type(), "merge_samples_index_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* d1_ptr = depths1.data_ptr<scalar_t>();
        const scalar_t* d2_ptr = depths2.data_ptr<scalar_t>();
        int32_t* p1_ptr = positions1.data_ptr<int32_t>();
        int32_t* p2_ptr = positions2.data_ptr<int32_t>();
        at::parallel_for(0, rays, ray_grain(first + second), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const scalar_t* d1 = d1_ptr + r * first;
            const scalar_t* d2 = d2_ptr + r * second;
            for (int64_t i = 0; i < first; ++i) {
              p1_ptr[r * first + i] = static_cast<int32_t>(merged_position_first<scalar_t, acc_t>(
                  i, static_cast<acc_t>(d1[i]), d2, second));
            }
            for (int64_t j = 0; j < second; ++j) {
              p2_ptr[r * second + j] = static_cast<int32_t>(
                  merged_position_second<scalar_t, acc_t>(j, static_cast<acc_t>(d2[j]), d1, first));
            }
          }
        });
      });
  return {positions1, positions2};
}


at::Tensor merge_samples_scatter_cpu(const at::Tensor& values1, const at::Tensor& values2,
                                     const at::Tensor& positions1, const at::Tensor& positions2) {
  check_merge_scatter(values1, values2, positions1, positions2, kCpuSide);
  const int64_t rays = values1.size(0), first = values1.size(1), second = values2.size(1);
  const int64_t channels = values1.size(2);
  const int64_t total = first + second;
  at::Tensor out = new_output({rays, total, channels}, values1.options());
  if (rays == 0 || channels == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, values1.scalar_type(), "merge_samples_scatter_cpu", [&] {
        const scalar_t* v1 = values1.data_ptr<scalar_t>();
        const scalar_t* v2 = values2.data_ptr<scalar_t>();
        const int32_t* p1 = positions1.data_ptr<int32_t>();
        const int32_t* p2 = positions2.data_ptr<int32_t>();
        scalar_t* o = out.data_ptr<scalar_t>();
        at::parallel_for(0, rays, ray_grain(total * channels), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            scalar_t* dst = o + r * total * channels;
            for (int64_t i = 0; i < first; ++i) {
              std::copy_n(v1 + (r * first + i) * channels, channels,
                          dst + static_cast<int64_t>(p1[r * first + i]) * channels);
            }
            for (int64_t j = 0; j < second; ++j) {
              std::copy_n(v2 + (r * second + j) * channels, channels,
                          dst + static_cast<int64_t>(p2[r * second + j]) * channels);
            }
          }
        });
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_samples_gather_cpu(const at::Tensor& grad,
                                                            const at::Tensor& positions1,
                                                            const at::Tensor& positions2) {
  check_merge_gather(grad, positions1, positions2, kCpuSide);
  const int64_t rays = grad.size(0), total = grad.size(1), channels = grad.size(2);
  const int64_t first = positions1.size(1), second = positions2.size(1);
  at::Tensor grad1 = new_output({rays, first, channels}, grad.options());
  at::Tensor grad2 = new_output({rays, second, channels}, grad.options());
  if (rays == 0 || channels == 0) return {grad1, grad2};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "merge_samples_gather_cpu", [&] {
        const scalar_t* g = grad.data_ptr<scalar_t>();
        const int32_t* p1 = positions1.data_ptr<int32_t>();
        const int32_t* p2 = positions2.data_ptr<int32_t>();
        scalar_t* g1 = grad1.data_ptr<scalar_t>();
        scalar_t* g2 = grad2.data_ptr<scalar_t>();
        at::parallel_for(0, rays, ray_grain(total * channels), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const scalar_t* src = g + r * total * channels;
            for (int64_t i = 0; i < first; ++i) {
              std::copy_n(src + static_cast<int64_t>(p1[r * first + i]) * channels, channels,
                          g1 + (r * first + i) * channels);
            }
            for (int64_t j = 0; j < second; ++j) {
              std::copy_n(src + static_cast<int64_t>(p2[r * second + j]) * channels, channels,
                          g2 + (r * second + j) * channels);
            }
          }
        });
      });
  return {grad1, grad2};
}

}  // namespace
}  // namespace importance
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("sample_importance", &portrait_engine::importance::sample_importance_cpu);
  m.impl("merge_samples_index", &portrait_engine::importance::merge_samples_index_cpu);
  m.impl("merge_samples_scatter", &portrait_engine::importance::merge_samples_scatter_cpu);
  m.impl("merge_samples_gather", &portrait_engine::importance::merge_samples_gather_cpu);
}
