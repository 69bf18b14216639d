// CPU kernels of portrait_engine::render_rays_{forward,backward}
// (contract: docs/render_rays.md; per-sample and per-ray math: render.h).
//
// Forward: at::parallel_for over the B * R rays; a task owns whole rays, whose samples are
// sampled, decoded and composited in one sweep with two samples' scratch arrays: nothing per
// sample is written to memory.
//
// Backward, by recomputation, deterministic whatever the number of threads. Rays are taken in
// chunks of kChunkRays rays of one batch element; per chunk:
//   1. at::parallel_for over blocks of kBlockRays rays: each ray's backward sweep (render.h)
//      writes its points' gradients (owned by the ray), adds its decoder-weight gradients into
//      its block's row of a scratch buffer, and writes each sample's feature gradient df (C
//      values) into a chunk scratch buffer;
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
#include <vector>

#include "render/checks.h"
#include "render/render.h"

namespace portrait_engine {
namespace render {
namespace {

constexpr int64_t kChunkRays = 1024;
constexpr int64_t kBlockRays = 8;

// The scratch arrays of two samples and of a sample's backward, for one thread.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> storage;
  Sample<acc_t> a, b;
  acc_t *rgb, *dout, *dpre, *df;
  Scratch(int C, int Hd, int O) : storage(2 * (C + 2 * Hd + 2 * O) + 2 * O + Hd + C) {
    acc_t* p = storage.data();
    for (Sample<acc_t>* s : {&a, &b}) {
      s->f = p;
      p += C;
      s->hidden = p;
      p += Hd;
      s->dsp = p;
      p += Hd;
      s->out = p;
      p += O;
      s->sig = p;
      p += O;
    }
    rgb = p;
    p += O;
    dout = p;
    p += O;
    dpre = p;
    p += Hd;
    df = p;
  }
};

template <typename scalar_t, typename acc_t>
RayInputs<scalar_t, acc_t> ray_inputs(const scalar_t* planes, const acc_t* proj,
                                      const acc_t* points, const acc_t* depths,
                                      const acc_t* noise, const acc_t* w1, const acc_t* b1,
                                      const acc_t* w2t, const acc_t* b2, const Sizes& z,
                                      int64_t ray, bool use_crop, acc_t crop_limit,
                                      int color_activation) {
  const int64_t b = ray / z.R;
  RayInputs<scalar_t, acc_t> in;
  in.planes_b = planes + b * z.d.P * z.d.geo.plane_numel();
  in.proj = proj;
  in.points = points + ray * z.S * 3;
  in.depths = depths + ray * z.S;
  in.noise = noise != nullptr ? noise + ray * z.S : nullptr;
  in.w1 = w1;
  in.b1 = b1;
  in.w2t = w2t;
  in.b2 = b2;
  in.S = z.S;
  in.use_crop = use_crop;
  in.crop_limit = crop_limit;
  in.color_activation = color_activation;
  return in;
}

template <typename scalar_t>
void forward_impl(const at::Tensor& planes, const at::Tensor& points, const at::Tensor& depths,
                  const at::Tensor& proj, const at::Tensor& w1, const at::Tensor& b1,
                  const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& noise,
                  const Sizes& z, bool use_crop, double crop_limit, bool white_back,
                  bool scale_rgb, int color_activation, bool full_weights,
                  at::Tensor& features, at::Tensor& depth_raw, at::Tensor& weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* planes_ptr = planes.data_ptr<scalar_t>();
  const acc_t* points_ptr = points.data_ptr<acc_t>();
  const acc_t* depths_ptr = depths.data_ptr<acc_t>();
  const acc_t* proj_ptr = proj.data_ptr<acc_t>();
  const acc_t* noise_ptr = noise.numel() > 0 ? noise.data_ptr<acc_t>() : nullptr;
  const acc_t *w1_ptr = w1.data_ptr<acc_t>(), *b1_ptr = b1.data_ptr<acc_t>();
  const at::Tensor w2t = w2.t().contiguous();  // (Hd, O): contiguous inner loops
  const acc_t *w2_ptr = w2t.data_ptr<acc_t>(), *b2_ptr = b2.data_ptr<acc_t>();
  acc_t* features_ptr = features.data_ptr<acc_t>();
  acc_t* depth_ptr = depth_raw.data_ptr<acc_t>();
  acc_t* weights_ptr = weights.data_ptr<acc_t>();
  const acc_t limit = static_cast<acc_t>(crop_limit);

  at::parallel_for(0, z.B * z.R, 1, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> scratch(z.C, z.Hd, z.O);
    for (int64_t ray = begin; ray < end; ++ray) {
      const RayInputs<scalar_t, acc_t> in =
          ray_inputs(planes_ptr, proj_ptr, points_ptr, depths_ptr, noise_ptr, w1_ptr, b1_ptr,
                     w2_ptr, b2_ptr, z, ray, use_crop, limit, color_activation);
      acc_t total, depth_sum;
      acc_t* full = full_weights ? weights_ptr + ray * (z.S - 1) : nullptr;
      ray_forward(in, z.d, z.C, z.Hd, z.O, scratch.a, scratch.b, scratch.rgb, full, total,
                  depth_sum);
      for (int64_t c = 0; c < z.Co; ++c) {
        features_ptr[ray * z.Co + c] =
            rays::finish_rgb(scratch.rgb[c], total, white_back, scale_rgb);
      }
      depth_ptr[ray] = depth_sum / total;  // NaN where total = 0: the front-end handles it
      if (!full_weights) weights_ptr[ray] = total;
    }
  });
}

// Where one ray's backward puts its results (render.h's Sink interface).
template <typename acc_t>
struct CpuSink {
  acc_t* grad_weights;  // this block's row: w1 (Hd, C), b1 (Hd), w2 (O, Hd), b2 (O)
  acc_t* grad_points;   // the ray's (S, 3)
  acc_t* df_rows;       // the ray's (S, C) rows of the chunk scratch
  int C, Hd, O;

  void decoder(const acc_t* f, const acc_t* h, const acc_t* dout, const acc_t* dpre) {
    acc_t* gw1 = grad_weights;
    acc_t* gb1 = gw1 + Hd * C;
    acc_t* gw2 = gb1 + Hd;
    acc_t* gb2 = gw2 + O * Hd;
    for (int o = 0; o < O; ++o) {
      const acc_t d = dout[o];
      gb2[o] += d;
      acc_t* row = gw2 + o * Hd;
      PE_SIMD
      for (int j = 0; j < Hd; ++j) row[j] += d * h[j];
    }
    for (int j = 0; j < Hd; ++j) {
      const acc_t d = dpre[j];
      gb1[j] += d;
      acc_t* row = gw1 + j * C;
      PE_SIMD
      for (int c = 0; c < C; ++c) row[c] += d * f[c];
    }
  }
  void plane(int64_t, int64_t, acc_t, const acc_t*) {}  // scattered in pass 3, in order
  void point(int64_t s, acc_t gp0, acc_t gp1, acc_t gp2, const acc_t* df) {
    grad_points[s * 3 + 0] = gp0;
    grad_points[s * 3 + 1] = gp1;
    grad_points[s * 3 + 2] = gp2;
    std::copy(df, df + C, df_rows + s * C);
  }
};

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
  const scalar_t* planes_ptr = planes.data_ptr<scalar_t>();
  const acc_t* points_ptr = points.data_ptr<acc_t>();
  const acc_t* depths_ptr = depths.data_ptr<acc_t>();
  const acc_t* proj_ptr = proj.data_ptr<acc_t>();
  const acc_t* noise_ptr = noise.numel() > 0 ? noise.data_ptr<acc_t>() : nullptr;
  const acc_t *w1_ptr = w1.data_ptr<acc_t>(), *b1_ptr = b1.data_ptr<acc_t>();
  const at::Tensor w2t = w2.t().contiguous();  // (Hd, O): contiguous inner loops
  const acc_t *w2_ptr = w2t.data_ptr<acc_t>(), *b2_ptr = b2.data_ptr<acc_t>();
  const acc_t* gf_ptr = grad_features.data_ptr<acc_t>();
  const acc_t* gd_ptr = grad_depth.data_ptr<acc_t>();
  const acc_t* gw_ptr = grad_weights_out.data_ptr<acc_t>();
  const acc_t* features_ptr = features.data_ptr<acc_t>();
  const acc_t* depth_ptr = depth_raw.data_ptr<acc_t>();
  const acc_t* weights_ptr = weights.data_ptr<acc_t>();
  acc_t* gplanes_ptr = grad_planes.data_ptr<acc_t>();
  acc_t* gpoints_ptr = grad_points.data_ptr<acc_t>();
  acc_t* gdecoder_ptr = grad_decoder.data_ptr<acc_t>();
  const acc_t limit = static_cast<acc_t>(crop_limit);
  const int C = z.C, Hd = z.Hd, O = z.O;
  const int64_t n_decoder = static_cast<int64_t>(Hd) * C + Hd + static_cast<int64_t>(O) * Hd + O;
  const int64_t n_weights = full_weights ? z.S - 1 : 1;
  const triplane::Geometry geo = z.d.geo;
  const int64_t P = z.d.P;
  const int ncorners = triplane::num_corners(z.d.trilinear);
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(P);

  std::vector<acc_t> block_grads;
  std::vector<acc_t> df_scratch;
  for (int64_t b = 0; b < z.B; ++b) {
    for (int64_t r0 = 0; r0 < z.R; r0 += kChunkRays) {
      const int64_t n_rays = std::min(kChunkRays, z.R - r0);
      const int64_t n_blocks = (n_rays + kBlockRays - 1) / kBlockRays;
      block_grads.assign(n_blocks * n_decoder, acc_t(0));
      df_scratch.assign(n_rays * z.S * C, acc_t(0));

      // 1. per-ray backward sweeps
      at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
        Scratch<acc_t> scratch(C, Hd, O);
        for (int64_t blk = begin; blk < end; ++blk) {
          for (int64_t k = blk * kBlockRays; k < std::min(n_rays, (blk + 1) * kBlockRays); ++k) {
            const int64_t ray = b * z.R + r0 + k;
            const RayInputs<scalar_t, acc_t> in =
                ray_inputs(planes_ptr, proj_ptr, points_ptr, depths_ptr, noise_ptr, w1_ptr,
                           b1_ptr, w2_ptr, b2_ptr, z, ray, use_crop, limit, color_activation);
            const acc_t* g = gf_ptr + ray * z.Co;
            const acc_t* gw = gw_ptr + ray * n_weights;
            const acc_t* w = weights_ptr + ray * n_weights;
            acc_t weight_sum = acc_t(0), weighted_gw = acc_t(0);
            for (int64_t i = 0; i < n_weights; ++i) {
              weight_sum += w[i];
              weighted_gw += gw[i] * w[i];
            }
            const RayGrad<acc_t> rg =
                ray_grad(g, features_ptr + ray * z.Co, static_cast<int>(z.Co), gd_ptr[ray],
                         depth_ptr[ray], weight_sum, weighted_gw, white_back, scale_rgb);
            CpuSink<acc_t> sink{block_grads.data() + blk * n_decoder,
                                gpoints_ptr + ray * z.S * 3, df_scratch.data() + k * z.S * C,
                                C, Hd, O};
            ray_backward(in, z.d, C, Hd, O, scratch.a, scratch.b, rg, g, gw, full_weights,
                         scratch.dout, scratch.dpre, scratch.df, sink);
          }
        }
      });

      // 2. decoder gradients, summed in block order
      for (int64_t blk = 0; blk < n_blocks; ++blk) {
        const acc_t* row = block_grads.data() + blk * n_decoder;
        for (int64_t i = 0; i < n_decoder; ++i) gdecoder_ptr[i] += row[i];
      }

      // 3. grad_planes: tasks (plane, band of rows), samples in order
      const int64_t rows = geo.D * geo.H;
      const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
      const int64_t bands = std::max<int64_t>(1, std::min<int64_t>(rows, (2 * threads + P - 1) / P));
      const int64_t n_samples = n_rays * z.S;
      const acc_t* chunk_points = points_ptr + (b * z.R + r0) * z.S * 3;
      at::parallel_for(0, P * bands, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t p = t / bands, band = t % bands;
          const int64_t row_lo = band * rows / bands, row_hi = (band + 1) * rows / bands;
          const acc_t* m = proj_ptr + p * 9;
          acc_t* gbase = gplanes_ptr + (b * P + p) * geo.plane_numel();
          for (int64_t n = 0; n < n_samples; ++n) {
            const acc_t* pt = chunk_points + n * 3;
            acc_t gx, gy, gz;
            triplane::project(pt[0], pt[1], pt[2], m, gx, gy, gz);
            const triplane::Footprint<acc_t> f =
                triplane::make_footprint(gx, gy, gz, z.d.trilinear, geo);
            if (f.nonfinite) continue;
            const acc_t* row = df_scratch.data() + n * C;
            for (int k = 0; k < ncorners; ++k) {
              const triplane::Corner<acc_t> cr = triplane::corner(f, k, geo);
              if (cr.valid && cr.row >= row_lo && cr.row < row_hi) {
                triplane::scatter_axpy(gbase + cr.offset, row, cr.w * inv_p, C);
              }
            }
          }
        }
      });
    }
  }
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
