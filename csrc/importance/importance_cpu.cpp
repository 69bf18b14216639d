// CPU kernels of portrait_engine::sample_importance and merge_samples_{index,scatter,gather}
// (contract: docs/kernel_contract_importance.md; shared math: importance.h).
//
// Every kernel is an at::parallel_for over rays: a task owns whole rays, so nothing is reduced
// across tasks and the result does not depend on the number of threads.
//   * sample_importance: per ray, the K + 1 cdf entries into a task-local buffer, then one
//     binary search and interpolation per draw (with sort: the ray's draws sorted first, by
//     buckets and an insertion sort, then one branch-free walk over the cdf and the draws
//     instead of the searches, and a running maximum).
//   * merge_samples_index: per ray, one two-pointer walk over both sorted lists, O(S1 + S2)
//     (a task owns the ray, so nothing is gained by the CUDA kernel's independent binary
//     searches; on valid input the positions are the same: ties put the first list first).
//   * merge_samples_scatter / gather: per ray, row copies of C channels to / from the
//     positions, into outputs allocated with the huge-page hint (cpu_memory.h): at EG3D's
//     sizes the page faults of a fresh output cost more than the copy itself.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "cpu_memory.h"
#include "importance/checks.h"
#include "importance/importance.h"

namespace portrait_engine {
namespace importance {
namespace {


// rays per parallel_for chunk: about 16k elements of work per chunk
int64_t ray_grain(int64_t per_ray) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(per_ray, 1)); }

// One row of `channels` values. A plain loop rather than std::copy_n: the rows are short (EG3D's
// 32 + 1 channels), and the library memmove's call and size dispatch cost as much as the copy.
template <typename scalar_t>
inline void copy_row(const scalar_t* src, scalar_t* dst, int64_t channels) {
  PE_SIMD
  for (int64_t c = 0; c < channels; ++c) dst[c] = src[c];
}


// Sorts a ray's draws in place, ascending: a counting pass into kDrawBuckets buckets of [0, 1]
// (the draws are uniforms), then an insertion sort that finds them nearly in order. The plain
// insertion sort took about a quarter of sample_importance's time at EG3D's 48 draws: its
// inner loop's exit, on random values, mispredicted once per draw after n/4 shifts on average.
// The buckets only decide how much the insertion sort has to do: any value (outside [0, 1],
// NaN) goes to some bucket, and the result is the insertion sort's whatever they hold.
constexpr int64_t kDrawBuckets = 64;

template <typename acc_t>
void sort_draws(acc_t* values, int64_t n, acc_t* scratch) {
  if (n >= 16 && n <= 4 * kDrawBuckets) {
    int64_t start[kDrawBuckets + 1] = {};
    auto bucket = [](acc_t u) -> int64_t {
      const acc_t scaled = u * static_cast<acc_t>(kDrawBuckets);
      // NaN and values below 1 / kDrawBuckets compare false: bucket 0
      if (!(scaled >= acc_t(1))) return 0;
      return scaled < static_cast<acc_t>(kDrawBuckets) ? static_cast<int64_t>(scaled)
                                                        : kDrawBuckets - 1;
    };
    for (int64_t k = 0; k < n; ++k) ++start[bucket(values[k]) + 1];
    for (int64_t b = 0; b < kDrawBuckets; ++b) start[b + 1] += start[b];
    for (int64_t k = 0; k < n; ++k) scratch[start[bucket(values[k])]++] = values[k];
    std::copy(scratch, scratch + n, values);
  }
  insertion_sort(values, n);
}

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
          std::vector<int64_t> counts(draws);
          std::vector<acc_t> sort_scratch(draws);
          for (int64_t r = begin; r < end; ++r) {
            const scalar_t* z = z_ptr + r * samples;
            const int64_t bins = build_cdf<scalar_t, acc_t>(w_ptr + r * (samples - 1),
                                                            samples - 1, cdf.data());
            const float* ur = u_ptr + r * draws;
            for (int64_t k = 0; k < draws; ++k) ray_u[k] = static_cast<acc_t>(ur[k]);
            if (sort) sort_draws(ray_u.data(), draws, sort_scratch.data());
            scalar_t* o = out_ptr + r * draws;
            if (!sort) {
              for (int64_t k = 0; k < draws; ++k) {
                o[k] = static_cast<scalar_t>(
                    inverse_cdf_sample<scalar_t, acc_t>(z, cdf.data(), bins, ray_u[k]));
              }
              continue;
            }
            // sorted draws: the count of cdf entries <= u only grows, so one walk over the
            // cdf and the draws together replaces a binary search per draw (the same count:
            // the cdf is non-decreasing). The walk is a branch-free merge (each step records
            // the count for the current draw, then advances the cdf or the draw; a draw's last
            // record is the step that passed it): its loop exits on random comparisons
            // mispredicted about every other step. The samples then in a second loop.
            int64_t entry = 0, k = 0;
            while (entry <= bins && k < draws) {
              counts[k] = entry;
              const bool take_entry = cdf[entry] <= ray_u[k];
              entry += take_entry;
              k += !take_entry;
            }
            for (; k < draws; ++k) counts[k] = entry;
            acc_t running = acc_t(0);
            for (k = 0; k < draws; ++k) {
              const acc_t t =
                  interpolate_cdf<scalar_t, acc_t>(z, cdf.data(), bins, ray_u[k], counts[k]);
              running = k == 0 ? t : max_of(running, t);
              o[k] = static_cast<scalar_t>(running);
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
            int32_t* p1 = p1_ptr + r * first;
            int32_t* p2 = p2_ptr + r * second;
            // The merge of two sorted lists: the next sample is the first list's unless the
            // second's is strictly nearer (ties: the first list first), which gives the ranks
            // i + #(second < d1[i]) and j + #(first <= d2[j]) of merged_position_first/second.
            // Branch-free: each step writes the current merged position to both lists' current
            // entries and advances one of them, so an entry's last write is the step that took
            // it (or the tail loops'); the comparison of random depths mispredicted about every
            // other step as a branch. Whatever the input the output is a permutation (the
            // public op has checked the order and NaN).
            int64_t i = 0, j = 0;
            while (i < first && j < second) {
              const int32_t position = static_cast<int32_t>(i + j);
              p1[i] = position;
              p2[j] = position;
              const bool take_second = static_cast<acc_t>(d2[j]) < static_cast<acc_t>(d1[i]);
              j += take_second;
              i += !take_second;
            }
            for (; i < first; ++i) p1[i] = static_cast<int32_t>(i + j);
            for (; j < second; ++j) p2[j] = static_cast<int32_t>(i + j);
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
  at::Tensor out = new_large_output({rays, total, channels}, values1.options());
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
              copy_row(v1 + (r * first + i) * channels,
                       dst + static_cast<int64_t>(p1[r * first + i]) * channels, channels);
            }
            for (int64_t j = 0; j < second; ++j) {
              copy_row(v2 + (r * second + j) * channels,
                       dst + static_cast<int64_t>(p2[r * second + j]) * channels, channels);
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
  at::Tensor grad1 = new_large_output({rays, first, channels}, grad.options());
  at::Tensor grad2 = new_large_output({rays, second, channels}, grad.options());
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
              copy_row(src + static_cast<int64_t>(p1[r * first + i]) * channels,
                       g1 + (r * first + i) * channels, channels);
            }
            for (int64_t j = 0; j < second; ++j) {
              copy_row(src + static_cast<int64_t>(p2[r * second + j]) * channels,
                       g2 + (r * second + j) * channels, channels);
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
