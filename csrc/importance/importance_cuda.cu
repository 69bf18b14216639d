// CUDA kernels of portrait_engine::sample_importance and merge_samples_{index,scatter,gather}
// (contract: docs/kernel_contract_importance.md; shared math: importance.h, the same functions
// the CPU kernels run).
//
//   * sample_importance: ONE WARP PER RAY (sample_importance_warp_kernel). The 32 lanes stage
//     the ray's depths and weights in shared memory (coalesced loads), build the smoothed bin
//     weights in parallel, their total by a butterfly reduction and the K + 1 cdf entries by a
//     warp inclusive scan (chunks of 32 lanes, the carry passed on by a shuffle), into shared
//     memory. Each lane then inverts its own draws (k = lane, lane + 32, ...): a binary search
//     over the shared cdf and the interpolation of importance.h. With `sort` no draw is moved
//     before it is inverted: each lane ranks its draws by counting (rank = #{j : u_j < u_k} +
//     #{j < k : u_j == u_k}, n broadcast reads of the shared draws: 48 compares per draw at
//     EG3D's n = 48), writes the sample to shared slot `rank` (the inverse cdf of the sorted
//     draws, as the reference computes it: the sample is a function of its draw alone), and the
//     running maximum is a warp inclusive max-scan over those slots in order, 32 at a time with
//     the carry of the previous chunk. The output rows are written coalesced.
//     Summation order: the total is a tree (lane partial sums, then a butterfly) and the cdf a
//     Kogge-Stone scan of pdf = b / total, where the reference runs torch.sum / torch.cumsum and
//     the CPU kernel sequential sums: the cdf entries differ by a few ulp (the contract allows
//     any order; the sample is continuous in the cdf, so the samples differ by rounding).
//     Shared memory per warp: the cdf and (sort) the ranked samples in acc_t, (sort) the draws
//     in float, the depths and weights in scalar_t: about 1 KiB at S = n = 48 in fp32, so 8
//     warps per block; fewer warps per block where a ray needs more, and the thread-per-ray
//     kernel below where one ray needs more than 48 KiB (fp32: S + n beyond about 4000).
//   * sample_importance_thread_kernel (the fallback for very long rays): one thread per ray, its
//     cdf and (sort) insertion-sorted draws in a global workspace (N, S - 2 + n), then a serial
//     walk of binary searches and the running maximum.
//   * merge_samples_index: one thread per sample of either list (N * (S1 + S2) threads), a
//     binary search in the other list of its ray.
//   * merge_samples_scatter / gather: the merge is a permutation of whole rows, so both are pure
//     copies and must run at copy bandwidth. A block owns a few consecutive rays (their segments
//     are contiguous in every tensor) and stages them through shared memory:
//       1. a row table in shared memory: for the scatter the inverse permutation (merged row ->
//          where its source row starts in the stage), for the gather the forward one (list row
//          -> where its merged row starts), built from positions1 / positions2 (one entry per row);
//       2. the block's contiguous source span(s) -> shared memory with 16-byte vector loads;
//       3. the block's contiguous destination span(s) <- shared memory, 16-byte vector stores,
//          element j of a span reading stage[table[j / C] + j % C].
//     So every global access is a 16-byte vector on a contiguous stream (only the < 16 bytes at
//     each end of a span that is not 16-byte aligned go element by element), destinations are
//     written whole by one block (the old scatter wrote each merged ray from two launches, half
//     the rows each), the index math is 32-bit within a block and there is one division per
//     16 bytes rather than 64-bit divisions per element. A span is staged at its address modulo
//     16 bytes so the vector accesses are aligned in shared memory too. A ray too large for the
//     staging budget (C * (S1 + S2) above ~48 KB) falls back to copy_rows_kernel: one thread per
//     element, coalesced rows.
// No atomics anywhere: every output element has exactly one writer.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "importance/checks.h"
#include "importance/importance.h"

namespace portrait_engine {
namespace importance {
namespace {

constexpr int kThreads = 256;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>(ceil_div(n, kThreads)); }



constexpr int kWarpSize = 32;
constexpr unsigned int kFullMask = 0xffffffffu;
constexpr int kMaxWarpsPerBlock = 8;
// Dynamic shared memory a block may use without the opt-in attribute (every GPU since sm_20).
constexpr size_t kSharedLimit = 48 * 1024;

// Byte offsets of one warp's arrays in its slice of the block's shared memory, and the slice's
// size (every array 16-byte aligned). `ranked` and `draws` are empty without `sort`.
struct RayLayout {
  int64_t cdf, ranked, draws, depths, weights, bytes;
};

int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

RayLayout ray_layout(int64_t acc_size, int64_t scalar_size, int64_t samples, int64_t draws,
                     bool sort) {
  RayLayout layout{};
  int64_t at = 0;
  layout.cdf = at;
  at += align16((samples - 2) * acc_size);
  layout.ranked = at;
  at += sort ? align16(draws * acc_size) : 0;
  layout.draws = at;
  at += sort ? align16(draws * static_cast<int64_t>(sizeof(float))) : 0;
  layout.depths = at;
  at += align16(samples * scalar_size);
  layout.weights = at;
  at += align16((samples - 1) * scalar_size);
  layout.bytes = at;
  return layout;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(kFullMask, value, offset);
  }
  return value;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_inclusive_sum(acc_t value, int lane) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const acc_t earlier = __shfl_up_sync(kFullMask, value, offset);
    if (lane >= offset) value = earlier + value;
  }
  return value;
}

// Running maximum along the lanes, with importance.h's max_of(earlier, later) as the
// sequential loops apply it.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_inclusive_max(acc_t value, int lane) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const acc_t earlier = __shfl_up_sync(kFullMask, value, offset);
    if (lane >= offset) value = max_of(earlier, value);
  }
  return value;
}

template <typename scalar_t, typename acc_t>
__global__ void sample_importance_warp_kernel(const scalar_t* __restrict__ depths,
                                              const scalar_t* __restrict__ weights,
                                              const float* __restrict__ u,
                                              scalar_t* __restrict__ out, int64_t rays,
                                              int64_t samples, int64_t draws, bool sort,
                                              RayLayout layout) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + warp;
  // r is the same for the whole warp: a warp leaves whole, so the full-mask shuffles below
  // always see 32 lanes
  if (r >= rays) return;
  unsigned char* slice = shared_bytes + warp * layout.bytes;
  acc_t* cdf = reinterpret_cast<acc_t*>(slice + layout.cdf);
  scalar_t* z = reinterpret_cast<scalar_t*>(slice + layout.depths);
  scalar_t* w = reinterpret_cast<scalar_t*>(slice + layout.weights);

  const int64_t n_weights = samples - 1;
  const scalar_t* z_ray = depths + r * samples;
  const scalar_t* w_ray = weights + r * n_weights;
  for (int64_t j = lane; j < samples; j += kWarpSize) z[j] = z_ray[j];
  for (int64_t j = lane; j < n_weights; j += kWarpSize) w[j] = w_ray[j];
  __syncwarp();

  // bin k weighs smoothed weight k + 1 (+ 1e-5), k = 0..bins-1; samples >= 4 gives bins >= 1
  const int64_t bins = samples - 3;
  acc_t partial = acc_t(0);
  for (int64_t k = lane; k < bins; k += kWarpSize) {
    partial += smoothed_weight<scalar_t, acc_t>(w, k + 1, n_weights) + pdf_eps<acc_t>();
  }
  const acc_t total = warp_sum(partial);
  if (lane == 0) cdf[0] = acc_t(0);
  acc_t carry = acc_t(0);
  for (int64_t k0 = 0; k0 < bins; k0 += kWarpSize) {
    const int64_t k = k0 + lane;
    acc_t pdf = acc_t(0);
    if (k < bins) {
      pdf = (smoothed_weight<scalar_t, acc_t>(w, k + 1, n_weights) + pdf_eps<acc_t>()) / total;
    }
    const acc_t running = carry + warp_inclusive_sum(pdf, lane);
    if (k < bins) cdf[k + 1] = running;
    carry = __shfl_sync(kFullMask, running, kWarpSize - 1);
  }
  __syncwarp();

  const float* u_ray = u + r * draws;
  scalar_t* o = out + r * draws;
  if (!sort) {
    for (int64_t k = lane; k < draws; k += kWarpSize) {
      const acc_t uk = static_cast<acc_t>(u_ray[k]);
      o[k] = static_cast<scalar_t>(inverse_cdf_sample<scalar_t, acc_t>(z, cdf, bins, uk));
    }
    return;
  }

  float* drawn = reinterpret_cast<float*>(slice + layout.draws);
  acc_t* ranked = reinterpret_cast<acc_t*>(slice + layout.ranked);
  for (int64_t k = lane; k < draws; k += kWarpSize) drawn[k] = u_ray[k];
  __syncwarp();
  // the rank of draw k in the ascending order (ties by index): a permutation of 0..draws-1.
  // 32-bit counters in this n^2 / 32 loop: the draws fit shared memory, so n < 2^31.
  const int n_draws = static_cast<int>(draws);
  for (int k = lane; k < n_draws; k += kWarpSize) {
    const float x = drawn[k];
    int rank = 0;
    for (int j = 0; j < n_draws; ++j) {
      const float y = drawn[j];
      rank += (y < x || (y == x && j < k)) ? 1 : 0;
    }
    ranked[rank] = inverse_cdf_sample<scalar_t, acc_t>(z, cdf, bins, static_cast<acc_t>(x));
  }
  __syncwarp();
  acc_t before = acc_t(0);  // the running maximum of the previous chunks
  for (int64_t k0 = 0; k0 < draws; k0 += kWarpSize) {
    const int64_t k = k0 + lane;
    // lanes past the end follow every real sample: their value never reaches a real one
    acc_t t = k < draws ? ranked[k] : static_cast<acc_t>(-INFINITY);
    t = warp_inclusive_max(t, lane);
    if (k0 > 0) t = max_of(before, t);
    if (k < draws) o[k] = static_cast<scalar_t>(t);
    before = __shfl_sync(kFullMask, t, kWarpSize - 1);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void sample_importance_thread_kernel(const scalar_t* __restrict__ depths,
                                                const scalar_t* __restrict__ weights,
                                                const float* __restrict__ u,
                                                acc_t* __restrict__ workspace,
                                                scalar_t* __restrict__ out, int64_t rays,
                                                int64_t samples, int64_t draws, bool sort) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rays) return;
  acc_t* cdf = workspace + r * (samples - 2 + (sort ? draws : 0));
  acc_t* sorted_u = cdf + (samples - 2);
  const scalar_t* z = depths + r * samples;
  const int64_t bins = build_cdf<scalar_t, acc_t>(weights + r * (samples - 1), samples - 1, cdf);
  const float* ur = u + r * draws;
  if (sort) {
    for (int64_t k = 0; k < draws; ++k) sorted_u[k] = static_cast<acc_t>(ur[k]);
    insertion_sort(sorted_u, draws);
  }
  scalar_t* o = out + r * draws;
  acc_t running = acc_t(0);
  for (int64_t k = 0; k < draws; ++k) {
    const acc_t uk = sort ? sorted_u[k] : static_cast<acc_t>(ur[k]);
    acc_t t = inverse_cdf_sample<scalar_t, acc_t>(z, cdf, bins, uk);
    if (sort) {
      running = k == 0 ? t : max_of(running, t);
      t = running;
    }
    o[k] = static_cast<scalar_t>(t);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void merge_index_kernel(const scalar_t* __restrict__ d1, const scalar_t* __restrict__ d2,
                                   int32_t* __restrict__ p1, int32_t* __restrict__ p2,
                                   int64_t rays, int64_t first, int64_t second) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_ray = first + second;
  if (idx >= rays * per_ray) return;
  const int64_t r = idx / per_ray;
  const int64_t s = idx - r * per_ray;
  if (s < first) {
    const acc_t depth = static_cast<acc_t>(d1[r * first + s]);
    p1[r * first + s] = static_cast<int32_t>(
        merged_position_first<scalar_t, acc_t>(s, depth, d2 + r * second, second));
  } else {
    const int64_t j = s - first;
    const acc_t depth = static_cast<acc_t>(d2[r * second + j]);
    p2[r * second + j] = static_cast<int32_t>(
        merged_position_second<scalar_t, acc_t>(j, depth, d1 + r * first, first));
  }
}

// Rows of one list <-> merged rows: merged row = (row / per_ray) * total + positions[row].
template <typename scalar_t, bool kScatter>
__global__ void copy_rows_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst,
                                 const int32_t* __restrict__ positions, int64_t rows,
                                 int64_t per_ray, int64_t total, int64_t channels) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * channels) return;
  const int64_t row = idx / channels;
  const int64_t c = idx - row * channels;
  const int64_t merged = (row / per_ray) * total + static_cast<int64_t>(positions[row]);
  if (kScatter) {
    dst[merged * channels + c] = src[idx];
  } else {
    dst[idx] = src[merged * channels + c];
  }
}

// ---- staged row permutation (merge_samples_scatter / gather) -------------------------------

// Elements of a 16-byte vector.
template <typename scalar_t>
constexpr int vector_width() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

// How many elements `p` lies past the last 16-byte boundary.
template <typename scalar_t>
__device__ __forceinline__ int misalignment(const scalar_t* p) {
  return static_cast<int>((reinterpret_cast<uintptr_t>(p) & 15) / sizeof(scalar_t));
}

// Elements of `n` before the first 16-byte boundary of a span that is `shift` elements past one.
template <typename scalar_t>
__device__ __forceinline__ int head_elements(int shift, int n) {
  constexpr int V = vector_width<scalar_t>();
  return min(n, (V - shift) % V);
}

// src[0..n) -> stage[shift + j], shift = misalignment(src): the global and the shared addresses
// agree modulo 16 bytes (`stage` is 16-byte aligned), so the body moves as 16-byte vectors.
// Streaming loads: every byte is read once.
template <typename scalar_t>
__device__ __forceinline__ void stage_span(const scalar_t* __restrict__ src, int n,
                                           scalar_t* __restrict__ stage) {
  constexpr int V = vector_width<scalar_t>();
  const int shift = misalignment(src);
  const int head = head_elements<scalar_t>(shift, n);
  const int vectors = (n - head) / V;
  const int tail = head + vectors * V;
  scalar_t* to = stage + shift;
  for (int j = threadIdx.x; j < head; j += blockDim.x) to[j] = src[j];
  for (int j = tail + threadIdx.x; j < n; j += blockDim.x) to[j] = src[j];
  const uint4* from_vec = reinterpret_cast<const uint4*>(src + head);
  uint4* to_vec = reinterpret_cast<uint4*>(to + head);
  for (int k = threadIdx.x; k < vectors; k += blockDim.x) to_vec[k] = __ldcs(from_vec + k);
}

// dst[j] = stage[rows[j / C] + j % C] for j in [0, n): the permutation, done in shared memory;
// the global side is a contiguous stream of 16-byte streaming stores (a thread's V elements
// cross at most ceil(V / C) + 1 rows; the row and channel are carried, one division per vector).
template <typename scalar_t>
__device__ __forceinline__ void write_permuted(const scalar_t* __restrict__ stage,
                                               const int* __restrict__ rows, int channels,
                                               scalar_t* __restrict__ dst, int n) {
  constexpr int V = vector_width<scalar_t>();
  const int head = head_elements<scalar_t>(misalignment(dst), n);
  const int vectors = (n - head) / V;
  const int tail = head + vectors * V;
  const unsigned int c_count = static_cast<unsigned int>(channels);
  for (int j = threadIdx.x; j < head; j += blockDim.x) {
    const unsigned int row = static_cast<unsigned int>(j) / c_count;
    dst[j] = stage[rows[row] + (j - static_cast<int>(row * c_count))];
  }
  for (int j = tail + threadIdx.x; j < n; j += blockDim.x) {
    const unsigned int row = static_cast<unsigned int>(j) / c_count;
    dst[j] = stage[rows[row] + (j - static_cast<int>(row * c_count))];
  }
  uint4* dst_vec = reinterpret_cast<uint4*>(dst + head);
  for (int k = threadIdx.x; k < vectors; k += blockDim.x) {
    const unsigned int j = static_cast<unsigned int>(head + k * V);
    unsigned int row = j / c_count;
    int c = static_cast<int>(j - row * c_count);
    int start = rows[row];
    alignas(16) scalar_t values[V];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      values[e] = stage[start + c];
      // the next row's entry is read only while this vector still needs it (never past the table)
      if (e + 1 < V && ++c == channels) {
        c = 0;
        start = rows[++row];
      }
    }
    __stcs(dst_vec + k, *reinterpret_cast<const uint4*>(values));
  }
}

// Shared-memory layout of a block of the staged kernels: the int32 row table(s), then the stage
// region(s), each region `elements + V` long rounded up to whole vectors (room for the shift).
template <typename scalar_t>
__host__ __device__ __forceinline__ int64_t stage_capacity(int64_t elements) {
  constexpr int64_t V = vector_width<scalar_t>();
  return (elements + V + V - 1) / V * V;
}

__host__ __device__ __forceinline__ int64_t table_bytes(int64_t entries) {
  return (entries * static_cast<int64_t>(sizeof(int)) + 15) / 16 * 16;
}

// Forward: out[r, pos1[r, i]] = values1[r, i], out[r, pos2[r, j]] = values2[r, j], for the
// `rays_per_block` rays of this block. The table is the inverse permutation: merged row ->
// where its source row starts in the stage.
template <typename scalar_t>
__global__ void merge_scatter_staged_kernel(const scalar_t* __restrict__ values1,
                                            const scalar_t* __restrict__ values2,
                                            const int32_t* __restrict__ positions1,
                                            const int32_t* __restrict__ positions2,
                                            scalar_t* __restrict__ out, int64_t rays, int first,
                                            int second, int channels, int rays_per_block) {
  extern __shared__ __align__(16) unsigned char shared[];
  const int total = first + second;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rays_per_block;
  const int n_rays = static_cast<int>(min(static_cast<int64_t>(rays_per_block), rays - r0));
  int* rows = reinterpret_cast<int*>(shared);
  scalar_t* stage1 =
      reinterpret_cast<scalar_t*>(shared + table_bytes(static_cast<int64_t>(rays_per_block) * total));
  scalar_t* stage2 =
      stage1 + stage_capacity<scalar_t>(static_cast<int64_t>(rays_per_block) * first * channels);
  const scalar_t* src1 = values1 + r0 * first * channels;
  const scalar_t* src2 = values2 + r0 * second * channels;
  const int n1 = n_rays * first, n2 = n_rays * second;
  // A merged row that no position names (positions that are not a permutation break the
  // contract) reads the stage's first row rather than uninitialised shared memory.
  for (int p = threadIdx.x; p < n_rays * total; p += blockDim.x) rows[p] = misalignment(src1);
  __syncthreads();
  const int offset2 = static_cast<int>(stage2 - stage1) + misalignment(src2);
  for (int q = threadIdx.x; q < n1 + n2; q += blockDim.x) {
    const bool in_first = q < n1;
    const int row = in_first ? q : q - n1;
    const int per_ray = in_first ? first : second;
    const int ray = row / per_ray;
    const int p = in_first ? positions1[r0 * first + row] : positions2[r0 * second + row];
    if (p >= 0 && p < total) {
      // atomicMax, not a store: positions that name a merged row twice (unsorted lists under
      // torch.compile, where the op's order check does not run) then give the same output on
      // every run, the later source row winning, instead of a race between the two writers
      atomicMax(&rows[ray * total + p], (in_first ? misalignment(src1) : offset2) + row * channels);
    }
  }
  stage_span(src1, n1 * channels, stage1);
  stage_span(src2, n2 * channels, stage2);
  __syncthreads();
  write_permuted(stage1, rows, channels, out + r0 * total * channels, n_rays * total * channels);
}

// Backward: grad1[r, i] = grad[r, pos1[r, i]] (likewise grad2). The tables map each list row to
// where its merged row starts in the stage.
template <typename scalar_t>
__global__ void merge_gather_staged_kernel(const scalar_t* __restrict__ grad,
                                           const int32_t* __restrict__ positions1,
                                           const int32_t* __restrict__ positions2,
                                           scalar_t* __restrict__ grad1,
                                           scalar_t* __restrict__ grad2, int64_t rays, int first,
                                           int second, int channels, int rays_per_block) {
  extern __shared__ __align__(16) unsigned char shared[];
  const int total = first + second;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rays_per_block;
  const int n_rays = static_cast<int>(min(static_cast<int64_t>(rays_per_block), rays - r0));
  int* rows1 = reinterpret_cast<int*>(shared);
  int* rows2 = rows1 + rays_per_block * first;
  scalar_t* stage =
      reinterpret_cast<scalar_t*>(shared + table_bytes(static_cast<int64_t>(rays_per_block) * total));
  const scalar_t* src = grad + r0 * total * channels;
  const int shift = misalignment(src);
  const int n1 = n_rays * first, n2 = n_rays * second;
  for (int q = threadIdx.x; q < n1 + n2; q += blockDim.x) {
    const bool in_first = q < n1;
    const int row = in_first ? q : q - n1;
    const int per_ray = in_first ? first : second;
    const int ray = row / per_ray;
    int p = in_first ? positions1[r0 * first + row] : positions2[r0 * second + row];
    p = min(max(p, 0), total - 1);  // stays inside the stage for positions outside the contract
    (in_first ? rows1 : rows2)[row] = shift + (ray * total + p) * channels;
  }
  stage_span(src, n_rays * total * channels, stage);
  __syncthreads();
  write_permuted(stage, rows1, channels, grad1 + r0 * first * channels, n1 * channels);
  write_permuted(stage, rows2, channels, grad2 + r0 * second * channels, n2 * channels);
}

at::Tensor sample_importance_cuda(const at::Tensor& depths, const at::Tensor& weights,
                                  const at::Tensor& u, bool sort) {
  // the checks come before the device guard, so a tensor on the wrong device gets their
  // error rather than the guard's (likewise below)
  check_sample_importance(depths, weights, u, kCudaSide);
  const c10::cuda::CUDAGuard guard(depths.device());
  const int64_t rays = depths.size(0), samples = depths.size(1), draws = u.size(1);
  at::Tensor out = new_output({rays, draws}, depths.options());
  if (rays == 0 || draws == 0) return out;
  const at::ScalarType acc = acc_dtype(depths);
  const RayLayout layout = ray_layout(at::elementSize(acc), depths.element_size(), samples,
                                      draws, sort);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(depths.device().index()).stream();
  if (layout.bytes <= static_cast<int64_t>(kSharedLimit)) {
    int warps = kMaxWarpsPerBlock;
    while (warps > 1 && warps * layout.bytes > static_cast<int64_t>(kSharedLimit)) warps /= 2;
    const auto blocks = static_cast<unsigned int>(ceil_div(rays, warps));
    const size_t shared = static_cast<size_t>(warps * layout.bytes);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, depths.scalar_type(), "sample_importance_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          sample_importance_warp_kernel<scalar_t, acc_t>
              <<<blocks, warps * kWarpSize, shared, stream>>>(
                  depths.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), u.data_ptr<float>(),
                  out.data_ptr<scalar_t>(), rays, samples, draws, sort, layout);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
    return out;
  }
  at::Tensor workspace = at::empty({rays, samples - 2 + (sort ? draws : 0)},
                                   depths.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, depths.scalar_type(), "sample_importance_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        sample_importance_thread_kernel<scalar_t, acc_t>
            <<<blocks_for(rays), kThreads, 0, stream>>>(
                depths.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), u.data_ptr<float>(),
                workspace.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), rays, samples, draws,
                sort);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_samples_index_cuda(const at::Tensor& depths1,
                                                            const at::Tensor& depths2) {
  check_merge_index(depths1, depths2, kCudaSide);
  const c10::cuda::CUDAGuard guard(depths1.device());
  const int64_t rays = depths1.size(0), first = depths1.size(1), second = depths2.size(1);
  at::Tensor positions1 = new_output({rays, first}, depths1.options().dtype(at::kInt));
  at::Tensor positions2 = new_output({rays, second}, depths1.options().dtype(at::kInt));
  const int64_t n = rays * (first + second);
  if (n == 0) return {positions1, positions2};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(depths1.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, depths1.scalar_type(), "merge_samples_index_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        merge_index_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
            depths1.data_ptr<scalar_t>(), depths2.data_ptr<scalar_t>(),
            positions1.data_ptr<int32_t>(), positions2.data_ptr<int32_t>(), rays, first, second);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {positions1, positions2};
}


// Shared memory a staged block may use. 24 KB keeps eight 256-thread blocks resident per SM
// (H100: 228 KB); a ray that alone needs more than the default 48 KB dynamic limit falls back.
constexpr int64_t kStageBudget = 24 * 1024;
constexpr int64_t kStageLimit = 48 * 1024;

// Rays per block of the staged kernels and the block's shared-memory bytes, or {0, 0} when one
// ray does not fit kStageLimit (the caller falls back to copy_rows_kernel).
template <typename scalar_t>
std::tuple<int64_t, int64_t> staged_layout(int64_t rays, int64_t first, int64_t second,
                                           int64_t channels, bool scatter) {
  const int64_t total = first + second;
  auto bytes = [&](int64_t k) {
    const int64_t stage = scatter ? stage_capacity<scalar_t>(k * first * channels) +
                                        stage_capacity<scalar_t>(k * second * channels)
                                  : stage_capacity<scalar_t>(k * total * channels);
    return table_bytes(k * total) + stage * static_cast<int64_t>(sizeof(scalar_t));
  };
  if (bytes(1) > kStageLimit) return {0, 0};
  const int64_t per_ray = bytes(2) - bytes(1);
  int64_t k = std::max<int64_t>(1, (kStageBudget - bytes(1)) / std::max<int64_t>(per_ray, 1) + 1);
  k = std::min(k, std::max<int64_t>(rays, 1));
  while (k > 1 && bytes(k) > kStageBudget) --k;
  return {k, bytes(k)};
}

template <bool kScatter>
void launch_copy(const at::Tensor& src, at::Tensor& dst, const at::Tensor& positions,
                 int64_t per_ray, int64_t total, int64_t channels, cudaStream_t stream) {
  const int64_t rows = positions.numel();
  if (rows == 0 || channels == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, src.scalar_type(), "merge_samples_copy_cuda", [&] {
        copy_rows_kernel<scalar_t, kScatter>
            <<<blocks_for(rows * channels), kThreads, 0, stream>>>(
                src.data_ptr<scalar_t>(), dst.data_ptr<scalar_t>(),
                positions.data_ptr<int32_t>(), rows, per_ray, total, channels);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

at::Tensor merge_samples_scatter_cuda(const at::Tensor& values1, const at::Tensor& values2,
                                      const at::Tensor& positions1,
                                      const at::Tensor& positions2) {
  check_merge_scatter(values1, values2, positions1, positions2, kCudaSide);
  const c10::cuda::CUDAGuard guard(values1.device());
  const int64_t rays = values1.size(0), first = values1.size(1), second = values2.size(1);
  const int64_t channels = values1.size(2);
  const int64_t total = first + second;
  at::Tensor out = new_output({rays, total, channels}, values1.options());
  if (rays == 0 || total == 0 || channels == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(values1.device().index()).stream();
  bool staged = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, values1.scalar_type(), "merge_samples_scatter_cuda", [&] {
        const auto [per_block, shared_bytes] =
            staged_layout<scalar_t>(rays, first, second, channels, true);
        if (per_block == 0) return;
        staged = true;
        merge_scatter_staged_kernel<scalar_t>
            <<<static_cast<unsigned int>(ceil_div(rays, per_block)), kThreads, shared_bytes,
               stream>>>(values1.data_ptr<scalar_t>(), values2.data_ptr<scalar_t>(),
                         positions1.data_ptr<int32_t>(), positions2.data_ptr<int32_t>(),
                         out.data_ptr<scalar_t>(), rays, static_cast<int>(first),
                         static_cast<int>(second), static_cast<int>(channels),
                         static_cast<int>(per_block));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  if (!staged) {
    launch_copy<true>(values1, out, positions1, first, total, channels, stream);
    launch_copy<true>(values2, out, positions2, second, total, channels, stream);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_samples_gather_cuda(const at::Tensor& grad,
                                                             const at::Tensor& positions1,
                                                             const at::Tensor& positions2) {
  check_merge_gather(grad, positions1, positions2, kCudaSide);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t rays = grad.size(0), total = grad.size(1), channels = grad.size(2);
  const int64_t first = positions1.size(1), second = positions2.size(1);
  at::Tensor grad1 = new_output({rays, first, channels}, grad.options());
  at::Tensor grad2 = new_output({rays, second, channels}, grad.options());
  if (rays == 0 || total == 0 || channels == 0) return {grad1, grad2};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad.device().index()).stream();
  bool staged = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "merge_samples_gather_cuda", [&] {
        const auto [per_block, shared_bytes] =
            staged_layout<scalar_t>(rays, first, second, channels, false);
        if (per_block == 0) return;
        staged = true;
        merge_gather_staged_kernel<scalar_t>
            <<<static_cast<unsigned int>(ceil_div(rays, per_block)), kThreads, shared_bytes,
               stream>>>(grad.data_ptr<scalar_t>(), positions1.data_ptr<int32_t>(),
                         positions2.data_ptr<int32_t>(), grad1.data_ptr<scalar_t>(),
                         grad2.data_ptr<scalar_t>(), rays, static_cast<int>(first),
                         static_cast<int>(second), static_cast<int>(channels),
                         static_cast<int>(per_block));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  if (!staged) {
    launch_copy<false>(grad, grad1, positions1, first, total, channels, stream);
    launch_copy<false>(grad, grad2, positions2, second, total, channels, stream);
  }
  return {grad1, grad2};
}

}  // namespace
}  // namespace importance
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  m.impl("sample_importance", &portrait_engine::importance::sample_importance_cuda);
  m.impl("merge_samples_index", &portrait_engine::importance::merge_samples_index_cuda);
  m.impl("merge_samples_scatter", &portrait_engine::importance::merge_samples_scatter_cuda);
  m.impl("merge_samples_gather", &portrait_engine::importance::merge_samples_gather_cuda);
}
