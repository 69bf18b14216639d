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
//     positions (a strided row, stride_l != 1, is first gathered into a buffer).
//
// Backward, per b: g[k, :] and delta[k] = sum_c out[k, c] g[k, c] (from the saved output),
// a[k, l] from the saved lse, then one pass over F[b] that produces grad_features and t:
//   * channels-last: for each l, t[k, l] = dot(F[:, l], g[k, :]) and
//     dF[:, l] = sum_k a[k, l] g[k, :] (an axpy over the contiguous channels; grad_features is
//     a contiguous (B, L, C) buffer, so this row is contiguous too);
//   * otherwise: for each c, t[k, :] += g[k, c] F[c, :] and dF[c, :] = sum_k g[k, c] a[k, :].
// Then ds[k, l] = a[k, l] (t[k, l] - delta[k]).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

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

template <typename scalar_t>
void forward_impl(const at::Tensor& features, const at::Tensor& scores, at::Tensor& out,
                  at::Tensor& lse, const Sizes& z) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* f_ptr = features.data_ptr<scalar_t>();
  const scalar_t* s_ptr = scores.data_ptr<scalar_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();
  acc_t* lse_ptr = lse.data_ptr<acc_t>();
  const int64_t C = z.C, K = z.K, L = z.L;

  at::parallel_for(0, z.B, batch_grain(z), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> a(K * L), acc(z.channels_last ? K * C : 0), row(z.sl == 1 ? 0 : L);
    for (int64_t b = begin; b < end; ++b) {
      softmax_rows(s_ptr + b * K * L, K, L, lse_ptr + b * K, a.data());
      const scalar_t* fb = f_ptr + b * z.sb;
      scalar_t* ob = out_ptr + b * K * C;
      if (z.channels_last) {
        fill(acc.data(), acc_t(0), K * C);
        for (int64_t l = 0; l < L; ++l) {
          const scalar_t* column = fb + l * z.sl;  // F[:, l], contiguous
          for (int64_t k = 0; k < K; ++k) axpy(acc.data() + k * C, column, a[k * L + l], C);
        }
        store(ob, acc.data(), K * C);
      } else {
        for (int64_t c = 0; c < C; ++c) {
          with_row(fb + c * z.sc, L, z.sl, row.data(), [&](const auto* r) {
            for (int64_t k = 0; k < K; ++k) {
              ob[k * C + c] = static_cast<scalar_t>(dot(r, a.data() + k * L, L));
            }
          });
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& features,
                   const at::Tensor& scores, const at::Tensor& lse, const at::Tensor& out,
                   at::Tensor& grad_features, at::Tensor& grad_scores, const Sizes& z) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* go_ptr = grad_out.data_ptr<scalar_t>();
  const scalar_t* f_ptr = features.data_ptr<scalar_t>();
  const scalar_t* s_ptr = scores.data_ptr<scalar_t>();
  const acc_t* lse_ptr = lse.data_ptr<acc_t>();
  const scalar_t* out_ptr = out.data_ptr<scalar_t>();
  // grad_features' storage: contiguous (B, L, C) when channels-last, (B, C, L) otherwise.
  scalar_t* gf_ptr = grad_features.data_ptr<scalar_t>();
  scalar_t* gs_ptr = grad_scores.data_ptr<scalar_t>();
  const int64_t C = z.C, K = z.K, L = z.L;

  at::parallel_for(0, z.B, batch_grain(z), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(K * C), a(K * L), t(K * L), delta(K);
    std::vector<acc_t> d(z.channels_last ? C : L), row(z.sl == 1 ? 0 : L);
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* gob = go_ptr + b * K * C;
      const scalar_t* ob = out_ptr + b * K * C;
      for (int64_t k = 0; k < K; ++k) {
        acc_t sum = acc_t(0);
        for (int64_t c = 0; c < C; ++c) {
          const acc_t gv = static_cast<acc_t>(gob[k * C + c]);
          g[k * C + c] = gv;
          sum += static_cast<acc_t>(ob[k * C + c]) * gv;
        }
        delta[k] = sum;
        const scalar_t* srow = s_ptr + (b * K + k) * L;
        const acc_t lse_k = lse_ptr[b * K + k];
        for (int64_t l = 0; l < L; ++l) {
          a[k * L + l] = softmax_weight(static_cast<acc_t>(srow[l]), lse_k);
        }
      }
      const scalar_t* fb = f_ptr + b * z.sb;
      if (z.channels_last) {
        scalar_t* gfb = gf_ptr + b * L * C;  // (L, C)
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
        scalar_t* gfb = gf_ptr + b * C * L;  // (C, L)
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
      scalar_t* gsb = gs_ptr + b * K * L;
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t l = 0; l < L; ++l) {
          gsb[k * L + l] = static_cast<scalar_t>(score_grad(a[k * L + l], t[k * L + l], delta[k]));
        }
      }
    }
  });
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
      [&] { forward_impl<scalar_t>(features, scores, out, lse, z); });
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
        backward_impl<scalar_t>(grad_out, features, scores, lse, out, grad_features, grad_scores,
                                z);
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
