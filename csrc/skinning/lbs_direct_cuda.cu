// lbs's direct kernels on the GPU (math and host driver: lbs_direct.h; contract:
// docs/kernel_contract_skinning.md, "Direct kernels"). Three kernel templates serve every
// stage: a block-per-group fixed-order reduction, a thread-per-index map, and the vertex pass
// (a thread per vertex and batch tile, the tile's pose features in shared memory).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>

#include "skinning/lbs_direct.h"

namespace portrait_engine {
namespace skinning {
namespace direct {
namespace {

constexpr int kReduceThreads = 256;
constexpr int kReduceWarps = kReduceThreads / 32;
constexpr int kMapThreads = 256;
constexpr int kVertexThreads = 128;
constexpr unsigned kFullMask = 0xffffffffu;

// One block per group: each thread sums its strided share of i, then a warp butterfly, then
// thread 0 adds the warps in order. Fixed order: run-to-run identical.
template <class Term>
__global__ void __launch_bounds__(kReduceThreads) reduce_kernel(Term term) {
  using T = typename Term::value_type;
  constexpr int K = Term::K;
  __shared__ T partial[kReduceWarps][K];
  const int64_t g = blockIdx.x;
  T acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = T(0);
  const int64_t length = term.length();
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < length; i += kReduceThreads) term.add(g, i, acc);
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      acc[k] += __shfl_down_sync(kFullMask, acc[k], offset);
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) partial[warp][k] = acc[k];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      T sum = partial[0][k];
      for (int w = 1; w < kReduceWarps; ++w) sum += partial[w][k];
      acc[k] = sum;
    }
    term.store(g, acc);
  }
}

template <class Map>
__global__ void map_kernel(int64_t count, Map fn) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) fn(i);
}

extern __shared__ __align__(16) unsigned char vertex_shared[];

// grid (vertex blocks, batch tiles): the tile's features into shared memory (the first vertex
// block also keeps them), then a thread per vertex.
template <class F>
__global__ void __launch_bounds__(kVertexThreads) vertex_kernel(F fn) {
  using T = typename F::value_type;
  T* f = reinterpret_cast<T*>(vertex_shared);
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * kBatchTile;
  const int nb = static_cast<int>(fn.d.B - b0 < kBatchTile ? fn.d.B - b0 : kBatchTile);
  fn.fill_features(b0, nb, f, threadIdx.x, kVertexThreads, blockIdx.x == 0);
  __syncthreads();
  const int64_t v = static_cast<int64_t>(blockIdx.x) * kVertexThreads + threadIdx.x;
  if (v < fn.d.V) fn(v, b0, nb, f);
}

struct CudaExec {
  c10::cuda::CUDAGuard guard;  // first: the stream below is the guarded device's
  cudaStream_t stream;
  explicit CudaExec(const Tensor& like)
      : guard(like.device()), stream(c10::cuda::getCurrentCUDAStream()) {}

  template <class Term>
  void reduce(int64_t groups, const Term& term) {
    if (groups == 0) return;
    reduce_kernel<Term><<<static_cast<unsigned>(groups), kReduceThreads, 0, stream>>>(term);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <class Map>
  void map(int64_t count, const Map& fn) {
    if (count == 0) return;
    const int64_t blocks = (count + kMapThreads - 1) / kMapThreads;
    map_kernel<Map><<<static_cast<unsigned>(blocks), kMapThreads, 0, stream>>>(count, fn);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <class F>
  void vertices(const Dims& d, const F& fn) {
    using T = typename F::value_type;
    const dim3 grid(static_cast<unsigned>((d.V + kVertexThreads - 1) / kVertexThreads),
                    static_cast<unsigned>((d.B + kBatchTile - 1) / kBatchTile));
    // at most 18 KiB (kMaxJoints = 64, double: the static_assert in lbs_direct.h)
    const size_t shared = sizeof(T) * kBatchTile * d.P;
    vertex_kernel<F><<<grid, kVertexThreads, shared, stream>>>(fn);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace
}  // namespace direct
}  // namespace skinning
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  using portrait_engine::skinning::direct::CudaExec;
  m.impl("lbs_direct_forward", &portrait_engine::skinning::direct::forward_op<CudaExec>);
  m.impl("lbs_direct_backward", &portrait_engine::skinning::direct::backward_op<CudaExec>);
}
