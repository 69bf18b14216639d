// CPU kernels of portrait_engine::ray_march_{forward,backward} and ray_sample_forward
// (contract: docs/kernel_contract_rays.md; shared math: rays.h).
//
// ray_march: at::parallel_for over the rays; a task owns whole rays, so there is no reduction
// across tasks, no atomics, and the result does not depend on the number of threads. Per ray,
// one front-to-back pass over its S samples (forward), or, backward, a scalar pass over the
// densities and depths (the intervals, kept in a per-thread buffer of S values each, and the
// total G) then one pass over the colours; the C-channel loops are contiguous and vectorise.
// Per-sample values are converted to acc_t once per sample (the previous sample's colours are
// kept in a small buffer, so each element is read once per pass).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "rays/checks.h"
#include "rays/rays.h"

namespace portrait_engine {
namespace rays {
namespace {

// Rays per parallel_for chunk: about 16k sample-channel elements per chunk.
int64_t ray_grain(const MarchSizes& z) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, z.S * z.C));
}

template <typename scalar_t>
void forward_impl(const at::Tensor& colors, const at::Tensor& densities, const at::Tensor& depths,
                  const at::Tensor& depth_range, at::Tensor& rgb, at::Tensor& depth,
                  at::Tensor& weights, at::Tensor& totals, const MarchSizes& z, bool white_back,
                  bool scale_rgb) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* c_ptr = colors.data_ptr<scalar_t>();
  const scalar_t* s_ptr = densities.data_ptr<scalar_t>();
  const scalar_t* z_ptr = depths.data_ptr<scalar_t>();
  const acc_t low = depth_range.data_ptr<acc_t>()[0];
  const acc_t high = depth_range.data_ptr<acc_t>()[1];
  scalar_t* rgb_ptr = rgb.data_ptr<scalar_t>();
  scalar_t* depth_ptr = depth.data_ptr<scalar_t>();
  scalar_t* w_ptr = weights.data_ptr<scalar_t>();
  acc_t* tot_ptr = totals.data_ptr<acc_t>();
  const int64_t S = z.S, C = z.C;

  at::parallel_for(0, z.B * z.R, ray_grain(z), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> prev(C), next(C), acc(C);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* c = c_ptr + r * S * C;
      const scalar_t* s = s_ptr + r * S;
      const scalar_t* d = z_ptr + r * S;
      scalar_t* w_out = w_ptr + r * (S - 1);
      for (int64_t k = 0; k < C; ++k) {
        prev[k] = static_cast<acc_t>(c[k]);
        acc[k] = acc_t(0);
      }
      acc_t s0 = static_cast<acc_t>(s[0]), z0 = static_cast<acc_t>(d[0]);
      acc_t transmittance = acc_t(1), total = acc_t(0), depth_sum = acc_t(0);
      for (int64_t i = 1; i < S; ++i) {
        const acc_t s1 = static_cast<acc_t>(s[i]), z1 = static_cast<acc_t>(d[i]);
        const Interval<acc_t> iv = interval(s0, s1, z0, z1);
        const acc_t w = iv.alpha * transmittance;
        const scalar_t* ci = c + i * C;
        acc_t* __restrict__ a = acc.data();
        acc_t* __restrict__ p0 = prev.data();
        acc_t* __restrict__ p1 = next.data();
        PE_SIMD
        for (int64_t k = 0; k < C; ++k) {
          p1[k] = static_cast<acc_t>(ci[k]);
          a[k] += w * ((p0[k] + p1[k]) / acc_t(2));
        }
        total += w;
        depth_sum += w * ((z0 + z1) / acc_t(2));
        w_out[i - 1] = static_cast<scalar_t>(w);
        transmittance = transmittance * iv.p;
        std::swap(prev, next);
        s0 = s1;
        z0 = z1;
      }
      depth_ptr[r] = static_cast<scalar_t>(composite_depth(depth_sum, total, low, high));
      acc_t* tot = tot_ptr + r * (C + 2);
      scalar_t* out = rgb_ptr + r * C;
      for (int64_t k = 0; k < C; ++k) {
        tot[k] = acc[k];
        out[k] = static_cast<scalar_t>(finish_rgb(acc[k], total, white_back, scale_rgb));
      }
      tot[C] = total;
      tot[C + 1] = depth_sum;
    }
  });
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_rgb, const c10::optional<at::Tensor>& grad_depth,
                   const c10::optional<at::Tensor>& grad_weights, const at::Tensor& colors,
                   const at::Tensor& densities, const at::Tensor& depths,
                   const at::Tensor& depth_range, const at::Tensor& totals,
                   at::Tensor& grad_colors, at::Tensor& grad_densities, const MarchSizes& z,
                   bool white_back, bool scale_rgb) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g_ptr = grad_rgb.data_ptr<scalar_t>();
  // nullptr: no gradient reached that output; its terms are skipped
  const scalar_t* gd_ptr = optional_data<scalar_t>(grad_depth);
  const scalar_t* gw_ptr = optional_data<scalar_t>(grad_weights);
  const scalar_t* c_ptr = colors.data_ptr<scalar_t>();
  const scalar_t* s_ptr = densities.data_ptr<scalar_t>();
  const scalar_t* z_ptr = depths.data_ptr<scalar_t>();
  const acc_t low = depth_range.data_ptr<acc_t>()[0];
  const acc_t high = depth_range.data_ptr<acc_t>()[1];
  const acc_t* tot_ptr = totals.data_ptr<acc_t>();
  scalar_t* gc_ptr = grad_colors.data_ptr<scalar_t>();
  scalar_t* gs_ptr = grad_densities.data_ptr<scalar_t>();
  const int64_t S = z.S, C = z.C;

  at::parallel_for(0, z.B * z.R, ray_grain(z), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(C), prev(C), next(C);
    // per-interval values of the scalar pass, reused by the channel pass: T_i, w_i, e_i, p_i,
    // ∂τ/∂x_i (so each interval's transcendentals are evaluated once per backward)
    std::vector<acc_t> T(S), W(S), E(S), P(S), K(S);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* c = c_ptr + r * S * C;
      const scalar_t* s = s_ptr + r * S;
      const scalar_t* d = z_ptr + r * S;
      const scalar_t* gw = gw_ptr != nullptr ? gw_ptr + r * (S - 1) : nullptr;
      const acc_t* tot = tot_ptr + r * (C + 2);
      scalar_t* gc = gc_ptr + r * S * C;
      scalar_t* gs = gs_ptr + r * S;

      acc_t g_sum = acc_t(0), g_dot_rgb = acc_t(0);
      for (int64_t k = 0; k < C; ++k) {
        g[k] = static_cast<acc_t>(g_ptr[r * C + k]);
        g_sum += g[k];
        g_dot_rgb += g[k] * tot[k];
      }
      const acc_t total = tot[C], depth_sum = tot[C + 1];
      const acc_t grad_depth_r = gd_ptr != nullptr ? static_cast<acc_t>(gd_ptr[r]) : acc_t(0);
      const GradTerms<acc_t> t = grad_terms(grad_depth_r, g_sum, total,
                                            depth_sum, low, high, white_back, scale_rgb);

      // scalar pass: the intervals, and Σ w_i ∂L/∂weights_i for the total G
      acc_t weights_term = acc_t(0);
      {
        acc_t s0 = static_cast<acc_t>(s[0]), z0 = static_cast<acc_t>(d[0]);
        acc_t transmittance = acc_t(1);
        for (int64_t i = 1; i < S; ++i) {
          const acc_t s1 = static_cast<acc_t>(s[i]), z1 = static_cast<acc_t>(d[i]);
          const Interval<acc_t> iv = interval(s0, s1, z0, z1);
          const acc_t w = iv.alpha * transmittance;
          T[i] = transmittance;
          W[i] = w;
          E[i] = iv.e;
          P[i] = iv.p;
          K[i] = iv.dtau;
          if (gw != nullptr) weights_term += w * static_cast<acc_t>(gw[i - 1]);
          transmittance = transmittance * iv.p;
          s0 = s1;
          z0 = z1;
        }
      }
      const acc_t grand = t.scale * g_dot_rgb + t.a * total + t.b * depth_sum + weights_term;

      // channel pass, front to back
      for (int64_t k = 0; k < C; ++k) prev[k] = static_cast<acc_t>(c[k]);
      acc_t prefix = acc_t(0), gx_prev = acc_t(0), w_prev = acc_t(0);
      const acc_t half_scale = t.scale / acc_t(2);
      for (int64_t i = 1; i < S; ++i) {
        const acc_t w = W[i];
        const scalar_t* ci = c + i * C;
        scalar_t* __restrict__ gci = gc + (i - 1) * C;
        const acc_t wc = half_scale * (w_prev + w);
        acc_t dot = acc_t(0);
        acc_t* __restrict__ p0 = prev.data();
        acc_t* __restrict__ p1 = next.data();
        const acc_t* __restrict__ gv = g.data();
        PE_SIMD_SUM(dot)
        for (int64_t k = 0; k < C; ++k) {
          p1[k] = static_cast<acc_t>(ci[k]);
          dot += gv[k] * ((p0[k] + p1[k]) / acc_t(2));
          gci[k] = static_cast<scalar_t>(wc * gv[k]);
        }
        const acc_t z_mid = (static_cast<acc_t>(d[i - 1]) + static_cast<acc_t>(d[i])) / acc_t(2);
        const acc_t gamma = t.scale * dot + t.a + t.b * z_mid +
                            (gw != nullptr ? static_cast<acc_t>(gw[i - 1]) : acc_t(0));
        prefix += w * gamma;
        const acc_t gx = grad_x(E[i], P[i], K[i], gamma, T[i], grand - prefix);
        gs[i - 1] = static_cast<scalar_t>(acc_t(0.5) * (gx_prev + gx));
        gx_prev = gx;
        w_prev = w;
        std::swap(prev, next);
      }
      scalar_t* last = gc + (S - 1) * C;
      const acc_t wc = half_scale * w_prev;
      for (int64_t k = 0; k < C; ++k) last[k] = static_cast<scalar_t>(wc * g[k]);
      gs[S - 1] = static_cast<scalar_t>(acc_t(0.5) * gx_prev);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ray_march_forward_cpu(
    const at::Tensor& colors, const at::Tensor& densities, const at::Tensor& depths,
    const at::Tensor& depth_range, bool white_back, bool scale_rgb) {
  const MarchSizes z = check_march(colors, densities, depths, depth_range, kCpuSide);
  const auto options = colors.options();
  at::Tensor rgb = new_output({z.B, z.R, z.C}, options);
  at::Tensor depth = new_output({z.B, z.R, 1}, options);
  at::Tensor weights = new_output({z.B, z.R, z.S - 1, 1}, options);
  at::Tensor totals = new_output({z.B, z.R, z.C + 2}, options.dtype(acc_dtype(colors)));
  if (z.B * z.R == 0) return {rgb, depth, weights, totals};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, colors.scalar_type(), "ray_march_forward_cpu", [&] {
        forward_impl<scalar_t>(colors, densities, depths, depth_range, rgb, depth, weights, totals,
                               z, white_back, scale_rgb);
      });
  return {rgb, depth, weights, totals};
}

std::tuple<at::Tensor, at::Tensor> ray_march_backward_cpu(
    const at::Tensor& grad_rgb, const c10::optional<at::Tensor>& grad_depth,
    const c10::optional<at::Tensor>& grad_weights, const at::Tensor& colors,
    const at::Tensor& densities, const at::Tensor& depths, const at::Tensor& depth_range,
    const at::Tensor& totals, bool white_back, bool scale_rgb) {
  const MarchSizes z = check_march(colors, densities, depths, depth_range, kCpuSide);
  check_march_backward(grad_rgb, grad_depth, grad_weights, totals, colors, z, kCpuSide);
  const auto dtype = colors.scalar_type();
  at::Tensor grad_colors = new_output(colors.sizes(), colors.options());
  at::Tensor grad_densities = new_output(densities.sizes(), densities.options());
  if (z.B * z.R == 0) return {grad_colors, grad_densities};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "ray_march_backward_cpu", [&] {
    backward_impl<scalar_t>(grad_rgb, grad_depth, grad_weights, colors, densities, depths,
                            depth_range, totals, grad_colors, grad_densities, z, white_back,
                            scale_rgb);
  });
  return {grad_colors, grad_densities};
}

std::tuple<at::Tensor, at::Tensor> ray_sample_forward_cpu(const at::Tensor& cam2world,
                                                          const at::Tensor& intrinsics,
                                                          int64_t resolution) {
  check_ray_sample(cam2world, intrinsics, resolution, kCpuSide);
  const int64_t B = cam2world.size(0), M = resolution * resolution;
  at::Tensor origins = new_output({B, M, 3}, cam2world.options());
  at::Tensor directions = new_output({B, M, 3}, cam2world.options());
  if (B == 0) return {origins, directions};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, cam2world.scalar_type(), "ray_sample_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* m_ptr = cam2world.data_ptr<scalar_t>();
        const scalar_t* k_ptr = intrinsics.data_ptr<scalar_t>();
        scalar_t* o_ptr = origins.data_ptr<scalar_t>();
        scalar_t* d_ptr = directions.data_ptr<scalar_t>();
        at::parallel_for(0, B * M, 4096, [&](int64_t begin, int64_t end) {
          for (int64_t idx = begin; idx < end; ++idx) {
            const int64_t b = idx / M, pixel = idx % M;
            acc_t m[12];
            for (int j = 0; j < 12; ++j) m[j] = static_cast<acc_t>(m_ptr[b * 16 + j]);
            const scalar_t* k = k_ptr + b * 9;
            acc_t dir[3];
            ray_direction(m, static_cast<acc_t>(k[0]), static_cast<acc_t>(k[1]),
                          static_cast<acc_t>(k[2]), static_cast<acc_t>(k[4]),
                          static_cast<acc_t>(k[5]), pixel / resolution, pixel % resolution,
                          resolution, dir);
            for (int j = 0; j < 3; ++j) {
              d_ptr[idx * 3 + j] = static_cast<scalar_t>(dir[j]);
              o_ptr[idx * 3 + j] = m_ptr[b * 16 + 4 * j + 3];
            }
          }
        });
      });
  return {origins, directions};
}

}  // namespace
}  // namespace rays
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("ray_march_forward", &portrait_engine::rays::ray_march_forward_cpu);
  m.impl("ray_march_backward", &portrait_engine::rays::ray_march_backward_cpu);
  m.impl("ray_sample_forward", &portrait_engine::rays::ray_sample_forward_cpu);
}
