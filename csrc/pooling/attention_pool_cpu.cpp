// CPU kernels of portrait_engine::attention_pool_{forward,backward}
// (contract: docs/kernel_contract_attention_pool.md; shared math: attention_pool.h).
//
// Both passes are at::parallel_for over the batch elements b: a task owns everything of its b
// (all K maps, all C channels, all L positions), so there is no reduction across tasks, no
// atomics, and the result does not depend on the number of threads.
//
// Forward, per b: for each map k, the max and the log-sum-exp of its L scores (two passes over
// the scores, in the accumulation type), then the weights a[k, l]; then one pass over F[b] in
// the order that reads it contiguously:
//   * channels-last (stride_c == 1, C > 1): for each position l, acc[k, :] += a[k, l] F[:, l]
//     (a contiguous axpy over the channels into a K x C accumulator that stays in L1/L2);
//   * otherwise: for each channel c, out[k, c] = dot(a[k, :], F[c, :]) over the contiguous
//     positions, four channels at a time in explicit vectors (dot_rows; float and double) (a
//     strided row, stride_l != 1, is first gathered into a buffer and takes the plain dot).
//
// Backward, per b: g[k, :] and delta[k] = sum_c out[k, c] g[k, c] (from the saved output),
// a[k, l] from the saved lse, then one pass over F[b] that produces grad_features and t:
//   * channels-last: for each l, t[k, l] = dot(F[:, l], g[k, :]) and
//     dF[:, l] = sum_k a[k, l] g[k, :] (an axpy over the contiguous channels; grad_features is
//     a contiguous (B, L, C) buffer, so this row is contiguous too);
//   * otherwise: for each c, t[k, :] += g[k, c] F[c, :] and dF[c, :] = sum_k g[k, c] a[k, :].
// Then ds[k, l] = a[k, l] (t[k, l] - delta[k]).
//
// Both passes are compiled for baseline x86-64, AVX2 and AVX-512 and picked at run time
// (cpu_math::cpu_isa(), capped by PORTRAIT_ENGINE_CPU_ISA); until 2026-11-27 they were built
// for the baseline only (SSE2), and the forward ran at 0.7-0.9x the eager softmax + bmm.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_math.h"
#include "pooling/attention_pool.h"
#include "pooling/checks.h"

namespace portrait_engine {
namespace pooling {
namespace {


// Batch elements per parallel_for chunk: about 32k feature elements per chunk.
int64_t batch_grain(const Sizes& z) {
  const int64_t work = std::max<int64_t>(1, z.C * z.L * z.K);
  return std::max<int64_t>(1, 32768 / work);
}

// a[k, l] = exp(s[k, l] - lse[k]) for the K x L scores of one batch element; lse[k] computed
// here (two passes: the max, then the sum of exp(s - max)). The weights are evaluated as
// exp(s - m) / Z (forward_weight), which does not carry lse's rounding.
template <typename scalar_t, typename acc_t>
void softmax_rows(const scalar_t* s, int64_t K, int64_t L, acc_t* lse, acc_t* a) {
  for (int64_t k = 0; k < K; ++k) {
    const scalar_t* row = s + k * L;
    acc_t m = neg_inf<acc_t>();
    for (int64_t l = 0; l < L; ++l) m = std::max(m, static_cast<acc_t>(row[l]));
    acc_t sum = acc_t(0);
    for (int64_t l = 0; l < L; ++l) sum += exp_of(static_cast<acc_t>(row[l]) - m);
    MaxSum<acc_t> r;
    r.m = m;
    r.z = sum;
    lse[k] = log_sum_exp(r);
    for (int64_t l = 0; l < L; ++l) {
      a[k * L + l] = forward_weight(static_cast<acc_t>(row[l]), r);
    }
  }
}

// Row c of F[b] (L positions) as a contiguous pointer: the row itself when stride_l == 1,
// otherwise gathered into `buffer`.
template <typename scalar_t, typename acc_t, typename Fn>
void with_row(const scalar_t* row, int64_t L, int64_t sl, acc_t* buffer, Fn&& fn) {
  if (sl == 1) {
    fn(row);
  } else {
    for (int64_t l = 0; l < L; ++l) buffer[l] = static_cast<acc_t>(row[l * sl]);
    fn(static_cast<const acc_t*>(buffer));
  }
}

// Everything a call's batch ranges read and write (raw pointers, sizes).
template <typename scalar_t>
struct PoolArgs {
  using acc_t = at::opmath_type<scalar_t>;
  Sizes z;
  const scalar_t* features;
  const scalar_t* scores;
  // forward outputs
  scalar_t* out;
  acc_t* lse;
  // backward: the output gradient, the forward's outputs, the input gradients
  const scalar_t* grad_out;
  const scalar_t* saved_out;
  const acc_t* saved_lse;
  scalar_t* grad_features;  // contiguous (B, L, C) when channels-last, (B, C, L) otherwise
  scalar_t* grad_scores;
};

// sums[i] = dot(F[c + i, :], a) for kRows consecutive rows of contiguous positions (row stride
// ld), in vectors of kVB bytes: the weights are loaded once for the rows, each row's vector
// sum is reduced by halving (cpu_math::lane_sum), and the last L % lanes positions are added
// after it. With L = 49 (7x7) the loop's own reduction (omp simd) cost more than the products:
// its lane-by-lane sums through memory were most of the forward's time (perf, 2026-11-27).
template <int kRows, int kVB, typename acc_t>
PE_INLINE void dot_rows(const acc_t* __restrict__ rows, int64_t ld, const acc_t* __restrict__ a,
                        int64_t L, acc_t* __restrict__ sums) {
  using V = typename cpu_math::VecOf<acc_t, kVB>::type;
  constexpr int kLanes = cpu_math::VecOf<acc_t, kVB>::kLanes;
  V acc[kRows];
  for (int i = 0; i < kRows; ++i) acc[i] = V{};
  int64_t l = 0;
  for (; l + kLanes <= L; l += kLanes) {
    V w;
    std::memcpy(&w, a + l, sizeof(V));
    for (int i = 0; i < kRows; ++i) {
      V x;
      std::memcpy(&x, rows + i * ld + l, sizeof(V));
      acc[i] += x * w;
    }
  }
  for (int i = 0; i < kRows; ++i) {
    acc_t sum = cpu_math::lane_sum<acc_t, kVB>(acc[i]);
    for (int64_t m = l; m < L; ++m) sum += rows[i * ld + m] * a[m];
    sums[i] = sum;
  }
}

// Forward of batch elements [begin, end) (the file comment's forward).
template <typename scalar_t, int kVB>
void forward_batches(const PoolArgs<scalar_t>& p, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const Sizes& z = p.z;
  const int64_t C = z.C, K = z.K, L = z.L;
  constexpr int64_t kRows = 4;
  std::vector<acc_t> a(K * L), acc(z.channels_last ? K * C : 0), row(z.sl == 1 ? 0 : L);
  for (int64_t b = begin; b < end; ++b) {
    softmax_rows(p.scores + b * K * L, K, L, p.lse + b * K, a.data());
    const scalar_t* fb = p.features + b * z.sb;
    scalar_t* ob = p.out + b * K * C;
    if (z.channels_last) {
      fill(acc.data(), acc_t(0), K * C);
      for (int64_t l = 0; l < L; ++l) {
        const scalar_t* column = fb + l * z.sl;  // F[:, l], contiguous
        for (int64_t k = 0; k < K; ++k) axpy(acc.data() + k * C, column, a[k * L + l], C);
      }
      store(ob, acc.data(), K * C);
      continue;
    }
    int64_t c = 0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      // rows of contiguous positions (float, double): kRows channels per pass
      acc_t sums[kRows];
      for (; z.sl == 1 && c + kRows <= C; c += kRows) {
        for (int64_t k = 0; k < K; ++k) {
          dot_rows<kRows, kVB>(fb + c * z.sc, z.sc, a.data() + k * L, L, sums);
          for (int64_t i = 0; i < kRows; ++i) ob[k * C + c + i] = static_cast<scalar_t>(sums[i]);
        }
      }
    }
    for (; c < C; ++c) {
      with_row(fb + c * z.sc, L, z.sl, row.data(), [&](const auto* r) {
        for (int64_t k = 0; k < K; ++k) {
          ob[k * C + c] = static_cast<scalar_t>(dot(r, a.data() + k * L, L));
        }
      });
    }
  }
}

// Backward of batch elements [begin, end) (the file comment's backward).
template <typename scalar_t>
void backward_batches(const PoolArgs<scalar_t>& p, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const Sizes& z = p.z;
  const int64_t C = z.C, K = z.K, L = z.L;
  std::vector<acc_t> g(K * C), a(K * L), t(K * L), delta(K);
  std::vector<acc_t> d(z.channels_last ? C : L), row(z.sl == 1 ? 0 : L);
  for (int64_t b = begin; b < end; ++b) {
    const scalar_t* gob = p.grad_out + b * K * C;
    const scalar_t* ob = p.saved_out + b * K * C;
    for (int64_t k = 0; k < K; ++k) {
      acc_t sum = acc_t(0);
      for (int64_t c = 0; c < C; ++c) {
        const acc_t gv = static_cast<acc_t>(gob[k * C + c]);
        g[k * C + c] = gv;
        sum += static_cast<acc_t>(ob[k * C + c]) * gv;
      }
      delta[k] = sum;
      const scalar_t* srow = p.scores + (b * K + k) * L;
      const acc_t lse_k = p.saved_lse[b * K + k];
      for (int64_t l = 0; l < L; ++l) {
        a[k * L + l] = softmax_weight(static_cast<acc_t>(srow[l]), lse_k);
      }
    }
    const scalar_t* fb = p.features + b * z.sb;
    if (z.channels_last) {
      scalar_t* gfb = p.grad_features + b * L * C;  // (L, C)
      for (int64_t l = 0; l < L; ++l) {
        const scalar_t* column = fb + l * z.sl;  // F[:, l], contiguous
        if (K == 1) {  // one fused pass: t = dot(F[:, l], g), dF[:, l] = a[l] g
          const acc_t* g0 = g.data();
          const acc_t a0 = a[l];
          scalar_t* dst = gfb + l * C;
          acc_t sum = acc_t(0);
          PE_SIMD_SUM(sum)
          for (int64_t c = 0; c < C; ++c) {
            sum += static_cast<acc_t>(column[c]) * g0[c];
            dst[c] = static_cast<scalar_t>(a0 * g0[c]);
          }
          t[l] = sum;
          continue;
        }
        fill(d.data(), acc_t(0), C);
        for (int64_t k = 0; k < K; ++k) {
          t[k * L + l] = dot(column, g.data() + k * C, C);
          axpy(d.data(), g.data() + k * C, a[k * L + l], C);
        }
        store(gfb + l * C, d.data(), C);
      }
    } else {
      scalar_t* gfb = p.grad_features + b * C * L;  // (C, L)
      fill(t.data(), acc_t(0), K * L);
      for (int64_t c = 0; c < C; ++c) {
        with_row(fb + c * z.sc, L, z.sl, row.data(), [&](const auto* r) {
          if (K == 1) {  // one fused pass: t += g[c] F[c, :], d = g[c] a
            const acc_t gc = g[c];
            acc_t* t0 = t.data();
            const acc_t* a0 = a.data();
            acc_t* d0 = d.data();
            PE_SIMD
            for (int64_t l = 0; l < L; ++l) {
              t0[l] += gc * static_cast<acc_t>(r[l]);
              d0[l] = gc * a0[l];
            }
            return;
          }
          fill(d.data(), acc_t(0), L);
          for (int64_t k = 0; k < K; ++k) {
            const acc_t gk = g[k * C + c];
            axpy(t.data() + k * L, r, gk, L);
            axpy(d.data(), a.data() + k * L, gk, L);
          }
        });
        store(gfb + c * L, d.data(), L);
      }
    }
    scalar_t* gsb = p.grad_scores + b * K * L;
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t l = 0; l < L; ++l) {
        gsb[k * L + l] = static_cast<scalar_t>(score_grad(a[k * L + l], t[k * L + l], delta[k]));
      }
    }
  }
}

// The same ranges compiled for AVX2 and AVX-512 (flatten: the helpers inlined into them).
#if PE_HAVE_ISA_CLONES
PE_ISA_CLONES_WIDTH(forward_batches, PoolArgs)
PE_ISA_CLONES(backward_batches, PoolArgs)
#endif

template <typename scalar_t>
using RangeFn = void (*)(const PoolArgs<scalar_t>&, int64_t, int64_t);

template <typename scalar_t>
RangeFn<scalar_t> pick(bool backward) {
  return backward ? PE_ISA_PICK(backward_batches, scalar_t)
                  : PE_ISA_PICK_WIDTH(forward_batches, scalar_t);
}

// The inputs' part of a call's PoolArgs; each direction adds its outputs (and saved tensors).
template <typename scalar_t>
PoolArgs<scalar_t> pool_args(const at::Tensor& features, const at::Tensor& scores,
                             const Sizes& z) {
  PoolArgs<scalar_t> p{};
  p.z = z;
  p.features = features.data_ptr<scalar_t>();
  p.scores = scores.data_ptr<scalar_t>();
  return p;
}

// Over the batch with at::parallel_for: a task owns whole batch elements.
template <typename scalar_t>
void run(const PoolArgs<scalar_t>& p, bool backward) {
  const RangeFn<scalar_t> fn = pick<scalar_t>(backward);
  at::parallel_for(0, p.z.B, batch_grain(p.z),
                   [&](int64_t begin, int64_t end) { fn(p, begin, end); });
}

std::tuple<at::Tensor, at::Tensor> attention_pool_forward_cpu(const at::Tensor& features,
                                                              const at::Tensor& scores) {
  const Sizes z = check_inputs(features, scores, kCpuSide);
  at::Tensor out = new_output({z.B, z.K, z.C}, features.options());
  at::Tensor lse = new_output({z.B, z.K}, features.options().dtype(acc_dtype(features)));
  if (z.B == 0) return {out, lse};
  // C == 0 still runs: out is empty but lse is not.
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "attention_pool_forward_cpu",
      [&] {
        PoolArgs<scalar_t> p = pool_args<scalar_t>(features, scores, z);
        p.out = out.data_ptr<scalar_t>();
        p.lse = lse.data_ptr<at::opmath_type<scalar_t>>();
        run(p, /*backward=*/false);
      });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_backward_cpu(const at::Tensor& grad_out,
                                                               const at::Tensor& features,
                                                               const at::Tensor& scores,
                                                               const at::Tensor& lse,
                                                               const at::Tensor& out) {
  const Sizes z = check_inputs(features, scores, kCpuSide);
  check_backward(grad_out, lse, out, features, z, kCpuSide);
  at::Tensor grad_features =
      z.channels_last ? new_output({z.B, z.L, z.C}, features.options()).permute({0, 2, 1})
                      : new_output({z.B, z.C, z.L}, features.options());
  at::Tensor grad_scores = new_output({z.B, z.K, z.L}, features.options());
  if (z.B == 0) return {grad_features, grad_scores};
  // C == 0 still runs: grad_scores is then 0 (t = delta = 0).
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "attention_pool_backward_cpu", [&] {
        PoolArgs<scalar_t> p = pool_args<scalar_t>(features, scores, z);
        p.saved_out = out.data_ptr<scalar_t>();
        p.saved_lse = lse.data_ptr<at::opmath_type<scalar_t>>();
        p.grad_out = grad_out.data_ptr<scalar_t>();
        p.grad_features = grad_features.data_ptr<scalar_t>();
        p.grad_scores = grad_scores.data_ptr<scalar_t>();
        run(p, /*backward=*/true);
      });
  return {grad_features, grad_scores};
}

}  // namespace
}  // namespace pooling
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("attention_pool_forward", &portrait_engine::pooling::attention_pool_forward_cpu);
  m.impl("attention_pool_backward", &portrait_engine::pooling::attention_pool_backward_cpu);
}
