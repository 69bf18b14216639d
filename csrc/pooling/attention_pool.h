// Math of attention-weighted embedding pooling, shared by the CPU (attention_pool_cpu.cpp) and
// CUDA (attention_pool_cuda.cu) kernels. See docs/kernel_contract_attention_pool.md.
//
// Templated on the accumulation type `acc_t` (at::opmath_type<scalar_t>: float for float / half
// / bfloat16, double for double) and, where tensor data is read, on the storage type
// `scalar_t`. No allocation, no validation, no tensors: plain values and pointers.
//
// Vocabulary, for one batch element b:
//   F[c, l]   features, element offset c * sc + l * sl (any strides)
//   s[k, l]   scores (contiguous), a[k, l] = exp(s[k, l] - lse[k]) the softmax over l
//   g[k, c]   dL/dout, t[k, l] = sum_c F[c, l] g[k, c], delta[k] = sum_c out[k, c] g[k, c]
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "common.h"

namespace portrait_engine {
namespace pooling {

// ------------------------------------------------------------------------------------------
// Scalar helpers that behave the same on the host and the device
// ------------------------------------------------------------------------------------------

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t exp_of(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);  // CUDA's math headers overload exp for float and double
#else
  return std::exp(x);
#endif
}

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t log_of(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t neg_inf();

template <>
HOST_DEVICE PE_INLINE float neg_inf<float>() {
#if defined(__CUDA_ARCH__)
  return __int_as_float(0xff800000);
#else
  return -std::numeric_limits<float>::infinity();
#endif
}

template <>
HOST_DEVICE PE_INLINE double neg_inf<double>() {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(0xfff0000000000000LL);
#else
  return -std::numeric_limits<double>::infinity();
#endif
}

// ------------------------------------------------------------------------------------------
// Online softmax statistics: running max m and Z = sum exp(s - m)
// ------------------------------------------------------------------------------------------

template <typename acc_t>
struct MaxSum {
  acc_t m;  // max of the scores seen so far (-inf when none)
  acc_t z;  // sum of exp(s - m) over them (0 when none)
};

template <typename acc_t>
HOST_DEVICE PE_INLINE MaxSum<acc_t> empty_max_sum() {
  MaxSum<acc_t> r;
  r.m = neg_inf<acc_t>();
  r.z = acc_t(0);
  return r;
}

// Adds one score. The max subtraction keeps every exponent <= 0, so |s| = 1e4 neither overflows
// nor produces NaN (the first finite score gives 0 * exp(-inf) + 1 = 1).
template <typename acc_t>
HOST_DEVICE PE_INLINE void add_score(MaxSum<acc_t>& r, acc_t s) {
  if (s > r.m) {
    r.z = r.z * exp_of(r.m - s) + acc_t(1);
    r.m = s;
  } else if (r.m != neg_inf<acc_t>()) {  // -inf after -inf adds exp(-inf) = 0, not NaN
    r.z += exp_of(s - r.m);
  }
}

// Merges two partial statistics (either may be empty: m = -inf, z = 0).
template <typename acc_t>
HOST_DEVICE PE_INLINE MaxSum<acc_t> merge(const MaxSum<acc_t>& x, const MaxSum<acc_t>& y) {
  if (y.m == neg_inf<acc_t>()) return x;
  if (x.m == neg_inf<acc_t>()) return y;
  MaxSum<acc_t> r;
  if (x.m >= y.m) {
    r.m = x.m;
    r.z = x.z + y.z * exp_of(y.m - x.m);
  } else {
    r.m = y.m;
    r.z = y.z + x.z * exp_of(x.m - y.m);
  }
  return r;
}

// lse = m + log Z.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t log_sum_exp(const MaxSum<acc_t>& r) {
  return r.m + log_of(r.z);
}

// a = exp(s - lse): the softmax weight of one position.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t softmax_weight(acc_t s, acc_t lse) {
  return exp_of(s - lse);
}

// The same weight from the forward's own statistics: exp(s - m) / Z. Mathematically
// exp(s - lse), but s - m is exact for the large weights, whereas lse = m + log Z is rounded to
// ulp(|m|): with fp32 scores of magnitude 100 (1e4) exp(s - lse) has a relative error of about
// 1e-5 (1e-3), this form one of about 1e-7. The backward only has lse (the contract), so its
// weights carry that rounding.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t forward_weight(acc_t s, const MaxSum<acc_t>& r) {
  return exp_of(s - r.m) / r.z;
}

// ds = a * (t - delta): the gradient of one score.
template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t score_grad(acc_t a, acc_t t, acc_t delta) {
  return a * (t - delta);
}

// ------------------------------------------------------------------------------------------
// Contiguous vector loops (CPU; the CUDA kernels give each element its own lane). With
// OpenMP they vectorise.
// ------------------------------------------------------------------------------------------

// acc[i] += w * src[i]
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE void axpy(acc_t* __restrict__ acc, const scalar_t* __restrict__ src, acc_t w,
                                int64_t n) {
  PE_SIMD
  for (int64_t i = 0; i < n; ++i) {
    acc[i] += w * static_cast<acc_t>(src[i]);
  }
}

// sum_i x[i] * y[i]
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE acc_t dot(const scalar_t* __restrict__ x, const acc_t* __restrict__ y,
                                int64_t n) {
  acc_t sum = acc_t(0);
  PE_SIMD_SUM(sum)
  for (int64_t i = 0; i < n; ++i) {
    sum += static_cast<acc_t>(x[i]) * y[i];
  }
  return sum;
}

// dst[i] = src[i], converted to the storage type.
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE void store(scalar_t* __restrict__ dst, const acc_t* __restrict__ src,
                                 int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

template <typename acc_t>
HOST_DEVICE PE_INLINE void fill(acc_t* __restrict__ dst, acc_t value, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = value;
}

}  // namespace pooling
}  // namespace portrait_engine
