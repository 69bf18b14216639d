// CUDA kernels of portrait_engine::attention_pool_{forward,backward}
// (contract: docs/kernel_contract_attention_pool.md; shared math: attention_pool.h).
//
// The op is memory bound: the features (B * C * L elements) dominate the bytes. Each feature
// element is read exactly once in the forward and once in the backward, and each element of
// grad_features written once, by lanes that walk the unit-stride dimension of the features
// (so the loads and stores are coalesced whichever the layout). Accumulation is in acc_t (fp32,
// fp64 for double); no atomics anywhere, so the results are deterministic.
//
// Blocks own tiles (b, channel tile): splitting C gives enough blocks at every B (the
// benchmark's B = 256..512 with C = 512 gives 2k..4k blocks). The scores of one b (K * L) are
// tiny next to a tile of features (tile_C * L), so every block recomputes what it needs of them.
// The positions are processed in chunks of kChunk, whose softmax weights a[k, l] are staged in
// shared memory.
//
// Forward, block (b, tile), 256 threads:
//   1. softmax statistics (m, Z) of the K rows of scores: one warp per map k, online max / sum
//      per lane, merged by warp shuffles (attention_pool.h: add_score / merge). The block of
//      tile 0 writes lse = m + log Z.
//   2. per chunk, a[k, l] = exp(s - m) / Z into shared memory, then:
//      * channels-last (stride_c == 1, C > 1), tile of 64 channels: thread (c, l-group of 4);
//        lanes read consecutive channels of one position. Each thread sums its channel over its
//        positions; the 4 l-groups are summed in shared memory in a fixed order.
//      * otherwise (stride_l == 1, or any strides), tile of 32 channels: one warp per channel
//        row (4 rows per warp), lanes over the positions; the sum over l is a warp shuffle
//        reduction.
//
// Backward: the split of C makes t[k, l] = sum_c F[c, l] g[k, c] a reduction across blocks.
// Rather than atomics (non-deterministic, and fp32 atomics on a tiny K * L array contend), it is
// a two-level reduction:
//   kernel 1, block (b, tile): grad_features of its tile (an elementwise
//      dF[c, l] = sum_k a[k, l] g[k, c]) and its tile's partial t, reduced within the block
//      (warp shuffle across the channels for channels-last, where a warp owns a position row;
//      shared memory across the channel groups otherwise), written to a workspace
//      (B, tiles, K, L) in acc_t: a few per cent of the feature bytes at most (L / C_tile
//      values per feature row of the tile... precisely K * L per tile_C * L features).
//   kernel 2, one block per b: t = the sum of the partials in tile order, delta[k] =
//      sum_c out[k, c] g[k, c] (a block reduction in a fixed order), ds = a (t - delta).
// A block owning a whole batch element would avoid the workspace but leaves too few blocks at
// small B and a serial loop over C per block; the second launch is a few microseconds and
// reads B * (tiles * K * L + 2 * K * C) values, small next to the features.
//
// Index math is int64 for every tensor offset. K <= kMaxK (8) maps per launch (the contract's
// range); the accumulators are register arrays of KC = 1, 2, 4 or 8 entries. More maps are
// pooled kMaxK at a time by the host functions (the features are then read once per group).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
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

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 128;  // positions per shared-memory chunk of softmax weights
constexpr int kMaxK = 8;
constexpr unsigned kFullMask = 0xffffffffu;

// Forward tiles.
constexpr int kFwdClChannels = 64;                  // channels-last: 64 channels x 4 l-groups
constexpr int kFwdClGroups = kThreads / kFwdClChannels;
constexpr int kFwdRowsPerWarp = 4;                  // other layouts: 8 warps x 4 channel rows
constexpr int kFwdRowChannels = kWarps * kFwdRowsPerWarp;
// Backward tiles.
constexpr int kBwdClChannels = 128;   // channels-last: a warp covers 128 channels of a position
constexpr int kBwdRowChannels = 64;   // other layouts: 64 channel rows per tile

template <typename acc_t>
__device__ PE_INLINE acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// (m, Z) of the K score rows of one batch element into shared memory; one warp per map.
template <typename scalar_t, typename acc_t>
__device__ void softmax_stats(const scalar_t* __restrict__ s, int K, int64_t L, acc_t* m_s,
                              acc_t* z_s) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  for (int k = warp; k < K; k += kWarps) {
    MaxSum<acc_t> r = empty_max_sum<acc_t>();
    for (int64_t l = lane; l < L; l += 32) add_score(r, static_cast<acc_t>(s[k * L + l]));
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      MaxSum<acc_t> o;
      o.m = __shfl_xor_sync(kFullMask, r.m, offset);
      o.z = __shfl_xor_sync(kFullMask, r.z, offset);
      r = merge(r, o);
    }
    if (lane == 0) {
      m_s[k] = r.m;
      z_s[k] = r.z;
    }
  }
}

// ------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------

template <typename scalar_t, typename acc_t, int KC, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    attention_pool_forward_kernel(const scalar_t* __restrict__ features,
                                  const scalar_t* __restrict__ scores, scalar_t* __restrict__ out,
                                  acc_t* __restrict__ lse, int64_t C, int K, int64_t L,
                                  int64_t sb, int64_t sc, int64_t sl, int64_t tiles) {
  __shared__ acc_t m_s[KC], z_s[KC];
  __shared__ acc_t a_s[KC][kChunk];
  __shared__ acc_t red_s[kChannelsLast ? kFwdClGroups : 1][KC][kFwdClChannels];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t b = static_cast<int64_t>(blockIdx.x) / tiles;
  const int64_t tile = static_cast<int64_t>(blockIdx.x) % tiles;
  const scalar_t* s_b = scores + b * K * L;
  const scalar_t* f_b = features + b * sb;

  softmax_stats(s_b, K, L, m_s, z_s);
  __syncthreads();
  if (tile == 0 && tid < K) {
    MaxSum<acc_t> r;
    r.m = m_s[tid];
    r.z = z_s[tid];
    lse[b * K + tid] = log_sum_exp(r);
  }

  constexpr int kRows = kChannelsLast ? 1 : kFwdRowsPerWarp;
  acc_t acc[kRows][KC];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
#pragma unroll
    for (int k = 0; k < KC; ++k) acc[i][k] = acc_t(0);
  }
  const int warp = tid / 32, lane = tid % 32;
  // channels-last: this thread's channel and l-group
  const int64_t c_cl = tile * kFwdClChannels + tid % kFwdClChannels;
  const int group = tid / kFwdClChannels;

  for (int64_t l0 = 0; l0 < L; l0 += kChunk) {
    const int n = static_cast<int>(L - l0 < kChunk ? L - l0 : kChunk);
    for (int i = tid; i < K * n; i += kThreads) {
      const int k = i / n, j = i % n;
      MaxSum<acc_t> r;
      r.m = m_s[k];
      r.z = z_s[k];
      a_s[k][j] = forward_weight(static_cast<acc_t>(s_b[k * L + l0 + j]), r);
    }
    __syncthreads();
    if constexpr (kChannelsLast) {
      if (c_cl < C) {
        const scalar_t* f = f_b + c_cl * sc + l0 * sl;
#pragma unroll 4
        for (int j = group; j < n; j += kFwdClGroups) {
          const acc_t v = static_cast<acc_t>(f[j * sl]);
#pragma unroll
          for (int k = 0; k < KC; ++k) {
            if (k < K) acc[0][k] += a_s[k][j] * v;
          }
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int64_t c = tile * kFwdRowChannels + warp + kWarps * i;
        if (c < C) {
          const scalar_t* f = f_b + c * sc + l0 * sl;
          for (int j = lane; j < n; j += 32) {
            const acc_t v = static_cast<acc_t>(f[j * sl]);
#pragma unroll
            for (int k = 0; k < KC; ++k) {
              if (k < K) acc[i][k] += a_s[k][j] * v;
            }
          }
        }
      }
    }
    __syncthreads();  // a_s is overwritten by the next chunk
  }

  if constexpr (kChannelsLast) {
#pragma unroll
    for (int k = 0; k < KC; ++k) red_s[group][k][tid % kFwdClChannels] = acc[0][k];
    __syncthreads();
    if (group == 0 && c_cl < C) {
      for (int k = 0; k < K && k < KC; ++k) {
        acc_t sum = acc_t(0);
#pragma unroll
        for (int g = 0; g < kFwdClGroups; ++g) sum += red_s[g][k][tid];
        out[(b * K + k) * C + c_cl] = static_cast<scalar_t>(sum);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t c = tile * kFwdRowChannels + warp + kWarps * i;
#pragma unroll
      for (int k = 0; k < KC; ++k) {
        const acc_t sum = warp_sum(acc[i][k]);  // every lane takes part (uniform per warp)
        if (lane == 0 && c < C && k < K) out[(b * K + k) * C + c] = static_cast<scalar_t>(sum);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------

// Kernel 1: grad_features of the tile and the tile's partial t into `partial_t`
// (B, tiles, K, L). grad_features is a contiguous (B, L, C) buffer when channels-last, a
// contiguous (B, C, L) one otherwise.
template <typename scalar_t, typename acc_t, int KC, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    attention_pool_backward_tile_kernel(
        const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ features,
        const scalar_t* __restrict__ scores, const acc_t* __restrict__ lse,
        scalar_t* __restrict__ grad_features, acc_t* __restrict__ partial_t, int64_t C, int K,
        int64_t L, int64_t sb, int64_t sc, int64_t sl, int64_t tiles) {
  constexpr int kTileC = kChannelsLast ? kBwdClChannels : kBwdRowChannels;
  __shared__ acc_t g_s[KC][kTileC];
  __shared__ acc_t a_s[KC][kChunk];
  __shared__ acc_t lse_s[KC];
  __shared__ acc_t red_s[kChannelsLast ? 1 : KC][kChannelsLast ? 1 : kThreads];  // non-CL only
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int64_t b = static_cast<int64_t>(blockIdx.x) / tiles;
  const int64_t tile = static_cast<int64_t>(blockIdx.x) % tiles;
  const int64_t c0 = tile * kTileC;
  const int nc = static_cast<int>(C - c0 < kTileC ? C - c0 : kTileC);
  const scalar_t* s_b = scores + b * K * L;
  const scalar_t* f_b = features + b * sb;
  acc_t* pt = partial_t + (b * tiles + tile) * K * L;

  for (int i = tid; i < K * nc; i += kThreads) {
    const int k = i / nc, cc = i % nc;
    g_s[k][cc] = static_cast<acc_t>(grad_out[(b * K + k) * C + c0 + cc]);
  }
  if (tid < K) lse_s[tid] = lse[b * K + tid];
  __syncthreads();

  for (int64_t l0 = 0; l0 < L; l0 += kChunk) {
    const int n = static_cast<int>(L - l0 < kChunk ? L - l0 : kChunk);
    for (int i = tid; i < K * n; i += kThreads) {
      const int k = i / n, j = i % n;
      a_s[k][j] = softmax_weight(static_cast<acc_t>(s_b[k * L + l0 + j]), lse_s[k]);
    }
    __syncthreads();
    if constexpr (kChannelsLast) {
      // One warp per position row l; lanes over the tile's contiguous channels.
      for (int j = warp; j < n; j += kWarps) {
        const int64_t l = l0 + j;
        const scalar_t* f = f_b + l * sl + c0 * sc;
        scalar_t* df = grad_features + (b * L + l) * C + c0;
        acc_t t[KC];
#pragma unroll
        for (int k = 0; k < KC; ++k) t[k] = acc_t(0);
#pragma unroll 4
        for (int cc = lane; cc < nc; cc += 32) {
          const acc_t v = static_cast<acc_t>(f[cc * sc]);
          acc_t d = acc_t(0);
#pragma unroll
          for (int k = 0; k < KC; ++k) {
            if (k < K) {
              const acc_t gk = g_s[k][cc];
              d += a_s[k][j] * gk;
              t[k] += v * gk;
            }
          }
          df[cc] = static_cast<scalar_t>(d);
        }
#pragma unroll
        for (int k = 0; k < KC; ++k) {
          const acc_t sum = warp_sum(t[k]);
          if (lane == 0 && k < K) pt[k * L + l] = sum;
        }
      }
    } else {
      // Thread (position j, channel group cg): positions fastest, so a warp reads consecutive
      // positions of a row (and, for short rows stored back to back, of consecutive rows).
      const int groups = kThreads / n;  // >= 1 since n <= kChunk <= kThreads
      const int j = tid % n, cg = tid / n;
      acc_t t[KC];
#pragma unroll
      for (int k = 0; k < KC; ++k) t[k] = acc_t(0);
      if (cg < groups) {
        const scalar_t* f = f_b + (l0 + j) * sl;
        scalar_t* df = grad_features + b * C * L + l0 + j;
#pragma unroll 4
        for (int cc = cg; cc < nc; cc += groups) {
          const int64_t c = c0 + cc;
          const acc_t v = static_cast<acc_t>(f[c * sc]);
          acc_t d = acc_t(0);
#pragma unroll
          for (int k = 0; k < KC; ++k) {
            if (k < K) {
              const acc_t gk = g_s[k][cc];
              d += a_s[k][j] * gk;
              t[k] += v * gk;
            }
          }
          df[c * L] = static_cast<scalar_t>(d);
        }
      }
#pragma unroll
      for (int k = 0; k < KC; ++k) red_s[k][tid] = t[k];
      __syncthreads();
      if (tid < n) {  // sum over the channel groups in a fixed order
        for (int k = 0; k < K && k < KC; ++k) {
          acc_t sum = acc_t(0);
          for (int g = 0; g < groups; ++g) sum += red_s[k][g * n + tid];
          pt[k * L + l0 + tid] = sum;
        }
      }
    }
    __syncthreads();  // a_s and red_s are overwritten by the next chunk
  }
}

// Kernel 2, one block per batch element: t from the partials (tile order), delta from the
// saved output, ds = a (t - delta).
template <typename scalar_t, typename acc_t, int KC>
__global__ void __launch_bounds__(kThreads)
    attention_pool_backward_scores_kernel(const scalar_t* __restrict__ grad_out,
                                          const scalar_t* __restrict__ out,
                                          const scalar_t* __restrict__ scores,
                                          const acc_t* __restrict__ lse,
                                          const acc_t* __restrict__ partial_t,
                                          scalar_t* __restrict__ grad_scores, int64_t C, int K,
                                          int64_t L, int64_t tiles) {
  __shared__ acc_t warp_s[kWarps][KC];
  __shared__ acc_t delta_s[KC];
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int64_t b = blockIdx.x;

  acc_t part[KC];
#pragma unroll
  for (int k = 0; k < KC; ++k) {
    part[k] = acc_t(0);
    if (k < K) {
      const scalar_t* o = out + (b * K + k) * C;
      const scalar_t* g = grad_out + (b * K + k) * C;
      for (int64_t c = tid; c < C; c += kThreads) {
        part[k] += static_cast<acc_t>(o[c]) * static_cast<acc_t>(g[c]);
      }
    }
    part[k] = warp_sum(part[k]);
    if (lane == 0) warp_s[warp][k] = part[k];
  }
  __syncthreads();
  if (tid < K) {
    acc_t sum = acc_t(0);
    for (int w = 0; w < kWarps; ++w) sum += warp_s[w][tid];
    delta_s[tid] = sum;
  }
  __syncthreads();

  const acc_t* pt = partial_t + b * tiles * K * L;
  for (int64_t i = tid; i < K * L; i += kThreads) {
    const int k = static_cast<int>(i / L);
    acc_t t = acc_t(0);
    for (int64_t tile = 0; tile < tiles; ++tile) t += pt[tile * K * L + i];
    const acc_t a = softmax_weight(static_cast<acc_t>(scores[b * K * L + i]), lse[b * K + k]);
    grad_scores[b * K * L + i] = static_cast<scalar_t>(score_grad(a, t, delta_s[k]));
  }
}

// ------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------


int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls fn.template operator()<KC>() with KC the smallest of 1, 2, 4, 8 that is >= K.
template <typename Fn>
void dispatch_k(int64_t K, Fn&& fn) {
  if (K <= 1) {
    fn.template operator()<1>();
  } else if (K <= 2) {
    fn.template operator()<2>();
  } else if (K <= 4) {
    fn.template operator()<4>();
  } else {
    fn.template operator()<8>();
  }
}

std::tuple<at::Tensor, at::Tensor> attention_pool_forward_cuda(const at::Tensor& features,
                                                               const at::Tensor& scores) {
  const c10::cuda::CUDAGuard guard(features.device());
  const Sizes z = check_inputs(features, scores, kCudaSide);
  if (z.K > kMaxK) {
    // The maps are independent: pool them kMaxK at a time (each launch reads the features once).
    std::vector<at::Tensor> outs, lses;
    for (int64_t k0 = 0; k0 < z.K; k0 += kMaxK) {
      auto [o, l] = attention_pool_forward_cuda(
          features, scores.narrow(1, k0, std::min<int64_t>(kMaxK, z.K - k0)).contiguous());
      outs.push_back(o);
      lses.push_back(l);
    }
    return {at::cat(outs, 1), at::cat(lses, 1)};
  }
  at::Tensor out = new_output({z.B, z.K, z.C}, features.options());
  at::Tensor lse = new_output({z.B, z.K}, features.options().dtype(acc_dtype(features)));
  if (z.B == 0) return {out, lse};
  if (z.C == 0) {  // nothing to pool, but lse is not empty
    lse.copy_(at::logsumexp(scores.to(acc_dtype(features)), {2}));
    return {out, lse};
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(features.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "attention_pool_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        dispatch_k(z.K, [&]<int KC>() {
          if (z.channels_last) {
            const int64_t tiles = ceil_div(z.C, kFwdClChannels);
            attention_pool_forward_kernel<scalar_t, acc_t, KC, true>
                <<<static_cast<unsigned int>(z.B * tiles), kThreads, 0, stream>>>(
                    features.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(),
                    out.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), z.C, static_cast<int>(z.K),
                    z.L, z.sb, z.sc, z.sl, tiles);
          } else {
            const int64_t tiles = ceil_div(z.C, kFwdRowChannels);
            attention_pool_forward_kernel<scalar_t, acc_t, KC, false>
                <<<static_cast<unsigned int>(z.B * tiles), kThreads, 0, stream>>>(
                    features.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(),
                    out.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), z.C, static_cast<int>(z.K),
                    z.L, z.sb, z.sc, z.sl, tiles);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_backward_cuda(const at::Tensor& grad_out,
                                                                const at::Tensor& features,
                                                                const at::Tensor& scores,
                                                                const at::Tensor& lse,
                                                                const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(features.device());
  const Sizes z = check_inputs(features, scores, kCudaSide);
  check_backward(grad_out, lse, out, features, z, kCudaSide);
  if (z.K > kMaxK) {
    // kMaxK maps at a time: grad_features is the sum of the groups' contributions.
    at::Tensor grad_features;
    std::vector<at::Tensor> grad_scores;
    for (int64_t k0 = 0; k0 < z.K; k0 += kMaxK) {
      const int64_t n = std::min<int64_t>(kMaxK, z.K - k0);
      auto [gf, gs] = attention_pool_backward_cuda(
          grad_out.narrow(1, k0, n).contiguous(), features,
          scores.narrow(1, k0, n).contiguous(), lse.narrow(1, k0, n).contiguous(),
          out.narrow(1, k0, n).contiguous());
      if (k0 == 0) {
        grad_features = gf;
      } else {
        grad_features.add_(gf);
      }
      grad_scores.push_back(gs);
    }
    return {grad_features, at::cat(grad_scores, 1)};
  }
  at::Tensor grad_features =
      z.channels_last ? new_output({z.B, z.L, z.C}, features.options()).permute({0, 2, 1})
                      : new_output({z.B, z.C, z.L}, features.options());
  at::Tensor grad_scores = new_output({z.B, z.K, z.L}, features.options());
  if (z.B == 0) return {grad_features, grad_scores};
  if (z.C == 0) {  // t = delta = 0
    grad_scores.zero_();
    return {grad_features, grad_scores};
  }
  const int64_t tiles = ceil_div(z.C, z.channels_last ? kBwdClChannels : kBwdRowChannels);
  // Every (b, tile, k, l) partial is written by kernel 1: no initialisation needed.
  at::Tensor partial_t =
      at::empty({z.B, tiles, z.K, z.L}, features.options().dtype(acc_dtype(features)));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(features.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "attention_pool_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        dispatch_k(z.K, [&]<int KC>() {
          const unsigned int blocks = static_cast<unsigned int>(z.B * tiles);
          if (z.channels_last) {
            attention_pool_backward_tile_kernel<scalar_t, acc_t, KC, true>
                <<<blocks, kThreads, 0, stream>>>(
                    grad_out.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
                    scores.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(),
                    grad_features.data_ptr<scalar_t>(), partial_t.data_ptr<acc_t>(), z.C,
                    static_cast<int>(z.K), z.L, z.sb, z.sc, z.sl, tiles);
          } else {
            attention_pool_backward_tile_kernel<scalar_t, acc_t, KC, false>
                <<<blocks, kThreads, 0, stream>>>(
                    grad_out.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
                    scores.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(),
                    grad_features.data_ptr<scalar_t>(), partial_t.data_ptr<acc_t>(), z.C,
                    static_cast<int>(z.K), z.L, z.sb, z.sc, z.sl, tiles);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          attention_pool_backward_scores_kernel<scalar_t, acc_t, KC>
              <<<static_cast<unsigned int>(z.B), kThreads, 0, stream>>>(
                  grad_out.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                  scores.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(),
                  partial_t.data_ptr<acc_t>(), grad_scores.data_ptr<scalar_t>(), z.C,
                  static_cast<int>(z.K), z.L, tiles);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return {grad_features, grad_scores};
}

}  // namespace
}  // namespace pooling
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  m.impl("attention_pool_forward", &portrait_engine::pooling::attention_pool_forward_cuda);
  m.impl("attention_pool_backward", &portrait_engine::pooling::attention_pool_backward_cuda);
}
