// Per-element math of tri-plane / tri-grid sampling, shared by the CPU (triplane_cpu.cpp) and
// CUDA (triplane_cuda.cu) kernels. See docs/kernel_contract_triplane.md for the contract.
//
// Everything is templated on the accumulation type `acc_t` (at::opmath_type<scalar_t>: float
// for float / half / bfloat16, double for double) and, where tensor data is read, on the
// storage type `scalar_t`. No allocation, no validation, no tensors: plain values and pointers.
//
// Vocabulary, for one (batch b, point n, plane p):
//   g = (gx, gy, gz)     the point projected by proj[p] (gx -> W, gy -> H, gz -> D)
//   i = (ix, iy, iz)     g unnormalised to texel space (align_corners = False)
//   Axis                 the two texels along one axis: floor index, weights, bounds
//   Footprint            the three axes of one sample
//   Corner k             one of the 4 (bilinear) or 8 (trilinear) texels: bit 0 of k picks x0/x1,
//                        bit 1 y0/y1, bit 2 z0/z1
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "common.h"

namespace portrait_engine {
namespace triplane {

// ------------------------------------------------------------------------------------------
// Scalar helpers that behave the same on the host and the device
// ------------------------------------------------------------------------------------------

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t floor_of(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::floor(x);  // CUDA's math headers overload floor for float and double
#else
  return std::floor(x);
#endif
}

template <typename acc_t>
HOST_DEVICE PE_INLINE bool is_finite(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::isfinite(x);
#else
  return std::isfinite(x);
#endif
}

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t quiet_nan();

template <>
HOST_DEVICE PE_INLINE float quiet_nan<float>() {
#if defined(__CUDA_ARCH__)
  return __int_as_float(0x7fc00000);
#else
  return std::numeric_limits<float>::quiet_NaN();
#endif
}

template <>
HOST_DEVICE PE_INLINE double quiet_nan<double>() {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(0x7ff8000000000000LL);
#else
  return std::numeric_limits<double>::quiet_NaN();
#endif
}

// ------------------------------------------------------------------------------------------
// Geometry and coordinates
// ------------------------------------------------------------------------------------------

// Sizes of one plane, laid out (D, H, W, C) channels-last and contiguous.
struct Geometry {
  int64_t D, H, W, C;
  HOST_DEVICE PE_INLINE int64_t plane_numel() const { return D * H * W * C; }
};

// g[k] = sum_j x[j] * m[j][k], with m = proj[p] row-major (3, 3).
template <typename acc_t>
HOST_DEVICE PE_INLINE void project(acc_t x, acc_t y, acc_t z, const acc_t* m, acc_t& gx,
                                   acc_t& gy, acc_t& gz) {
  gx = x * m[0] + y * m[3] + z * m[6];
  gy = x * m[1] + y * m[4] + z * m[7];
  gz = x * m[2] + y * m[5] + z * m[8];
}

// align_corners = False: i = ((g + 1) * size - 1) / 2.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t unnormalize(acc_t g, int64_t size) {
  return ((g + acc_t(1)) * static_cast<acc_t>(size) - acc_t(1)) / acc_t(2);
}

// The two texels i0 = floor(i) and i0 + 1 along one axis, with their linear weights and
// bounds. The bounds are tested on the floating-point index, so NaN (compares false), inf and
// huge values are simply out of bounds, and i0 is only converted to an integer when at least
// one of the two texels is in [0, size - 1] (then i0 is in [-1, size - 1]).
template <typename acc_t>
struct Axis {
  int64_t i0;
  acc_t w0, w1;  // weights of i0 and i0 + 1: 1 - t and t, t = i - i0
  bool in0, in1;
};

template <typename acc_t>
HOST_DEVICE PE_INLINE Axis<acc_t> make_axis(acc_t i, int64_t size) {
  Axis<acc_t> a;
  const acc_t f0 = floor_of(i);
  const acc_t f1 = f0 + acc_t(1);
  const acc_t hi = static_cast<acc_t>(size - 1);
  a.w1 = i - f0;
  a.w0 = acc_t(1) - a.w1;
  a.in0 = (f0 >= acc_t(0)) && (f0 <= hi);
  a.in1 = (f1 >= acc_t(0)) && (f1 <= hi);
  a.i0 = (a.in0 || a.in1) ? static_cast<int64_t>(f0) : int64_t(0);
  return a;
}

// The degenerate z axis of a bilinear sample: texel 0 with weight 1, texel 1 absent.
template <typename acc_t>
HOST_DEVICE PE_INLINE Axis<acc_t> flat_axis() {
  Axis<acc_t> a;
  a.i0 = 0;
  a.w0 = acc_t(1);
  a.w1 = acc_t(0);
  a.in0 = true;
  a.in1 = false;
  return a;
}

template <typename acc_t>
struct Footprint {
  Axis<acc_t> x, y, z;
  bool nonfinite;  // ix or iy (or iz when trilinear) is NaN or +-inf
};

template <typename acc_t>
HOST_DEVICE PE_INLINE Footprint<acc_t> make_footprint(acc_t gx, acc_t gy, acc_t gz,
                                                      bool trilinear, const Geometry& s) {
  Footprint<acc_t> f;
  const acc_t ix = unnormalize(gx, s.W);
  const acc_t iy = unnormalize(gy, s.H);
  f.x = make_axis(ix, s.W);
  f.y = make_axis(iy, s.H);
  bool finite = is_finite(ix) && is_finite(iy);
  if (trilinear) {
    const acc_t iz = unnormalize(gz, s.D);
    f.z = make_axis(iz, s.D);
    finite = finite && is_finite(iz);
  } else {
    f.z = flat_axis<acc_t>();
  }
  f.nonfinite = !finite;
  return f;
}

// Number of corners of a sample.
HOST_DEVICE PE_INLINE int num_corners(bool trilinear) { return trilinear ? 8 : 4; }

// Corner k of a footprint: whether it is in bounds, its element offset in the plane (of its
// channel 0), its weight and the derivatives of the weight with respect to ix, iy, iz.
template <typename acc_t>
struct Corner {
  bool valid;
  int64_t offset;
  int64_t row;  // z * H + y: the corner's row in the plane's (D * H) rows
  acc_t w, dwx, dwy, dwz;
};

template <typename acc_t>
HOST_DEVICE PE_INLINE Corner<acc_t> corner(const Footprint<acc_t>& f, int k,
                                           const Geometry& s) {
  const bool xi = (k & 1) != 0, yi = (k & 2) != 0, zi = (k & 4) != 0;
  const acc_t wx = xi ? f.x.w1 : f.x.w0;
  const acc_t wy = yi ? f.y.w1 : f.y.w0;
  const acc_t wz = zi ? f.z.w1 : f.z.w0;
  const acc_t sx = xi ? acc_t(1) : acc_t(-1);
  const acc_t sy = yi ? acc_t(1) : acc_t(-1);
  const acc_t sz = zi ? acc_t(1) : acc_t(-1);
  Corner<acc_t> c;
  c.valid = (xi ? f.x.in1 : f.x.in0) && (yi ? f.y.in1 : f.y.in0) && (zi ? f.z.in1 : f.z.in0);
  c.w = wx * wy * wz;
  c.dwx = sx * wy * wz;
  c.dwy = wx * sy * wz;
  c.dwz = wx * wy * sz;
  if (c.valid) {
    c.row = (f.z.i0 + zi) * s.H + (f.y.i0 + yi);
    c.offset = (c.row * s.W + (f.x.i0 + xi)) * s.C;
  } else {
    c.row = -1;
    c.offset = 0;
  }
  return c;
}

// dL/dg of one plane from dL/di (already summed over channels and corners) and its
// contribution to dL/dpoint: out[j] += sum_k dL/dg[k] * m[j][k]. di -> dg is the chain rule of
// the unnormalisation (size / 2). `nan_out`: the sample was non-finite and NaN propagates.
template <typename acc_t>
HOST_DEVICE PE_INLINE void add_point_grad(acc_t dix, acc_t diy, acc_t diz, bool nan_out,
                                          bool trilinear, const acc_t* m, const Geometry& s,
                                          acc_t& out0, acc_t& out1, acc_t& out2) {
  acc_t dgx = dix * (static_cast<acc_t>(s.W) / acc_t(2));
  acc_t dgy = diy * (static_cast<acc_t>(s.H) / acc_t(2));
  acc_t dgz = trilinear ? diz * (static_cast<acc_t>(s.D) / acc_t(2)) : acc_t(0);
  if (nan_out) {
    dgx = quiet_nan<acc_t>();
    dgy = quiet_nan<acc_t>();
    dgz = trilinear ? quiet_nan<acc_t>() : acc_t(0);
  }
  out0 += dgx * m[0] + dgy * m[1] + dgz * m[2];
  out1 += dgx * m[3] + dgy * m[4] + dgz * m[5];
  out2 += dgx * m[6] + dgy * m[7] + dgz * m[8];
}

// ------------------------------------------------------------------------------------------
// Channel loops (CPU; the CUDA kernels give each channel its own thread). The channel vector
// of a texel is contiguous (channels-last), so these vectorise.
// ------------------------------------------------------------------------------------------

// acc[c] += w * src[c]
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE void gather_axpy(acc_t* __restrict__ acc, const scalar_t* __restrict__ src,
                                       acc_t w, int64_t C) {
  PE_SIMD
  for (int64_t c = 0; c < C; ++c) {
    acc[c] += w * static_cast<acc_t>(src[c]);
  }
}

// dst[c] += w * src[c], dst in the accumulation type (the gradient of a plane).
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE void scatter_axpy(acc_t* __restrict__ dst, const scalar_t* __restrict__ src,
                                        acc_t w, int64_t C) {
  PE_SIMD
  for (int64_t c = 0; c < C; ++c) {
    dst[c] += w * static_cast<acc_t>(src[c]);
  }
}

// sum_c a[c] * g[c]
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE acc_t dot(const scalar_t* __restrict__ a, const acc_t* __restrict__ g,
                                int64_t C) {
  acc_t sum = acc_t(0);
  PE_SIMD_SUM(sum)
  for (int64_t c = 0; c < C; ++c) {
    sum += static_cast<acc_t>(a[c]) * g[c];
  }
  return sum;
}

template <typename acc_t>
HOST_DEVICE PE_INLINE void fill(acc_t* __restrict__ dst, acc_t value, int64_t C) {
  for (int64_t c = 0; c < C; ++c) dst[c] = value;
}

// Bands of rows per plane for the CPU backwards' deterministic scatter of plane gradients
// (triplane_cpu.cpp, render_cpu.cpp): tasks (plane, band), each walking all the points in order
// and adding only the corners whose row falls in its band. More than one band only when there
// are fewer planes than threads: every band walks all the points, and that walk, not the
// scatter, is most of the pass (measurements in triplane_cpu.cpp's backward_impl).
inline int64_t scatter_bands(int64_t planes, int64_t rows, int64_t threads) {
  if (planes >= threads) return 1;
  const int64_t bands = (threads + planes - 1) / planes;
  return bands < 1 ? 1 : (bands < rows ? bands : rows);
}

}  // namespace triplane
}  // namespace portrait_engine
