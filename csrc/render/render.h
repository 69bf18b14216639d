// Per-sample and per-ray math of the fused neural renderer render_rays (sample the tri-plane /
// tri-grid, decode with EG3D's OSG decoder, composite with MipRayMarcher2), shared by the CPU
// (render_cpu.cpp) and CUDA (render_cuda.cu) kernels. Contract: docs/render_rays.md.
//
// Built from the tri-plane sampling math (triplane/triplane.h) and the compositing math
// (rays/rays.h). Templated on the accumulation type acc_t (float, or double for the float64 CPU
// kernels) and on the planes' storage type scalar_t. Sizes come in as plain ints: the CUDA
// kernels pass compile-time constants for EG3D's sizes, so once these force-inlined functions
// are inlined the channel loops have constant trip counts and the per-sample arrays live in
// registers.
//
// Vocabulary, for one ray of S samples:
//   f[C]        the sampled features of a sample (mean over the P planes)
//   pre[Hd]     the decoder's hidden pre-activation, f·w1ᵀ + b1 (kept: softplus(pre), and its
//               derivative for the backward)
//   out[O]      the decoder's output, softplus(pre)·w2ᵀ + b2; O = 1 + Co
//   sigma       out[0] + noise, or -1e3 outside the crop; rgb[Co] = act(out[1:]), act the colour
//               activation: EG3D's sigmoid(·)·1.002 − 0.001, none, or PanoHead's lrelu(·, 0.2)·√2
//   state[Co]   what a sample keeps of its colour: sigmoid(out[1:]) for the sigmoid (rgb and its
//               derivative follow without another exp), out[1:] itself for the others
//   interval i  between samples i and i + 1 (rays.h: alpha, e, p, dtau)
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"
#include "rays/rays.h"
#include "triplane/triplane.h"

namespace portrait_engine {
namespace render {

constexpr double kCropDensity = -1e3;  // PanoHead's raw density outside the crop
constexpr double kRgbPadding = 0.001;  // EG3D's widened sigmoid
constexpr double kLreluSlope = 0.2;    // PanoHead's colour leaky ReLU, times √2
constexpr double kSqrt2 = 1.4142135623730951;

// The colour activation (the kernels' `color_activation` argument).
enum ColorActivation : int { kActSigmoid = 0, kActNone = 1, kActLrelu = 2 };

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t sigmoid_of(acc_t x) {
  return acc_t(1) / (acc_t(1) + rays::exp_of(-x));
}

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t abs_of(acc_t x) {
  return x < acc_t(0) ? -x : x;
}

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t log_of(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}

// The decoder's softplus (torch's: threshold 20) and its derivative from one exp. log(1 + z)
// rather than log1p(z) where z >= 1e-3 (relative error below 6e-5·eps of the result there):
// the CPU's log1pf is several times slower than logf, and this runs Hd times per sample.
template <typename acc_t>
HOST_DEVICE PE_INLINE rays::Softplus<acc_t> hidden_softplus(acc_t x) {
  rays::Softplus<acc_t> r;
  if (x > acc_t(rays::kSoftplusThreshold)) {
    r.value = x;
    r.grad = acc_t(1);
  } else {
    const acc_t z = rays::exp_of(x);
    r.value = z < acc_t(1e-3) ? rays::log1p_of(z) : log_of(acc_t(1) + z);
    r.grad = z / (z + acc_t(1));
  }
  return r;
}

// Everything a sample needs besides its arrays.
struct Dims {
  int64_t P;               // planes
  triplane::Geometry geo;  // D, H, W, C of one plane (channels-last)
  bool trilinear;
  int hidden;  // Hd
  int out;     // O = 1 + Co
};

// The sizes of one call, checked on the host (render/checks.h) and passed to the kernels.
struct Sizes {
  int64_t B, R, S, Co;
  int C, Hd, O;
  Dims d;
  // Number of decoder parameters: w1 (Hd, C), b1 (Hd), w2 (O, Hd), b2 (O).
  HOST_DEVICE int64_t n_decoder() const {
    return static_cast<int64_t>(Hd) * C + Hd + static_cast<int64_t>(O) * Hd + O;
  }
};

// ------------------------------------------------------------------------------------------
// Sampling: f = mean_p Σ_corners w · plane_p[corner]   (align_corners = False, zero padding)
// ------------------------------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE void sample_features(const scalar_t* __restrict__ planes_b,
                                           const acc_t* __restrict__ proj, const Dims& d,
                                           int C, acc_t x, acc_t y, acc_t z,
                                           acc_t* __restrict__ f) {
  for (int c = 0; c < C; ++c) f[c] = acc_t(0);
  const int64_t plane_numel = d.geo.plane_numel();
  const int ncorners = triplane::num_corners(d.trilinear);
  for (int64_t p = 0; p < d.P; ++p) {
    acc_t gx, gy, gz;
    triplane::project(x, y, z, proj + p * 9, gx, gy, gz);
    const triplane::Footprint<acc_t> fp = triplane::make_footprint(gx, gy, gz, d.trilinear, d.geo);
    if (fp.nonfinite) continue;  // the front-end rejects non-finite points
    const scalar_t* base = planes_b + p * plane_numel;
    for (int k = 0; k < ncorners; ++k) {
      const triplane::Corner<acc_t> cr = triplane::corner(fp, k, d.geo);
      if (!cr.valid) continue;
      const scalar_t* texel = base + cr.offset;
      PE_SIMD
      for (int c = 0; c < C; ++c) f[c] += cr.w * static_cast<acc_t>(texel[c]);
    }
  }
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(d.P);
  for (int c = 0; c < C; ++c) f[c] *= inv_p;
}

// ------------------------------------------------------------------------------------------
// The OSG decoder: pre = f·w1ᵀ + b1, out = softplus(pre)·w2ᵀ + b2. The kernels hold w1 (Hd, C)
// as given and w2 transposed, w2t (Hd, O), so that both layers' inner loops (and both of the
// backward's) run over contiguous memory and vectorise on the CPU.
// ------------------------------------------------------------------------------------------

// Keeps the hidden activation h = softplus(pre) and its derivative dsp = sigmoid(pre) for the
// backward, so that no transcendental is evaluated twice.
template <typename acc_t>
HOST_DEVICE PE_INLINE void decode(const acc_t* __restrict__ f, const acc_t* __restrict__ w1,
                                  const acc_t* __restrict__ b1, const acc_t* __restrict__ w2t,
                                  const acc_t* __restrict__ b2, int C, int Hd, int O,
                                  acc_t* __restrict__ hidden, acc_t* __restrict__ dsp,
                                  acc_t* __restrict__ out) {
  for (int o = 0; o < O; ++o) out[o] = b2[o];
  for (int j = 0; j < Hd; ++j) {
    const acc_t* row = w1 + j * C;
    acc_t s = acc_t(0);
    PE_SIMD_SUM(s)
    for (int c = 0; c < C; ++c) s += row[c] * f[c];
    s += b1[j];
    const rays::Softplus<acc_t> sp = hidden_softplus(s);
    hidden[j] = sp.value;
    dsp[j] = sp.grad;
    const acc_t h = sp.value;
    const acc_t* col = w2t + j * O;
    PE_SIMD
    for (int o = 0; o < O; ++o) out[o] += col[o] * h;
  }
}

// Whether a (deformed) point lies outside PanoHead's crop: |x| > limit or |z| > limit.
template <typename acc_t>
HOST_DEVICE PE_INLINE bool outside_crop(acc_t x, acc_t z, bool use_crop, acc_t limit) {
  return use_crop && (abs_of(x) > limit || abs_of(z) > limit);
}

// The raw density of a sample from the decoder output.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t raw_density(acc_t out0, acc_t noise, bool outside) {
  return outside ? acc_t(kCropDensity) : out0 + noise;
}

// The colour state of a decoder output x = out[1 + c] (see the vocabulary above).
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t color_state(acc_t x, int act) {
  return act == kActSigmoid ? sigmoid_of(x) : x;
}

// rgb channel c from its colour state.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t rgb_of(acc_t state, int act) {
  if (act == kActSigmoid) return state * acc_t(1 + 2 * kRgbPadding) - acc_t(kRgbPadding);
  if (act == kActLrelu) {
    return (state > acc_t(0) ? state : acc_t(kLreluSlope) * state) * acc_t(kSqrt2);
  }
  return state;
}

// d rgb / d out[1 + c] from the colour state. torch's leaky_relu backward takes the slope 0.2
// where x <= 0 (x = 0 included), as here.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t rgb_grad(acc_t state, int act) {
  if (act == kActSigmoid) return acc_t(1 + 2 * kRgbPadding) * state * (acc_t(1) - state);
  if (act == kActLrelu) return state > acc_t(0) ? acc_t(kSqrt2) : acc_t(kLreluSlope * kSqrt2);
  return acc_t(1);
}

// ------------------------------------------------------------------------------------------
// Backward of one sample
// ------------------------------------------------------------------------------------------

// dout from the colour states sig (Co) of the colour outputs, the gradients of the sample's raw
// density (dsigma) and colour (grad_rgb_scale · g,
// where g (Co) is the ray's output gradient and grad_rgb_scale = s (w_{i-1} + w_i) / 2 collects
// the sample's two intervals). The crop replaces the density by a constant: no gradient.
template <typename acc_t>
HOST_DEVICE PE_INLINE void output_grad(const acc_t* __restrict__ sig, const acc_t* __restrict__ g,
                                       acc_t dsigma, acc_t grad_rgb_scale, bool outside, int O,
                                       int act, acc_t* __restrict__ dout) {
  dout[0] = outside ? acc_t(0) : dsigma;
  for (int o = 1; o < O; ++o) dout[o] = grad_rgb_scale * g[o - 1] * rgb_grad(sig[o - 1], act);
}

// The decoder's backward: dpre (Hd) and df (C) from dout (O); the weight gradients are left to
// the caller (they are reduced differently on each device): dw2[o][j] = dout[o] h[j],
// db2 = dout, dw1[j][c] = dpre[j] f[c], db1 = dpre.
template <typename acc_t>
HOST_DEVICE PE_INLINE void decode_backward(const acc_t* __restrict__ dsp,
                                           const acc_t* __restrict__ dout,
                                           const acc_t* __restrict__ w1,
                                           const acc_t* __restrict__ w2t, int C, int Hd, int O,
                                           acc_t* __restrict__ dpre, acc_t* __restrict__ df) {
  for (int c = 0; c < C; ++c) df[c] = acc_t(0);
  for (int j = 0; j < Hd; ++j) {
    const acc_t* col = w2t + j * O;
    acc_t dh = acc_t(0);
    PE_SIMD_SUM(dh)
    for (int o = 0; o < O; ++o) dh += col[o] * dout[o];
    const acc_t dp = dh * dsp[j];
    dpre[j] = dp;
    const acc_t* row = w1 + j * C;
    PE_SIMD
    for (int c = 0; c < C; ++c) df[c] += row[c] * dp;
  }
}

// Sampling backward of one point: dL/dpoint (added to gp0..2) from df, and, through
// `scatter(plane_index, corner_offset, weight)`, the corner contributions w / P · df to the
// planes' gradient (the caller decides how: a direct add, an atomic, a scratch buffer).
template <typename scalar_t, typename acc_t, typename Scatter>
HOST_DEVICE PE_INLINE void sample_backward(const scalar_t* __restrict__ planes_b,
                                           const acc_t* __restrict__ proj, const Dims& d, int C,
                                           acc_t x, acc_t y, acc_t z,
                                           const acc_t* __restrict__ df, acc_t& gp0, acc_t& gp1,
                                           acc_t& gp2, Scatter scatter) {
  const int64_t plane_numel = d.geo.plane_numel();
  const int ncorners = triplane::num_corners(d.trilinear);
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(d.P);
  for (int64_t p = 0; p < d.P; ++p) {
    const acc_t* m = proj + p * 9;
    acc_t gx, gy, gz;
    triplane::project(x, y, z, m, gx, gy, gz);
    const triplane::Footprint<acc_t> fp = triplane::make_footprint(gx, gy, gz, d.trilinear, d.geo);
    if (fp.nonfinite) continue;
    const scalar_t* base = planes_b + p * plane_numel;
    acc_t dix = acc_t(0), diy = acc_t(0), diz = acc_t(0);
    for (int k = 0; k < ncorners; ++k) {
      const triplane::Corner<acc_t> cr = triplane::corner(fp, k, d.geo);
      if (!cr.valid) continue;
      const scalar_t* texel = base + cr.offset;
      acc_t dot = acc_t(0);
      PE_SIMD_SUM(dot)
      for (int c = 0; c < C; ++c) dot += static_cast<acc_t>(texel[c]) * df[c];
      dix += cr.dwx * dot;
      diy += cr.dwy * dot;
      diz += cr.dwz * dot;
      scatter(p, cr.offset, cr.w * inv_p);
    }
    triplane::add_point_grad(dix * inv_p, diy * inv_p, diz * inv_p, false, d.trilinear, m,
                             d.geo, gp0, gp1, gp2);
  }
}

// ------------------------------------------------------------------------------------------
// Per-ray constants of the compositing backward (rays.h's notation)
// ------------------------------------------------------------------------------------------

// γ_i = s ⟨g, c_mid_i⟩ + a + b z_mid_i + gw_i, and the total G = Σ w_i γ_i, recovered from the
// forward's outputs: the raw composite R = Σ w c_mid from the features, W = Σ w, N = Σ w z_mid
// = depth_raw · W, and Σ gw_i w_i (`weighted_grad_w`, from the saved weights).
template <typename acc_t>
struct RayGrad {
  acc_t scale;  // s: 2 when the rgb is scaled, else 1
  acc_t a, b;
  acc_t total;  // G
};

template <typename acc_t>
HOST_DEVICE PE_INLINE RayGrad<acc_t> ray_grad(const acc_t* __restrict__ g,
                                              const acc_t* __restrict__ features, int Co,
                                              acc_t grad_depth, acc_t depth_raw, acc_t weight_sum,
                                              acc_t weighted_grad_w, bool white_back,
                                              bool scale_rgb) {
  RayGrad<acc_t> r;
  r.scale = scale_rgb ? acc_t(2) : acc_t(1);
  acc_t g_sum = acc_t(0), g_dot_raw = acc_t(0);
  for (int c = 0; c < Co; ++c) {
    acc_t raw = features[c];
    if (scale_rgb) raw = (raw + acc_t(1)) / acc_t(2);
    if (white_back) raw = raw - (acc_t(1) - weight_sum);
    g_sum += g[c];
    g_dot_raw += g[c] * raw;
  }
  r.a = acc_t(0);
  r.b = acc_t(0);
  acc_t depth_sum = acc_t(0);
  // depth_raw = N / W is NaN where W = 0: its gradient contributes nothing there
  if (rays::is_finite(depth_raw)) {
    r.b = grad_depth / weight_sum;
    r.a = -grad_depth * depth_raw / weight_sum;
    depth_sum = depth_raw * weight_sum;
  }
  if (white_back) r.a -= r.scale * g_sum;
  r.total = r.scale * g_dot_raw + r.a * weight_sum + r.b * depth_sum + weighted_grad_w;
  return r;
}

// ------------------------------------------------------------------------------------------
// One ray: the forward sweep and the backward sweep (by recomputation)
// ------------------------------------------------------------------------------------------

// A sample of the sweep; its arrays (C, Hd, O values) belong to the caller (CPU: a thread's
// scratch; CUDA: registers). Two of them are alive at a time: the previous and the current.
template <typename acc_t>
struct Sample {
  acc_t* f;       // C
  acc_t* hidden;  // Hd: softplus(pre)
  acc_t* dsp;     // Hd: softplus'(pre)
  acc_t* out;     // O
  acc_t* sig;     // Co: the colour state (sigmoid(out[1:]) or out[1:])
  acc_t x, y, z, depth, sigma;
  bool outside;
  acc_t dsigma;   // Σ over the sample's intervals of dL/dx_i / 2
  acc_t w_share;  // Σ over the sample's intervals of w_i / 2
};

template <typename acc_t>
HOST_DEVICE PE_INLINE void swap_samples(Sample<acc_t>& a, Sample<acc_t>& b) {
  Sample<acc_t> t = a;
  a = b;
  b = t;
}

// The per-ray inputs of a sweep: pointers already offset to the ray.
template <typename scalar_t, typename acc_t>
struct RayInputs {
  const scalar_t* planes_b;  // the ray's batch element: (P, D, H, W, C)
  const acc_t* proj;         // (P, 3, 3)
  const acc_t* points;       // (S, 3)
  const acc_t* depths;       // (S,)
  const acc_t* noise;        // (S,) or nullptr
  const acc_t *w1, *b1, *w2t, *b2;  // w1 (Hd, C), b1, w2 transposed (Hd, O), b2
  int64_t S;
  bool use_crop;
  acc_t crop_limit;
  int color_activation;  // ColorActivation
};

// Sample s: sampled features, decoder, raw density.
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE void compute_sample(const RayInputs<scalar_t, acc_t>& in, const Dims& d,
                                          int C, int Hd, int O, int64_t s, Sample<acc_t>& smp) {
  smp.x = in.points[s * 3 + 0];
  smp.y = in.points[s * 3 + 1];
  smp.z = in.points[s * 3 + 2];
  smp.depth = in.depths[s];
  sample_features(in.planes_b, in.proj, d, C, smp.x, smp.y, smp.z, smp.f);
  decode(smp.f, in.w1, in.b1, in.w2t, in.b2, C, Hd, O, smp.hidden, smp.dsp, smp.out);
  for (int c = 0; c < O - 1; ++c) smp.sig[c] = color_state(smp.out[1 + c], in.color_activation);
  smp.outside = outside_crop(smp.x, smp.z, in.use_crop, in.crop_limit);
  smp.sigma = raw_density(smp.out[0], in.noise != nullptr ? in.noise[s] : acc_t(0), smp.outside);
  smp.dsigma = acc_t(0);
  smp.w_share = acc_t(0);
}

// Forward: composite the ray. rgb_raw (Co) receives Σ w c_mid; weights_full (S - 1) receives
// each w_i when not null. Returns (W, N) in weight_sum, depth_sum.
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE void ray_forward(const RayInputs<scalar_t, acc_t>& in, const Dims& d, int C,
                                       int Hd, int O, Sample<acc_t> prev, Sample<acc_t> cur,
                                       acc_t* __restrict__ rgb_raw, acc_t* weights_full,
                                       acc_t& weight_sum, acc_t& depth_sum) {
  const int Co = O - 1;
  const int act = in.color_activation;
  for (int c = 0; c < Co; ++c) rgb_raw[c] = acc_t(0);
  acc_t transmittance = acc_t(1), total = acc_t(0), depth_acc = acc_t(0);
  for (int64_t s = 0; s < in.S; ++s) {
    compute_sample(in, d, C, Hd, O, s, cur);
    if (s > 0) {
      const rays::Interval<acc_t> iv =
          rays::interval(prev.sigma, cur.sigma, prev.depth, cur.depth);
      const acc_t w = iv.alpha * transmittance;
      transmittance = transmittance * iv.p;
      for (int c = 0; c < Co; ++c) {
        rgb_raw[c] += w * ((rgb_of(prev.sig[c], act) + rgb_of(cur.sig[c], act)) / acc_t(2));
      }
      total += w;
      depth_acc += w * ((prev.depth + cur.depth) / acc_t(2));
      if (weights_full != nullptr) weights_full[s - 1] = w;
    }
    swap_samples(prev, cur);
  }
  weight_sum = total;
  depth_sum = depth_acc;
}

// The backward of one finished sample: its decoder and sampling backward. `sink` receives
//   sink.decoder(f, hidden, dout, dpre)   the decoder weights' gradient terms
//   sink.plane(p, offset, weight, df)     a corner's plane-gradient contribution weight · df
//   sink.point(s, gp0, gp1, gp2, df)      the point's gradient (and df, for the CPU's scatter)
template <typename scalar_t, typename acc_t, typename Sink>
HOST_DEVICE PE_INLINE void finish_sample(const RayInputs<scalar_t, acc_t>& in, const Dims& d,
                                         int C, int Hd, int O, int64_t s,
                                         const Sample<acc_t>& smp, const acc_t* __restrict__ g,
                                         acc_t scale, acc_t* __restrict__ dout,
                                         acc_t* __restrict__ dpre, acc_t* __restrict__ df,
                                         Sink& sink) {
  output_grad(smp.sig, g, smp.dsigma, scale * smp.w_share, smp.outside, O, in.color_activation,
              dout);
  decode_backward(smp.dsp, dout, in.w1, in.w2t, C, Hd, O, dpre, df);
  sink.decoder(smp.f, smp.hidden, dout, dpre);
  acc_t gp0 = acc_t(0), gp1 = acc_t(0), gp2 = acc_t(0);
  sample_backward(in.planes_b, in.proj, d, C, smp.x, smp.y, smp.z, df, gp0, gp1, gp2,
                  [&](int64_t p, int64_t offset, acc_t weight) { sink.plane(p, offset, weight, df); });
  sink.point(s, gp0, gp1, gp2, df);
}

// Backward sweep of one ray, front to back, recomputing each sample once. Interval i needs
// samples i and i + 1; sample i is complete (both its intervals' gradients known) once
// interval i is done, so the sweep keeps two samples alive. dL/dx_i from rays.h:
//   dL/dτ_i = γ_i e_i T_i − (e_i / p_i)(G − P_i),  P_i = Σ_{l<=i} w_l γ_l,
// with G from ray_grad. grad_w (S − 1 values, or 1 broadcast) are the weights' gradients.
template <typename scalar_t, typename acc_t, typename Sink>
HOST_DEVICE PE_INLINE void ray_backward(const RayInputs<scalar_t, acc_t>& in, const Dims& d,
                                        int C, int Hd, int O, Sample<acc_t> prev,
                                        Sample<acc_t> cur, const RayGrad<acc_t>& rg,
                                        const acc_t* __restrict__ g, const acc_t* grad_w,
                                        bool full_weights, acc_t* __restrict__ dout,
                                        acc_t* __restrict__ dpre, acc_t* __restrict__ df,
                                        Sink& sink) {
  const int Co = O - 1;
  const int act = in.color_activation;
  acc_t transmittance = acc_t(1), prefix = acc_t(0);
  for (int64_t s = 0; s < in.S; ++s) {
    compute_sample(in, d, C, Hd, O, s, cur);
    if (s > 0) {
      const rays::Interval<acc_t> iv =
          rays::interval(prev.sigma, cur.sigma, prev.depth, cur.depth);
      const acc_t w = iv.alpha * transmittance;
      acc_t g_dot_mid = acc_t(0);
      for (int c = 0; c < Co; ++c) {
        g_dot_mid += g[c] * ((rgb_of(prev.sig[c], act) + rgb_of(cur.sig[c], act)) / acc_t(2));
      }
      const acc_t gw = full_weights ? grad_w[s - 1] : grad_w[0];
      const acc_t gamma =
          rg.scale * g_dot_mid + rg.a + rg.b * ((prev.depth + cur.depth) / acc_t(2)) + gw;
      prefix += w * gamma;
      const acc_t dx = rays::grad_x(iv.e, iv.p, iv.dtau, gamma, transmittance, rg.total - prefix);
      transmittance = transmittance * iv.p;
      prev.dsigma += dx / acc_t(2);
      cur.dsigma += dx / acc_t(2);
      prev.w_share += w / acc_t(2);
      cur.w_share += w / acc_t(2);
      finish_sample(in, d, C, Hd, O, s - 1, prev, g, rg.scale, dout, dpre, df, sink);
    }
    swap_samples(prev, cur);
  }
  if (in.S > 0) finish_sample(in, d, C, Hd, O, in.S - 1, prev, g, rg.scale, dout, dpre, df, sink);
}

}  // namespace render
}  // namespace portrait_engine
