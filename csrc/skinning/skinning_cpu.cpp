// CPU kernels of portrait_engine::{forward_kinematics,skin_points,blend_shapes}_{forward,backward}
// (contract: docs/kernel_contract_skinning.md; shared math: skinning.h).
//
// forward_kinematics: at::parallel_for over batch elements; each walks its J joints once
// (Rodrigues, chain, relative transform) in the accumulation type.
// skin_points forward: parallel over points, the blended transform formed per point in
// registers (never stored; float on an AVX-512 CPU: J vector FMAs over the joints' 4x4
// storage). With weights shared by a batch of B > 1, the blend of a chunk of points is a small
// (chunk, J) x (J, B * 12) product (float accumulation on AVX-512: a register-tiled kernel;
// otherwise the BLAS, vectorised for the CPU at hand; the extension itself is compiled for
// baseline x86-64), into a per-thread buffer of kBlendChunk points: the (B, N, 12) transforms
// are still never stored.
// Backward: per point, grad_points and the gradient dM of its blended transform; the two
// reductions over points and batch (grad_weights, grad_transforms) are products over dM: per
// chunk of points on a cache-resident buffer with shared weights (skin_backward_shared: on the
// register-tiled kernel with float accumulation on AVX-512, from B = 1; the BLAS otherwise, from
// kSharedChunkMinBatch), over a (B, N, 12) workspace otherwise. No atomics; as deterministic as
// the BLAS (fixed for a fixed thread count; the tiles' sums do not depend on it).
// blend_shapes (lbs's pose blend shapes): below kStreamMinBlasBatch, streamed AVX-512 kernels
// for float (one pass over dirs each way: the forward by column blocks, the backward by rows);
// from it, float on an AVX-512 CPU runs all three products on register tiles of this file
// (forward and grad_coeffs) and of cpu_tile_gemm.h (grad_dirs; the forward too on AVX2), other
// CPUs and types the BLAS.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_math.h"
#include "cpu_tile_gemm.h"
#include "output_cache.h"

// The AVX-512 kernels: compiled with a per-function target attribute (the rest of the
// extension is built for baseline x86-64) and chosen at run time by cpu_math::cpu_isa(), the
// dispatch the other CPU kernels use (PORTRAIT_ENGINE_CPU_ISA caps it).
#if PE_HAVE_ISA_CLONES
#include <immintrin.h>
#define PE_AVX512_BLEND 1
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "skinning/checks.h"
#include "skinning/lanes_avx512.h"
#include "skinning/skin_reduce.h"
#include "skinning/skinning.h"
#include "skinning/tile_product.h"

namespace portrait_engine {
namespace skinning {
namespace {

template <typename scalar_t>
void fk_forward_impl(const at::Tensor& pose, const at::Tensor& joints, const at::Tensor& parents,
                     bool pose2rot, at::Tensor& rot_out, at::Tensor& pj_out, at::Tensor& rel_out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = joints.size(0), J = joints.size(1), pose_stride = J * (pose2rot ? 3 : 9);
  const scalar_t* pose_ptr = pose.data_ptr<scalar_t>();
  const scalar_t* j_ptr = joints.data_ptr<scalar_t>();
  const int64_t* par = parents.data_ptr<int64_t>();
  scalar_t* rot_ptr = rot_out.data_ptr<scalar_t>();
  scalar_t* pj_ptr = pj_out.data_ptr<scalar_t>();
  scalar_t* rel_ptr = rel_out.data_ptr<scalar_t>();
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> rot(J * 9), jnt(J * 3), G(J * 12);
    for (int64_t b = begin; b < end; ++b) {
      forward_kinematics_element(pose_ptr + b * pose_stride, j_ptr + b * J * 3, par, J, pose2rot,
                                 rot.data(), jnt.data(), G.data(), rot_ptr + b * J * 9,
                                 pj_ptr + b * J * 3, rel_ptr + b * J * 16);
    }
  });
}

template <typename scalar_t>
void fk_backward_impl(const at::Tensor& grad_rot, int64_t rot_first, const at::Tensor& grad_pj,
                      const at::Tensor& grad_rel, const at::Tensor& pose,
                      const at::Tensor& joints, const at::Tensor& parents, bool pose2rot,
                      at::Tensor& grad_pose, at::Tensor& grad_joints) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = joints.size(0), J = joints.size(1), pose_stride = J * (pose2rot ? 3 : 9);
  const scalar_t* pose_ptr = pose.data_ptr<scalar_t>();
  const scalar_t* j_ptr = joints.data_ptr<scalar_t>();
  const int64_t* par = parents.data_ptr<int64_t>();
  const scalar_t* grot = grad_rot.data_ptr<scalar_t>();
  const scalar_t* gpj = grad_pj.numel() > 0 ? grad_pj.data_ptr<scalar_t>() : nullptr;
  const scalar_t* grel = grad_rel.data_ptr<scalar_t>();
  scalar_t* gpose = grad_pose.data_ptr<scalar_t>();
  scalar_t* gj = grad_joints.data_ptr<scalar_t>();
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> ws(J * kChainBackwardWorkspace);
    for (int64_t b = begin; b < end; ++b) {
      forward_kinematics_backward_element(grot + b * (J - rot_first) * 9, rot_first,
                                          gpj ? gpj + b * J * 3 : nullptr, grel + b * J * 16,
                                          pose_ptr + b * pose_stride, j_ptr + b * J * 3, par, J,
                                          pose2rot, ws.data(), gpose + b * pose_stride,
                                          gj + b * J * 3);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_kinematics_forward_cpu(
    const at::Tensor& pose, const at::Tensor& joints, const at::Tensor& parents, bool pose2rot) {
  check_fk(pose, joints, parents, pose2rot, kCpuSide);
  const int64_t B = joints.size(0), J = joints.size(1);
  at::Tensor rot = new_output({B, J, 3, 3}, joints.options());
  at::Tensor pj = new_output({B, J, 3}, joints.options());
  at::Tensor rel = new_output({B, J, 4, 4}, joints.options());
  if (B == 0 || J == 0) return {rot, pj, rel};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, joints.scalar_type(),
                                  "forward_kinematics_forward_cpu", [&] {
                                    fk_forward_impl<scalar_t>(pose, joints, parents, pose2rot, rot,
                                                              pj, rel);
                                  });
  return {rot, pj, rel};
}

std::tuple<at::Tensor, at::Tensor> forward_kinematics_backward_cpu(
    const at::Tensor& grad_rot, const at::Tensor& grad_pj, const at::Tensor& grad_rel,
    const at::Tensor& pose, const at::Tensor& joints, const at::Tensor& parents, bool pose2rot) {
  check_fk(pose, joints, parents, pose2rot, kCpuSide);
  const int64_t B = joints.size(0), J = joints.size(1);
  const int64_t rot_first = check_fk_grads(grad_rot, grad_pj, grad_rel, joints, kCpuSide);
  at::Tensor grad_pose = new_output(pose.sizes(), pose.options());
  at::Tensor grad_joints = new_output(joints.sizes(), joints.options());
  if (B == 0 || J == 0) return {grad_pose, grad_joints};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, joints.scalar_type(),
                                  "forward_kinematics_backward_cpu", [&] {
                                    fk_backward_impl<scalar_t>(grad_rot, rot_first, grad_pj,
                                                               grad_rel, pose,
                                                               joints, parents, pose2rot,
                                                               grad_pose, grad_joints);
                                  });
  return {grad_pose, grad_joints};
}

// ------------------------------------------------------------------------------------------


// Points per BLAS blend in the shared-weights paths: (kBlendChunk, B * 12) values per thread
// (384 KiB at SMPL's B = 32: within L2), enough that a product's call overhead is small.
constexpr int64_t kBlendChunk = 256;

#if defined(PE_AVX512_BLEND)

// The AVX-512 paths (float on an AVX-512 CPU, checked at run time: the extension itself is
// built for baseline x86-64).
bool blend_avx512(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && cpu_math::cpu_isa() == cpu_math::Isa::kAvx512;
}

// The register-tiled product of the chunk blends and of the backward's reductions over a chunk
// (blend_chunk, skin_backward_shared, the 16-point paths): out[r, c] = sum_k a[k * ak + r * ar]
// m[k * C + c] for the `rows` rows and the columns [c0, c0 + width), C the row stride of m and
// out; tile_product.h's tiles (each value's K terms summed in increasing k, stored once).
__attribute__((target("avx512f"))) inline void rows_times_matrix_all_avx512(
    const float* a, int64_t ak, int64_t ar, const float* m, float* out, int64_t rows, int64_t K,
    int64_t C, int64_t c0, int64_t width) {
  product_avx512({rows, K, width, ar, ak, C, 0, C}, a, m + c0, nullptr, out + c0);
}

// M (12 values) = sum_j w[j] A[j][:3, :]: a joint's 4x4 storage is one 16-lane vector (the
// bottom row is blended too, and dropped), so a point's blend is J FMAs, in four chains (the
// scalar blend<T> is 12 J multiply-adds).
__attribute__((target("avx512f"))) void blend_point_avx512(const float* w, const float* A,
                                                          int64_t J, float M[12]) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  int64_t j = 0;
  for (; j + 4 <= J; j += 4) {
    for (int q = 0; q < 4; ++q) {
      acc[q] =
          _mm512_fmadd_ps(_mm512_set1_ps(w[j + q]), _mm512_loadu_ps(A + (j + q) * 16), acc[q]);
    }
  }
  for (; j < J; ++j) {
    acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(w[j]), _mm512_loadu_ps(A + j * 16), acc[0]);
  }
  alignas(64) float sum[16];
  _mm512_store_ps(sum,
                  _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  for (int i = 0; i < 12; ++i) M[i] = sum[i];
}
#endif

// Whether the float kernels may take the AVX-512 paths above (float on an AVX-512 CPU).
bool vector_blend(const at::Tensor& transforms) {
#if defined(PE_AVX512_BLEND)
  return blend_avx512(transforms);
#else
  (void)transforms;
  return false;
#endif
}

// One point's blended transform: blend<T>, or for float storage with `vector` its AVX-512 form.
template <typename T, typename scalar_t>
void blend_point(const scalar_t* w, const scalar_t* A, int64_t J, bool vector, T M[12]) {
#if defined(PE_AVX512_BLEND)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (vector) {
      blend_point_avx512(w, A, J, M);
      return;
    }
  }
#endif
  (void)vector;
  blend<T>(w, A, J, M);
}

// Joint-major top rows of the transforms, At[j, b * 12 + k] = A[b, j, k // 4, k % 4], as a
// (J, B * 12) tensor in the accumulation dtype.
at::Tensor joint_major_rows(const at::Tensor& transforms) {
  const int64_t B = transforms.size(0), J = transforms.size(1);
  const auto acc = acc_dtype(transforms);
  return transforms.narrow(2, 0, 3).reshape({B, J, 12}).transpose(0, 1).reshape({J, B * 12}).to(acc).contiguous();
}

// M[i, :] = sum_j w[n0 + i, j] At[j, :] for the `rows` points from n0: the blended transforms
// of those points for the whole batch, (rows, R) row-major, by one BLAS product (at::mm_out
// over the buffers; inside a parallel region it runs on the calling thread). `wt` is a
// (kBlendChunk, J) buffer for the weights in T, `M` one of (kBlendChunk, R).
template <typename scalar_t>
void blend_chunk(const scalar_t* w_ptr, const at::Tensor& At, int64_t n0, int64_t rows,
                 int64_t J, at::Tensor& wt, at::Tensor& M) {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* w = w_ptr + n0 * J;
  T* wt_ptr = wt.data_ptr<T>();
  for (int64_t i = 0; i < rows * J; ++i) wt_ptr[i] = static_cast<T>(w[i]);
#if defined(PE_AVX512_BLEND)
  // float accumulation on an AVX-512 CPU: the register tiles (the BLAS ran this K = J product at
  // ~45 GFLOP/s on one core). Until 2026-11-28 the tiles computed the columns past the last 64
  // one at a time, 3.7-8.7x slower than the BLAS at B * 12 = 24 to 96 columns, and took only
  // At of 192 columns or more; with masked vector tiles for those columns, skin_points
  // samples-inverse (B = 2, 24 columns) fwd+bwd went 1.70 -> 1.39 ms (2-core Zen 4, in one
  // process, alternated).
  if (blend_avx512(At)) {
    const int64_t R = At.size(1);
    rows_times_matrix_all_avx512(reinterpret_cast<const float*>(wt_ptr), 1, J,
                                 At.data_ptr<float>(), M.data_ptr<float>(), rows, J, R, 0, R);
    return;
  }
#endif
  at::Tensor out = M.narrow(0, 0, rows);
  at::mm_out(out, wt.narrow(0, 0, rows), At);
}

// Runs fn(n0, rows, M) over chunks of the N points in parallel, M (rows, B * 12) holding the
// blended transforms of points n0 .. n0 + rows - 1 for the whole batch (weights shared).
template <typename scalar_t, typename Fn>
void for_each_blended_chunk(const scalar_t* w_ptr, const at::Tensor& transforms, int64_t N,
                            Fn&& fn) {
  using T = at::opmath_type<scalar_t>;
  const int64_t J = transforms.size(1), R = transforms.size(0) * 12;
  const at::Tensor At = joint_major_rows(transforms);
  at::parallel_for(0, N, kBlendChunk, [&](int64_t begin, int64_t end) {
    at::Tensor M = at::empty({kBlendChunk, R}, At.options());
    at::Tensor wt = at::empty({kBlendChunk, J}, At.options());
    const T* m_ptr = M.data_ptr<T>();
    for (int64_t n0 = begin; n0 < end; n0 += kBlendChunk) {
      const int64_t rows = std::min(kBlendChunk, end - n0);
      blend_chunk<scalar_t>(w_ptr, At, n0, rows, J, wt, M);
      fn(n0, rows, m_ptr);
    }
  });
}

template <typename scalar_t>
void skin_forward_impl(const at::Tensor& points, const at::Tensor& weights,
                       const at::Tensor& transforms, bool inverse, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = points.size(0), N = points.size(1), J = transforms.size(1);
  const int64_t wb = weights.size(0) == 1 ? 0 : N * J;
  const scalar_t* p_ptr = points.data_ptr<scalar_t>();
  const scalar_t* w_ptr = weights.data_ptr<scalar_t>();
  const scalar_t* a_ptr = transforms.data_ptr<scalar_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  if (wb == 0 && B > 1) {
    // Weights shared by the batch: the B blended transforms of a chunk of points at once
    // (blend_chunk), then applied point by point.
    const int64_t R = B * 12;
    for_each_blended_chunk(w_ptr, transforms, N, [&](int64_t n0, int64_t rows, const T* m_ptr) {
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t idx = b * N + n0 + i;
          const scalar_t* p = p_ptr + idx * 3;
          const T pv[3] = {static_cast<T>(p[0]), static_cast<T>(p[1]), static_cast<T>(p[2])};
          T o[3];
          skin_point(m_ptr + i * R + b * 12, pv, inverse, o);
          for (int c = 0; c < 3; ++c) o_ptr[idx * 3 + c] = static_cast<scalar_t>(o[c]);
        }
      }
    });
    return;
  }
  const bool vector = vector_blend(transforms);
  at::parallel_for(0, B * N, std::max<int64_t>(1, 8192 / std::max<int64_t>(J, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t idx = begin; idx < end; ++idx) {
                       const int64_t b = idx / N, n = idx % N;
                       T M[12];
                       blend_point<T>(w_ptr + b * wb + n * J, a_ptr + b * J * 16, J, vector, M);
                       const scalar_t* p = p_ptr + idx * 3;
                       const T pv[3] = {static_cast<T>(p[0]), static_cast<T>(p[1]),
                                        static_cast<T>(p[2])};
                       T o[3];
                       skin_point(M, pv, inverse, o);
                       for (int c = 0; c < 3; ++c) o_ptr[idx * 3 + c] = static_cast<scalar_t>(o[c]);
                     }
                   });
}

// Without the register tiles (below: not float accumulation, or no AVX-512), small batches keep
// one (N, B, 12) workspace and two whole GEMMs: their per-chunk BLAS products would be tiny
// (R = 12 B columns), and at B = 2 (the samples-inverse benchmark case) the chunked path with
// the BLAS measured no gain (loaded machine, noisy: 1.6-2.5x vs 2.1-2.7x the eager op).
constexpr int64_t kSharedChunkMinBatch = 8;

// Whether the backward of weights shared by the batch takes skin_backward_shared: from
// kSharedChunkMinBatch on, and from one row with float accumulation on an AVX-512 CPU, where the
// chunk's products run on the register tiles (2-core Zen 4, 2026-11-28, in one process,
// alternated: skin_points samples-inverse, B = 2, fwd+bwd 2.18 -> 1.32 ms; lbs at B = 1 2.71 ->
// 2.42 ms; the whole-workspace path's BLAS products ran at ~40 GFLOP/s there).
bool shared_chunked(const at::Tensor& weights, int64_t B, const at::TensorOptions& acc) {
  if (weights.size(0) != 1) return false;
#if defined(PE_AVX512_BLEND)
  if (acc.dtype() == at::kFloat && cpu_math::cpu_isa() == cpu_math::Isa::kAvx512) return true;
#endif
  (void)acc;
  return B >= kSharedChunkMinBatch;
}

// Shared weights, B >= kSharedChunkMinBatch: per chunk of kBlendChunk points the blend (as in
// the forward), then per
// point grad_points and dM (the gradient of the blended transform's 12 values) into a chunk
// buffer (rows, B * 12), and both reductions over points as products on that buffer while it
// is in cache (no (N, B, 12) workspace goes through memory):
//   grad_w[n0 + i, j] = sum_{b,k} dM[i, b * 12 + k] At[j, b * 12 + k]   rows of the output
//   part[chunk][j, :] = sum_i w[n0 + i, j] dM[i, :]                       summed over chunks after
// One partial per chunk (the chunks do not depend on the thread count), no atomics.
template <typename scalar_t>
void skin_backward_shared(const at::Tensor& grad_out, const at::Tensor& points,
                          const at::Tensor& weights, const at::Tensor& transforms, bool inverse,
                          at::Tensor& grad_points, at::Tensor& grad_w, at::Tensor& partial) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = points.size(0), N = points.size(1), J = transforms.size(1), R = B * 12;
  const scalar_t* g_ptr = grad_out.data_ptr<scalar_t>();
  const scalar_t* p_ptr = points.data_ptr<scalar_t>();
  const scalar_t* w_ptr = weights.data_ptr<scalar_t>();
  scalar_t* gp_ptr = grad_points.data_ptr<scalar_t>();
  const at::Tensor At = joint_major_rows(transforms);
  const at::Tensor At_t = At.t();
  const at::Tensor At_rows = At_t.contiguous();  // (R, J): grad_w's right side
  at::parallel_for(0, partial.size(0), 1, [&](int64_t begin, int64_t end) {
    at::Tensor M = at::empty({kBlendChunk, R}, At.options());
    at::Tensor wt = at::empty({kBlendChunk, J}, At.options());
    at::Tensor dM = at::empty({kBlendChunk, R}, At.options());
    const T* m_ptr = M.data_ptr<T>();
    T* dm_ptr = dM.data_ptr<T>();
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t n0 = chunk * kBlendChunk, rows = std::min(kBlendChunk, N - n0);
      blend_chunk<scalar_t>(w_ptr, At, n0, rows, J, wt, M);
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t idx = b * N + n0 + i;
          const T pv[3] = {static_cast<T>(p_ptr[idx * 3]), static_cast<T>(p_ptr[idx * 3 + 1]),
                           static_cast<T>(p_ptr[idx * 3 + 2])};
          const T gv[3] = {static_cast<T>(g_ptr[idx * 3]), static_cast<T>(g_ptr[idx * 3 + 1]),
                           static_cast<T>(g_ptr[idx * 3 + 2])};
          T gp[3];
          skin_point_backward(m_ptr + i * R + b * 12, pv, gv, inverse, gp, dm_ptr + i * R + b * 12);
          for (int k = 0; k < 3; ++k) gp_ptr[idx * 3 + k] = static_cast<scalar_t>(gp[k]);
        }
      }
      const at::Tensor dM_rows = dM.narrow(0, 0, rows);
      at::Tensor gw = grad_w.narrow(0, n0, rows);
      at::Tensor part = partial[chunk];
#if defined(PE_AVX512_BLEND)
      if (blend_avx512(At)) {
        // both on the chunk blend's register tiles (float accumulation, AVX-512):
        //   grad_w rows = dM (rows, R) · Atᵀ (R, J)       (at lbs's B = 32, against the BLAS:
        //                                                  skin_points fwd+bwd 4.97 -> 4.73 ms)
        //   part[j, :] = Σ_i wt[i, j] dM[i, :]             (at B = 32 the whole backward went
        //                                                  6.2-7.0 -> 6.0-6.3 ms, one thread)
        const float* dm = reinterpret_cast<const float*>(dm_ptr);
        rows_times_matrix_all_avx512(dm, 1, R, At_rows.data_ptr<float>(), gw.data_ptr<float>(),
                                     rows, R, J, 0, J);
        rows_times_matrix_all_avx512(wt.data_ptr<float>(), J, 1, dm, part.data_ptr<float>(), J,
                                     rows, R, 0, R);
        continue;
      }
#endif
      at::mm_out(gw, dM_rows, At_t);
      at::mm_out(part, wt.narrow(0, 0, rows).t(), dM_rows);
    }
  });
}

#if defined(PE_AVX512_BLEND)
// The shared-weights paths with the per-point work on 16 points at once (float on an AVX-512 CPU,
// the forward map M (p, 1) only: not `inverse`). The chunk's blended transforms are built
// component-major, Mk[b * 12 + k][i] = Σ_j At[j, b * 12 + k] w[n0 + i, j] (R x kBlendChunk, the
// register tiles over the weights' transposed chunk), so that each of a point group's 12 values
// is one vector load; the points and their gradients are de-interleaved from (x, y, z) triples
// by two permutes per component. The backward writes dM component-major too (dMk, R x chunk) and
// reduces it with the same tiles: grad_w rows = dMkᵀ At_rows, partᵀ (R, J) = dMk w_chunk.
// With the transforms point-major ((chunk, R)) each point's 12 values were scalar work: at lbs's
// B = 32 about a third of skin_points' time. The per-point sums are skin_point's multiply-adds
// in its order (GCC contracts them into FMAs, so the rounding can differ from the per-point
// path's in the last bit), and the chunks' partials are summed in chunk order: the same result
// for any thread count.

// out (n) = Σ_p partial[p * n + i] over the `parts` partials in order (the partials' sum by a
// loop of our own: its order does not depend on the threads or on ATen's reduction strategy).
inline void sum_partials(const float* partial, int64_t parts, int64_t n, float* out) {
  std::copy(partial, partial + n, out);
  for (int64_t p = 1; p < parts; ++p) {
    const float* part = partial + p * n;
    for (int64_t i = 0; i < n; ++i) out[i] += part[i];
  }
}

// Mk (R x kBlendChunk) for the `rows` points from n0; wt_t a (J x kBlendChunk) buffer.
__attribute__((target("avx512f"))) void blend_chunk_by_component(
    const float* w, const float* At, int64_t J, int64_t R, int64_t n0, int64_t rows,
    float* wt_t, float* Mk) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < J; ++j) wt_t[j * kBlendChunk + i] = w[(n0 + i) * J + j];
  }
  // Mk[r, i] = Σ_j At[j, r] wt_t[j, i]: a = At with (r, j) strides (1, R)
  rows_times_matrix_all_avx512(At, R, 1, wt_t, Mk, R, J, kBlendChunk, 0, rows);
}

struct SkinSharedArgs {
  const float* grad_out;  // (B, N, 3), backward
  const float* points;    // (B, N, 3)
  const float* w;         // (N, J)
  const float* At;        // (J, R)
  const float* At_rows;   // (R, J), backward
  float* out;             // forward: (B, N, 3); backward: grad_points
  float* grad_w;          // (N, J), backward
  float* partial_t;       // (chunks, R, J), backward
  int64_t B, N, J;
};

// the forward's chunks [begin, end) (chunk c: points from c * kBlendChunk)
__attribute__((target("avx512f"))) void skin_forward_shared_chunks(const SkinSharedArgs& a,
                                                                   int64_t begin, int64_t end) {
  const int64_t B = a.B, N = a.N, J = a.J, R = B * 12;
  const TripleIndices& t = triple_indices();
  std::vector<float> wt_t(J * kBlendChunk), Mk(R * kBlendChunk);
  for (int64_t chunk = begin; chunk < end; ++chunk) {
    const int64_t n0 = chunk * kBlendChunk, rows = std::min(kBlendChunk, N - n0);
    blend_chunk_by_component(a.w, a.At, J, R, n0, rows, wt_t.data(), Mk.data());
    for (int64_t b = 0; b < B; ++b) {
      const float* m = Mk.data() + b * 12 * kBlendChunk;
      for (int64_t i0 = 0; i0 < rows; i0 += 16) {
        const int64_t n = std::min<int64_t>(16, rows - i0);
        const int64_t point = (b * N + n0 + i0) * 3;
        __m512 p[3], o[3];
        load_triples(t, a.points + point, n, p);
        for (int r = 0; r < 3; ++r) {  // M[r] (p, 1), in skin_point's order
          const float* row = m + r * 4 * kBlendChunk + i0;
          const __m512 xy = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(row), p[0]),
                                          _mm512_mul_ps(_mm512_loadu_ps(row + kBlendChunk), p[1]));
          o[r] = _mm512_add_ps(
              _mm512_add_ps(xy, _mm512_mul_ps(_mm512_loadu_ps(row + 2 * kBlendChunk), p[2])),
              _mm512_loadu_ps(row + 3 * kBlendChunk));
        }
        store_triples(t, o, n, a.out + point);
      }
    }
  }
}

// the backward's chunks [begin, end)
__attribute__((target("avx512f"))) void skin_backward_shared_chunks(const SkinSharedArgs& a,
                                                                    int64_t begin, int64_t end) {
  const int64_t B = a.B, N = a.N, J = a.J, R = B * 12;
  const TripleIndices& t = triple_indices();
  std::vector<float> wt_t(J * kBlendChunk), Mk(R * kBlendChunk), dMk(R * kBlendChunk);
  for (int64_t chunk = begin; chunk < end; ++chunk) {
    const int64_t n0 = chunk * kBlendChunk, rows = std::min(kBlendChunk, N - n0);
    blend_chunk_by_component(a.w, a.At, J, R, n0, rows, wt_t.data(), Mk.data());
    for (int64_t b = 0; b < B; ++b) {
      const float* m = Mk.data() + b * 12 * kBlendChunk;
      float* dm = dMk.data() + b * 12 * kBlendChunk;
      for (int64_t i0 = 0; i0 < rows; i0 += 16) {
        const int64_t n = std::min<int64_t>(16, rows - i0);
        const int64_t point = (b * N + n0 + i0) * 3;
        __m512 p[3], g[3], gp[3];
        load_triples(t, a.points + point, n, p);
        load_triples(t, a.grad_out + point, n, g);
        // gp = Mᵀ g; dM = g (p, 1)ᵀ (the lanes past n are never read: the products below take
        // the chunk's first `rows` columns)
        for (int c = 0; c < 3; ++c) {
          const float* col = m + c * kBlendChunk + i0;
          gp[c] = _mm512_add_ps(
              _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(col), g[0]),
                            _mm512_mul_ps(_mm512_loadu_ps(col + 4 * kBlendChunk), g[1])),
              _mm512_mul_ps(_mm512_loadu_ps(col + 8 * kBlendChunk), g[2]));
        }
        store_triples(t, gp, n, a.out + point);
        for (int r = 0; r < 3; ++r) {
          float* row = dm + r * 4 * kBlendChunk + i0;
          for (int c = 0; c < 3; ++c) {
            _mm512_storeu_ps(row + c * kBlendChunk, _mm512_mul_ps(g[r], p[c]));
          }
          _mm512_storeu_ps(row + 3 * kBlendChunk, g[r]);
        }
      }
    }
    // grad_w rows (rows, J) = dMkᵀ (rows, R) At_rows (R, J): a = dMk, (i, r) strides (1, chunk)
    rows_times_matrix_all_avx512(dMk.data(), kBlendChunk, 1, a.At_rows, a.grad_w + n0 * J, rows,
                                 R, J, 0, J);
    // partᵀ (R, J) = dMk (R, rows) w[n0 : n0 + rows] (rows, J)
    rows_times_matrix_all_avx512(dMk.data(), 1, kBlendChunk, a.w + n0 * J,
                                 a.partial_t + chunk * R * J, R, rows, J, 0, J);
  }
}

// Whether skin_points takes the two kernels above: float, shared weights, the forward map, an
// AVX-512 CPU (the forward from B = 2: at B = 1 the per-point blend measured the same).
// Measured on the 2-core Zen 4 (2026-11-28, in one process, alternated with the point-major
// path): lbs at B = 32 fwd+bwd 12.13 -> 11.64 ms, skin_points smpl-b32 4.62 -> 4.26 ms, lbs at
// B = 1 2.75 -> 2.61 ms.
bool skin_shared_vector(const at::Tensor& points, const at::Tensor& weights, bool inverse) {
  return !inverse && weights.size(0) == 1 && points.scalar_type() == at::kFloat &&
         blend_avx512(points);
}
#endif

// Per point: grad_points and dM into a workspace in the accumulation type, reduced by the GEMMs
// of the caller: (B, N, 12) for batched weights, point-major (N, B, 12) for shared ones (the
// path of batches below kSharedChunkMinBatch; B = 1: both layouts agree).
template <typename scalar_t>
void skin_backward_points(const at::Tensor& grad_out, const at::Tensor& points,
                          const at::Tensor& weights, const at::Tensor& transforms, bool inverse,
                          at::Tensor& grad_points, at::Tensor& dM_ws) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = points.size(0), N = points.size(1), J = transforms.size(1);
  const int64_t wb = weights.size(0) == 1 ? 0 : N * J;
  const scalar_t* g_ptr = grad_out.data_ptr<scalar_t>();
  const scalar_t* p_ptr = points.data_ptr<scalar_t>();
  const scalar_t* w_ptr = weights.data_ptr<scalar_t>();
  const scalar_t* a_ptr = transforms.data_ptr<scalar_t>();
  scalar_t* gp_ptr = grad_points.data_ptr<scalar_t>();
  T* dm_ptr = dM_ws.data_ptr<T>();
  if (wb == 0 && B > 1) {  // shared weights: the blend as in the forward
    const int64_t R = B * 12;
    for_each_blended_chunk(w_ptr, transforms, N, [&](int64_t n0, int64_t rows, const T* m_ptr) {
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t b = 0; b < B; ++b) {
          const int64_t n = n0 + i, idx = b * N + n;
          const T pv[3] = {static_cast<T>(p_ptr[idx * 3]), static_cast<T>(p_ptr[idx * 3 + 1]),
                           static_cast<T>(p_ptr[idx * 3 + 2])};
          const T gv[3] = {static_cast<T>(g_ptr[idx * 3]), static_cast<T>(g_ptr[idx * 3 + 1]),
                           static_cast<T>(g_ptr[idx * 3 + 2])};
          T gp[3];
          // point-major (N, B, 12): the GEMMs below read it without a transposed copy
          skin_point_backward(m_ptr + i * R + b * 12, pv, gv, inverse, gp,
                              dm_ptr + (n * B + b) * 12);
          for (int k = 0; k < 3; ++k) gp_ptr[idx * 3 + k] = static_cast<scalar_t>(gp[k]);
        }
      }
    });
    return;
  }
  const bool vector = vector_blend(transforms);
  at::parallel_for(0, B * N, std::max<int64_t>(1, 4096 / std::max<int64_t>(J, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t idx = begin; idx < end; ++idx) {
                       const int64_t b = idx / N, n = idx % N;
                       T M[12];
                       blend_point<T>(w_ptr + b * wb + n * J, a_ptr + b * J * 16, J, vector, M);
                       const T pv[3] = {static_cast<T>(p_ptr[idx * 3]),
                                        static_cast<T>(p_ptr[idx * 3 + 1]),
                                        static_cast<T>(p_ptr[idx * 3 + 2])};
                       const T gv[3] = {static_cast<T>(g_ptr[idx * 3]),
                                        static_cast<T>(g_ptr[idx * 3 + 1]),
                                        static_cast<T>(g_ptr[idx * 3 + 2])};
                       T gp[3];
                       skin_point_backward(M, pv, gv, inverse, gp, dm_ptr + idx * 12);
                       for (int k = 0; k < 3; ++k) gp_ptr[idx * 3 + k] = static_cast<scalar_t>(gp[k]);
                     }
                   });
}

at::Tensor skin_points_forward_cpu(const at::Tensor& points, const at::Tensor& weights,
                                   const at::Tensor& transforms, bool inverse) {
  check_skin(points, weights, transforms, kCpuSide);
  at::Tensor out = new_output(points.sizes(), points.options());
  if (points.numel() == 0) return out;
#if defined(PE_AVX512_BLEND)
  if (skin_shared_vector(points, weights, inverse) && points.size(0) > 1) {
    const at::Tensor At = joint_major_rows(transforms);
    SkinSharedArgs a{};
    a.points = points.data_ptr<float>();
    a.w = weights.data_ptr<float>();
    a.At = At.data_ptr<float>();
    a.out = out.data_ptr<float>();
    a.B = points.size(0), a.N = points.size(1), a.J = transforms.size(1);
    at::parallel_for(0, (a.N + kBlendChunk - 1) / kBlendChunk, 1,
                     [&](int64_t begin, int64_t end) { skin_forward_shared_chunks(a, begin, end); });
    return out;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(),
                                  "skin_points_forward_cpu", [&] {
                                    skin_forward_impl<scalar_t>(points, weights, transforms,
                                                                inverse, out);
                                  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> skin_points_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& points, const at::Tensor& weights,
    const at::Tensor& transforms, bool inverse) {
  check_skin(points, weights, transforms, kCpuSide);
  check_skin_grad(grad_out, points, kCpuSide);
  at::Tensor grad_points = new_output(points.sizes(), points.options());
  const int64_t B = points.size(0), N = points.size(1), J = transforms.size(1);
  if (B == 0 || N == 0) {
    return {grad_points, at::zeros_like(weights), at::zeros_like(transforms)};
  }
  // The reductions over points are GEMMs over dM (skin_reduce.h): per chunk of points on a
  // cache-resident buffer for batches of shared weights, over a whole workspace otherwise.
  const auto acc = points.options().dtype(acc_dtype(points));
#if defined(PE_AVX512_BLEND)
  if (skin_shared_vector(points, weights, inverse)) {
    const at::Tensor At = joint_major_rows(transforms);
    const at::Tensor At_rows = At.t().contiguous();
    at::Tensor grad_w = new_output({1, N, J}, acc);
    at::Tensor partial_t = at::empty({(N + kBlendChunk - 1) / kBlendChunk, B * 12, J}, acc);
    SkinSharedArgs a{grad_out.data_ptr<float>(), points.data_ptr<float>(),
                     weights.data_ptr<float>(), At.data_ptr<float>(), At_rows.data_ptr<float>(),
                     grad_points.data_ptr<float>(), grad_w.data_ptr<float>(),
                     partial_t.data_ptr<float>(), B, N, J};
    at::parallel_for(0, partial_t.size(0), 1, [&](int64_t begin, int64_t end) {
      skin_backward_shared_chunks(a, begin, end);
    });
    at::Tensor summed = at::empty({B * 12, J}, acc);
    sum_partials(partial_t.data_ptr<float>(), partial_t.size(0), B * 12 * J,
                 summed.data_ptr<float>());
    at::Tensor grad_transforms = at::zeros(transforms.sizes(), acc);
    grad_transforms.narrow(2, 0, 3).copy_(
        summed.view({B, 12, J}).transpose(1, 2).reshape({B, J, 3, 4}));
    return {grad_points, grad_w, grad_transforms};
  }
#endif
  if (shared_chunked(weights, B, acc)) {
    at::Tensor grad_w = at::empty({N, J}, acc);
    at::Tensor partial = at::empty({(N + kBlendChunk - 1) / kBlendChunk, J, B * 12}, acc);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(),
                                    "skin_points_backward_cpu", [&] {
                                      skin_backward_shared<scalar_t>(grad_out, points, weights,
                                                                     transforms, inverse,
                                                                     grad_points, grad_w, partial);
                                    });
    at::Tensor grad_transforms = at::zeros(transforms.sizes(), acc);
    grad_transforms.narrow(2, 0, 3).copy_(
        partial.sum(0).view({J, B, 12}).permute({1, 0, 2}).reshape({B, J, 3, 4}));
    return {grad_points, grad_w.unsqueeze(0).to(weights.scalar_type()),
            grad_transforms.to(transforms.scalar_type())};
  }
  at::Tensor dM = at::empty({B, N, 12}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(),
                                  "skin_points_backward_cpu", [&] {
                                    skin_backward_points<scalar_t>(grad_out, points, weights,
                                                                   transforms, inverse,
                                                                   grad_points, dM);
                                  });
  auto [grad_weights, grad_transforms] = skin_reductions(dM, weights, transforms);
  return {grad_points, grad_weights, grad_transforms};
}

// ------------------------------------------------------------------------------------------
// blend_shapes: out = base + coeffs @ dirs (SMPL's pose blend shapes: (B, 207) x (207, V * 3)).
// From kStreamMinBlasBatch on, float on an AVX2 / AVX-512 CPU: register tiles of our own (below:
// blend_forward_tiled, grad_coeffs_tiled, grad_dirs_of); otherwise one BLAS call each. Below it
// (matrix-vector-like, memory-bound): float on an AVX-512 CPU with two or more threads, the
// streamed kernels further down; otherwise one BLAS call each.
//
// History: until 2026-11-27 the products from B = 8 on ran on column slices of 512 (one task
// per slice range) through register-tiled AVX-512 kernels, the backward's two sharing each
// slice of dirs in L2. Measured on a 2-core 300 MiB-L3 Xeon (5th generation), in one process
// with the forms alternated, lbs at B = 32 fwd+bwd took 1.10-1.15x as long as with the BLAS
// calls with both products sliced (3 runs), 1.10-1.13x with the forward alone sliced (2 runs)
// and 1.04-1.12x with the backward alone (5 runs). The forward product alone took 2.5-4.8 ms
// sliced and 1.3-2.4 ms as one BLAS call (separate runs; the machine's speed moved between
// them). The slices had been chosen against one core's BLAS call per slice, not one call on all
// threads.
// ------------------------------------------------------------------------------------------

#if defined(PE_AVX512_BLEND)
// outer_stream: out[f, c] = k[f] g[c] for rows [f0, f1) with non-temporal stores. B = 1's
//   grad_dirs is 17 MB written once and read by no one here: ordinary stores first read every
//   line of the cold output (write-allocate), doubling the memory traffic.
__attribute__((target("avx512f"))) void outer_stream_avx512(const float* k, const float* g,
                                                           float* out, int64_t C, int64_t f0,
                                                           int64_t f1) {
  for (int64_t f = f0; f < f1; ++f) {
    float* row = out + f * C;
    const float kf = k[f];
    const __m512 kv = _mm512_set1_ps(kf);
    // floats up to the row's first 64-byte boundary (rows are 4-byte aligned)
    const int64_t past = static_cast<int64_t>(reinterpret_cast<uintptr_t>(row) & 63) / 4;
    const int64_t head = std::min<int64_t>(past == 0 ? 0 : 16 - past, C);
    int64_t c = 0;
    for (; c < head; ++c) row[c] = kf * g[c];
    for (; c + 16 <= C; c += 16) {
      _mm512_stream_ps(row + c, _mm512_mul_ps(kv, _mm512_loadu_ps(g + c)));
    }
    for (; c < C; ++c) row[c] = kf * g[c];
  }
  _mm_sfence();
}

// Small batches (B < kStreamMinBlasBatch; SMPL at B = 1): the products are matrix-vector-like,
//   bound by the passes over the 17 MB dirs and the 17 MB write of its gradient, not by
//   arithmetic. The BLAS runs them as separate passes (the forward's and grad_coeffs' matrix-
//   vector products on one thread: 0.85 and 1.0 ms at B = 1 with dirs out of cache, 2 threads,
//   against 0.66 ms for a plain 17 MB read); here the forward gives each thread one range of
//   columns (blend_shapes_forward_cpu), every row of dirs read as one contiguous run per thread,
//   and the backward, parallel over rows, reads dirs and writes grad_dirs in the same pass.
//   Templated on the batch so that the per-row accumulators live in registers.
//   Until 2026-11-28 (third session) the forward ran column blocks of kStreamColumns with a
//   software prefetch 1 KiB ahead in each row (chosen on one thread, where it measured
//   0.87-0.90 ms against 0.97-1.03 without); on two threads, cold dirs, B = 1, the blocks took
//   0.53-0.66 ms against 0.42-0.44 for one range per thread without the prefetch and 0.32-0.46
//   for `dirs.sum()` (one process, alternated; the machine's speed moved between runs), and
//   SMPL's lbs fwd+bwd 2.26 / 2.62 / 2.43 -> 2.12 / 2.49 / 2.34 ms (medians of 300 alternated
//   steps, three runs; the range split and the dropped prefetch each gave part of it). Row slabs
//   with a partial per slab, four rows at a time, measured as fast as the ranges; one row at a
//   time, slower (0.61-0.63 ms).
constexpr int64_t kStreamColumns = 4096;  // the backward's column chunk (stream_backward_width)
// The batch from which one BLAS call per product beats the streamed passes (measured at B = 1
// and 32; the crossover is rough).
constexpr int64_t kStreamMinBlasBatch = 8;
constexpr int64_t kStreamMaxBatch = kStreamMinBlasBatch - 1;

// out[b, c] = base[b or 0, c] + sum_f coeffs[b, f] dirs[f, c] on the columns [c0, c0 + width):
// their NB output rows stay in L1 / L2 (41 KB each for SMPL on two threads) while the F rows of
// dirs stream by, four at a time (no software prefetch: above).
template <int NB>
__attribute__((target("avx512f"))) void stream_forward_block_avx512(
    const float* base, int64_t base_rows, const float* coeffs, const float* dirs, float* out,
    int64_t F, int64_t C, int64_t c0, int64_t width) {
  const int64_t full = width / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (width - full)) - 1u);
  for (int b = 0; b < NB; ++b) {
    std::memcpy(out + b * C + c0, base + (base_rows == 1 ? 0 : b) * C + c0,
                static_cast<size_t>(width) * sizeof(float));
  }
  int64_t f = 0;
  for (; f + 4 <= F; f += 4) {
    const float* d = dirs + f * C + c0;
    for (int b = 0; b < NB; ++b) {
      const float* k = coeffs + b * F + f;
      const __m512 k0 = _mm512_set1_ps(k[0]), k1 = _mm512_set1_ps(k[1]),
                   k2 = _mm512_set1_ps(k[2]), k3 = _mm512_set1_ps(k[3]);
      float* o = out + b * C + c0;
      int64_t c = 0;
      for (; c < full; c += 16) {
        __m512 acc = _mm512_loadu_ps(o + c);
        acc = _mm512_fmadd_ps(k0, _mm512_loadu_ps(d + c), acc);
        acc = _mm512_fmadd_ps(k1, _mm512_loadu_ps(d + C + c), acc);
        acc = _mm512_fmadd_ps(k2, _mm512_loadu_ps(d + 2 * C + c), acc);
        acc = _mm512_fmadd_ps(k3, _mm512_loadu_ps(d + 3 * C + c), acc);
        _mm512_storeu_ps(o + c, acc);
      }
      if (tail != 0) {
        __m512 acc = _mm512_maskz_loadu_ps(tail, o + c);
        acc = _mm512_fmadd_ps(k0, _mm512_maskz_loadu_ps(tail, d + c), acc);
        acc = _mm512_fmadd_ps(k1, _mm512_maskz_loadu_ps(tail, d + C + c), acc);
        acc = _mm512_fmadd_ps(k2, _mm512_maskz_loadu_ps(tail, d + 2 * C + c), acc);
        acc = _mm512_fmadd_ps(k3, _mm512_maskz_loadu_ps(tail, d + 3 * C + c), acc);
        _mm512_mask_storeu_ps(o + c, tail, acc);
      }
    }
  }
  for (; f < F; ++f) {
    const float* d = dirs + f * C + c0;
    for (int b = 0; b < NB; ++b) {
      const __m512 k0 = _mm512_set1_ps(coeffs[b * F + f]);
      float* o = out + b * C + c0;
      int64_t c = 0;
      for (; c < full; c += 16) {
        _mm512_storeu_ps(o + c,
                         _mm512_fmadd_ps(k0, _mm512_loadu_ps(d + c), _mm512_loadu_ps(o + c)));
      }
      if (tail != 0) {
        _mm512_mask_storeu_ps(o + c, tail,
                              _mm512_fmadd_ps(k0, _mm512_maskz_loadu_ps(tail, d + c),
                                              _mm512_maskz_loadu_ps(tail, o + c)));
      }
    }
  }
}

// The backward's pass over rows [f0, f1) of dirs and the columns [c0, c0 + width): per row f,
// the dots sum_c grad[b, c] dirs[f, c] over those columns, stored in part[b * F + f] (added to
// it with `accumulate`, for a row's later column chunks) and, with grad_dirs,
// grad_dirs[f, c] = sum_b coeffs[b, f] grad[b, c] by non-temporal stores (written once, read by
// no one here: ordinary stores would first read every line of the cold output; they measured
// 1.3 against 0.9 ms for B = 1's backward). The NB grad rows of the columns stay in L1 / L2; two
// accumulators per batch row (the dots' FMA chains would otherwise bound the read rate at B = 1).
// One row's share of the backward pass (stream_backward_block_avx512 runs one or two rows at
// once, their steps interleaved).
template <int NB>
struct BackwardRow {
  const float* g;  // the grad rows from column c0 (row b at g + b * C)
  const float* d;  // dirs' row f from c0
  float* o;        // grad_dirs' row f from c0, or null
  const float* coeffs;
  int64_t F, C, f, width, c = 0, head = 0;
  __m512 k[NB], acc[NB][2];
  float dot[NB];

  __attribute__((target("avx512f"))) void start() {
    // scalar columns up to o's first 64-byte boundary (rows are 4-byte aligned), then whole
    // aligned vectors, then a masked tail
    if (o != nullptr) {
      const int64_t past = static_cast<int64_t>(reinterpret_cast<uintptr_t>(o) & 63) / 4;
      head = std::min<int64_t>(past == 0 ? 0 : 16 - past, width);
    }
    for (int b = 0; b < NB; ++b) {
      k[b] = _mm512_set1_ps(coeffs[b * F + f]);
      acc[b][0] = _mm512_setzero_ps();
      acc[b][1] = _mm512_setzero_ps();
      dot[b] = 0.f;
    }
    for (; c < head; ++c) {
      float w = 0.f;
      for (int b = 0; b < NB; ++b) {
        const float gv = g[b * C + c];
        dot[b] += gv * d[c];
        w += coeffs[b * F + f] * gv;
      }
      o[c] = w;
    }
  }
  bool more() const { return c + 32 <= width; }
  // 32 columns from c
  __attribute__((target("avx512f"))) void step() {
    const __m512 d0 = _mm512_loadu_ps(d + c), d1 = _mm512_loadu_ps(d + c + 16);
    __m512 w0 = _mm512_setzero_ps(), w1 = _mm512_setzero_ps();
    for (int b = 0; b < NB; ++b) {
      const __m512 g0 = _mm512_loadu_ps(g + b * C + c), g1 = _mm512_loadu_ps(g + b * C + c + 16);
      acc[b][0] = _mm512_fmadd_ps(g0, d0, acc[b][0]);
      acc[b][1] = _mm512_fmadd_ps(g1, d1, acc[b][1]);
      w0 = _mm512_fmadd_ps(k[b], g0, w0);
      w1 = _mm512_fmadd_ps(k[b], g1, w1);
    }
    if (o != nullptr) {
      _mm512_stream_ps(o + c, w0);
      _mm512_stream_ps(o + c + 16, w1);
    }
    c += 32;
  }
  // the last 1 to 31 columns, masked (ordinary stores); the row's dots into part
  __attribute__((target("avx512f"))) void finish(float* part, bool accumulate) {
    for (; c < width; c += 16) {
      const int64_t left = width - c;
      const __mmask16 mask = left >= 16 ? static_cast<__mmask16>(0xffff)
                                        : static_cast<__mmask16>((1u << left) - 1u);
      const __m512 d0 = _mm512_maskz_loadu_ps(mask, d + c);
      __m512 w0 = _mm512_setzero_ps();
      for (int b = 0; b < NB; ++b) {
        const __m512 g0 = _mm512_maskz_loadu_ps(mask, g + b * C + c);
        acc[b][0] = _mm512_fmadd_ps(g0, d0, acc[b][0]);
        w0 = _mm512_fmadd_ps(k[b], g0, w0);
      }
      if (o != nullptr) _mm512_mask_storeu_ps(o + c, mask, w0);
    }
    for (int b = 0; b < NB; ++b) {
      const float sum = dot[b] + sum_lanes(_mm512_add_ps(acc[b][0], acc[b][1]));
      part[b * F + f] = accumulate ? part[b * F + f] + sum : sum;
    }
  }
};

// The backward's pass over rows [f0, f1) of dirs and the columns [c0, c0 + width): per row f,
// the dots sum_c grad[b, c] dirs[f, c] over those columns, stored in part[b * F + f] (added to
// it with `accumulate`, for a row's later column chunks) and, with grad_dirs,
// grad_dirs[f, c] = sum_b coeffs[b, f] grad[b, c] by non-temporal stores (written once, read by
// no one here: ordinary stores would first read every line of the cold output; they measured
// 1.3 against 0.9 ms for B = 1's backward). The NB grad rows of the columns stay in L1 / L2; two
// accumulators per batch row (the dots' FMA chains would otherwise bound the read rate at B = 1).
// Up to NB = 2 two rows go at once, their 32-column steps interleaved (two read streams and two
// write streams per thread): alone, B = 1's backward 0.72 against 0.76-0.79 ms one row at a
// time; in SMPL's lbs at B = 1, 2.082 / 2.160 / 2.095 -> 2.057 / 2.100 / 2.089 ms (medians of
// 300-400 alternated steps, 2026-11-28). The 1 KiB software prefetch the rows had until then
// measured the same with and without, and went.
template <int NB>
__attribute__((target("avx512f"))) void stream_backward_block_avx512(
    const float* grad, const float* coeffs, const float* dirs, float* grad_dirs, float* part,
    int64_t F, int64_t C, int64_t c0, int64_t width, int64_t f0, int64_t f1, bool accumulate) {
  const auto row = [&](int64_t f) {
    return BackwardRow<NB>{grad + c0, dirs + f * C + c0,
                           grad_dirs == nullptr ? nullptr : grad_dirs + f * C + c0,
                           coeffs, F, C, f, width};
  };
  int64_t f = f0;
  if (NB <= 2) {  // two rows at once (beyond, their accumulators would not fit the registers)
    for (; f + 2 <= f1; f += 2) {
      BackwardRow<NB> a = row(f), b = row(f + 1);
      a.start();
      b.start();
      while (a.more() && b.more()) {
        a.step();
        b.step();
      }
      while (a.more()) a.step();
      while (b.more()) b.step();
      a.finish(part, accumulate);
      b.finish(part, accumulate);
    }
  }
  for (; f < f1; ++f) {
    BackwardRow<NB> a = row(f);
    a.start();
    while (a.more()) a.step();
    a.finish(part, accumulate);
  }
}

// Runs the NB-templated block function for the batch B (1 .. kStreamMaxBatch).
template <template <int> class Kernel, typename... Args>
void stream_by_batch(int64_t B, Args... args) {
  static_assert(kStreamMaxBatch == 7, "one case per small batch");
  switch (B) {
    case 1: Kernel<1>::run(args...); break;
    case 2: Kernel<2>::run(args...); break;
    case 3: Kernel<3>::run(args...); break;
    case 4: Kernel<4>::run(args...); break;
    case 5: Kernel<5>::run(args...); break;
    case 6: Kernel<6>::run(args...); break;
    default: Kernel<7>::run(args...); break;
  }
}

template <int NB>
struct StreamForward {
  static void run(const float* base, int64_t base_rows, const float* coeffs, const float* dirs,
                  float* out, int64_t F, int64_t C, int64_t c0, int64_t width) {
    stream_forward_block_avx512<NB>(base, base_rows, coeffs, dirs, out, F, C, c0, width);
  }
};

template <int NB>
struct StreamBackward {
  static void run(const float* grad, const float* coeffs, const float* dirs, float* grad_dirs,
                  float* part, int64_t F, int64_t C, int64_t c0, int64_t width, int64_t f0,
                  int64_t f1, bool accumulate) {
    stream_backward_block_avx512<NB>(grad, coeffs, dirs, grad_dirs, part, F, C, c0, width, f0,
                                     f1, accumulate);
  }
};

// Whether blend_shapes takes the streaming kernels above: float on an AVX-512 CPU, B below the
// sliced path's batch, two threads or more. On one thread the BLAS's matrix-vector products and
// outer_stream's whole-row writes were faster than these passes (B = 1, dirs out of cache,
// loaded machine: forward 0.71-0.81 vs 0.78-1.01 ms, backward 1.37-1.49 vs 1.54-1.74 ms); from
// two threads the streamed passes win, being parallel where the BLAS's matrix-vector products
// are not (lbs at B = 1, 2 threads: 4.28 -> 3.51 ms).
bool blend_streamed(const at::Tensor& coeffs) {
  return coeffs.size(0) >= 1 && coeffs.size(0) <= kStreamMaxBatch && blend_avx512(coeffs);
}

bool blend_streamed_parallel() { return at::get_num_threads() > 1; }
#endif

// The tiled forward and grad_coeffs (defined with grad_dirs's tiles below).
bool blend_tiled(const at::Tensor& coeffs);
at::Tensor blend_forward_tiled(const at::Tensor& base, const at::Tensor& coeffs,
                               const at::Tensor& dirs);

at::Tensor blend_shapes_forward_cpu(const at::Tensor& base, const at::Tensor& coeffs,
                                    const at::Tensor& dirs) {
  check_blend(base, coeffs, dirs, kCpuSide);
  const int64_t B = coeffs.size(0), F = coeffs.size(1), C = dirs.size(1);
#if defined(PE_AVX512_BLEND)
  if (blend_streamed(coeffs) && blend_streamed_parallel() && C > 0) {
    at::Tensor out = new_output({B, C}, coeffs.options());
    const float* k = coeffs.data_ptr<float>();
    const float* d = dirs.data_ptr<float>();
    const float* base_ptr = base.data_ptr<float>();
    float* o = out.data_ptr<float>();
    // one range of whole 16-column vectors per thread (each value's sum is the same for any
    // split: base, then its F terms in increasing f)
    const int64_t tasks = at::get_num_threads(), vectors = (C + 15) / 16;
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t c0 = std::min(C, vectors * t / tasks * 16);
        const int64_t c1 = std::min(C, vectors * (t + 1) / tasks * 16);
        if (c1 > c0) {
          stream_by_batch<StreamForward>(B, base_ptr, base.size(0), k, d, o, F, C, c0, c1 - c0);
        }
      }
    });
    return out;
  }
#endif
  // from kStreamMinBlasBatch on: the tiles (below); one thread or no AVX-512 below it: the BLAS
  if (blend_tiled(coeffs)) return blend_forward_tiled(base, coeffs, dirs);
  return at::addmm(base, coeffs, dirs);
}

// grad_dirs for one batch row: the outer product coeffs[0] x grad_out[0] (which the BLAS runs as
// a slow K = 1 product).
at::Tensor blend_outer(const at::Tensor& grad_out, const at::Tensor& coeffs) {
  const int64_t F = coeffs.size(1), C = grad_out.size(1);
#if defined(PE_AVX512_BLEND)
  if (blend_avx512(coeffs)) {
    at::Tensor out = new_cached_output({F, C}, coeffs.options());
    const float* k = coeffs.data_ptr<float>();
    const float* g = grad_out.data_ptr<float>();
    float* o = out.data_ptr<float>();
    at::parallel_for(0, F, 8, [&](int64_t begin, int64_t end) {
      outer_stream_avx512(k, g, o, C, begin, end);
    });
    return out;
  }
#endif
  return at::mul(coeffs.view({F, 1}), grad_out);
}

#if defined(PE_AVX512_BLEND)
// The streamed backward's column chunk: whole rows while the batch's grad rows (B x C floats)
// stay within kStreamWholeRows floats (256 KiB, in L2 beside the streams), else kStreamColumns.
constexpr int64_t kStreamWholeRows = 64 * 1024;

int64_t stream_backward_width(int64_t B, int64_t C) {
  return B * C <= kStreamWholeRows ? C : kStreamColumns;
}

// The streamed backward of small batches: one pass, parallel over rows of dirs, each task reading
// its rows of dirs and writing its rows of grad_dirs as contiguous runs (whole rows when the grad
// rows fit in L2, column chunks in order otherwise). Each grad_coeffs value is a row's own dot
// product, summed by one task over the chunks in order: the same for any thread count, with no
// partials to add. Until 2026-11-28 the pass was split by column blocks (every task visiting
// every row, 10 KB at a time) with the dots summed from a partial per block; by rows, SMPL's
// lbs at B = 1 (fwd+bwd, cold inputs, 2 threads) took 2.21-2.26 ms against 2.26-2.35 (medians
// of 300 steps, alternated in one process, three runs).
std::tuple<at::Tensor, at::Tensor> blend_backward_streamed(const at::Tensor& grad_out,
                                                           const at::Tensor& coeffs,
                                                           const at::Tensor& dirs,
                                                           bool dirs_grad) {
  const int64_t B = coeffs.size(0), F = coeffs.size(1), C = dirs.size(1);
  at::Tensor grad_dirs = dirs_grad ? new_cached_output(dirs.sizes(), dirs.options())
                                   : at::empty({0}, dirs.options());
  at::Tensor grad_coeffs = at::empty({B, F}, coeffs.options());
  const int64_t width = stream_backward_width(B, C);
  const float* g = grad_out.data_ptr<float>();
  const float* k = coeffs.data_ptr<float>();
  const float* d = dirs.data_ptr<float>();
  float* gd = dirs_grad ? grad_dirs.data_ptr<float>() : nullptr;
  float* gc = grad_coeffs.data_ptr<float>();
  at::parallel_for(0, F, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c0 = 0; c0 < C; c0 += width) {
      stream_by_batch<StreamBackward>(B, g, k, d, gd, gc, F, C, c0, std::min(width, C - c0),
                                      begin, end, c0 > 0);
    }
    _mm_sfence();  // the non-temporal stores are visible before the task ends
  });
  return {grad_coeffs, grad_dirs};
}
#endif

// grad_dirs (F, C) = coeffsᵀ (F, B) · grad (B, C) for B > 1, float, on an AVX2 or AVX-512 CPU:
// register tiles (cpu_tile_gemm.h: 8 rows of grad_dirs with AVX-512, 6 with AVX2, by 16 columns,
// B FMAs with a broadcast coefficient per output vector, each value stored once; the rows left
// over in smaller tiles) over strips of kGradDirsColumns columns,
// so that a strip of grad (B rows) stays in L1 / L2 while the F / 8 row tiles sweep it; one task
// per range of strips. Why not the BLAS: MKL ran this K = B product (M = 207, N = 20670 at SMPL's
// size, a 17 MB output) at 40-52 GFLOP/s on a 2-core Zen 4 (5.3-6.8 ms at B = 32, 2 threads;
// 184 GFLOP/s on a square 1024 product), these tiles at 188-198 (1.4 ms), 2026-11-27. Each
// value sums its B terms in increasing b: the same result for any thread count.
constexpr int64_t kGradDirsColumns = 512;

template <typename scalar_t>
struct GradDirsArgs {
  const scalar_t* coeffs;  // (B, F)
  const scalar_t* grad;    // (B, C)
  scalar_t* grad_dirs;     // (F, C)
  int64_t B, F, C;
};

template <typename scalar_t, int kVecBytes>
void grad_dirs_columns(const GradDirsArgs<scalar_t>& a, int64_t begin, int64_t end) {
  for (int64_t c0 = begin; c0 < end; c0 += kGradDirsColumns) {
    const int64_t width = std::min(kGradDirsColumns, end - c0);
    // A(f, b) = coeffs[b * F + f]: coeffsᵀ by its strides
    cpu_gemm::gemm<scalar_t, kVecBytes>(a.F, width, a.B, a.coeffs, 1, a.F, a.grad + c0, a.C,
                                        a.grad_dirs + c0, a.C, cpu_gemm::Start::kZero, nullptr);
  }
}

#if PE_HAVE_ISA_CLONES
PE_ISA_CLONES_WIDTH(grad_dirs_columns, GradDirsArgs)
#endif

// Whether grad_dirs takes grad_dirs_columns: float, B > 1, an AVX2 or AVX-512 CPU (the SSE2
// baseline keeps the BLAS).
bool grad_dirs_tiled(const at::Tensor& coeffs) {
  return coeffs.scalar_type() == at::kFloat && coeffs.size(0) > 1 &&
         cpu_math::cpu_isa() != cpu_math::Isa::kBaseline;
}

at::Tensor grad_dirs_of(const at::Tensor& grad_out, const at::Tensor& coeffs) {
  const int64_t B = coeffs.size(0), F = coeffs.size(1), C = grad_out.size(1);
  at::Tensor out = new_cached_output({F, C}, coeffs.options());
  const GradDirsArgs<float> a{coeffs.data_ptr<float>(), grad_out.data_ptr<float>(),
                              out.data_ptr<float>(), B, F, C};
  const auto fn = PE_ISA_PICK_WIDTH(grad_dirs_columns, float);
  at::parallel_for(0, (C + kGradDirsColumns - 1) / kGradDirsColumns, 1,
                   [&](int64_t begin, int64_t end) {
                     fn(a, begin * kGradDirsColumns, std::min(C, end * kGradDirsColumns));
                   });
  return out;
}

// The forward product on the same tiles, where grad_dirs takes them (float, B > 1, an AVX2 or
// AVX-512 CPU) and the streamed kernels do not (B >= kStreamMinBlasBatch): strips of
// kGradDirsColumns columns, each strip of out starting as base's rows, then the row tiles of
// coeffs sweeping the strip of dirs (in L2). Each value is base + its F terms in increasing f:
// the same result for any thread count. Measured on the 2-core Zen 4 (2026-11-27, B = 32 at
// SMPL's size, 2 threads, one process, alternated with MKL's addmm): the product alone 2.9-3.4
// against 3.9-4.1 ms; native lbs fwd+bwd 13.5 / 14.6 against 15.1 / 16.9 ms (two rounds), in
// the benchmark harness 13.2 / 13.1 against 16.5 / 15.9 ms (the eager reference moved as much
// between those runs, so the ratios, 2.60-2.72x against 2.53-2.64x, did not show it). The same
// tiles for grad_coeffs ((32, 20670) x (20670, 207), K = 20670: gradᵀ padded to 16 columns, a
// task per range of dirs' rows) took as long as MKL (2.9 ms): not kept (grad_coeffs_tiled's dot
// products replaced both on AVX-512, 2026-11-28). On an AVX-512 CPU the forward now runs
// blend_forward_strips_avx512 instead. Each strip of dirs is first copied into panels of kCols
// columns ((F, kCols) each, contiguous): in place, the tiles' K = F rows of dirs lie a row apart
// (82 KB at SMPL's size), a new page each (with the ISA capped to AVX2 on the Zen 4, B = 32:
// 3.5 -> 2.8-3.3 ms).
template <typename scalar_t>
struct BlendForwardArgs {
  const scalar_t* base;    // (base_rows, C), base_rows 1 or B
  const scalar_t* coeffs;  // (B, F)
  const scalar_t* dirs;    // (F, C)
  scalar_t* out;           // (B, C)
  int64_t base_rows, B, F, C;
};

template <typename scalar_t, int kVecBytes>
void blend_forward_columns(const BlendForwardArgs<scalar_t>& a, int64_t begin, int64_t end) {
  std::vector<scalar_t> packed(a.F * kGradDirsColumns);
  for (int64_t c0 = begin; c0 < end; c0 += kGradDirsColumns) {
    const int64_t width = std::min(kGradDirsColumns, end - c0);
    for (int64_t b = 0; b < a.B; ++b) {
      const scalar_t* row = a.base + (a.base_rows == 1 ? 0 : b) * a.C + c0;
      std::memcpy(a.out + b * a.C + c0, row, width * sizeof(scalar_t));
    }
    constexpr int64_t P = cpu_gemm::kCols;
    const int64_t panels = width / P;
    for (int64_t f = 0; f < a.F; ++f) {
      const scalar_t* src = a.dirs + f * a.C + c0;
      for (int64_t p = 0; p < panels; ++p) {
        std::memcpy(packed.data() + (p * a.F + f) * P, src + p * P, P * sizeof(scalar_t));
      }
    }
    for (int64_t p = 0; p < panels; ++p) {
      cpu_gemm::gemm<scalar_t, kVecBytes>(a.B, P, a.F, a.coeffs, a.F, 1,
                                          packed.data() + p * a.F * P, P, a.out + c0 + p * P,
                                          a.C, cpu_gemm::Start::kAccumulate, nullptr);
    }
    if (panels * P < width) {
      cpu_gemm::gemm<scalar_t, kVecBytes>(a.B, width - panels * P, a.F, a.coeffs, a.F, 1,
                                          a.dirs + c0 + panels * P, a.C, a.out + c0 + panels * P,
                                          a.C, cpu_gemm::Start::kAccumulate, nullptr);
    }
  }
}

#if PE_HAVE_ISA_CLONES
PE_ISA_CLONES_WIDTH(blend_forward_columns, BlendForwardArgs)
#endif

#if defined(PE_AVX512_BLEND)
// The forward on an AVX-512 CPU (float, B >= kStreamMinBlasBatch): strips of kForwardStrip
// columns, each strip of dirs copied into panels of kForwardPanel columns ((F, 48) each,
// contiguous, zero past the last column), then register tiles of 8 batch rows by the panel's 3
// vectors (24 accumulators; per row of dirs 3 loads and 8 broadcasts for 24 FMAs) sweep each
// panel from L1 / L2. Measured at SMPL's B = 32 on the 2-core Zen 4 (2026-11-28, the product
// alone, dirs out of cache): the cpu_tile_gemm tiles on dirs in place (8 rows by one vector,
// K = F rows of dirs 82 KB apart: a new page per row) 2.3-3.0 ms; these tiles on a strip copied
// first 2.1-2.35 ms, of which the tiles alone (no copy) 1.33 ms and the copy alone 0.8 ms: the
// copy's loads from memory did not overlap the FMAs, prefetching the next strip did not help
// (2.1-2.25). Interleaving the next strip's copy into the tiles, a line per step of their sweep
// (StripCopy): 1.77-1.81 ms.
constexpr int64_t kForwardPanel = 48;

constexpr int64_t kForwardStrip = 8 * kForwardPanel;
constexpr int64_t kStripLines = kForwardStrip / 16;  // 64-byte lines per row of a strip
constexpr int64_t kStripPrefetchLines = 64;          // lines prefetched ahead of their copy

// Copies a strip of dirs (F rows of up to kForwardStrip columns, zero past its width) into
// panels (p, F, kForwardPanel), one 16-float line per step: the tiles of the strip before it
// take a step per row of their sweep, so the copy's loads from memory overlap their FMAs. Lines
// in row order (each row of the strip one run of memory), prefetched kStripPrefetchLines ahead.
struct StripCopy {
  const float* src = nullptr;  // the strip's first column in dirs' row 0
  float* dst = nullptr;
  int64_t width = 0, F = 0, C = 0, item = 0, items = 0;
};

__attribute__((target("avx512f"))) inline void strip_copy_step(StripCopy& copy) {
  if (copy.item >= copy.items) return;
  const int64_t ahead = copy.item + kStripPrefetchLines;
  if (ahead < copy.items) {
    const int64_t f = ahead / kStripLines, line = ahead % kStripLines;
    if (16 * line < copy.width) {
      _mm_prefetch(reinterpret_cast<const char*>(copy.src + f * copy.C + 16 * line), _MM_HINT_T0);
    }
  }
  const int64_t f = copy.item / kStripLines, line = copy.item % kStripLines;
  const int64_t panel = line / 3, q = line % 3;
  const __mmask16 mask = first_lanes(copy.width - 16 * line);
  _mm512_storeu_ps(copy.dst + (panel * copy.F + f) * kForwardPanel + 16 * q,
                   _mm512_maskz_loadu_ps(mask, copy.src + f * copy.C + 16 * line));
  ++copy.item;
}

StripCopy strip_copy(const BlendForwardArgs<float>& a, int64_t strip, float* dst) {
  StripCopy copy;
  copy.src = a.dirs + strip * kForwardStrip;
  copy.dst = dst;
  copy.width = std::min(kForwardStrip, a.C - strip * kForwardStrip);
  copy.F = a.F, copy.C = a.C;
  copy.items = a.F * kStripLines;
  return copy;
}

// RB rows of out from b0 over the panel of columns [c0, c0 + width): base + Σ_f coeffs[b, f]
// panel[f, :], f in increasing order; a step of `copy` per f.
template <int RB>
__attribute__((target("avx512f"))) void blend_forward_tile_avx512(
    const BlendForwardArgs<float>& a, const float* panel, int64_t b0, int64_t c0,
    int64_t width, StripCopy& copy) {
  __mmask16 mask[3];
  PE_UNROLL
  for (int q = 0; q < 3; ++q) mask[q] = first_lanes(width - 16 * q);
  __m512 acc[RB][3];
  PE_UNROLL
  for (int r = 0; r < RB; ++r) {
    const float* base = a.base + (a.base_rows == 1 ? 0 : b0 + r) * a.C + c0;
    PE_UNROLL
    for (int q = 0; q < 3; ++q) acc[r][q] = _mm512_maskz_loadu_ps(mask[q], base + 16 * q);
  }
  const float* k = a.coeffs + b0 * a.F;
  for (int64_t f = 0; f < a.F; ++f) {
    strip_copy_step(copy);
    const float* d = panel + f * kForwardPanel;
    const __m512 d0 = _mm512_loadu_ps(d), d1 = _mm512_loadu_ps(d + 16),
                 d2 = _mm512_loadu_ps(d + 32);
    PE_UNROLL
    for (int r = 0; r < RB; ++r) {
      const __m512 w = _mm512_set1_ps(k[r * a.F + f]);
      acc[r][0] = _mm512_fmadd_ps(w, d0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(w, d1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(w, d2, acc[r][2]);
    }
  }
  PE_UNROLL
  for (int r = 0; r < RB; ++r) {
    float* o = a.out + (b0 + r) * a.C + c0;
    PE_UNROLL
    for (int q = 0; q < 3; ++q) _mm512_mask_storeu_ps(o + 16 * q, mask[q], acc[r][q]);
  }
}

// The strips [begin, end) of kForwardStrip columns, two packed buffers: while a strip's tiles
// compute from one, they copy the next strip into the other (what is left is copied after).
__attribute__((target("avx512f"))) void blend_forward_strips_avx512(
    const BlendForwardArgs<float>& a, int64_t begin, int64_t end) {
  std::vector<float> buffers(2 * a.F * kForwardStrip);
  float* current = buffers.data();
  float* next = current + a.F * kForwardStrip;
  StripCopy copy = strip_copy(a, begin, current);
  while (copy.item < copy.items) strip_copy_step(copy);
  for (int64_t strip = begin; strip < end; ++strip) {
    const int64_t s0 = strip * kForwardStrip, width = std::min(kForwardStrip, a.C - s0);
    copy = strip + 1 < end ? strip_copy(a, strip + 1, next) : StripCopy{};
    for (int64_t p = 0; p * kForwardPanel < width; ++p) {
      const float* panel = current + p * a.F * kForwardPanel;
      const int64_t c0 = s0 + p * kForwardPanel, n = std::min(kForwardPanel, width - p * kForwardPanel);
      int64_t b0 = 0;
      for (; b0 + 8 <= a.B; b0 += 8) blend_forward_tile_avx512<8>(a, panel, b0, c0, n, copy);
      for (; b0 < a.B; ++b0) blend_forward_tile_avx512<1>(a, panel, b0, c0, n, copy);
    }
    while (copy.item < copy.items) strip_copy_step(copy);
    std::swap(current, next);
  }
}
#endif

// Whether the forward and grad_coeffs take the tiles: grad_dirs's condition, from
// kStreamMinBlasBatch rows on (below, the streamed kernels or the BLAS as before).
bool blend_tiled(const at::Tensor& coeffs) {
  return grad_dirs_tiled(coeffs) && coeffs.size(0) >= kStreamMinBlasBatch;
}

at::Tensor blend_forward_tiled(const at::Tensor& base, const at::Tensor& coeffs,
                               const at::Tensor& dirs) {
  const int64_t B = coeffs.size(0), F = coeffs.size(1), C = dirs.size(1);
  at::Tensor out = new_output({B, C}, coeffs.options());
  const at::Tensor base_c = base.contiguous();
  const BlendForwardArgs<float> a{base_c.data_ptr<float>(), coeffs.data_ptr<float>(),
                                  dirs.data_ptr<float>(), out.data_ptr<float>(), base_c.size(0),
                                  B, F, C};
#if defined(PE_AVX512_BLEND)
  if (blend_avx512(coeffs)) {
    at::parallel_for(0, (C + kForwardStrip - 1) / kForwardStrip, 1,
                     [&](int64_t begin, int64_t end) { blend_forward_strips_avx512(a, begin, end); });
    return out;
  }
#endif
  const auto fn = PE_ISA_PICK_WIDTH(blend_forward_columns, float);
  at::parallel_for(0, (C + kGradDirsColumns - 1) / kGradDirsColumns, 1,
                   [&](int64_t begin, int64_t end) {
                     fn(a, begin * kGradDirsColumns, std::min(C, end * kGradDirsColumns));
                   });
  return out;
}

#if defined(PE_AVX512_BLEND)
// grad_coeffs (B, F) = grad (B, C) · dirsᵀ for B >= kStreamMinBlasBatch, float on an AVX-512
// CPU: both operands have C contiguous, so each output is a dot product along C. Register tiles
// of RB batch rows by RF rows of dirs hold RB x RF vector accumulators (4 x 6: 24 of the 32
// registers; 10 loads per 24 FMAs) over a slab of columns, then sum their lanes. The columns are
// cut into kGradCoeffsSlabs fixed slabs (one task each, balanced for 1, 2, 4 and 8 threads);
// a slab's (B, F) partial is summed over the slabs in order: the same result for any thread
// count. Within a slab the f-tiles run outermost, so a tile's RF rows of dirs (RF x 10 KB at
// SMPL's size) are met by every batch tile from L1 / L2 and dirs is read once from memory.
constexpr int64_t kGradCoeffsSlabs = 8;

template <int RB, int RF>
__attribute__((target("avx512f"))) void grad_coeffs_tile_avx512(
    const float* grad, const float* dirs, float* part, int64_t F, int64_t C, int64_t c0,
    int64_t width, int64_t b0, int64_t f0) {
  __m512 acc[RB][RF];
  PE_UNROLL
  for (int i = 0; i < RB; ++i) {
    PE_UNROLL
    for (int j = 0; j < RF; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  const float* g = grad + b0 * C + c0;
  const float* d = dirs + f0 * C + c0;
  const int64_t full = width / 16 * 16;
  for (int64_t c = 0; c < full; c += 16) {
    __m512 dv[RF];
    PE_UNROLL
    for (int j = 0; j < RF; ++j) dv[j] = _mm512_loadu_ps(d + j * C + c);
    PE_UNROLL
    for (int i = 0; i < RB; ++i) {
      const __m512 gv = _mm512_loadu_ps(g + i * C + c);
      PE_UNROLL
      for (int j = 0; j < RF; ++j) acc[i][j] = _mm512_fmadd_ps(gv, dv[j], acc[i][j]);
    }
  }
  if (full < width) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (width - full)) - 1u);
    __m512 dv[RF];
    PE_UNROLL
    for (int j = 0; j < RF; ++j) dv[j] = _mm512_maskz_loadu_ps(mask, d + j * C + full);
    PE_UNROLL
    for (int i = 0; i < RB; ++i) {
      const __m512 gv = _mm512_maskz_loadu_ps(mask, g + i * C + full);
      PE_UNROLL
      for (int j = 0; j < RF; ++j) acc[i][j] = _mm512_fmadd_ps(gv, dv[j], acc[i][j]);
    }
  }
  PE_UNROLL
  for (int i = 0; i < RB; ++i) {
    PE_UNROLL
    for (int j = 0; j < RF; ++j) part[(b0 + i) * F + f0 + j] = sum_lanes(acc[i][j]);
  }
}

__attribute__((target("avx512f"))) void grad_coeffs_slab_avx512(
    const float* grad, const float* dirs, float* part, int64_t B, int64_t F, int64_t C,
    int64_t c0, int64_t width) {
  // f-tiles outermost: a tile's rows of dirs stay in cache for every batch tile
  int64_t f0 = 0;
  for (; f0 + 6 <= F; f0 += 6) {
    int64_t b0 = 0;
    for (; b0 + 4 <= B; b0 += 4) {
      grad_coeffs_tile_avx512<4, 6>(grad, dirs, part, F, C, c0, width, b0, f0);
    }
    for (; b0 < B; ++b0) grad_coeffs_tile_avx512<1, 6>(grad, dirs, part, F, C, c0, width, b0, f0);
  }
  for (; f0 < F; ++f0) {
    int64_t b0 = 0;
    for (; b0 + 4 <= B; b0 += 4) {
      grad_coeffs_tile_avx512<4, 1>(grad, dirs, part, F, C, c0, width, b0, f0);
    }
    for (; b0 < B; ++b0) grad_coeffs_tile_avx512<1, 1>(grad, dirs, part, F, C, c0, width, b0, f0);
  }
}

at::Tensor grad_coeffs_tiled(const at::Tensor& grad_out, const at::Tensor& dirs) {
  const int64_t B = grad_out.size(0), F = dirs.size(0), C = dirs.size(1);
  const int64_t slab = (C + kGradCoeffsSlabs * 16 - 1) / (kGradCoeffsSlabs * 16) * 16;
  at::Tensor partial = at::zeros({kGradCoeffsSlabs, B, F}, grad_out.options());
  const float* g = grad_out.data_ptr<float>();
  const float* d = dirs.data_ptr<float>();
  float* part = partial.data_ptr<float>();
  at::parallel_for(0, kGradCoeffsSlabs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const int64_t c0 = s * slab, width = std::min(slab, C - c0);
      if (width > 0) grad_coeffs_slab_avx512(g, d, part + s * B * F, B, F, C, c0, width);
    }
  });
  at::Tensor grad_coeffs = at::empty({B, F}, grad_out.options());
  sum_partials(part, kGradCoeffsSlabs, B * F, grad_coeffs.data_ptr<float>());
  return grad_coeffs;
}
#endif

std::tuple<at::Tensor, at::Tensor> blend_shapes_backward_cpu(const at::Tensor& grad_out,
                                                             const at::Tensor& coeffs,
                                                             const at::Tensor& dirs,
                                                             bool dirs_grad) {
  check_blend_grad(grad_out, coeffs, dirs, kCpuSide);
  const int64_t B = coeffs.size(0), F = coeffs.size(1), C = dirs.size(1);
#if defined(PE_AVX512_BLEND)
  if (blend_streamed(coeffs) && blend_streamed_parallel() && C > 0 && F > 0) {
    return blend_backward_streamed(grad_out, coeffs, dirs, dirs_grad);
  }
#endif
  // dirs_grad = false (model tensors without grad, as in GAN training): no (F, C) gradient
  at::Tensor grad_dirs = at::empty({0}, dirs.options());
  if (dirs_grad) {
    grad_dirs = B == 1                    ? blend_outer(grad_out, coeffs)
                : grad_dirs_tiled(coeffs) ? grad_dirs_of(grad_out, coeffs)
                                          : at::mm(coeffs.t(), grad_out);
  }
#if defined(PE_AVX512_BLEND)
  if (blend_tiled(coeffs) && blend_avx512(coeffs)) {
    return {grad_coeffs_tiled(grad_out, dirs), grad_dirs};
  }
#endif
  return {at::mm(grad_out, dirs.t()), grad_dirs};
}

}  // namespace
}  // namespace skinning
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("forward_kinematics_forward", &portrait_engine::skinning::forward_kinematics_forward_cpu);
  m.impl("forward_kinematics_backward",
         &portrait_engine::skinning::forward_kinematics_backward_cpu);
  m.impl("skin_points_forward", &portrait_engine::skinning::skin_points_forward_cpu);
  m.impl("skin_points_backward", &portrait_engine::skinning::skin_points_backward_cpu);
  m.impl("blend_shapes_forward", &portrait_engine::skinning::blend_shapes_forward_cpu);
  m.impl("blend_shapes_backward", &portrait_engine::skinning::blend_shapes_backward_cpu);
}
