// CPU kernels of portrait_engine::triplane_sample_{forward,backward}
// (contract: docs/kernel_contract_triplane.md; per-element math: triplane.h).
//
// Forward: at::parallel_for over the B * N points; each point loops over the planes and the
// corners, accumulating the channel vector in the accumulation type.
//
// Backward, deterministic and without atomics, in two passes:
//   1. grad_points: at::parallel_for over the B * N points (a pure gather, like the forward);
//      skipped when the op says the points need no gradient (points_grad=false).
//   2. grad_planes: at::parallel_for over tasks (b, p, band), a band being a range of the
//      plane's D * H rows. A task walks all N points in order and scatter-adds only the corners
//      that fall in its band, so each texel is written by exactly one task and receives its
//      contributions in point order, whatever the number of threads. Bands are only used when
//      there are fewer (b, p) pairs than threads: every band walks all N points (coordinate
//      math, corner tests and a hard-to-predict band test per corner), and that walk, not the
//      scatter, is most of the pass's time.
//
// The extension is built for baseline x86-64 (SSE2: 4 floats per vector); the per-range
// functions of both are also compiled for AVX2 and AVX-512 and picked at run time
// (cpu_math::cpu_isa(), capped by PORTRAIT_ENGINE_CPU_ISA), as the ray kernels are, so the
// channel loops (gather_axpy, dot, scatter_axpy over C) run 8 or 16 channels per instruction.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_math.h"
#include "triplane/checks.h"
#include "triplane/triplane.h"

namespace portrait_engine {
namespace triplane {
namespace {

// Software prefetch of the corner texels of point `i` on planes [p_lo, p_hi) of `target`. The
// gathers and scatters are random accesses into planes far larger than L2, so they are latency bound; issuing the
// next point's cache lines while the current point is processed hides most of that latency.
constexpr int64_t kPrefetchDistance = 2;  // points ahead

template <typename scalar_t, typename acc_t, bool kWrite, typename target_t>
inline void prefetch_point(const target_t* target, const scalar_t* points_ptr, const acc_t* proj,
                           int64_t i, int64_t N, int64_t P, int64_t p_lo, int64_t p_hi,
                           const Geometry& geo, bool trilinear) {
#if defined(__GNUC__)
  const int64_t b = i / N;
  const acc_t px = static_cast<acc_t>(points_ptr[i * 3 + 0]);
  const acc_t py = static_cast<acc_t>(points_ptr[i * 3 + 1]);
  const acc_t pz = static_cast<acc_t>(points_ptr[i * 3 + 2]);
  const int64_t bytes = geo.C * static_cast<int64_t>(sizeof(target_t));
  const int ncorners = num_corners(trilinear);
  for (int64_t p = p_lo; p < p_hi; ++p) {
    acc_t gx, gy, gz;
    project(px, py, pz, proj + p * 9, gx, gy, gz);
    const Footprint<acc_t> f = make_footprint(gx, gy, gz, trilinear, geo);
    if (f.nonfinite) continue;
    const char* base = reinterpret_cast<const char*>(target + (b * P + p) * geo.plane_numel());
    for (int k = 0; k < ncorners; ++k) {
      const Corner<acc_t> cr = corner(f, k, geo);
      if (!cr.valid) continue;
      const char* at = base + cr.offset * static_cast<int64_t>(sizeof(target_t));
      for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(at + o, kWrite ? 1 : 0, 3);
    }
  }
#else
  (void)target, (void)points_ptr, (void)proj, (void)i, (void)N, (void)P, (void)p_lo,
      (void)p_hi, (void)geo, (void)trilinear;
#endif
}

// The points [begin, end) of one parallel_for task, in order: body(i, b, n, px, py, pz) for
// each, after prefetching (for reading) the corner texels of the point kPrefetchDistance ahead.
// The walk of the forward and of the backward's points pass.
template <typename scalar_t, typename acc_t, typename Body>
inline void for_each_point(const scalar_t* planes_ptr, const scalar_t* points_ptr,
                           const acc_t* proj_ptr, int64_t begin, int64_t end, int64_t N, int64_t P,
                           const Geometry& geo, bool trilinear, Body&& body) {
  for (int64_t i = begin; i < std::min(end, begin + kPrefetchDistance); ++i) {
    prefetch_point<scalar_t, acc_t, false>(planes_ptr, points_ptr, proj_ptr, i, N, P, 0, P, geo,
                                           trilinear);
  }
  for (int64_t i = begin; i < end; ++i) {
    if (i + kPrefetchDistance < end) {
      prefetch_point<scalar_t, acc_t, false>(planes_ptr, points_ptr, proj_ptr,
                                             i + kPrefetchDistance, N, P, 0, P, geo, trilinear);
    }
    body(i, i / N, i % N, static_cast<acc_t>(points_ptr[i * 3 + 0]),
         static_cast<acc_t>(points_ptr[i * 3 + 1]), static_cast<acc_t>(points_ptr[i * 3 + 2]));
  }
}

// Points per parallel_for chunk: about 16k channel-corner products per chunk.
int64_t point_grain(const Sizes& z, bool trilinear) {
  const int64_t work = std::max<int64_t>(1, z.P * num_corners(trilinear) * z.geo.C);
  return std::max<int64_t>(1, 16384 / work);
}

// The pointers and sizes of one launch, shared by the per-range functions below (which the
// ISA clones compile once per instruction set).
template <typename scalar_t>
struct SampleArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* planes;
  const scalar_t* points;
  const acc_t* proj;
  scalar_t* out;          // forward: (B, N, C) for mean, (B, P, N, C) for none
  const scalar_t* go;     // backward: grad_out, laid out as `out`
  acc_t* grad_planes;     // backward: (B, P, D, H, W, C) in acc_t
  acc_t* grad_points;     // backward: (B, N, 3) in acc_t
  Sizes z;
  bool trilinear, reduce_mean, nan_propagate;
  int64_t bands;  // backward pass 2: bands of rows per (b, p)

  // grad_out row of (b, n, p): (B, N, C) for mean, (B, P, N, C) for none.
  const scalar_t* go_row(int64_t b, int64_t p, int64_t n) const {
    const int64_t C = z.geo.C;
    return reduce_mean ? go + (b * z.N + n) * C : go + ((b * z.P + p) * z.N + n) * C;
  }
};

// A float channel vector of fixed length 16 * kV held in registers: GCC vector extensions of the
// clone's register width (kVecBytes), so each ISA clone keeps it in kV zmm (AVX-512), 2 kV ymm
// (AVX2) or 4 kV xmm registers. The generic loops keep a point's accumulator in memory (its length is a run-time C), and every
// corner then loads, adds and stores it again (perf: that load-FMA-store was the forward's
// hottest code at C = 32). Against the generic loops on the same inputs (2026-11-26, 3 planes x
// 32 channels, 12288 points, both forced in turn in one process, alternating which goes first):
// forward 0.81-0.92x the time on 2 threads and 0.85-0.91x on 1 (64^2 to 256^2 planes), the
// backward with the points pass 0.82-0.91x (1.03x at 256^2 on 2 threads). The forward's
// per-channel arithmetic is the generic loops' (acc += w * texel, corner by corner, in the same
// order), so both give the same numbers. (Until 2026-11-27 the vectors were 64 bytes whatever
// the target: below AVX-512 GCC kept them in memory. `python tools/time_cpu_isa.py`, old build
// against new, 2 threads: forward AVX2 11-12 -> 5.5-6 ms, baseline 13-18 -> 5-9 ms, AVX-512
// unchanged at 6.4-7.5 ms.)
template <int kV, int kVecBytes>
struct ChannelVec {
  // 16 * kV floats as kN vectors of the target's register width (cpu_math::kVecBytes*): a
  // vector type wider than the registers lives in memory (with 64-byte vectors the AVX2 clone
  // ran barely faster than the SSE2 baseline)
  using vec = typename cpu_math::VecOf<float, kVecBytes>::type;
  static constexpr int kW = cpu_math::VecOf<float, kVecBytes>::kLanes;
  static constexpr int kN = 16 * kV / kW;
  static_assert(kN * kW == 16 * kV, "whole vectors");
  vec v[kN];

  static inline vec load(const float* src) {
    vec x;
    __builtin_memcpy(&x, src, sizeof(x));
    return x;
  }
  inline void set(float x) {
    for (int q = 0; q < kN; ++q) v[q] = vec{} + x;
  }
  inline void axpy(const float* src, float w) {
    for (int q = 0; q < kN; ++q) v[q] += w * load(src + kW * q);
  }
  inline void store(float* dst, float scale) const {
    for (int q = 0; q < kN; ++q) {
      const vec x = v[q] * scale;
      __builtin_memcpy(dst + kW * q, &x, sizeof(x));
    }
  }
  inline void store(float* dst) const { __builtin_memcpy(dst, v, sizeof(v)); }
  inline void load_row(const float* src) {
    for (int q = 0; q < kN; ++q) v[q] = load(src + kW * q);
  }
  // sum_c v[c] * other[c]: the lanes' products summed vector by vector, then across lanes by
  // halving (cpu_math::lane_sum; a loop over the lanes was a chain of kW dependent adds)
  inline float dot(const ChannelVec& other) const {
    vec sum = v[0] * other.v[0];
    for (int q = 1; q < kN; ++q) sum += v[q] * other.v[q];
    return cpu_math::lane_sum<float, kVecBytes>(sum);
  }
};

// The forward of float planes of 16 * kV channels: forward_points below with the accumulator
// in registers.
template <int kV, int kVecBytes>
void forward_points_fixed(const SampleArgs<float>& a, int64_t begin, int64_t end) {
  const Geometry geo = a.z.geo;
  const int64_t P = a.z.P, N = a.z.N;
  const int64_t plane_numel = geo.plane_numel();
  const int ncorners = num_corners(a.trilinear);
  const float inv_p = 1.0f / static_cast<float>(P);
  ChannelVec<kV, kVecBytes> acc;
  for_each_point(a.planes, a.points, a.proj, begin, end, N, P, geo, a.trilinear,
                 [&](int64_t i, int64_t b, int64_t n, float px, float py, float pz) {
    if (a.reduce_mean) acc.set(0.0f);
    for (int64_t p = 0; p < P; ++p) {
      if (!a.reduce_mean) acc.set(0.0f);
      float gx, gy, gz;
      project(px, py, pz, a.proj + p * 9, gx, gy, gz);
      const Footprint<float> f = make_footprint(gx, gy, gz, a.trilinear, geo);
      const float* base = a.planes + (b * P + p) * plane_numel;
      if (a.nan_propagate && f.nonfinite) {
        acc.set(quiet_nan<float>());
      } else {
        for (int k = 0; k < ncorners; ++k) {
          const Corner<float> cr = corner(f, k, geo);
          if (cr.valid) acc.axpy(base + cr.offset, cr.w);
        }
      }
      if (!a.reduce_mean) acc.store(a.out + ((b * P + p) * N + n) * geo.C);
    }
    if (a.reduce_mean) acc.store(a.out + i * geo.C, inv_p);
  });
}

// Forward over the points [begin, end).
template <typename scalar_t, int kVecBytes>
void forward_points(const SampleArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, float>) {
    switch (a.z.geo.C) {  // EG3D's, PanoHead's and 3DPortraitGAN's planes have 32 channels
      case 16: return forward_points_fixed<1, kVecBytes>(a, begin, end);
      case 32: return forward_points_fixed<2, kVecBytes>(a, begin, end);
      case 48: return forward_points_fixed<3, kVecBytes>(a, begin, end);
      case 64: return forward_points_fixed<4, kVecBytes>(a, begin, end);
      default: break;
    }
  }
  const Geometry geo = a.z.geo;
  const int64_t C = geo.C, P = a.z.P, N = a.z.N;
  const int64_t plane_numel = geo.plane_numel();
  const int ncorners = num_corners(a.trilinear);
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(P);
  std::vector<acc_t> acc_buffer(C);
  acc_t* acc = acc_buffer.data();
  for_each_point(a.planes, a.points, a.proj, begin, end, N, P, geo, a.trilinear,
                 [&](int64_t i, int64_t b, int64_t n, acc_t px, acc_t py, acc_t pz) {
    if (a.reduce_mean) fill(acc, acc_t(0), C);
    for (int64_t p = 0; p < P; ++p) {
      if (!a.reduce_mean) fill(acc, acc_t(0), C);
      acc_t gx, gy, gz;
      project(px, py, pz, a.proj + p * 9, gx, gy, gz);
      const Footprint<acc_t> f = make_footprint(gx, gy, gz, a.trilinear, geo);
      const scalar_t* base = a.planes + (b * P + p) * plane_numel;
      if (a.nan_propagate && f.nonfinite) {
        fill(acc, quiet_nan<acc_t>(), C);
      } else {
        for (int k = 0; k < ncorners; ++k) {
          const Corner<acc_t> cr = corner(f, k, geo);
          if (cr.valid) gather_axpy(acc, base + cr.offset, cr.w, C);
        }
      }
      if (!a.reduce_mean) {
        scalar_t* dst = a.out + ((b * P + p) * N + n) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(acc[c]);
      }
    }
    if (a.reduce_mean) {
      scalar_t* dst = a.out + i * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(acc[c] * inv_p);
    }
  });
}

// backward_points below for float planes of 16 * kV channels, grad_out's row in registers.
// Per plane, the corners' texels are first blended by the weights' derivatives (vx = sum_k
// dwx_k t_k, likewise vy, vz), then dotted once with the row: dix = vx . g, the generic loop's
// sum_k dwx_k (t_k . g) in another order (one horizontal sum per axis instead of one per
// corner).
template <int kV, int kVecBytes>
void backward_points_fixed(const SampleArgs<float>& a, int64_t begin, int64_t end) {
  const Geometry geo = a.z.geo;
  const int64_t P = a.z.P, N = a.z.N;
  const int64_t plane_numel = geo.plane_numel();
  const int ncorners = num_corners(a.trilinear);
  const float scale = a.reduce_mean ? 1.0f / static_cast<float>(P) : 1.0f;
  ChannelVec<kV, kVecBytes> g, vx, vy, vz;
  vz.set(0.0f);  // reset per sample for a tri-grid only (GCC's -Wmaybe-uninitialized otherwise)
  for_each_point(a.planes, a.points, a.proj, begin, end, N, P, geo, a.trilinear,
                 [&](int64_t i, int64_t b, int64_t n, float px, float py, float pz) {
    float out0 = 0, out1 = 0, out2 = 0;
    for (int64_t p = 0; p < P; ++p) {
      if (p == 0 || !a.reduce_mean) g.load_row(a.go_row(b, p, n));
      float gx, gy, gz;
      project(px, py, pz, a.proj + p * 9, gx, gy, gz);
      const Footprint<float> f = make_footprint(gx, gy, gz, a.trilinear, geo);
      const float* base = a.planes + (b * P + p) * plane_numel;
      float dix = 0, diy = 0, diz = 0;
      if (!f.nonfinite) {  // a non-finite sample has no corner in bounds
        vx.set(0.0f);
        vy.set(0.0f);
        if (a.trilinear) vz.set(0.0f);
        for (int k = 0; k < ncorners; ++k) {
          const Corner<float> cr = corner(f, k, geo);
          if (!cr.valid) continue;
          vx.axpy(base + cr.offset, cr.dwx);
          vy.axpy(base + cr.offset, cr.dwy);
          if (a.trilinear) vz.axpy(base + cr.offset, cr.dwz);
        }
        dix = vx.dot(g);
        diy = vy.dot(g);
        if (a.trilinear) diz = vz.dot(g);
      }
      add_point_grad(dix * scale, diy * scale, diz * scale, a.nan_propagate && f.nonfinite,
                     a.trilinear, a.proj + p * 9, geo, out0, out1, out2);
    }
    a.grad_points[i * 3 + 0] = out0;
    a.grad_points[i * 3 + 1] = out1;
    a.grad_points[i * 3 + 2] = out2;
  });
}

// Backward pass 1 over the points [begin, end): grad_points, a gather like the forward.
template <typename scalar_t, int kVecBytes>
void backward_points(const SampleArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, float>) {
    switch (a.z.geo.C) {
      case 16: return backward_points_fixed<1, kVecBytes>(a, begin, end);
      case 32: return backward_points_fixed<2, kVecBytes>(a, begin, end);
      case 48: return backward_points_fixed<3, kVecBytes>(a, begin, end);
      case 64: return backward_points_fixed<4, kVecBytes>(a, begin, end);
      default: break;
    }
  }
  const Geometry geo = a.z.geo;
  const int64_t C = geo.C, P = a.z.P, N = a.z.N;
  const int64_t plane_numel = geo.plane_numel();
  const int ncorners = num_corners(a.trilinear);
  const acc_t scale = a.reduce_mean ? acc_t(1) / static_cast<acc_t>(P) : acc_t(1);
  std::vector<acc_t> g_buffer(C);
  acc_t* g = g_buffer.data();
  for_each_point(a.planes, a.points, a.proj, begin, end, N, P, geo, a.trilinear,
                 [&](int64_t i, int64_t b, int64_t n, acc_t px, acc_t py, acc_t pz) {
    acc_t out0 = 0, out1 = 0, out2 = 0;
    for (int64_t p = 0; p < P; ++p) {
      if (p == 0 || !a.reduce_mean) {
        const scalar_t* row = a.go_row(b, p, n);
        for (int64_t c = 0; c < C; ++c) g[c] = static_cast<acc_t>(row[c]);
      }
      acc_t gx, gy, gz;
      project(px, py, pz, a.proj + p * 9, gx, gy, gz);
      const Footprint<acc_t> f = make_footprint(gx, gy, gz, a.trilinear, geo);
      const scalar_t* base = a.planes + (b * P + p) * plane_numel;
      acc_t dix = 0, diy = 0, diz = 0;
      if (!f.nonfinite) {  // a non-finite sample has no corner in bounds
        for (int k = 0; k < ncorners; ++k) {
          const Corner<acc_t> cr = corner(f, k, geo);
          if (!cr.valid) continue;
          const acc_t d = dot(base + cr.offset, g, C);
          dix += cr.dwx * d;
          diy += cr.dwy * d;
          diz += cr.dwz * d;
        }
      }
      add_point_grad(dix * scale, diy * scale, diz * scale, a.nan_propagate && f.nonfinite,
                     a.trilinear, a.proj + p * 9, geo, out0, out1, out2);
    }
    a.grad_points[i * 3 + 0] = out0;
    a.grad_points[i * 3 + 1] = out1;
    a.grad_points[i * 3 + 2] = out2;
  });
}

// Backward pass 2 over the tasks [begin, end) of (b, p, band): grad_planes, each texel owned by
// one task and written in point order.
template <typename scalar_t>
void backward_planes(const SampleArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const Geometry geo = a.z.geo;
  const int64_t P = a.z.P, N = a.z.N;
  const int64_t plane_numel = geo.plane_numel();
  const int ncorners = num_corners(a.trilinear);
  const acc_t scale = a.reduce_mean ? acc_t(1) / static_cast<acc_t>(P) : acc_t(1);
  const int64_t rows = geo.D * geo.H;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t bp = t / a.bands, band = t % a.bands;
    const int64_t b = bp / P, p = bp % P;
    const int64_t row_lo = band * rows / a.bands, row_hi = (band + 1) * rows / a.bands;
    const acc_t* m = a.proj + p * 9;
    acc_t* gbase = a.grad_planes + bp * plane_numel;
    // the task zeroes its own rows (the output is allocated uninitialised): in parallel, and
    // they are then in cache for the scatter; at::zeros was a separate pass over all planes
    const int64_t row_elems = geo.W * geo.C;
    std::fill(gbase + row_lo * row_elems, gbase + row_hi * row_elems, acc_t(0));
    const int64_t first = b * N;  // flat point index of (b, 0)
    for (int64_t n = 0; n < std::min(N, kPrefetchDistance); ++n) {
      prefetch_point<scalar_t, acc_t, true>(a.grad_planes, a.points, a.proj, first + n, N, P, p,
                                            p + 1, geo, a.trilinear);
    }
    for (int64_t n = 0; n < N; ++n) {
      if (n + kPrefetchDistance < N) {
        prefetch_point<scalar_t, acc_t, true>(a.grad_planes, a.points, a.proj,
                                              first + n + kPrefetchDistance, N, P, p, p + 1, geo,
                                              a.trilinear);
      }
      const scalar_t* pt = a.points + (b * N + n) * 3;
      acc_t gx, gy, gz;
      project(static_cast<acc_t>(pt[0]), static_cast<acc_t>(pt[1]), static_cast<acc_t>(pt[2]), m,
              gx, gy, gz);
      const Footprint<acc_t> f = make_footprint(gx, gy, gz, a.trilinear, geo);
      if (f.nonfinite) continue;
      const scalar_t* row = a.go_row(b, p, n);
      for (int k = 0; k < ncorners; ++k) {
        const Corner<acc_t> cr = corner(f, k, geo);
        if (cr.valid && cr.row >= row_lo && cr.row < row_hi) {
          scatter_axpy(gbase + cr.offset, row, cr.w * scale, geo.C);
        }
      }
    }
  }
}

// The three range functions compiled for AVX2 and AVX-512 as well (flatten: each whole range
// inlined, so the channel loops vectorise at the instruction set's width), picked at run time
// by cpu_math::cpu_isa() as the ray kernels do (PORTRAIT_ENGINE_CPU_ISA caps the choice).
#if PE_HAVE_ISA_CLONES
PE_ISA_CLONES_WIDTH(forward_points, SampleArgs)
PE_ISA_CLONES_WIDTH(backward_points, SampleArgs)
PE_ISA_CLONES(backward_planes, SampleArgs)
#endif

enum class Pass { kForward, kBackwardPoints, kBackwardPlanes };

template <typename scalar_t>
using RangeFn = void (*)(const SampleArgs<scalar_t>&, int64_t, int64_t);

template <typename scalar_t>
RangeFn<scalar_t> pick(Pass pass) {
  switch (pass) {
    case Pass::kForward: return PE_ISA_PICK_WIDTH(forward_points, scalar_t);
    case Pass::kBackwardPoints: return PE_ISA_PICK_WIDTH(backward_points, scalar_t);
    case Pass::kBackwardPlanes: break;
  }
  return PE_ISA_PICK(backward_planes, scalar_t);
}

template <typename scalar_t>
SampleArgs<scalar_t> sample_args(const at::Tensor& planes, const at::Tensor& points,
                                 const at::Tensor& proj, const Sizes& z, bool trilinear,
                                 bool reduce_mean, bool nan_propagate) {
  using acc_t = at::opmath_type<scalar_t>;
  SampleArgs<scalar_t> a{};
  a.planes = planes.data_ptr<scalar_t>();
  a.points = points.data_ptr<scalar_t>();
  a.proj = proj.data_ptr<acc_t>();
  a.z = z;
  a.trilinear = trilinear;
  a.reduce_mean = reduce_mean;
  a.nan_propagate = nan_propagate;
  a.bands = 1;
  return a;
}

template <typename scalar_t>
void forward_impl(const at::Tensor& planes, const at::Tensor& points, const at::Tensor& proj,
                  at::Tensor& out, const Sizes& z, bool trilinear, bool reduce_mean,
                  bool nan_propagate) {
  SampleArgs<scalar_t> a =
      sample_args<scalar_t>(planes, points, proj, z, trilinear, reduce_mean, nan_propagate);
  a.out = out.data_ptr<scalar_t>();
  const RangeFn<scalar_t> fn = pick<scalar_t>(Pass::kForward);
  at::parallel_for(0, z.B * z.N, point_grain(z, trilinear),
                   [&](int64_t begin, int64_t end) { fn(a, begin, end); });
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& points,
                   const at::Tensor& proj, at::Tensor& grad_planes, at::Tensor& grad_points,
                   const Sizes& z, bool trilinear, bool reduce_mean, bool nan_propagate,
                   bool points_grad) {
  using acc_t = at::opmath_type<scalar_t>;
  SampleArgs<scalar_t> a =
      sample_args<scalar_t>(planes, points, proj, z, trilinear, reduce_mean, nan_propagate);
  a.go = grad_out.data_ptr<scalar_t>();
  a.grad_planes = grad_planes.data_ptr<acc_t>();
  a.grad_points = grad_points.data_ptr<acc_t>();

  // Pass 1: grad_points, a gather over the points; skipped (zeros) when nobody needs them,
  // e.g. EG3D's renderer, whose sample points do not require grad: about 58 % of this
  // backward's kernel time at the renderer's size (perf, 2026-11-26).
  if (points_grad) {
    const RangeFn<scalar_t> fn = pick<scalar_t>(Pass::kBackwardPoints);
    at::parallel_for(0, z.B * z.N, point_grain(z, trilinear),
                     [&](int64_t begin, int64_t end) { fn(a, begin, end); });
  }

  // Pass 2: grad_planes, tasks (b, p, band), each texel owned by one task.
  const int64_t rows = z.geo.D * z.geo.H;
  const int64_t pairs = z.B * z.P;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // Bands only to keep every thread busy (scatter_bands): at B = 1 and P = 3 on 2 threads
  // (the renderer's CPU quick size), one band per plane took 0.85-0.88 ms and two bands
  // 1.18 ms at 64^2 x 32 channels, 12288 points; at 128^2 and 256^2, 49152 points: 3.8 vs
  // 4.9 ms and 5.9 vs 6.8 ms (2026-11-26; 3 and 4 bands: slower still). Before, the pass took
  // 2 * threads / pairs bands, rounded up.
  a.bands = scatter_bands(pairs, rows, threads);
  const RangeFn<scalar_t> fn = pick<scalar_t>(Pass::kBackwardPlanes);
  at::parallel_for(0, pairs * a.bands, 1, [&](int64_t begin, int64_t end) { fn(a, begin, end); });
}

at::Tensor triplane_sample_forward_cpu(const at::Tensor& planes, const at::Tensor& points,
                                       const at::Tensor& proj_in, bool trilinear, bool reduce_mean,
                                       bool nan_propagate) {
  // proj is 9 numbers per plane: made contiguous here rather than trusted (torch.linalg.inv
  // returns column-major matrices).
  const at::Tensor proj = proj_in.contiguous();
  const Sizes z = check_inputs(planes, points, proj, kCpuSide);
  at::Tensor out = reduce_mean ? at::empty({z.B, z.N, z.geo.C}, planes.options())
                               : at::empty({z.B, z.P, z.N, z.geo.C}, planes.options());
  if (poison_outputs()) out.fill_(std::numeric_limits<double>::quiet_NaN());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_sample_forward_cpu", [&] {
        forward_impl<scalar_t>(planes, points, proj, out, z, trilinear, reduce_mean,
                               nan_propagate);
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& points,
    const at::Tensor& proj_in, bool trilinear, bool reduce_mean, bool nan_propagate,
    bool points_grad) {
  const at::Tensor proj = proj_in.contiguous();
  const Sizes z = check_inputs(planes, points, proj, kCpuSide);
  check_grad_out(grad_out, planes, z, reduce_mean, kCpuSide);
  const auto acc = acc_dtype(planes);
  // grad_planes: every row is zeroed by the task that scatters into it (backward_planes);
  // grad_points: written in full by the points pass, zeros when it does not run
  const bool scatter = z.N > 0 && z.geo.C > 0;
  at::Tensor grad_planes = scatter ? at::empty(planes.sizes(), planes.options().dtype(acc))
                                   : at::zeros(planes.sizes(), planes.options().dtype(acc));
  at::Tensor grad_points = scatter && points_grad
                               ? at::empty(points.sizes(), points.options().dtype(acc))
                               : at::zeros(points.sizes(), points.options().dtype(acc));
  if (poison_outputs()) {
    if (scatter) grad_planes.fill_(std::numeric_limits<double>::quiet_NaN());
    if (scatter && points_grad) grad_points.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  if (!scatter) return {grad_planes, grad_points};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_sample_backward_cpu", [&] {
        backward_impl<scalar_t>(grad_out, planes, points, proj, grad_planes, grad_points, z,
                                trilinear, reduce_mean, nan_propagate, points_grad);
      });
  return {grad_planes, grad_points};
}

}  // namespace
}  // namespace triplane
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("triplane_sample_forward", &portrait_engine::triplane::triplane_sample_forward_cpu);
  m.impl("triplane_sample_backward", &portrait_engine::triplane::triplane_sample_backward_cpu);
}
