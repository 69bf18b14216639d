// Math of importance sampling (EG3D sample_importance + sample_pdf) and of the merge of two
// sorted sample lists, shared by the CPU (importance_cpu.cpp) and CUDA (importance_cuda.cu)
// kernels. See docs/kernel_contract_importance.md and portrait_engine/ops/reference/importance.py.
//
// Templated on the accumulation type `acc_t` (at::opmath_type<scalar_t>: float for float / half /
// bfloat16, double for double) and the storage type `scalar_t`. Plain pointers, no tensors.
//
// Vocabulary, for one ray with S depths z[0..S-1] and S-1 interval weights w[0..S-2]:
//   p[j]   max-pooled weights (kernel 2, stride 1, padding 1 with -inf): p[j] = max(w[j-1], w[j])
//          for j = 0..S-1, the out-of-range neighbours absent
//   ws[j]  smoothed weights, j = 0..S-2: (p[j] + p[j+1]) / 2 + 0.01
//   K      = max(S - 3, 0) pdf bins, bin weights ws[k + 1] + 1e-5 for k = 0..K-1
//   cdf    K + 1 entries: 0, then the running sum of bin weight / (sum of bin weights)
//   m[k]   interval midpoints (z[k] + z[k+1]) / 2; only m[0..K] are ever read
#pragma once

#include <cstdint>

#include "common.h"

namespace portrait_engine {
namespace importance {

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t max_of(acc_t a, acc_t b) {
  return a < b ? b : a;
}

// ws[j] for j in 0..n-1 of the n = S-1 weights `w` (contiguous).
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE acc_t smoothed_weight(const scalar_t* w, int64_t j, int64_t n) {
  const acc_t here = static_cast<acc_t>(w[j]);
  const acc_t left = j > 0 ? max_of(static_cast<acc_t>(w[j - 1]), here) : here;
  const acc_t right = j + 1 < n ? max_of(here, static_cast<acc_t>(w[j + 1])) : here;
  return (left + right) * acc_t(0.5) + acc_t(0.01);
}

template <typename acc_t>
HOST_DEVICE PE_INLINE acc_t pdf_eps() {
  return acc_t(1e-5);
}

// The K + 1 cdf entries of one ray into `cdf`, from its n = S-1 weights. Returns K.
// The sum of the bin weights and the running sum are sequential (torch.sum's order may differ
// in the last bit; the sample is continuous in the cdf, so that difference stays a rounding).
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE int64_t build_cdf(const scalar_t* w, int64_t n, acc_t* cdf) {
  const int64_t bins = n >= 2 ? n - 2 : 0;
  acc_t total = acc_t(0);
  for (int64_t k = 0; k < bins; ++k) {
    total += smoothed_weight<scalar_t, acc_t>(w, k + 1, n) + pdf_eps<acc_t>();
  }
  acc_t running = acc_t(0);
  cdf[0] = acc_t(0);
  for (int64_t k = 0; k < bins; ++k) {
    running += (smoothed_weight<scalar_t, acc_t>(w, k + 1, n) + pdf_eps<acc_t>()) / total;
    cdf[k + 1] = running;
  }
  return bins;
}

// Number of entries of the sorted `values[0..n-1]` that are <= x (searchsorted right=True).
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE int64_t count_at_most(const scalar_t* values, int64_t n, acc_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<acc_t>(values[mid]) <= x) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Number of entries of the sorted `values[0..n-1]` that are < x (searchsorted right=False).
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE int64_t count_less(const scalar_t* values, int64_t n, acc_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<acc_t>(values[mid]) < x) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE acc_t midpoint(const scalar_t* z, int64_t k) {
  return acc_t(0.5) * (static_cast<acc_t>(z[k]) + static_cast<acc_t>(z[k + 1]));
}

// sample_pdf's inverse-CDF sample for one draw u: the bin found by searchsorted(right=True),
// its neighbours clamped to [0, K], a denominator below 1e-5 replaced by 1.
// `index` is that count of cdf entries <= u (inverse_cdf_sample finds it by binary search; a
// caller walking sorted draws can carry it from one draw to the next).
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE acc_t interpolate_cdf(const scalar_t* z, const acc_t* cdf, int64_t bins,
                                            acc_t u, int64_t index) {
  const int64_t below = index > 0 ? index - 1 : 0;
  const int64_t above = index < bins ? index : bins;
  const acc_t cdf_below = cdf[below];
  acc_t denom = cdf[above] - cdf_below;
  if (denom < pdf_eps<acc_t>()) denom = acc_t(1);
  const acc_t m_below = midpoint<scalar_t, acc_t>(z, below);
  const acc_t m_above = midpoint<scalar_t, acc_t>(z, above);
  return m_below + (u - cdf_below) / denom * (m_above - m_below);
}

template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE acc_t inverse_cdf_sample(const scalar_t* z, const acc_t* cdf, int64_t bins,
                                               acc_t u) {
  return interpolate_cdf<scalar_t, acc_t>(z, cdf, bins, u,
                                          count_at_most<acc_t, acc_t>(cdf, bins + 1, u));
}

// Sorts values[0..n-1] in place, ascending (insertion sort: n is EG3D's 48 importance draws of
// one ray, and a thread or task owns the ray).
template <typename acc_t>
HOST_DEVICE PE_INLINE void insertion_sort(acc_t* values, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    const acc_t x = values[i];
    int64_t j = i;
    while (j > 0 && x < values[j - 1]) {
      values[j] = values[j - 1];
      --j;
    }
    values[j] = x;
  }
}

// Merged position of sample i of the first list (ties: the first list first) ...
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE int64_t merged_position_first(int64_t i, acc_t depth,
                                                    const scalar_t* second, int64_t n_second) {
  return i + count_less<scalar_t, acc_t>(second, n_second, depth);
}

// ... and of sample j of the second list.
template <typename scalar_t, typename acc_t>
HOST_DEVICE PE_INLINE int64_t merged_position_second(int64_t j, acc_t depth,
                                                     const scalar_t* first, int64_t n_first) {
  return j + count_at_most<scalar_t, acc_t>(first, n_first, depth);
}

}  // namespace importance
}  // namespace portrait_engine
