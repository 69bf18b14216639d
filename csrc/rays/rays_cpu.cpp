// CPU kernels of portrait_engine::ray_march_{forward,backward} and ray_sample_{forward,backward}
// (contract: docs/kernel_contract_rays.md; shared math: rays.h).
//
// ray_march: at::parallel_for over the rays; a task owns whole rays, so there is no reduction
// across tasks, no atomics, and the result does not depend on the number of threads. Per ray,
// in passes that each vectorise (the extension is built for baseline x86-64, so the passes are
// also compiled for AVX2 and AVX-512 and picked at run time: cpu_math::cpu_isa()):
//   1. the intervals' α, p (and, backward, e, ∂τ/∂x) over the S - 1 intervals in blocks of
//      kLanes (a fixed trip count: whole vectors, no scalar remainder; the ray's densities and
//      depths are first copied into padded acc_t arrays); float math (float, half, bfloat16
//      inputs) uses cpu_math::VectorMath's polynomial exp / log1p, double uses libm;
//   2. the transmittance scan (sequential products: T_i, w_i, W, N) and each sample's share
//      w̄_j = (w_{j-1} + w_j) / 2 of its two intervals' weights;
//   3. the colours, in blocks of kChannels channels held in registers while the ray's samples
//      stream past: the forward sums w̄_j c[j] (Σ_i w_i (c[i] + c[i+1]) / 2 regrouped per
//      sample); the backward writes ∂L/∂c[j] = s w̄_j g and keeps ⟨g, c[j]⟩;
//   4. (backward) γ_i from the two samples' dots (in lanes), the suffix sums Σ_{l>i} w_l γ_l
//      (a back-to-front scan over the ray's γ, which this kernel holds anyway: exact, where
//      the streaming kernels' "total G minus prefix P_i" cancels catastrophically when α_i
//      rounds to 1 and e_i / p_i reaches ~600), ∂L/∂x_i (in lanes), then each sample's half of
//      its two intervals' ∂L/∂x.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_math.h"
#include "cpu_memory.h"
#include "rays/checks.h"
#include "rays/rays.h"

namespace portrait_engine {
namespace rays {
namespace {

// Intervals per block of the per-interval passes: one AVX-512 vector of floats, two AVX2, four
// SSE (the loop over a block has a compile-time trip count, so it vectorises whole).
constexpr int64_t kLanes = 16;
// Channels per block of the colour passes: 2 AVX-512 / 4 AVX2 / 8 SSE float accumulators.
constexpr int64_t kChannels = 32;

// Rays per parallel_for chunk: about 16k sample-channel elements per chunk.
int64_t ray_grain(const MarchSizes& z) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, z.S * z.C));
}

// The transcendentals of the interval pass: the vectorisable polynomials for float
// accumulation, libm for double (the float64 path is the gradcheck one).
template <typename acc_t>
using MathOf = std::conditional_t<std::is_same_v<acc_t, float>, cpu_math::VectorMath, LibMath>;

// Everything one ray_march call reads and writes (raw pointers, sizes, flags).
template <typename scalar_t>
struct MarchArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* colors;
  const scalar_t* densities;
  const scalar_t* depths;
  acc_t low, high;  // depth_range
  int64_t S, C;
  bool white_back, scale_rgb;
  // forward outputs
  scalar_t* rgb;
  scalar_t* depth;
  scalar_t* weights;
  acc_t* totals;
  // backward inputs (grad_depth / grad_weights nullptr when no gradient reached them; the
  // forward's totals) and outputs
  const acc_t* saved_totals;
  const scalar_t* grad_rgb;
  const scalar_t* grad_depth;
  const scalar_t* grad_weights;
  scalar_t* grad_colors;
  scalar_t* grad_densities;
};

// Per-thread arrays of one ray: its samples' densities and depths in acc_t (padded to whole
// blocks), the per-interval values, the per-sample shares and dots, and C channel values.
template <typename acc_t>
struct RayScratch {
  int64_t padded;  // the S - 1 intervals rounded up to whole blocks of kLanes
  std::vector<acc_t> buffer;
  acc_t *sigma, *depth, *alpha, *e, *p, *dtau, *w, *transmittance, *gamma, *grad_w, *share,
      *dot, *channels;
  RayScratch(int64_t S, int64_t C)
      : padded((std::max<int64_t>(S - 1, 1) + kLanes - 1) / kLanes * kLanes),
        buffer(static_cast<size_t>(12 * (padded + 1) + C)) {
    acc_t* next = buffer.data();
    for (acc_t** array : {&sigma, &depth, &alpha, &e, &p, &dtau, &w, &transmittance, &gamma,
                          &grad_w, &share, &dot}) {
      *array = next;
      next += padded + 1;
    }
    channels = next;
  }
};

// Pass 1: the ray's densities and depths into the padded arrays (padding: zero density and
// the last depth, so padded intervals have δ = 0 and no weight), then α_i, p_i (and e_i,
// ∂τ/∂x_i when with_grad) of every interval.
template <typename scalar_t, bool with_grad>
PE_INLINE void interval_pass(const scalar_t* __restrict__ s, const scalar_t* __restrict__ d,
                             int64_t S, RayScratch<at::opmath_type<scalar_t>>& a) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t* __restrict__ sigma = a.sigma;
  acc_t* __restrict__ depth = a.depth;
  for (int64_t i = 0; i < S; ++i) {
    sigma[i] = static_cast<acc_t>(s[i]);
    depth[i] = static_cast<acc_t>(d[i]);
  }
  for (int64_t i = S; i <= a.padded; ++i) {
    sigma[i] = acc_t(0);
    depth[i] = depth[S - 1];
  }
  acc_t* __restrict__ alpha = a.alpha;
  acc_t* __restrict__ e = a.e;
  acc_t* __restrict__ p = a.p;
  acc_t* __restrict__ dtau = a.dtau;
  for (int64_t i0 = 0; i0 < a.padded; i0 += kLanes) {
    PE_SIMD
    for (int64_t l = 0; l < kLanes; ++l) {
      const int64_t i = i0 + l;
      const Interval<acc_t> iv =
          interval<acc_t, MathOf<acc_t>>(sigma[i], sigma[i + 1], depth[i], depth[i + 1]);
      alpha[i] = iv.alpha;
      p[i] = iv.p;
      if constexpr (with_grad) {
        e[i] = iv.e;
        dtau[i] = iv.dtau;
      }
    }
  }
}

// Each sample's share of its two intervals' weights, scaled: share_j = scale (w_{j-1} + w_j) / 2
// (w_{-1} = w_{S-1} = 0).
template <typename acc_t>
PE_INLINE void sample_shares(const acc_t* w, int64_t S, acc_t scale, acc_t* share) {
  const int64_t n = S - 1;
  for (int64_t j = 0; j < S; ++j) {
    share[j] = scale * (((j > 0 ? w[j - 1] : acc_t(0)) + (j < n ? w[j] : acc_t(0))) / acc_t(2));
  }
}

// Forward colour pass over channels [k0, k0 + width): out[k] = Σ_j share_j c[j][k], the
// accumulators held in registers across the ray's samples.
template <int64_t width, typename scalar_t, typename acc_t>
PE_INLINE void composite_block(const scalar_t* __restrict__ c, int64_t S, int64_t C, int64_t k0,
                               const acc_t* __restrict__ share, acc_t* __restrict__ out) {
  acc_t acc[width] = {};
  for (int64_t j = 0; j < S; ++j) {
    const acc_t weight = share[j];
    const scalar_t* __restrict__ cj = c + j * C + k0;
    PE_SIMD
    for (int64_t k = 0; k < width; ++k) acc[k] += weight * static_cast<acc_t>(cj[k]);
  }
  for (int64_t k = 0; k < width; ++k) out[k0 + k] = acc[k];
}

template <typename scalar_t, typename acc_t>
PE_INLINE void composite(const scalar_t* c, int64_t S, int64_t C, const acc_t* share,
                         acc_t* out) {
  int64_t k0 = 0;
  for (; k0 + kChannels <= C; k0 += kChannels) {
    composite_block<kChannels>(c, S, C, k0, share, out);
  }
  for (; k0 + 8 <= C; k0 += 8) composite_block<8>(c, S, C, k0, share, out);
  for (; k0 < C; ++k0) composite_block<1>(c, S, C, k0, share, out);
}

// Backward colour pass over channels [k0, k0 + width): ∂L/∂c[j][k] = share_j g[k], and the
// block's part of ⟨g, c[j]⟩ added to dot[j] (blocks in increasing k0: a fixed order).
// lanes[0] + ... + lanes[n - 1] (n a power of 2), summed pairwise: halves added elementwise.
template <int64_t n, typename acc_t>
PE_INLINE acc_t pairwise_sum(acc_t* lanes) {
  if constexpr (n == 1) {
    return lanes[0];
  } else {
    for (int64_t l = 0; l < n / 2; ++l) lanes[l] += lanes[l + n / 2];
    return pairwise_sum<n / 2>(lanes);
  }
}

// The dot's partial sums are kept in `lanes` (vertical adds) and then summed pairwise, halving
// each time: a fixed order without reassociation, which the compiler turns into a few vector
// adds (a `reduction` loop of constant trip count is unrolled first and then summed one
// element at a time).
template <int64_t width, typename scalar_t, typename acc_t>
PE_INLINE void colour_grad_block(const scalar_t* __restrict__ c, scalar_t* __restrict__ gc,
                                 int64_t S, int64_t C, int64_t k0, const acc_t* __restrict__ g,
                                 const acc_t* __restrict__ share, acc_t* __restrict__ dot) {
  constexpr int64_t kDotLanes = width < 16 ? width : 16;
  static_assert(width % kDotLanes == 0 && (kDotLanes & (kDotLanes - 1)) == 0);
  acc_t gk[width];
  for (int64_t k = 0; k < width; ++k) gk[k] = g[k0 + k];
  for (int64_t j = 0; j < S; ++j) {
    const acc_t weight = share[j];
    const scalar_t* __restrict__ cj = c + j * C + k0;
    scalar_t* __restrict__ gcj = gc + j * C + k0;
    acc_t lanes[kDotLanes] = {};
    for (int64_t k = 0; k < width; k += kDotLanes) {
      for (int64_t l = 0; l < kDotLanes; ++l) {
        lanes[l] += gk[k + l] * static_cast<acc_t>(cj[k + l]);
        gcj[k + l] = static_cast<scalar_t>(weight * gk[k + l]);
      }
    }
    dot[j] += pairwise_sum<kDotLanes>(lanes);
  }
}

template <typename scalar_t, typename acc_t>
PE_INLINE void colour_grads(const scalar_t* c, scalar_t* gc, int64_t S, int64_t C,
                            const acc_t* g, const acc_t* share, acc_t* dot) {
  for (int64_t j = 0; j < S; ++j) dot[j] = acc_t(0);
  int64_t k0 = 0;
  for (; k0 + kChannels <= C; k0 += kChannels) {
    colour_grad_block<kChannels>(c, gc, S, C, k0, g, share, dot);
  }
  for (; k0 + 8 <= C; k0 += 8) colour_grad_block<8>(c, gc, S, C, k0, g, share, dot);
  for (; k0 < C; ++k0) colour_grad_block<1>(c, gc, S, C, k0, g, share, dot);
}

// The rays [begin, end) of the forward.
template <typename scalar_t>
PE_INLINE void forward_rays(const MarchArgs<scalar_t>& m, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t S = m.S, C = m.C, n = S - 1;
  RayScratch<acc_t> a(S, C);
  for (int64_t r = begin; r < end; ++r) {
    interval_pass<scalar_t, false>(m.densities + r * S, m.depths + r * S, S, a);

    scalar_t* w_out = m.weights + r * n;
    acc_t transmittance = acc_t(1), total = acc_t(0), depth_sum = acc_t(0);
    for (int64_t i = 0; i < n; ++i) {
      const acc_t w = a.alpha[i] * transmittance;
      a.w[i] = w;
      total += w;
      depth_sum += w * ((a.depth[i] + a.depth[i + 1]) / acc_t(2));
      w_out[i] = static_cast<scalar_t>(w);
      transmittance = transmittance * a.p[i];
    }
    sample_shares(a.w, S, acc_t(1), a.share);
    composite(m.colors + r * S * C, S, C, a.share, a.channels);

    m.depth[r] = static_cast<scalar_t>(composite_depth(depth_sum, total, m.low, m.high));
    acc_t* tot = m.totals + r * (C + 2);
    scalar_t* out = m.rgb + r * C;
    for (int64_t k = 0; k < C; ++k) {
      tot[k] = a.channels[k];
      out[k] = static_cast<scalar_t>(finish_rgb(a.channels[k], total, m.white_back, m.scale_rgb));
    }
    tot[C] = total;
    tot[C + 1] = depth_sum;
  }
}

// The rays [begin, end) of the backward.
template <typename scalar_t>
PE_INLINE void backward_rays(const MarchArgs<scalar_t>& m, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t S = m.S, C = m.C, n = S - 1;
  RayScratch<acc_t> a(S, C);
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* gw = m.grad_weights != nullptr ? m.grad_weights + r * n : nullptr;
    const acc_t* tot = m.saved_totals + r * (C + 2);
    scalar_t* gs = m.grad_densities + r * S;

    // the rgb gradient in acc_t, and Σ g
    acc_t* __restrict__ g = a.channels;
    acc_t g_sum = acc_t(0);
    for (int64_t k = 0; k < C; ++k) {
      g[k] = static_cast<acc_t>(m.grad_rgb[r * C + k]);
      g_sum += g[k];
    }
    const acc_t total = tot[C], depth_sum = tot[C + 1];
    const acc_t grad_depth_r =
        m.grad_depth != nullptr ? static_cast<acc_t>(m.grad_depth[r]) : acc_t(0);
    const GradTerms<acc_t> t = grad_terms(grad_depth_r, g_sum, total, depth_sum, m.low, m.high,
                                          m.white_back, m.scale_rgb);

    interval_pass<scalar_t, true>(m.densities + r * S, m.depths + r * S, S, a);
    // the weights' gradient in acc_t (zeros where none reached them: the same arithmetic
    // either way, so None and zeros agree bit for bit), padded
    for (int64_t i = 0; i < n; ++i) a.grad_w[i] = gw != nullptr ? static_cast<acc_t>(gw[i]) : acc_t(0);
    for (int64_t i = n; i < a.padded; ++i) a.grad_w[i] = acc_t(0);
    // the scan: T_i, w_i
    {
      acc_t transmittance = acc_t(1);
      for (int64_t i = 0; i < n; ++i) {
        const acc_t w = a.alpha[i] * transmittance;
        a.transmittance[i] = transmittance;
        a.w[i] = w;
        transmittance = transmittance * a.p[i];
      }
      for (int64_t i = n; i < a.padded; ++i) a.w[i] = a.transmittance[i] = acc_t(0);
    }

    sample_shares(a.w, S, t.scale, a.share);
    colour_grads(m.colors + r * S * C, m.grad_colors + r * S * C, S, C, g, a.share, a.dot);
    for (int64_t j = S; j <= a.padded; ++j) a.dot[j] = acc_t(0);

    // γ_i in lanes; the suffix sums Σ_{l>i} w_l γ_l back to front (in a.share, no longer
    // needed); ∂L/∂x_i in lanes (over γ_i, in a.gamma)
    acc_t* __restrict__ gamma = a.gamma;
    for (int64_t i0 = 0; i0 < a.padded; i0 += kLanes) {
      PE_SIMD
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t i = i0 + l;
        const acc_t z_mid = (a.depth[i] + a.depth[i + 1]) / acc_t(2);
        gamma[i] = t.scale * ((a.dot[i] + a.dot[i + 1]) / acc_t(2)) + t.a + t.b * z_mid +
                   a.grad_w[i];
      }
    }
    acc_t* __restrict__ suffix = a.share;
    acc_t later = acc_t(0);
    for (int64_t i = n - 1; i >= 0; --i) {
      suffix[i] = later;
      later += a.w[i] * gamma[i];
    }
    for (int64_t i = n; i < a.padded; ++i) suffix[i] = acc_t(0);
    for (int64_t i0 = 0; i0 < a.padded; i0 += kLanes) {
      PE_SIMD
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t i = i0 + l;
        gamma[i] = grad_x(a.e[i], a.p[i], a.dtau[i], gamma[i], a.transmittance[i], suffix[i]);
      }
    }
    for (int64_t j = 0; j < S; ++j) {
      const acc_t before = j > 0 ? gamma[j - 1] : acc_t(0);
      const acc_t after = j < n ? gamma[j] : acc_t(0);
      gs[j] = static_cast<scalar_t>(acc_t(0.5) * (before + after));
    }
  }
}

// The same templates compiled for AVX2 and AVX-512 (flatten: the whole pass inlined, so the
// target applies to every loop in it).
#if PE_HAVE_ISA_CLONES
PE_ISA_CLONES(forward_rays, MarchArgs)
PE_ISA_CLONES(backward_rays, MarchArgs)
#endif

template <typename scalar_t>
using RaysFn = void (*)(const MarchArgs<scalar_t>&, int64_t, int64_t);

template <typename scalar_t>
RaysFn<scalar_t> pick(bool backward) {
  return backward ? PE_ISA_PICK(backward_rays, scalar_t) : PE_ISA_PICK(forward_rays, scalar_t);
}

template <typename scalar_t>
MarchArgs<scalar_t> march_args(const at::Tensor& colors, const at::Tensor& densities,
                               const at::Tensor& depths, const at::Tensor& depth_range,
                               const MarchSizes& z, bool white_back, bool scale_rgb) {
  using acc_t = at::opmath_type<scalar_t>;
  MarchArgs<scalar_t> m{};
  m.colors = colors.data_ptr<scalar_t>();
  m.densities = densities.data_ptr<scalar_t>();
  m.depths = depths.data_ptr<scalar_t>();
  m.low = depth_range.data_ptr<acc_t>()[0];
  m.high = depth_range.data_ptr<acc_t>()[1];
  m.S = z.S;
  m.C = z.C;
  m.white_back = white_back;
  m.scale_rgb = scale_rgb;
  return m;
}

template <typename scalar_t>
void forward_impl(const at::Tensor& colors, const at::Tensor& densities, const at::Tensor& depths,
                  const at::Tensor& depth_range, at::Tensor& rgb, at::Tensor& depth,
                  at::Tensor& weights, at::Tensor& totals, const MarchSizes& z, bool white_back,
                  bool scale_rgb) {
  using acc_t = at::opmath_type<scalar_t>;
  MarchArgs<scalar_t> m =
      march_args<scalar_t>(colors, densities, depths, depth_range, z, white_back, scale_rgb);
  m.rgb = rgb.data_ptr<scalar_t>();
  m.depth = depth.data_ptr<scalar_t>();
  m.weights = weights.data_ptr<scalar_t>();
  m.totals = totals.data_ptr<acc_t>();
  const RaysFn<scalar_t> fn = pick<scalar_t>(false);
  at::parallel_for(0, z.B * z.R, ray_grain(z),
                   [&](int64_t begin, int64_t end) { fn(m, begin, end); });
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_rgb, const c10::optional<at::Tensor>& grad_depth,
                   const c10::optional<at::Tensor>& grad_weights, const at::Tensor& colors,
                   const at::Tensor& densities, const at::Tensor& depths,
                   const at::Tensor& depth_range, const at::Tensor& totals,
                   at::Tensor& grad_colors, at::Tensor& grad_densities, const MarchSizes& z,
                   bool white_back, bool scale_rgb) {
  using acc_t = at::opmath_type<scalar_t>;
  MarchArgs<scalar_t> m =
      march_args<scalar_t>(colors, densities, depths, depth_range, z, white_back, scale_rgb);
  m.saved_totals = totals.data_ptr<acc_t>();
  m.grad_rgb = grad_rgb.data_ptr<scalar_t>();
  // nullptr: no gradient reached that output; its terms are skipped
  m.grad_depth = optional_data<scalar_t>(grad_depth);
  m.grad_weights = optional_data<scalar_t>(grad_weights);
  m.grad_colors = grad_colors.data_ptr<scalar_t>();
  m.grad_densities = grad_densities.data_ptr<scalar_t>();
  const RaysFn<scalar_t> fn = pick<scalar_t>(true);
  at::parallel_for(0, z.B * z.R, ray_grain(z),
                   [&](int64_t begin, int64_t end) { fn(m, begin, end); });
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
  at::Tensor grad_colors = new_large_output(colors.sizes(), colors.options());
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

// The backward's rays are summed in fixed chunks (one thread's serial sum each), then the
// chunks in order: the result does not depend on the number of threads.
constexpr int64_t kSampleChunk = 2048;

std::tuple<at::Tensor, at::Tensor> ray_sample_backward_cpu(const at::Tensor& grad_origins,
                                                           const at::Tensor& grad_directions,
                                                           const at::Tensor& cam2world,
                                                           const at::Tensor& intrinsics,
                                                           int64_t resolution) {
  check_ray_sample(cam2world, intrinsics, resolution, kCpuSide);
  check_ray_sample_grads(grad_origins, grad_directions, cam2world, resolution, kCpuSide);
  const int64_t B = cam2world.size(0), M = resolution * resolution;
  at::Tensor grad_m = new_output({B, 4, 4}, cam2world.options());
  at::Tensor grad_k = new_output({B, 3, 3}, intrinsics.options());
  if (B == 0) return {grad_m, grad_k};
  const int64_t chunks = (M + kSampleChunk - 1) / kSampleChunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, cam2world.scalar_type(), "ray_sample_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* m_ptr = cam2world.data_ptr<scalar_t>();
        const scalar_t* k_ptr = intrinsics.data_ptr<scalar_t>();
        const scalar_t* go_ptr = grad_origins.data_ptr<scalar_t>();
        const scalar_t* gd_ptr = grad_directions.data_ptr<scalar_t>();
        std::vector<acc_t> partial(static_cast<size_t>(B * chunks * kSampleGrads), acc_t(0));
        at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t task = begin; task < end; ++task) {
            const int64_t b = task / chunks, first = (task % chunks) * kSampleChunk;
            const int64_t last = std::min(M, first + kSampleChunk);
            acc_t m[12];
            for (int j = 0; j < 12; ++j) m[j] = static_cast<acc_t>(m_ptr[b * 16 + j]);
            const scalar_t* k = k_ptr + b * 9;
            const acc_t fx = k[0], sk = k[1], cx = k[2], fy = k[4], cy = k[5];
            acc_t* acc = partial.data() + task * kSampleGrads;
            for (int64_t pixel = first; pixel < last; ++pixel) {
              const int64_t idx = (b * M + pixel) * 3;
              const acc_t g_o[3] = {static_cast<acc_t>(go_ptr[idx]),
                                    static_cast<acc_t>(go_ptr[idx + 1]),
                                    static_cast<acc_t>(go_ptr[idx + 2])};
              const acc_t g_d[3] = {static_cast<acc_t>(gd_ptr[idx]),
                                    static_cast<acc_t>(gd_ptr[idx + 1]),
                                    static_cast<acc_t>(gd_ptr[idx + 2])};
              ray_sample_grad(m, fx, sk, cx, fy, cy, pixel / resolution, pixel % resolution,
                              resolution, g_o, g_d, acc);
            }
          }
        });
        scalar_t* gm = grad_m.data_ptr<scalar_t>();
        scalar_t* gk = grad_k.data_ptr<scalar_t>();
        for (int64_t b = 0; b < B; ++b) {
          acc_t total[kSampleGrads] = {};
          for (int64_t c = 0; c < chunks; ++c) {
            const acc_t* acc = partial.data() + (b * chunks + c) * kSampleGrads;
            for (int j = 0; j < kSampleGrads; ++j) total[j] += acc[j];
          }
          write_sample_grads(total, gm + b * 16, gk + b * 9);
        }
      });
  return {grad_m, grad_k};
}

}  // namespace
}  // namespace rays
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("ray_march_forward", &portrait_engine::rays::ray_march_forward_cpu);
  m.impl("ray_march_backward", &portrait_engine::rays::ray_march_backward_cpu);
  m.impl("ray_sample_forward", &portrait_engine::rays::ray_sample_forward_cpu);
  m.impl("ray_sample_backward", &portrait_engine::rays::ray_sample_backward_cpu);
}
