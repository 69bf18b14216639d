// CPU kernels of portrait_engine::render_rays_{forward,backward}
// (contract: docs/render_rays.md; per-sample and per-ray math: render.h).
//
// A task takes whole rays and processes a ray's S samples together, in passes over per-thread
// scratch arrays (S rows each; nothing leaves the task but the ray's outputs):
//   1. sample the planes at every sample point: features f (S x C);
//   2. the decoder as two small matrix products over the ray's samples (cpu_tile_gemm.h:
//      register tiles, FMAs over 16 columns at a time): pre = f w1ᵀ + b1, h = softplus(pre),
//      out = h w2ᵀ + b2, with the softplus and the colour activation in vectorised loops
//      (float: cpu_math::VectorMath's polynomial exp / log1p; double: libm);
//   3. the intervals' α, p (backward: e, ∂τ/∂x) in a vectorised loop, then the compositing
//      (or, backward, the sweep of dL/dx_i: render.h's ray_backward arithmetic, the total G
//      recovered from the outputs) sequentially along the ray;
//   4. backward only: dout (S x O) in a vectorised loop, dh = dout w2, dpre = dh ⊙ softplus'(pre),
//      df = dpre w1 and the weight gradients dw2 += doutᵀ h, dw1 += dpreᵀ f (products of K = S)
//      into the ray's block's row; then the sampling backward of each sample (its point's
//      gradient) and its df into the chunk scratch.
// The passes are compiled for baseline x86-64, AVX2 and AVX-512 and picked at run time
// (cpu_math::cpu_isa(), capped by PORTRAIT_ENGINE_CPU_ISA).
//
// Backward, by recomputation, deterministic whatever the number of threads. Rays are taken in
// chunks of kChunkRays rays of one batch element; per chunk:
//   1. at::parallel_for over blocks of kBlockRays rays: each ray's passes above write its
//      points' gradients (owned by the ray), add its decoder-weight gradients into its block's
//      row of a scratch buffer, and write each sample's feature gradient df (C values) into a
//      chunk scratch buffer;
//   2. the blocks' weight gradients are summed in block order;
//   3. grad_planes: at::parallel_for over tasks (plane, band of rows), each walking the chunk's
//      samples in order and scatter-adding w / P · df into the corners that fall in its band,
//      so each texel is written by one task, in sample order (triplane_cpu.cpp's scheme).
// The chunk bounds the scratch memory (kChunkRays · S · C values) whatever the image size.

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
#include "cpu_tile_gemm.h"
#include "render/checks.h"
#include "render/render.h"

namespace portrait_engine {
namespace render {
namespace {

using cpu_gemm::padded;
using cpu_gemm::Start;

constexpr int64_t kChunkRays = 1024;
constexpr int64_t kBlockRays = 8;

// The transcendentals of the vectorised passes: the polynomials for float accumulation, libm
// for double (the float64 path is the gradcheck one).
template <typename acc_t>
using MathOf =
    std::conditional_t<std::is_same_v<acc_t, float>, cpu_math::VectorMath, rays::LibMath>;

// The decoder's weights laid out for the tile products, columns padded to whole chunks with
// zeros (built once per call): the forward's B matrices w1ᵀ and w2ᵀ, the backward's w2 and w1.
template <typename acc_t>
struct DecoderLayout {
  int64_t C, Hd, O;    // true sizes
  int64_t Cp, Hp, Op;  // padded row lengths
  std::vector<acc_t> storage;
  const acc_t* w1t;  // (C, Hp)   pre = f · w1t + b1
  const acc_t* b1;   // (Hp)
  const acc_t* w2t;  // (Hd, Op)  out = h · w2t + b2
  const acc_t* b2;   // (Op)
  const acc_t* w2;   // (O, Hp)   dh = dout · w2
  const acc_t* w1;   // (Hd, Cp)  df = dpre · w1

  DecoderLayout(const acc_t* w1_in, const acc_t* b1_in, const acc_t* w2_in, const acc_t* b2_in,
                int64_t C_, int64_t Hd_, int64_t O_)
      : C(C_), Hd(Hd_), O(O_), Cp(padded(C_)), Hp(padded(Hd_)), Op(padded(O_)) {
    storage.assign(C * Hp + Hp + Hd * Op + Op + O * Hp + Hd * Cp, acc_t(0));
    acc_t* p = storage.data();
    acc_t* w1t_ = p;
    acc_t* b1_ = w1t_ + C * Hp;
    acc_t* w2t_ = b1_ + Hp;
    acc_t* b2_ = w2t_ + Hd * Op;
    acc_t* w2_ = b2_ + Op;
    acc_t* w1_ = w2_ + O * Hp;
    for (int64_t j = 0; j < Hd; ++j) {
      b1_[j] = b1_in[j];
      for (int64_t c = 0; c < C; ++c) {
        w1t_[c * Hp + j] = w1_in[j * C + c];
        w1_[j * Cp + c] = w1_in[j * C + c];
      }
    }
    for (int64_t o = 0; o < O; ++o) {
      b2_[o] = b2_in[o];
      for (int64_t j = 0; j < Hd; ++j) {
        w2t_[j * Op + o] = w2_in[o * Hd + j];
        w2_[o * Hp + j] = w2_in[o * Hd + j];
      }
    }
    w1t = w1t_;
    b1 = b1_;
    w2t = w2t_;
    b2 = b2_;
    w2 = w2_;
    w1 = w1_;
  }

  // A block's row of decoder gradients, padded: dw1 (Hd, Cp), db1 (Hp), dw2 (O, Hp), db2 (Op).
  int64_t grad_numel() const { return Hd * Cp + Hp + O * Hp + Op; }
};

// One thread's arrays for a ray of S samples (rows of padded length), zero-initialised once:
// padding columns are never written with anything but finite values.
template <typename acc_t>
struct RayScratch {
  std::vector<acc_t> storage;
  acc_t *f;       // (S, Cp) sampled features
  acc_t *h;       // (S, Hp) pre-activation, then softplus(pre)
  acc_t *dsp;     // (S, Hp) softplus'(pre) (backward)
  acc_t *out;     // (S, Op) decoder output; then column 0 raw out, columns 1.. the colour
                  // (forward: rgb; backward: the colour state, render.h's vocabulary)
  acc_t *dout;    // (S, Op) backward
  acc_t *dpre;    // (S, Hp) backward: dh, then dpre
  acc_t *df;      // (S, Cp) backward
  acc_t *sigma, *alpha, *e, *p, *dtau, *dsigma, *share, *gdot;  // (S) each
  acc_t *rgb;     // (Op) the forward's composite
  acc_t *u;       // (S, 3, Cp) the points' gradient rows (backward; gather_features)
  RayScratch(int64_t S, const DecoderLayout<acc_t>& L) {
    storage.assign(S * (5 * L.Cp + 3 * L.Hp + 2 * L.Op + 8) + L.Op, acc_t(0));
    acc_t* next = storage.data();
    auto take = [&](int64_t n) {
      acc_t* r = next;
      next += n;
      return r;
    };
    f = take(S * L.Cp);
    h = take(S * L.Hp);
    dsp = take(S * L.Hp);
    out = take(S * L.Op);
    dout = take(S * L.Op);
    dpre = take(S * L.Hp);
    df = take(S * L.Cp);
    for (acc_t** a : {&sigma, &alpha, &e, &p, &dtau, &dsigma, &share, &gdot}) *a = take(S);
    rgb = take(L.Op);
    u = take(S * 3 * L.Cp);
  }
};

// Everything a call's passes read and write (raw pointers, sizes, flags).
template <typename scalar_t>
struct RenderArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* planes;
  const acc_t* proj;
  const acc_t* points;
  const acc_t* depths;
  const acc_t* noise;  // nullptr: no noise
  const DecoderLayout<acc_t>* L;
  Sizes z;
  bool use_crop;
  acc_t crop_limit;
  bool white_back, scale_rgb;
  int act;
  bool full_weights;
  // forward outputs
  acc_t* features;
  acc_t* depth_raw;
  acc_t* weights;
  // backward: the output gradients, the forward's outputs, and this chunk's place and buffers
  const acc_t *grad_features, *grad_depth, *grad_weights;
  const acc_t *saved_features, *saved_depth, *saved_weights;
  acc_t* grad_points;
  int64_t batch, r0, n_rays;
  acc_t* block_grads;  // (blocks, L->grad_numel())
  acc_t* df_chunk;     // (n_rays, S, C)
  acc_t* grad_planes;
  int64_t bands;  // the scatter's bands of rows per plane
};

// The channel count as a compile-time constant where it is EG3D's (kC = 32: the channel loops
// are unrolled into whole vectors, the features stay in registers), else the runtime one (0).
template <int kC>
PE_INLINE int64_t channels(int64_t runtime) {
  return kC > 0 ? kC : runtime;
}

// render.h's sample_features (f = mean_p Σ_corners w · plane_p[corner]) with the channel count
// of `channels`. With `point_rows` (the backward), also the point's gradient rows u (3 x C,
// row stride ld_u): render.h's sample_backward gives the point
//   dL/dpoint_j = Σ_p Σ_corners ⟨texel, df⟩ (∂w/∂ix s_x m_p[j][0] + ∂w/∂iy s_y m_p[j][1]
//                                            + [trilinear] ∂w/∂iz s_z m_p[j][2]) / P
// (triplane.h's add_point_grad: s = size / 2 per axis), which is ⟨u_j, df⟩ with
// u_j = Σ_p Σ_corners coefficient_j · texel: built here while the texels are at hand, so the
// backward needs no second walk over the corners, only three dot products once df is known.
template <int kC, bool point_rows, typename scalar_t, typename acc_t>
PE_INLINE void gather_features(const scalar_t* __restrict__ planes_b, const acc_t* proj,
                               const Dims& d, int64_t C_runtime, acc_t x, acc_t y, acc_t z,
                               acc_t* __restrict__ f, acc_t* __restrict__ u, int64_t ld_u) {
  const int64_t C = channels<kC>(C_runtime);
  for (int64_t c = 0; c < C; ++c) f[c] = acc_t(0);
  acc_t* __restrict__ u0 = u;
  acc_t* __restrict__ u1 = u + ld_u;
  acc_t* __restrict__ u2 = u + 2 * ld_u;
  if constexpr (point_rows) {
    for (int64_t c = 0; c < C; ++c) {
      u0[c] = acc_t(0);
      u1[c] = acc_t(0);
      u2[c] = acc_t(0);
    }
  }
  const int64_t plane_numel = d.geo.plane_numel();
  const int ncorners = triplane::num_corners(d.trilinear);
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(d.P);
  // d(index)/d(grid coordinate) per axis, over P (add_point_grad's chain rule)
  const acc_t sx = static_cast<acc_t>(d.geo.W) / acc_t(2) * inv_p;
  const acc_t sy = static_cast<acc_t>(d.geo.H) / acc_t(2) * inv_p;
  const acc_t sz = d.trilinear ? static_cast<acc_t>(d.geo.D) / acc_t(2) * inv_p : acc_t(0);
  for (int64_t p = 0; p < d.P; ++p) {
    const acc_t* m = proj + p * 9;
    acc_t gx, gy, gz;
    triplane::project(x, y, z, m, gx, gy, gz);
    const triplane::Footprint<acc_t> fp = triplane::make_footprint(gx, gy, gz, d.trilinear, d.geo);
    if (fp.nonfinite) continue;  // the front-end rejects non-finite points
    const scalar_t* base = planes_b + p * plane_numel;
    for (int k = 0; k < ncorners; ++k) {
      const triplane::Corner<acc_t> cr = triplane::corner(fp, k, d.geo);
      if (!cr.valid) continue;
      const scalar_t* __restrict__ texel = base + cr.offset;
      if constexpr (point_rows) {
        const acc_t dx = cr.dwx * sx, dy = cr.dwy * sy, dz = cr.dwz * sz;
        const acc_t k0 = dx * m[0] + dy * m[1] + dz * m[2];
        const acc_t k1 = dx * m[3] + dy * m[4] + dz * m[5];
        const acc_t k2 = dx * m[6] + dy * m[7] + dz * m[8];
        PE_SIMD
        for (int64_t c = 0; c < C; ++c) {
          const acc_t tv = static_cast<acc_t>(texel[c]);
          f[c] += cr.w * tv;
          u0[c] += k0 * tv;
          u1[c] += k1 * tv;
          u2[c] += k2 * tv;
        }
      } else {
        PE_SIMD
        for (int64_t c = 0; c < C; ++c) f[c] += cr.w * static_cast<acc_t>(texel[c]);
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) f[c] *= inv_p;
}

// ⟨u_j, df⟩ for j = 0, 1, 2: the point's gradient (gather_features' rows u).
template <int kC, typename acc_t>
PE_INLINE void point_grad(const acc_t* __restrict__ u, int64_t ld_u, int64_t C_runtime,
                          const acc_t* __restrict__ df, acc_t* __restrict__ gp) {
  const int64_t C = channels<kC>(C_runtime);
  for (int j = 0; j < 3; ++j) {
    const acc_t* __restrict__ row = u + j * ld_u;
    acc_t sum = acc_t(0);
    PE_SIMD_SUM(sum)
    for (int64_t c = 0; c < C; ++c) sum += row[c] * df[c];
    gp[j] = sum;
  }
}

// Passes 1-3 shared by both directions: sample, decode, the per-sample density and colour
// state, the intervals. Returns nothing; fills the scratch rows of the ray.
template <typename scalar_t, bool backward, int kC, int kVB>
PE_INLINE void decode_ray(const RenderArgs<scalar_t>& a, int64_t ray,
                          RayScratch<at::opmath_type<scalar_t>>& t) {
  using acc_t = at::opmath_type<scalar_t>;
  using Math = MathOf<acc_t>;
  const DecoderLayout<acc_t>& L = *a.L;
  const Sizes& z = a.z;
  const int64_t S = z.S, Cp = L.Cp, Hp = L.Hp, Op = L.Op;
  const int act = a.act;
  const scalar_t* planes_b = a.planes + (ray / z.R) * z.d.P * z.d.geo.plane_numel();
  const acc_t* pts = a.points + ray * S * 3;
  const acc_t* dep = a.depths + ray * S;
  for (int64_t s = 0; s < S; ++s) {
    gather_features<kC, backward>(planes_b, a.proj, z.d, z.C, pts[s * 3], pts[s * 3 + 1],
                                  pts[s * 3 + 2], t.f + s * Cp, t.u + s * 3 * Cp, Cp);
  }
  cpu_gemm::gemm<acc_t, kVB>(S, Hp, L.C, t.f, Cp, 1, L.w1t, Hp, t.h, Hp, Start::kBias, L.b1);
  {
    acc_t* __restrict__ h = t.h;
    acc_t* __restrict__ dsp = t.dsp;
    PE_SIMD
    for (int64_t i = 0; i < S * Hp; ++i) {
      const rays::Softplus<acc_t> sp = rays::softplus<acc_t, Math>(h[i]);
      h[i] = sp.value;
      if constexpr (backward) dsp[i] = sp.grad;
    }
  }
  // N = O: no product over the padding of EG3D's 33 outputs (columns 33-47)
  cpu_gemm::gemm<acc_t, kVB>(S, L.O, L.Hd, t.h, Hp, 1, L.w2t, Op, t.out, Op, Start::kBias, L.b2);
  const acc_t* noise = a.noise != nullptr ? a.noise + ray * S : nullptr;
  for (int64_t s = 0; s < S; ++s) {
    acc_t* o = t.out + s * Op;
    const bool outside = outside_crop(pts[s * 3], pts[s * 3 + 2], a.use_crop, a.crop_limit);
    t.sigma[s] = raw_density(o[0], noise != nullptr ? noise[s] : acc_t(0), outside);
  }
  // the colour state (render.h's color_state; backward) or the rgb (forward), one loop per
  // activation so that each vectorises
  acc_t* __restrict__ out = t.out;
  const int64_t n_out = S * Op;
  if (act == kActSigmoid) {
    PE_SIMD
    for (int64_t i = 0; i < n_out; ++i) {
      const acc_t state = acc_t(1) / (acc_t(1) + Math::exp(-out[i]));
      out[i] = backward ? state : rgb_of(state, kActSigmoid);
    }
  } else if (act == kActLrelu && !backward) {
    PE_SIMD
    for (int64_t i = 0; i < n_out; ++i) out[i] = rgb_of(out[i], kActLrelu);
  }
  // (column 0 went through the colour map too: the raw density is in sigma)
  {
    const acc_t* __restrict__ sigma = t.sigma;
    acc_t* __restrict__ alpha = t.alpha;
    acc_t* __restrict__ e = t.e;
    acc_t* __restrict__ p = t.p;
    acc_t* __restrict__ dtau = t.dtau;
    PE_SIMD
    for (int64_t i = 0; i < S - 1; ++i) {
      const rays::Interval<acc_t> iv =
          rays::interval<acc_t, Math>(sigma[i], sigma[i + 1], dep[i], dep[i + 1]);
      alpha[i] = iv.alpha;
      p[i] = iv.p;
      if constexpr (backward) {
        e[i] = iv.e;
        dtau[i] = iv.dtau;
      }
    }
  }
}

// Forward of rays [begin, end): decode, then composite along each ray.
template <typename scalar_t, int kC, int kVB>
PE_INLINE void forward_rays_of(const RenderArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const DecoderLayout<acc_t>& L = *a.L;
  const int64_t S = a.z.S, Op = L.Op, Co = L.O - 1;
  RayScratch<acc_t> t(S, L);
  for (int64_t ray = begin; ray < end; ++ray) {
    decode_ray<scalar_t, false, kC, kVB>(a, ray, t);
    const acc_t* dep = a.depths + ray * S;
    acc_t* __restrict__ rgb = t.rgb;
    for (int64_t c = 0; c < Co; ++c) rgb[c] = acc_t(0);
    acc_t transmittance = acc_t(1), total = acc_t(0), depth_acc = acc_t(0);
    acc_t* full = a.full_weights ? a.weights + ray * (S - 1) : nullptr;
    for (int64_t i = 0; i < S - 1; ++i) {
      const acc_t w = t.alpha[i] * transmittance;
      transmittance = transmittance * t.p[i];
      const acc_t* __restrict__ c0 = t.out + i * Op + 1;
      const acc_t* __restrict__ c1 = c0 + Op;
      PE_SIMD
      for (int64_t c = 0; c < Co; ++c) rgb[c] += w * ((c0[c] + c1[c]) / acc_t(2));
      total += w;
      depth_acc += w * ((dep[i] + dep[i + 1]) / acc_t(2));
      if (full != nullptr) full[i] = w;
    }
    for (int64_t c = 0; c < Co; ++c) {
      a.features[ray * Co + c] = rays::finish_rgb(rgb[c], total, a.white_back, a.scale_rgb);
    }
    a.depth_raw[ray] = depth_acc / total;  // NaN where total = 0: the front-end handles it
    if (!a.full_weights) a.weights[ray] = total;
  }
}

// Backward of the chunk's blocks [begin, end) of kBlockRays rays (backward_impl's pass 1).
template <typename scalar_t, int kC, int kVB>
PE_INLINE void backward_blocks_of(const RenderArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const DecoderLayout<acc_t>& L = *a.L;
  const Sizes& z = a.z;
  const int64_t S = z.S, C = L.C, Hd = L.Hd, O = L.O, Co = O - 1;
  const int64_t Cp = L.Cp, Hp = L.Hp, Op = L.Op;
  const int act = a.act;
  const int64_t n_weights = a.full_weights ? S - 1 : 1;
  RayScratch<acc_t> t(S, L);
  for (int64_t blk = begin; blk < end; ++blk) {
    acc_t* gw1 = a.block_grads + blk * L.grad_numel();
    acc_t* gb1 = gw1 + Hd * Cp;
    acc_t* gw2 = gb1 + Hp;
    acc_t* gb2 = gw2 + O * Hp;
    for (int64_t k = blk * kBlockRays; k < std::min(a.n_rays, (blk + 1) * kBlockRays); ++k) {
      const int64_t ray = a.batch * z.R + a.r0 + k;
      decode_ray<scalar_t, true, kC, kVB>(a, ray, t);
      const acc_t* g = a.grad_features + ray * Co;
      const acc_t* gw = a.grad_weights + ray * n_weights;
      const acc_t* w_saved = a.saved_weights + ray * n_weights;
      acc_t weight_sum = acc_t(0), weighted_gw = acc_t(0);
      for (int64_t i = 0; i < n_weights; ++i) {
        weight_sum += w_saved[i];
        weighted_gw += gw[i] * w_saved[i];
      }
      const RayGrad<acc_t> rg =
          ray_grad(g, a.saved_features + ray * Co, static_cast<int>(Co), a.grad_depth[ray],
                   a.saved_depth[ray], weight_sum, weighted_gw, a.white_back, a.scale_rgb);
      // ⟨g, rgb_s⟩ per sample: γ_i takes the mean of its two samples' dots
      for (int64_t s = 0; s < S; ++s) {
        const acc_t* __restrict__ state = t.out + s * Op + 1;
        acc_t dot = acc_t(0);
        PE_SIMD_SUM(dot)
        for (int64_t c = 0; c < Co; ++c) dot += g[c] * rgb_of(state[c], act);
        t.gdot[s] = dot;
        t.dsigma[s] = acc_t(0);
        t.share[s] = acc_t(0);
      }
      // the sweep of dL/dx_i (render.h's ray_backward), the suffix G - P_i from the total
      const acc_t* dep = a.depths + ray * S;
      acc_t transmittance = acc_t(1), prefix = acc_t(0);
      for (int64_t i = 0; i < S - 1; ++i) {
        const acc_t w = t.alpha[i] * transmittance;
        const acc_t gwi = a.full_weights ? gw[i] : gw[0];
        const acc_t gamma = rg.scale * ((t.gdot[i] + t.gdot[i + 1]) / acc_t(2)) + rg.a +
                            rg.b * ((dep[i] + dep[i + 1]) / acc_t(2)) + gwi;
        prefix += w * gamma;
        const acc_t dx =
            rays::grad_x(t.e[i], t.p[i], t.dtau[i], gamma, transmittance, rg.total - prefix);
        transmittance = transmittance * t.p[i];
        t.dsigma[i] += dx / acc_t(2);
        t.dsigma[i + 1] += dx / acc_t(2);
        t.share[i] += w / acc_t(2);
        t.share[i + 1] += w / acc_t(2);
      }
      // dout (render.h's output_grad), then the decoder backward as products over the samples
      const acc_t* pts = a.points + ray * S * 3;
      for (int64_t s = 0; s < S; ++s) {
        const bool outside = outside_crop(pts[s * 3], pts[s * 3 + 2], a.use_crop, a.crop_limit);
        const acc_t* __restrict__ state = t.out + s * Op + 1;
        acc_t* __restrict__ dout = t.dout + s * Op;
        const acc_t coef = rg.scale * t.share[s];
        dout[0] = outside ? acc_t(0) : t.dsigma[s];
        PE_SIMD
        for (int64_t c = 0; c < Co; ++c) dout[1 + c] = coef * g[c] * rgb_grad(state[c], act);
      }
      cpu_gemm::gemm<acc_t, kVB>(S, Hp, O, t.dout, Op, 1, L.w2, Hp, t.dpre, Hp, Start::kZero,
                                 nullptr);
      {
        acc_t* __restrict__ dpre = t.dpre;
        const acc_t* __restrict__ dsp = t.dsp;
        PE_SIMD
        for (int64_t i = 0; i < S * Hp; ++i) dpre[i] *= dsp[i];
      }
      cpu_gemm::gemm<acc_t, kVB>(S, Cp, Hd, t.dpre, Hp, 1, L.w1, Cp, t.df, Cp, Start::kZero,
                                 nullptr);
      // weight gradients: dw2 += doutᵀ h, dw1 += dpreᵀ f (K = the ray's samples, in order)
      cpu_gemm::gemm<acc_t, kVB>(O, Hp, S, t.dout, 1, Op, t.h, Hp, gw2, Hp, Start::kAccumulate,
                                 nullptr);
      cpu_gemm::gemm<acc_t, kVB>(Hd, Cp, S, t.dpre, 1, Hp, t.f, Cp, gw1, Cp, Start::kAccumulate,
                                 nullptr);
      for (int64_t s = 0; s < S; ++s) {
        const acc_t* __restrict__ dout = t.dout + s * Op;
        const acc_t* __restrict__ dpre = t.dpre + s * Hp;
        PE_SIMD
        for (int64_t o = 0; o < Op; ++o) gb2[o] += dout[o];
        PE_SIMD
        for (int64_t j = 0; j < Hp; ++j) gb1[j] += dpre[j];
      }
      // sampling backward: the points' gradients here, df to the chunk for the planes' pass
      acc_t* gp = a.grad_points + ray * S * 3;
      acc_t* df_rows = a.df_chunk + k * S * C;
      for (int64_t s = 0; s < S; ++s) {
        const acc_t* df = t.df + s * Cp;
        point_grad<kC>(t.u + s * 3 * Cp, Cp, C, df, gp + s * 3);
        std::copy(df, df + C, df_rows + s * C);
      }
    }
  }
}

// backward_impl's pass 3 for tasks [begin, end) of (plane, band of rows): walk the chunk's
// samples in order and add w / P · df into the corners whose row falls in the band.
template <typename scalar_t, int kC>
PE_INLINE void scatter_of(const RenderArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const Sizes& z = a.z;
  const triplane::Geometry geo = z.d.geo;
  const int64_t P = z.d.P, C = channels<kC>(z.C), rows = geo.D * geo.H;
  const int ncorners = triplane::num_corners(z.d.trilinear);
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(P);
  const int64_t n_samples = a.n_rays * z.S;
  const acc_t* chunk_points = a.points + (a.batch * z.R + a.r0) * z.S * 3;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t p = t / a.bands, band = t % a.bands;
    const int64_t row_lo = band * rows / a.bands, row_hi = (band + 1) * rows / a.bands;
    const acc_t* m = a.proj + p * 9;
    acc_t* gbase = a.grad_planes + (a.batch * P + p) * geo.plane_numel();
    for (int64_t n = 0; n < n_samples; ++n) {
      const acc_t* pt = chunk_points + n * 3;
      acc_t gx, gy, gz;
      triplane::project(pt[0], pt[1], pt[2], m, gx, gy, gz);
      const triplane::Footprint<acc_t> f = triplane::make_footprint(gx, gy, gz, z.d.trilinear, geo);
      if (f.nonfinite) continue;
      const acc_t* __restrict__ row = a.df_chunk + n * C;
      for (int k = 0; k < ncorners; ++k) {
        const triplane::Corner<acc_t> cr = triplane::corner(f, k, geo);
        if (cr.valid && cr.row >= row_lo && cr.row < row_hi) {
          acc_t* __restrict__ dst = gbase + cr.offset;
          const acc_t weight = cr.w * inv_p;
          PE_SIMD
          for (int64_t c = 0; c < C; ++c) dst[c] += weight * row[c];
        }
      }
    }
  }
}

// EG3D's 32 channels get their own instantiation (channels<32>), other counts the runtime one.
template <typename F>
void with_channels(int64_t C, F&& pass) {
  if (C == 32) {
    pass.template operator()<32>();
  } else {
    pass.template operator()<0>();
  }
}

template <typename scalar_t, int kVB>
void forward_rays(const RenderArgs<scalar_t>& a, int64_t begin, int64_t end) {
  with_channels(a.z.C, [&]<int K>() { forward_rays_of<scalar_t, K, kVB>(a, begin, end); });
}

template <typename scalar_t, int kVB>
void backward_blocks(const RenderArgs<scalar_t>& a, int64_t begin, int64_t end) {
  with_channels(a.z.C, [&]<int K>() { backward_blocks_of<scalar_t, K, kVB>(a, begin, end); });
}

template <typename scalar_t>
void scatter(const RenderArgs<scalar_t>& a, int64_t begin, int64_t end) {
  with_channels(a.z.C, [&]<int K>() { scatter_of<scalar_t, K>(a, begin, end); });
}

// The passes compiled again for AVX2 and AVX-512 (flatten: the math inlined into the loops).
#if PE_HAVE_ISA_CLONES
PE_ISA_CLONES_WIDTH(forward_rays, RenderArgs)
PE_ISA_CLONES_WIDTH(backward_blocks, RenderArgs)
PE_ISA_CLONES(scatter, RenderArgs)
#endif

template <typename scalar_t>
using RangeFn = void (*)(const RenderArgs<scalar_t>&, int64_t, int64_t);

enum class Pass { kForward, kBackward, kScatter };

template <typename scalar_t>
RangeFn<scalar_t> pick(Pass pass) {
  if (pass == Pass::kForward) return PE_ISA_PICK_WIDTH(forward_rays, scalar_t);
  return pass == Pass::kBackward ? PE_ISA_PICK_WIDTH(backward_blocks, scalar_t)
                                 : PE_ISA_PICK(scatter, scalar_t);
}

template <typename scalar_t>
RenderArgs<scalar_t> render_args(const at::Tensor& planes, const at::Tensor& points,
                                 const at::Tensor& depths, const at::Tensor& proj,
                                 const at::Tensor& noise, const DecoderLayout<
                                     at::opmath_type<scalar_t>>& L, const Sizes& z,
                                 bool use_crop, double crop_limit, bool white_back,
                                 bool scale_rgb, int color_activation, bool full_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  RenderArgs<scalar_t> a{};
  a.planes = planes.data_ptr<scalar_t>();
  a.proj = proj.data_ptr<acc_t>();
  a.points = points.data_ptr<acc_t>();
  a.depths = depths.data_ptr<acc_t>();
  a.noise = noise.numel() > 0 ? noise.data_ptr<acc_t>() : nullptr;
  a.L = &L;
  a.z = z;
  a.use_crop = use_crop;
  a.crop_limit = static_cast<acc_t>(crop_limit);
  a.white_back = white_back;
  a.scale_rgb = scale_rgb;
  a.act = color_activation;
  a.full_weights = full_weights;
  return a;
}

template <typename scalar_t>
void forward_impl(const at::Tensor& planes, const at::Tensor& points, const at::Tensor& depths,
                  const at::Tensor& proj, const at::Tensor& w1, const at::Tensor& b1,
                  const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& noise,
                  const Sizes& z, bool use_crop, double crop_limit, bool white_back,
                  bool scale_rgb, int color_activation, bool full_weights,
                  at::Tensor& features, at::Tensor& depth_raw, at::Tensor& weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const DecoderLayout<acc_t> L(w1.data_ptr<acc_t>(), b1.data_ptr<acc_t>(), w2.data_ptr<acc_t>(),
                               b2.data_ptr<acc_t>(), z.C, z.Hd, z.O);
  RenderArgs<scalar_t> a =
      render_args<scalar_t>(planes, points, depths, proj, noise, L, z, use_crop, crop_limit,
                            white_back, scale_rgb, color_activation, full_weights);
  a.features = features.data_ptr<acc_t>();
  a.depth_raw = depth_raw.data_ptr<acc_t>();
  a.weights = weights.data_ptr<acc_t>();
  const RangeFn<scalar_t> fn = pick<scalar_t>(Pass::kForward);
  // a few rays per task: the scratch is set up once per task
  at::parallel_for(0, z.B * z.R, 4, [&](int64_t begin, int64_t end) { fn(a, begin, end); });
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_features, const at::Tensor& grad_depth,
                   const at::Tensor& grad_weights_out, const at::Tensor& planes,
                   const at::Tensor& points, const at::Tensor& depths, const at::Tensor& proj,
                   const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                   const at::Tensor& b2, const at::Tensor& noise, const at::Tensor& features,
                   const at::Tensor& depth_raw, const at::Tensor& weights, const Sizes& z,
                   bool use_crop, double crop_limit, bool white_back, bool scale_rgb,
                   int color_activation, bool full_weights, at::Tensor& grad_planes,
                   at::Tensor& grad_points, at::Tensor& grad_decoder) {
  using acc_t = at::opmath_type<scalar_t>;
  const DecoderLayout<acc_t> L(w1.data_ptr<acc_t>(), b1.data_ptr<acc_t>(), w2.data_ptr<acc_t>(),
                               b2.data_ptr<acc_t>(), z.C, z.Hd, z.O);
  RenderArgs<scalar_t> a =
      render_args<scalar_t>(planes, points, depths, proj, noise, L, z, use_crop, crop_limit,
                            white_back, scale_rgb, color_activation, full_weights);
  a.grad_features = grad_features.data_ptr<acc_t>();
  a.grad_depth = grad_depth.data_ptr<acc_t>();
  a.grad_weights = grad_weights_out.data_ptr<acc_t>();
  a.saved_features = features.data_ptr<acc_t>();
  a.saved_depth = depth_raw.data_ptr<acc_t>();
  a.saved_weights = weights.data_ptr<acc_t>();
  a.grad_points = grad_points.data_ptr<acc_t>();
  const RangeFn<scalar_t> fn = pick<scalar_t>(Pass::kBackward);

  a.grad_planes = grad_planes.data_ptr<acc_t>();
  const RangeFn<scalar_t> scatter = pick<scalar_t>(Pass::kScatter);
  const int C = z.C, Hd = z.Hd, O = z.O;
  const int64_t n_block = L.grad_numel();
  const triplane::Geometry geo = z.d.geo;
  const int64_t P = z.d.P;

  std::vector<acc_t> block_grads;
  std::vector<acc_t> grad_sum(n_block, acc_t(0));
  std::vector<acc_t> df_scratch;
  for (int64_t b = 0; b < z.B; ++b) {
    for (int64_t r0 = 0; r0 < z.R; r0 += kChunkRays) {
      const int64_t n_rays = std::min(kChunkRays, z.R - r0);
      const int64_t n_blocks = (n_rays + kBlockRays - 1) / kBlockRays;
      block_grads.assign(n_blocks * n_block, acc_t(0));
      df_scratch.assign(n_rays * z.S * C, acc_t(0));
      a.batch = b;
      a.r0 = r0;
      a.n_rays = n_rays;
      a.block_grads = block_grads.data();
      a.df_chunk = df_scratch.data();

      // 1. per-ray backward passes
      at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) { fn(a, begin, end); });

      // 2. decoder gradients, summed in block order
      for (int64_t blk = 0; blk < n_blocks; ++blk) {
        const acc_t* row = block_grads.data() + blk * n_block;
        for (int64_t i = 0; i < n_block; ++i) grad_sum[i] += row[i];
      }

      // 3. grad_planes: tasks (plane, band of rows), samples in order
      const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
      a.bands = triplane::scatter_bands(P, geo.D * geo.H, threads);
      at::parallel_for(0, P * a.bands, 1, [&](int64_t begin, int64_t end) {
        scatter(a, begin, end);
      });
    }
  }

  // the padded sums into the decoder gradient: w1 (Hd, C), b1 (Hd), w2 (O, Hd), b2 (O)
  acc_t* out = grad_decoder.data_ptr<acc_t>();
  const acc_t* gw1 = grad_sum.data();
  const acc_t* gb1 = gw1 + Hd * L.Cp;
  const acc_t* gw2 = gb1 + L.Hp;
  const acc_t* gb2 = gw2 + O * L.Hp;
  for (int j = 0; j < Hd; ++j) {
    for (int c = 0; c < C; ++c) *out++ = gw1[j * L.Cp + c];
  }
  for (int j = 0; j < Hd; ++j) *out++ = gb1[j];
  for (int o = 0; o < O; ++o) {
    for (int j = 0; j < Hd; ++j) *out++ = gw2[o * L.Hp + j];
  }
  for (int o = 0; o < O; ++o) *out++ = gb2[o];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> render_rays_forward_cpu(
    const at::Tensor& planes, const at::Tensor& points, const at::Tensor& depths,
    const at::Tensor& proj_in, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, const at::Tensor& noise, bool trilinear, bool use_crop,
    double crop_limit, bool white_back, bool scale_rgb, int64_t color_activation,
    bool full_weights) {
  check_color_activation(color_activation, kCpuSide);
  const at::Tensor proj = proj_in.contiguous();
  const Sizes z =
      check_inputs(planes, points, depths, proj, w1, b1, w2, b2, noise, trilinear, kCpuSide);
  const auto options = points.options();
  at::Tensor features = new_output({z.B, z.R, z.Co}, options);
  at::Tensor depth_raw = new_output({z.B, z.R, 1}, options);
  at::Tensor weights = new_output({z.B, z.R, full_weights ? z.S - 1 : 1}, options);
  if (z.B * z.R == 0) return {features, depth_raw, weights};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, planes.scalar_type(), "render_rays_forward_cpu", [&] {
        forward_impl<scalar_t>(planes, points, depths, proj, w1, b1, w2, b2, noise, z, use_crop,
                               crop_limit, white_back, scale_rgb,
                               static_cast<int>(color_activation), full_weights, features,
                               depth_raw, weights);
      });
  return {features, depth_raw, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
render_rays_backward_cpu(const at::Tensor& grad_features, const at::Tensor& grad_depth,
                         const at::Tensor& grad_weights, const at::Tensor& planes,
                         const at::Tensor& points, const at::Tensor& depths,
                         const at::Tensor& proj_in, const at::Tensor& w1, const at::Tensor& b1,
                         const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& noise,
                         const at::Tensor& features, const at::Tensor& depth_raw,
                         const at::Tensor& weights, bool trilinear, bool use_crop,
                         double crop_limit, bool white_back, bool scale_rgb,
                         int64_t color_activation, bool full_weights, bool deterministic) {
  (void)deterministic;  // the CPU backward is always deterministic
  check_color_activation(color_activation, kCpuSide);
  const at::Tensor proj = proj_in.contiguous();
  const Sizes z =
      check_inputs(planes, points, depths, proj, w1, b1, w2, b2, noise, trilinear, kCpuSide);
  const auto acc = acc_dtype(planes);
  check_backward_tensors(grad_features, grad_depth, grad_weights, features, depth_raw, weights,
                         planes, z, full_weights, kCpuSide);

  at::Tensor grad_planes = at::zeros(planes.sizes(), planes.options().dtype(acc));
  at::Tensor grad_points = at::zeros(points.sizes(), points.options());
  const int64_t n_decoder = z.n_decoder();
  at::Tensor grad_decoder = at::zeros({n_decoder}, points.options());
  if (z.B * z.R > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, planes.scalar_type(), "render_rays_backward_cpu", [&] {
          backward_impl<scalar_t>(grad_features, grad_depth, grad_weights, planes, points,
                                  depths, proj, w1, b1, w2, b2, noise, features, depth_raw,
                                  weights, z, use_crop, crop_limit, white_back, scale_rgb,
                                  static_cast<int>(color_activation), full_weights, grad_planes,
                                  grad_points, grad_decoder);
        });
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

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("render_rays_forward", &portrait_engine::render::render_rays_forward_cpu);
  m.impl("render_rays_backward", &portrait_engine::render::render_rays_backward_cpu);
}
