// Math of ray generation and compositing (EG3D RaySampler / MipRayMarcher2), shared by the CPU
// (rays_cpu.cpp) and CUDA (rays_cuda.cu) kernels. See docs/kernel_contract_rays.md.
//
// Templated on the accumulation type acc_t (at::opmath_type<scalar_t>: float for float / half /
// bfloat16, double for double). No allocation, no validation, no tensors: plain values.
//
// ray_march, for one ray, over the intervals i = 0 .. S-2 between consecutive samples:
//   δ_i = z[i+1] - z[i],  x_i = (σ̃[i] + σ̃[i+1]) / 2 - 1,  τ_i = softplus(x_i) δ_i,
//   e_i = exp(-τ_i),  α_i = 1 - e_i,  p_i = (1 - α_i) + 1e-10,
//   T_0 = 1, T_{i+1} = T_i p_i,  w_i = α_i T_i,
//   rgb = Σ w_i c_mid_i,  W = Σ w_i,  N = Σ w_i z_mid_i,  depth = clamp(nan_to_num(N / W)).
// Backward, with γ_i = ∂L/∂w_i = s ⟨g, c_mid_i⟩ + a + b z_mid_i + ∂L/∂weights_i
// (s = 2 when the rgb is scaled, else 1; a, b from the depth and white-background terms):
//   ∂L/∂τ_i = γ_i e_i T_i - (e_i / p_i) (G - P_i),  G = Σ_l w_l γ_l,  P_i = Σ_{l<=i} w_l γ_l,
//   ∂L/∂x_i = ∂L/∂τ_i δ_i softplus'(x_i);  each sample gets half of its two intervals' ∂L/∂x
//   and, per channel, s/2 (w_{i-1} + w_i) g.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace portrait_engine {
namespace rays {

// MipRayMarcher2's constant in (1 - alpha + 1e-10), and torch softplus's threshold.
constexpr double kTransmittanceEps = 1e-10;
constexpr double kSoftplusThreshold = 20.0;

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t exp_of(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t log1p_of(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::log1p(x);
#else
  return std::log1p(x);
#endif
}

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t sqrt_of(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// The transcendentals of softplus / interval as a policy: LibMath (std:: / CUDA's functions,
// the default everywhere) or, in the CPU kernels' vectorised float passes, cpu_math::VectorMath
// (csrc/cpu_math.h: branch-free polynomials and a select that a `#pragma omp simd` loop
// vectorises; kBranchFree = true).
struct LibMath {
  template <typename acc_t>
  HOST_DEVICE PE_INLINE static acc_t exp(acc_t x) {
    return exp_of(x);
  }
  template <typename acc_t>
  HOST_DEVICE PE_INLINE static acc_t log1p(acc_t x) {
    return log1p_of(x);
  }
  static constexpr bool kBranchFree = false;
};

template <typename acc_t>
HOST_DEVICE PE_INLINE bool is_nan(acc_t x) {
  return x != x;
}

template <typename acc_t>
HOST_DEVICE PE_INLINE bool is_finite(acc_t x) {
  return x == x && x - x == acc_t(0);  // false for NaN and ±inf
}

// torch.nn.functional.softplus (beta 1, threshold 20) and its derivative as torch's
// softplus_backward computes it (z / (z + 1), z = exp(x); 1 above the threshold), from one exp.
template <typename acc_t>
struct Softplus {
  acc_t value;
  acc_t grad;
};

// LibMath (CUDA, double) branches as torch does. A branch-free Math (VectorMath) computes both
// sides and selects (a bitwise blend: with a plain `?:` the compiler moves the exp / log1p side
// under a branch, which stops the CPU's interval loop from vectorising); above the threshold
// its unused side may be inf / NaN.
template <typename acc_t, typename Math = LibMath>
HOST_DEVICE PE_INLINE Softplus<acc_t> softplus(acc_t x) {
  Softplus<acc_t> r;
  if constexpr (Math::kBranchFree) {
    const bool linear = x > acc_t(kSoftplusThreshold);
    const acc_t z = Math::exp(x);
    r.value = Math::select(linear, x, Math::log1p(z));
    r.grad = Math::select(linear, acc_t(1), z / (z + acc_t(1)));
  } else if (x > acc_t(kSoftplusThreshold)) {
    r.value = x;
    r.grad = acc_t(1);
  } else {
    const acc_t z = Math::exp(x);
    r.value = Math::log1p(z);
    r.grad = z / (z + acc_t(1));
  }
  return r;
}

// One interval between samples (s0, z0) and (s1, z1).
template <typename acc_t>
struct Interval {
  acc_t alpha;  // 1 - exp(-τ)
  acc_t e;      // exp(-τ)
  acc_t x;      // the softplus argument (σ̃ mid - 1)
  acc_t delta;  // z1 - z0
  acc_t p;      // the transmittance factor (1 - alpha) + 1e-10
  acc_t dtau;   // ∂τ/∂x = δ softplus'(x)
};

template <typename acc_t, typename Math = LibMath>
HOST_DEVICE PE_INLINE Interval<acc_t> interval(acc_t s0, acc_t s1, acc_t z0, acc_t z1) {
  Interval<acc_t> r;
  r.delta = z1 - z0;
  r.x = (s0 + s1) / acc_t(2) - acc_t(1);
  const Softplus<acc_t> sp = softplus<acc_t, Math>(r.x);
  r.e = Math::exp(-(sp.value * r.delta));
  r.dtau = r.delta * sp.grad;
  r.alpha = acc_t(1) - r.e;
  r.p = (acc_t(1) - r.alpha) + acc_t(kTransmittanceEps);
  return r;
}

// depth = clamp(nan_to_num(N / W, nan=+inf), low, high); ±inf land on the bounds.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t composite_depth(acc_t depth_sum, acc_t total, acc_t low, acc_t high) {
  acc_t d = depth_sum / total;
  if (is_nan(d)) return high;
  d = d < low ? low : d;
  return d > high ? high : d;
}

// The rgb of one channel from its raw composite: white background, then the (-1, 1) scaling.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t finish_rgb(acc_t raw, acc_t total, bool white_back, bool scale_rgb) {
  acc_t v = raw;
  if (white_back) v = v + acc_t(1) - total;
  if (scale_rgb) v = v * acc_t(2) - acc_t(1);
  return v;
}

// Per-ray constants of the backward: γ_i = scale ⟨g, c_mid_i⟩ + a + b z_mid_i + gw_i.
template <typename acc_t>
struct GradTerms {
  acc_t scale;  // 2 when the rgb is scaled, else 1
  acc_t a;
  acc_t b;
};

// grad_rgb_sum = Σ_c g_c (used by the white background). The depth gradient passes
// nan_to_num (finite N / W only) and the clamp (inclusive bounds), as torch's backward does.
template <typename acc_t>
HOST_DEVICE PE_INLINE GradTerms<acc_t> grad_terms(acc_t grad_depth, acc_t grad_rgb_sum,
                                                  acc_t total, acc_t depth_sum, acc_t low,
                                                  acc_t high, bool white_back, bool scale_rgb) {
  GradTerms<acc_t> t;
  t.scale = scale_rgb ? acc_t(2) : acc_t(1);
  const acc_t raw = depth_sum / total;
  const bool passes = is_finite(raw) && raw >= low && raw <= high;
  t.a = acc_t(0);
  t.b = acc_t(0);
  if (passes) {
    t.b = grad_depth / total;
    t.a = -(grad_depth * depth_sum / total) / total;
  }
  if (white_back) t.a -= t.scale * grad_rgb_sum;
  return t;
}

// ∂L/∂x of one interval: gamma = γ_i, transmittance = T_i, suffix = G - P_i; e, p and
// dtau = ∂τ/∂x of the interval.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t grad_x(acc_t e, acc_t p, acc_t dtau, acc_t gamma, acc_t transmittance,
                                   acc_t suffix) {
  const acc_t grad_tau = gamma * e * transmittance - (e / p) * suffix;
  return grad_tau * dtau;
}

// ------------------------------------------------------------------------------------------
// ray_sample
// ------------------------------------------------------------------------------------------

// The ray through pixel (row, col) of a resolution² image: unit direction of
// R (x, y, 1) with x = (u - cx + cy sk / fy - sk v / fy) / fx, y = (v - cy) / fy at the pixel
// centre u = (col + 0.5) / res, v = (row + 0.5) / res. m: the 12 first entries of the row-major
// cam2world; k: fx, sk, cx, fy, cy. F.normalize: divided by max(|d|, 1e-12).
template <typename acc_t>
struct PixelPoint {
  acc_t v, x, y;  // the pixel centre's row coordinate and its camera-space (x, y)
};

template <typename acc_t>
HOST_DEVICE PE_INLINE PixelPoint<acc_t> pixel_point(acc_t fx, acc_t sk, acc_t cx, acc_t fy,
                                                    acc_t cy, int64_t row, int64_t col,
                                                    int64_t res) {
  const acc_t inv = acc_t(1) / static_cast<acc_t>(res);
  const acc_t u = static_cast<acc_t>(col) * inv + acc_t(0.5) * inv;
  const acc_t v = static_cast<acc_t>(row) * inv + acc_t(0.5) * inv;
  return {v, (u - cx + cy * sk / fy - sk * v / fy) / fx, (v - cy) / fy};
}

template <typename acc_t>
HOST_DEVICE PE_INLINE void ray_direction(const acc_t* m, acc_t fx, acc_t sk, acc_t cx, acc_t fy,
                                         acc_t cy, int64_t row, int64_t col, int64_t res,
                                         acc_t* out) {
  const PixelPoint<acc_t> p = pixel_point(fx, sk, cx, fy, cy, row, col, res);
  const acc_t x = p.x, y = p.y;
  const acc_t d0 = m[0] * x + m[1] * y + m[2];
  const acc_t d1 = m[4] * x + m[5] * y + m[6];
  const acc_t d2 = m[8] * x + m[9] * y + m[10];
  acc_t norm = sqrt_of(d0 * d0 + d1 * d1 + d2 * d2);
  norm = norm > acc_t(1e-12) ? norm : acc_t(1e-12);
  out[0] = d0 / norm;
  out[1] = d1 / norm;
  out[2] = d2 / norm;
}

// ray_sample's backward, one ray's share: the closed-form gradients of ray_direction (those of
// portrait_engine/ops/rays.py's _ray_sample_backward, summed over rays by the caller). With
// p = (x, y, 1), d = R p, n = max(|d|, 1e-12), unit = d / n:
// dL/dd = (g_d - unit <unit, g_d>) / n; dL/dR += dL/dd p^T; dL/dt += g_o; dL/dp = R^T dL/dd,
// chained through x(fx, sk, cx, fy, cy) and y(fy, cy). acc: the kSampleGrads running sums,
// dL/dR row-major (9), dL/dt (3), dL/d(fx, sk, cx, fy, cy) (5).
constexpr int kSampleGrads = 17;

template <typename acc_t>
HOST_DEVICE PE_INLINE void ray_sample_grad(const acc_t* m, acc_t fx, acc_t sk, acc_t cx, acc_t fy,
                                           acc_t cy, int64_t row, int64_t col, int64_t res,
                                           const acc_t* g_o, const acc_t* g_d, acc_t* acc) {
  const PixelPoint<acc_t> p = pixel_point(fx, sk, cx, fy, cy, row, col, res);
  const acc_t v = p.v, x = p.x, y = p.y;
  const acc_t d[3] = {m[0] * x + m[1] * y + m[2], m[4] * x + m[5] * y + m[6],
                      m[8] * x + m[9] * y + m[10]};
  acc_t norm = sqrt_of(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
  norm = norm > acc_t(1e-12) ? norm : acc_t(1e-12);
  const acc_t unit[3] = {d[0] / norm, d[1] / norm, d[2] / norm};
  const acc_t along = unit[0] * g_d[0] + unit[1] * g_d[1] + unit[2] * g_d[2];
  acc_t gd[3];
  for (int r = 0; r < 3; ++r) {
    gd[r] = (g_d[r] - unit[r] * along) / norm;
    acc[3 * r + 0] += gd[r] * x;
    acc[3 * r + 1] += gd[r] * y;
    acc[3 * r + 2] += gd[r];
    acc[9 + r] += g_o[r];
  }
  const acc_t gx = m[0] * gd[0] + m[4] * gd[1] + m[8] * gd[2];
  const acc_t gy = m[1] * gd[0] + m[5] * gd[1] + m[9] * gd[2];
  acc[12] += gx * (-x / fx);
  acc[13] += gx * (cy - v) / (fy * fx);
  acc[14] += -gx / fx;
  acc[15] += gx * (-sk * (cy - v) / (fy * fy * fx)) - gy * y / fy;
  acc[16] += gx * sk / (fy * fx) - gy / fy;
}

// Writes one batch element's kSampleGrads sums into its (4, 4) cam2world gradient (rotation
// and translation columns; the bottom row has none) and (3, 3) intrinsics gradient (fx, sk, cx,
// fy, cy), every other entry zero.
template <typename acc_t, typename scalar_t>
HOST_DEVICE PE_INLINE void write_sample_grads(const acc_t* acc, scalar_t* grad_m,
                                              scalar_t* grad_k) {
  for (int j = 0; j < 16; ++j) grad_m[j] = scalar_t(0);
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) grad_m[4 * r + c] = static_cast<scalar_t>(acc[3 * r + c]);
    grad_m[4 * r + 3] = static_cast<scalar_t>(acc[9 + r]);
  }
  for (int j = 0; j < 9; ++j) grad_k[j] = scalar_t(0);
  grad_k[0] = static_cast<scalar_t>(acc[12]);
  grad_k[1] = static_cast<scalar_t>(acc[13]);
  grad_k[2] = static_cast<scalar_t>(acc[14]);
  grad_k[4] = static_cast<scalar_t>(acc[15]);
  grad_k[5] = static_cast<scalar_t>(acc[16]);
}

}  // namespace rays
}  // namespace portrait_engine
