// Native lbs on a GPU as a few kernels of its own ("direct kernels"): the math and the host-side
// driver, shared by the CUDA kernels (lbs_direct_cuda.cu) and a CPU twin (lbs_direct_cpu.cpp)
// that runs the very same per-thread functions in loops, so that every index below is tested on
// a machine without a GPU. Contract: docs/kernel_contract_skinning.md, "Direct kernels".
//
// Why: at SMPL's size lbs is bound by its host-side work on a GPU (H100, 2026-11-27: 0.3-0.44 ms
// of kernels in 1.2-1.7 ms of wall time per forward+backward), about 30 launches per step, the
// dearest of them cuBLAS calls (38-64 us of host time each under the profiler). Here a step is
// 4 launches forward (regressor products, joints, forward kinematics, one vertex pass) and at
// most 7 backward, no cuBLAS call and no ATen arithmetic: only allocations and launches.
//
// Inputs (checked by the caller): betas (B, NB), pose (B, J * 3) or (B, J, 3, 3) rows
// (pose2rot), v_template (V, 3), shapedirs (V, 3, NB), posedirs (P, 3V) with P = 9 (J - 1),
// J_regressor (J, V), lbs_weights (V, J), all contiguous, one dtype (float or double), B >= 1.
// Math in the storage type.
//
// Forward:
//   R[j, m] = sum_v Jreg[j, v] [T | S][v, m]                 reduction, a block per (j, m tile)
//   joints[b, j, c] = R[j, c] + sum_k R[j, 3 + c NB + k] beta[b, k]          map over (b, j, c)
//   rot, posed joints, A = forward_kinematics(pose, joints)          the fk kernel (dispatcher)
//   per vertex v and batch tile (a thread): f[b, k] = vec(R_{1..J-1} - I) in shared memory,
//     v_shaped = T_v + S_v beta_b, v_posed = v_shaped + P_v^T f_b, vertex = (sum_j w_vj A_bj)
//     (v_posed, 1)
// Backward (gV the vertices' gradient, gJ the rest joints', gvp v_posed's):
//   per vertex (a thread, all b): gvp = M^T gV; grad_w[v, j] = sum_b gV . (A_bj (v_posed, 1))
//   grad_A[b, j] = sum_v w_vj gV (v_posed, 1)^T            reduction, a block per (b, j tile)
//   grad_f[b, k] = sum_d P[k, d] gvp[b, d]                 reduction, a block per (k, b tile)
//   grad_pose, gJ = forward_kinematics_backward(grad_f as rotations 1..J-1, grad_A, ...)
//   grad_P[k, d] = sum_b f[b, k] gvp[b, d]                                  map over (k tile, d)
//   per vertex: G[b, v] = gvp[b, v] + sum_j Jreg[j, v] gJ[b, j] (v_shaped's gradient),
//     grad_T = sum_b G, grad_S[v, c, k] = sum_b G[b, v, c] beta[b, k],
//     grad_Jreg[j, v] = sum_{b, c} gJ[b, j, c] v_shaped[b, v, c]
//   grad_beta[b, k] = sum_d S[d, k] G[b, d]                reduction, a block per (b, k tiles)
// Every reduction is a fixed-order sum (per thread, then a warp butterfly, then the warps in
// order): no atomics, run-to-run identical. The CPU twin sums in plain order (the same values
// to rounding).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "host.h"
#include "skinning/kernel_ops.h"
#include "skinning/skinning.h"

namespace portrait_engine {
namespace skinning {
namespace direct {

constexpr int kBatchTile = 4;         // vertex forward: batch rows per thread
constexpr int kRegressTile = 4;       // R: columns per block
constexpr int kJointTile = 4;         // grad_A: joints per block (12 values each)
constexpr int kFeatureTile = 8;       // grad_f: pose features per block
constexpr int kFeatureBatchTile = 8;  // grad_f: batch rows per block
constexpr int kPosedirsTile = 8;      // grad_P: pose features per thread
constexpr int kWeightsTile = 4;       // grad_w: joints per thread
constexpr int kBetasBatchTile = 1;    // grad_beta: batch rows per block
constexpr int kBetasTile = 8;         // grad_beta: betas per block

struct Dims {
  int64_t B, V, J, NB, P;
};

// Where v_shaped[b, v, c] is stored: the saved tensor of the fused ops' route (direct: (B, 3, V)
// columns; rows: (1, V * 3)).
struct ShapedLayout {
  int64_t batch, coord, vertex;
  HOST_DEVICE int64_t at(int64_t b, int64_t v, int64_t c) const {
    return b * batch + c * coord + v * vertex;
  }
};

// The pose feature f[b, k] = vec(R_{1 + k / 9} - I)[k % 9] from the rotations (B, J, 3, 3).
template <typename scalar_t>
HOST_DEVICE PE_INLINE scalar_t pose_feature(const scalar_t* rot, int64_t J, int64_t b,
                                            int64_t k) {
  const int64_t e = k % 9;
  return rot[(b * J + 1) * 9 + k] - (e == 0 || e == 4 || e == 8 ? scalar_t(1) : scalar_t(0));
}

// ------------------------------------------------------------------------------------------
// Reductions: out[g] = sum_{i < length()} add(g, i) for K values per group g. A CUDA block per
// group (threads stride i), a plain loop on the CPU.
// ------------------------------------------------------------------------------------------

// R[j, m0 .. m0 + K) over the vertices; group g = j * tiles + m tile.
template <typename scalar_t>
struct RegressTerm {
  using value_type = scalar_t;
  static constexpr int K = kRegressTile;
  const scalar_t *regressor, *v_template, *shapedirs;
  scalar_t* out;  // (J, M)
  int64_t V, M, tiles;
  HOST_DEVICE int64_t length() const { return V; }
  HOST_DEVICE PE_INLINE void add(int64_t g, int64_t v, scalar_t acc[K]) const {
    const int64_t j = g / tiles, m0 = (g % tiles) * K;
    const scalar_t r = regressor[j * V + v];
    for (int t = 0; t < K; ++t) {
      const int64_t m = m0 + t;
      if (m < M) acc[t] += r * (m < 3 ? v_template[v * 3 + m] : shapedirs[v * (M - 3) + m - 3]);
    }
  }
  HOST_DEVICE PE_INLINE void store(int64_t g, const scalar_t acc[K]) const {
    const int64_t j = g / tiles, m0 = (g % tiles) * K;
    for (int t = 0; t < K; ++t) {
      if (m0 + t < M) out[j * M + m0 + t] = acc[t];
    }
  }
};

// grad_A[b, j0 .. j0 + kJointTile) (12 values each) over the vertices; group g = b * tiles +
// j tile.
// Writes the (B, J, 4, 4) gradient of the transforms, the unused bottom rows as zeros.
template <typename scalar_t>
struct TransformGradTerm {
  using value_type = scalar_t;
  static constexpr int K = 12 * kJointTile;
  const scalar_t *grad_vertices, *v_posed, *weights;
  scalar_t* out;
  int64_t V, J, tiles;
  HOST_DEVICE int64_t length() const { return V; }
  HOST_DEVICE PE_INLINE void add(int64_t g, int64_t v, scalar_t acc[K]) const {
    const int64_t b = g / tiles, j0 = (g % tiles) * kJointTile;
    const scalar_t* gv = grad_vertices + (b * V + v) * 3;
    const scalar_t* p = v_posed + (b * V + v) * 3;
    scalar_t dM[12];
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 3; ++c) dM[r * 4 + c] = gv[r] * p[c];
      dM[r * 4 + 3] = gv[r];
    }
    for (int t = 0; t < kJointTile; ++t) {
      if (j0 + t < J) {
        const scalar_t w = weights[v * J + j0 + t];
        for (int q = 0; q < 12; ++q) acc[t * 12 + q] += w * dM[q];
      }
    }
  }
  HOST_DEVICE PE_INLINE void store(int64_t g, const scalar_t acc[K]) const {
    const int64_t b = g / tiles, j0 = (g % tiles) * kJointTile;
    for (int t = 0; t < kJointTile; ++t) {
      if (j0 + t >= J) continue;
      scalar_t* o = out + (b * J + j0 + t) * 16;
      for (int q = 0; q < 12; ++q) o[q] = acc[t * 12 + q];
      for (int q = 12; q < 16; ++q) o[q] = scalar_t(0);
    }
  }
};

// out[b, k] = sum_{d < D} dirs(k, d) grad[b, d], dirs(k, d) = dirs[k * k_stride + d * d_stride],
// for a tile of BT batch rows by KT columns k; group g = b tile * tiles + k tile. Two uses:
//   grad_f = P gvp: dirs = posedirs (P, 3V) (k_stride 3V, d_stride 1), out = the rotations'
//     gradient of joints 1..J-1, (B, J - 1, 3, 3) = (B, P);
//   grad_beta = S^T G: dirs = shapedirs as (3V, NB) (k_stride 1, d_stride NB), G v_shaped's
//     gradient (B, 3V).
template <typename scalar_t, int BT, int KT>
struct DirsGradTerm {
  using value_type = scalar_t;
  static constexpr int K = BT * KT;
  const scalar_t *dirs, *grad;
  scalar_t* out;
  int64_t B, D, columns, k_stride, d_stride, tiles;
  HOST_DEVICE int64_t length() const { return D; }
  HOST_DEVICE PE_INLINE void add(int64_t g, int64_t d, scalar_t acc[K]) const {
    const int64_t b0 = (g / tiles) * BT, k0 = (g % tiles) * KT;
    scalar_t p[KT];
    for (int t = 0; t < KT; ++t) {
      p[t] = k0 + t < columns ? dirs[(k0 + t) * k_stride + d * d_stride] : scalar_t(0);
    }
    for (int s = 0; s < BT; ++s) {
      if (b0 + s >= B) break;
      const scalar_t gv = grad[(b0 + s) * D + d];
      for (int t = 0; t < KT; ++t) acc[s * KT + t] += p[t] * gv;
    }
  }
  HOST_DEVICE PE_INLINE void store(int64_t g, const scalar_t acc[K]) const {
    const int64_t b0 = (g / tiles) * BT, k0 = (g % tiles) * KT;
    for (int s = 0; s < BT; ++s) {
      for (int t = 0; t < KT; ++t) {
        if (b0 + s < B && k0 + t < columns) out[(b0 + s) * columns + k0 + t] = acc[s * KT + t];
      }
    }
  }
};

// ------------------------------------------------------------------------------------------
// Maps: one call per index (a CUDA thread, a loop iteration on the CPU).
// ------------------------------------------------------------------------------------------

// joints[b, j, c] = R[j, c] + sum_k R[j, 3 + c NB + k] beta[b, k]; i over (B, J, 3).
template <typename scalar_t>
struct JointsMap {
  const scalar_t *regressed, *betas;
  scalar_t* joints;
  int64_t J, NB;
  HOST_DEVICE PE_INLINE void operator()(int64_t i) const {
    const int64_t b = i / (J * 3), j = (i / 3) % J, c = i % 3;
    const int64_t M = 3 + 3 * NB;
    const scalar_t* r = regressed + j * M;
    const scalar_t* beta = betas + b * NB;
    scalar_t sum = r[c];
    for (int64_t k = 0; k < NB; ++k) sum += r[3 + c * NB + k] * beta[k];
    joints[i] = sum;
  }
};

// The vertex pass of the forward for vertex v and batch rows b0 .. b0 + nb (nb <= kBatchTile);
// f: those rows' pose features (nb x P, shared memory on the GPU).
template <typename scalar_t>
struct VertexForward {
  using value_type = scalar_t;
  const scalar_t *betas, *v_template, *shapedirs, *posedirs, *weights, *transforms, *rot;
  scalar_t *v_shaped, *v_posed, *vertices, *features;  // features: (B, P)
  ShapedLayout layout;
  Dims d;
  // The tile's pose features into f (nb x P), by `count` workers, this one `worker`; also into
  // `features` where `keep` (one tile per batch row does it).
  HOST_DEVICE PE_INLINE void fill_features(int64_t b0, int nb, scalar_t* f, int64_t worker,
                                           int64_t count, bool keep) const {
    for (int64_t i = worker; i < nb * d.P; i += count) {
      const scalar_t value = pose_feature(rot, d.J, b0 + i / d.P, i % d.P);
      f[i] = value;
      if (keep) features[b0 * d.P + i] = value;
    }
  }
  HOST_DEVICE PE_INLINE void operator()(int64_t v, int64_t b0, int nb, const scalar_t* f) const {
    const int64_t V = d.V, NB = d.NB, P = d.P, D = 3 * V;
    scalar_t offset[kBatchTile][3];
    for (int t = 0; t < kBatchTile; ++t) offset[t][0] = offset[t][1] = offset[t][2] = 0;
    const scalar_t* column = posedirs + v * 3;
    for (int64_t k = 0; k < P; ++k) {
      const scalar_t* pk = column + k * D;
      const scalar_t p0 = pk[0], p1 = pk[1], p2 = pk[2];
      for (int t = 0; t < kBatchTile; ++t) {
        if (t < nb) {
          const scalar_t fk = f[t * P + k];
          offset[t][0] += p0 * fk;
          offset[t][1] += p1 * fk;
          offset[t][2] += p2 * fk;
        }
      }
    }
    for (int t = 0; t < kBatchTile; ++t) {
      if (t >= nb) break;
      const int64_t b = b0 + t;
      const scalar_t* beta = betas + b * NB;
      scalar_t posed[3];
      for (int c = 0; c < 3; ++c) {
        const scalar_t* s = shapedirs + (v * 3 + c) * NB;
        scalar_t shaped = v_template[v * 3 + c];
        for (int64_t k = 0; k < NB; ++k) shaped += s[k] * beta[k];
        v_shaped[layout.at(b, v, c)] = shaped;
        posed[c] = shaped + offset[t][c];
        v_posed[(b * V + v) * 3 + c] = posed[c];
      }
      scalar_t M[12], out[3];
      blend<scalar_t>(weights + v * d.J, transforms + b * d.J * 16, d.J, M);
      skin_point<scalar_t>(M, posed, false, out);
      for (int c = 0; c < 3; ++c) vertices[(b * V + v) * 3 + c] = out[c];
    }
  }
};

// v_posed's gradient gvp[b, v] = M^T gV[b, v], M = sum_j w_vj A_bj; i over (B, V).
template <typename scalar_t>
struct PosedGradMap {
  const scalar_t *grad_vertices, *weights, *transforms;
  scalar_t* grad_posed;
  int64_t V, J;
  HOST_DEVICE PE_INLINE void operator()(int64_t i) const {
    const int64_t b = i / V, v = i % V;
    scalar_t M[12];
    blend<scalar_t>(weights + v * J, transforms + b * J * 16, J, M);
    const scalar_t* g = grad_vertices + i * 3;
    for (int c = 0; c < 3; ++c) {
      grad_posed[i * 3 + c] = M[c] * g[0] + M[4 + c] * g[1] + M[8 + c] * g[2];
    }
  }
};

// grad_w[v, j] = sum_b gV[b, v] . (A_bj (v_posed[b, v], 1)) for j in a tile of kWeightsTile;
// i over (V, J tiles).
template <typename scalar_t>
struct WeightsGradMap {
  const scalar_t *grad_vertices, *v_posed, *transforms;
  scalar_t* grad_weights;
  int64_t B, V, J;
  HOST_DEVICE PE_INLINE void operator()(int64_t i) const {
    const int64_t jt = (J + kWeightsTile - 1) / kWeightsTile;
    const int64_t v = i / jt, j0 = (i % jt) * kWeightsTile;
    scalar_t sum[kWeightsTile];
    for (int t = 0; t < kWeightsTile; ++t) sum[t] = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = (b * V + v) * 3;
      const scalar_t g[3] = {grad_vertices[row], grad_vertices[row + 1], grad_vertices[row + 2]};
      const scalar_t p[3] = {v_posed[row], v_posed[row + 1], v_posed[row + 2]};
      for (int t = 0; t < kWeightsTile; ++t) {
        if (j0 + t >= J) break;
        scalar_t q[3];  // A_bj (v_posed, 1)
        skin_point<scalar_t>(transforms + (b * J + j0 + t) * 16, p, false, q);
        sum[t] += g[0] * q[0] + g[1] * q[1] + g[2] * q[2];
      }
    }
    for (int t = 0; t < kWeightsTile; ++t) {
      if (j0 + t < J) grad_weights[v * J + j0 + t] = sum[t];
    }
  }
};

// grad_P[k, d] = sum_b f[b, k] gvp[b, d] for k in a tile of kPosedirsTile; i over
// (k tiles, 3V), d fastest.
template <typename scalar_t>
struct PosedirsGradMap {
  const scalar_t *features, *grad_posed;
  scalar_t* out;
  int64_t B, D, P;
  HOST_DEVICE PE_INLINE void operator()(int64_t i) const {
    const int64_t k0 = (i / D) * kPosedirsTile, d = i % D;
    scalar_t acc[kPosedirsTile];
    for (int t = 0; t < kPosedirsTile; ++t) acc[t] = 0;
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t g = grad_posed[b * D + d];
      const scalar_t* f = features + b * P + k0;
      for (int t = 0; t < kPosedirsTile; ++t) {
        if (k0 + t < P) acc[t] += f[t] * g;
      }
    }
    for (int t = 0; t < kPosedirsTile; ++t) {
      if (k0 + t < P) out[(k0 + t) * D + d] = acc[t];
    }
  }
};

// v_shaped's gradient G[b, v, c] = gvp[b, v, c] + sum_j Jreg[j, v] gJ[b, j, c]; i over (B, V, 3).
template <typename scalar_t>
struct ShapedGradMap {
  const scalar_t *grad_posed, *grad_joints, *regressor;
  scalar_t* grad_shaped;
  int64_t V, J;
  HOST_DEVICE PE_INLINE void operator()(int64_t i) const {
    const int64_t b = i / (V * 3), v = (i / 3) % V, c = i % 3;
    scalar_t G = grad_posed[i];
    const scalar_t* gj = grad_joints + b * J * 3 + c;
    for (int64_t j = 0; j < J; ++j) G += regressor[j * V + v] * gj[j * 3];
    grad_shaped[i] = G;
  }
};

// From G: grad_S[d, k] = sum_b G[b, d] beta[b, k] (k < nk: NB where grad_shapedirs is wanted,
// else 0) and grad_T[d] = sum_b G[b, d] (k = nk, where grad_template is not null); i over
// (3V, nk + 1).
template <typename scalar_t>
struct BlendShapesGradMap {
  const scalar_t *grad_shaped, *betas;
  scalar_t *grad_template, *grad_shapedirs;
  int64_t B, D, NB, nk;
  HOST_DEVICE PE_INLINE void operator()(int64_t i) const {
    const int64_t d = i / (nk + 1), k = i % (nk + 1);
    if (k == nk && grad_template == nullptr) return;
    scalar_t sum = 0;
    for (int64_t b = 0; b < B; ++b) {
      sum += grad_shaped[b * D + d] * (k < nk ? betas[b * NB + k] : scalar_t(1));
    }
    if (k < nk) {
      grad_shapedirs[d * NB + k] = sum;
    } else {
      grad_template[d] = sum;
    }
  }
};

// grad_Jreg[j, v] = sum_{b, c} gJ[b, j, c] v_shaped[b, v, c]; i over (J, V).
template <typename scalar_t>
struct RegressorGradMap {
  const scalar_t *grad_joints, *v_shaped;
  scalar_t* grad_regressor;
  ShapedLayout layout;
  int64_t B, V, J;
  HOST_DEVICE PE_INLINE void operator()(int64_t i) const {
    const int64_t j = i / V, v = i % V;
    scalar_t sum = 0;
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* gj = grad_joints + (b * J + j) * 3;
      for (int c = 0; c < 3; ++c) sum += gj[c] * v_shaped[layout.at(b, v, c)];
    }
    grad_regressor[i] = sum;
  }
};

// Two independent maps in one launch: i < first_count runs first(i), the rest second(i -
// first_count) (a launch is host-side work, what lbs is bound by on a GPU).
template <class First, class Second>
struct MapPair {
  First first;
  Second second;
  int64_t first_count;
  HOST_DEVICE PE_INLINE void operator()(int64_t i) const {
    if (i < first_count) {
      first(i);
    } else {
      second(i - first_count);
    }
  }
};

template <class First, class Second>
MapPair<First, Second> map_pair(const First& first, int64_t first_count, const Second& second) {
  return MapPair<First, Second>{first, second, first_count};
}

// ------------------------------------------------------------------------------------------
// The host side, one template for both devices. Exec (lbs_direct_cpu.cpp / lbs_direct_cuda.cu):
//   template <class Term> void reduce(int64_t groups, const Term&);
//   template <class Map> void map(int64_t count, const Map&);
//   template <class F> void vertices(const Dims&, const F&);   // VertexForward's tiles
// ------------------------------------------------------------------------------------------

inline ShapedLayout shaped_layout(int64_t route, int64_t V) {
  // route 3 (rows): (1, V * 3); route 0 (direct): (B, 3, V)
  return route == 3 ? ShapedLayout{0, 1, 3} : ShapedLayout{3 * V, V, 1};
}

inline int64_t tiles(int64_t n, int64_t tile) { return (n + tile - 1) / tile; }

// Whether the direct kernels take these inputs (else the caller takes the fused ops' general
// path): one dtype, float or double; a (V, 3) template; as many betas rows as pose rows; the
// direct or rows route; J >= 2 joints, NB >= 1 betas; up to kMaxBatch rows (beyond, the GPU is
// busy enough that cuBLAS's products are the better deal).
constexpr int64_t kMaxBatch = 64;
constexpr int64_t kMaxJoints = 64;  // the vertex pass's shared features: 4 x 9 (J - 1) values
static_assert(sizeof(double) * kBatchTile * 9 * (kMaxJoints - 1) <= 48 * 1024,
              "the vertex pass's features must fit the default 48 KiB of shared memory");

inline bool eligible(const Tensor& betas, const Tensor& pose, const Tensor& v_template,
                     const Tensor& shapedirs, const Tensor& J_regressor, int64_t route) {
  const auto dtype = betas.scalar_type();
  const int64_t B = betas.size(0), J = J_regressor.size(0);
  return (dtype == at::kFloat || dtype == at::kDouble) && v_template.dim() == 2 &&
         (route == 0 || route == 3) && pose.size(0) == B && B >= 1 && B <= kMaxBatch && J >= 2 &&
         J <= kMaxJoints && betas.size(1) >= 1 && shapedirs.dim() == 3 &&
         J_regressor.size(1) >= 1;
}

// The shapes, devices and dtypes eligible() does not look at, checked on every call (lbs()
// validates them first; the ops are public, and a wrong size would read past a tensor).
inline void check_inputs(const char* op, const Tensor& betas, const Tensor& pose,
                         const Tensor& v_template, const Tensor& shapedirs,
                         const Tensor& posedirs, const Tensor& J_regressor,
                         const Tensor& lbs_weights, const Tensor& parents, bool pose2rot,
                         int64_t route) {
  const int64_t B = betas.size(0), NB = betas.size(1), J = J_regressor.size(0),
                V = J_regressor.size(1);
  const auto expect = [&](const Tensor& t, at::IntArrayRef sizes, const char* name) {
    TORCH_CHECK(t.sizes() == sizes, op, ": ", name, " must be ", sizes, " (betas ",
                betas.sizes(), ", J_regressor ", J_regressor.sizes(), "), got ", t.sizes());
    TORCH_CHECK(t.device() == betas.device(), op, ": ", name, " is on ", t.device(),
                ", betas on ", betas.device());
    TORCH_CHECK(t.scalar_type() == betas.scalar_type(), op, ": ", name, " is ",
                t.scalar_type(), ", betas ", betas.scalar_type());
  };
  TORCH_CHECK(betas.dim() == 2 && J_regressor.dim() == 2, op,
              ": betas and J_regressor must be 2-D, got ", betas.sizes(), " and ",
              J_regressor.sizes());
  expect(v_template, {V, 3}, "v_template");
  expect(shapedirs, {V, 3, NB}, "shapedirs");
  expect(posedirs, {9 * (J - 1), 3 * V}, "posedirs");
  expect(J_regressor, {J, V}, "J_regressor");
  expect(lbs_weights, {V, J}, "lbs_weights");
  TORCH_CHECK(pose.size(0) == B && pose.numel() == B * J * (pose2rot ? 3 : 9), op,
              ": pose must hold ", B, " rows of ", J, pose2rot ? " axis-angles" : " rotations",
              ", got ", pose.sizes());
  TORCH_CHECK(pose.device() == betas.device() && pose.scalar_type() == betas.scalar_type(), op,
              ": pose must be ", betas.scalar_type(), " on ", betas.device(), ", got ",
              pose.scalar_type(), " on ", pose.device());
  TORCH_CHECK(parents.numel() == J && parents.device() == betas.device(), op,
              ": parents must hold ", J, " entries on ", betas.device(), ", got ",
              parents.sizes(), " on ", parents.device());
  TORCH_CHECK(route != 3 || B == 1, op, ": the rows route (3) takes one row, got ", B);
}

template <typename scalar_t, typename Exec>
std::tuple<Tensor, Tensor, std::vector<Tensor>> forward(
    Exec& exec, const Tensor& betas_in, const Tensor& pose, const Tensor& v_template_in,
    const Tensor& shapedirs_in, const Tensor& posedirs_in, const Tensor& J_regressor_in,
    const Tensor& lbs_weights_in, const Tensor& parents, bool pose2rot, int64_t route) {
  const Tensor betas = betas_in.contiguous(), v_template = v_template_in.contiguous(),
               shapedirs = shapedirs_in.contiguous(), posedirs = posedirs_in.contiguous(),
               regressor = J_regressor_in.contiguous(), weights = lbs_weights_in.contiguous();
  const int64_t B = betas.size(0), NB = betas.size(1), J = regressor.size(0),
                V = regressor.size(1);
  const Dims d{B, V, J, NB, 9 * (J - 1)};
  const auto options = betas.options();
  const int64_t M = 3 + 3 * NB;
  Tensor regressed = new_output({J, M}, options);
  exec.reduce(J * tiles(M, kRegressTile),
              RegressTerm<scalar_t>{regressor.data_ptr<scalar_t>(),
                                    v_template.data_ptr<scalar_t>(),
                                    shapedirs.data_ptr<scalar_t>(),
                                    regressed.data_ptr<scalar_t>(), V, M, tiles(M, kRegressTile)});
  Tensor joints = new_output({B, J, 3}, options);
  exec.map(B * J * 3, JointsMap<scalar_t>{regressed.data_ptr<scalar_t>(),
                                          betas.data_ptr<scalar_t>(),
                                          joints.data_ptr<scalar_t>(), J, NB});
  const Tensor kernel_pose = pose_rows(pose, B, J, pose2rot);
  const Tensor tree = parents.to(at::kLong);
  auto [rot, posed_joints, transforms] =
      ops().fk_forward.call(kernel_pose, joints, tree, pose2rot);
  Tensor v_shaped = route == 3 ? new_output({1, V * 3}, options) : new_output({B, 3, V}, options);
  Tensor v_posed = new_output({B, V, 3}, options);
  Tensor vertices = new_output({B, V, 3}, options);
  Tensor features = new_output({B, d.P}, options);
  exec.vertices(d, VertexForward<scalar_t>{
                       betas.data_ptr<scalar_t>(), v_template.data_ptr<scalar_t>(),
                       shapedirs.data_ptr<scalar_t>(), posedirs.data_ptr<scalar_t>(),
                       weights.data_ptr<scalar_t>(), transforms.data_ptr<scalar_t>(),
                       rot.data_ptr<scalar_t>(), v_shaped.data_ptr<scalar_t>(),
                       v_posed.data_ptr<scalar_t>(), vertices.data_ptr<scalar_t>(),
                       features.data_ptr<scalar_t>(), shaped_layout(route, V), d});
  std::vector<Tensor> saved = {joints, transforms, features, v_posed, v_shaped};
  return {vertices, posed_joints, saved};
}

template <typename scalar_t, typename Exec>
std::vector<Tensor> backward(Exec& exec, const std::optional<Tensor>& grad_vertices_in,
                             const std::optional<Tensor>& grad_joints_in, const Tensor& betas_in,
                             const Tensor& pose, const Tensor& v_template,
                             const Tensor& shapedirs_in, const Tensor& posedirs_in,
                             const Tensor& J_regressor_in, const Tensor& lbs_weights_in,
                             const Tensor& parents, at::TensorList saved, bool pose2rot,
                             int64_t route, std::array<bool, 7> needs) {
  const Tensor betas = betas_in.contiguous(), shapedirs = shapedirs_in.contiguous(),
               posedirs = posedirs_in.contiguous(), regressor = J_regressor_in.contiguous(),
               weights = lbs_weights_in.contiguous();
  const Tensor &joints = saved[0], &transforms = saved[1], &features = saved[2],
               &v_posed = saved[3], &v_shaped = saved[4];
  const int64_t B = betas.size(0), NB = betas.size(1), J = regressor.size(0),
                V = regressor.size(1), D = 3 * V;
  const Dims d{B, V, J, NB, 9 * (J - 1)};
  const auto options = betas.options();
  const bool need_betas = needs[0], need_pose = needs[1], need_template = needs[2],
             need_dirs = needs[3], need_posedirs = needs[4], need_regressor = needs[5],
             need_weights = needs[6];
  const bool need_shape = need_betas || need_template || need_dirs || need_regressor;
  // a gradient not needed is an empty tensor of its own (the op's outputs may not alias)
  const auto empty_of = [&] { return at::empty({0}, options); };
  const Tensor grad_vertices = grad_vertices_in.has_value() && grad_vertices_in->defined()
                                   ? grad_vertices_in->contiguous()
                                   : at::zeros({B, V, 3}, options);
  Tensor grad_posed = new_output({B, V, 3}, options);
  Tensor grad_weights = need_weights ? new_output({V, J}, options) : empty_of();
  exec.map(B * V + (need_weights ? V * tiles(J, kWeightsTile) : 0),
           map_pair(PosedGradMap<scalar_t>{grad_vertices.data_ptr<scalar_t>(),
                                           weights.data_ptr<scalar_t>(),
                                           transforms.data_ptr<scalar_t>(),
                                           grad_posed.data_ptr<scalar_t>(), V, J},
                    B * V,
                    WeightsGradMap<scalar_t>{grad_vertices.data_ptr<scalar_t>(),
                                             v_posed.data_ptr<scalar_t>(),
                                             transforms.data_ptr<scalar_t>(),
                                             need_weights ? grad_weights.data_ptr<scalar_t>()
                                                          : nullptr,
                                             B, V, J}));
  Tensor grad_pose = empty_of(), grad_joints;
  if (need_pose || need_shape) {
    Tensor grad_transforms = new_output({B, J, 4, 4}, options);
    exec.reduce(B * tiles(J, kJointTile),
                TransformGradTerm<scalar_t>{grad_vertices.data_ptr<scalar_t>(),
                                            v_posed.data_ptr<scalar_t>(),
                                            weights.data_ptr<scalar_t>(),
                                            grad_transforms.data_ptr<scalar_t>(), V, J,
                                            tiles(J, kJointTile)});
    Tensor grad_rot = new_output({B, J - 1, 3, 3}, options);
    exec.reduce(tiles(B, kFeatureBatchTile) * tiles(d.P, kFeatureTile),
                DirsGradTerm<scalar_t, kFeatureBatchTile, kFeatureTile>{
                    posedirs.data_ptr<scalar_t>(), grad_posed.data_ptr<scalar_t>(),
                    grad_rot.data_ptr<scalar_t>(), B, D, d.P, D, 1, tiles(d.P, kFeatureTile)});
    const Tensor grad_posed_joints = grad_joints_in.has_value() && grad_joints_in->defined()
                                         ? grad_joints_in->contiguous()
                                         : empty_of();
    const Tensor kernel_pose = pose_rows(pose, B, J, pose2rot);
    auto [grad_kernel_pose, grad_kernel_joints] = ops().fk_backward.call(
        grad_rot, grad_posed_joints, grad_transforms, kernel_pose, joints, parents.to(at::kLong),
        pose2rot);
    if (need_pose) grad_pose = grad_kernel_pose.reshape(pose.sizes());
    grad_joints = grad_kernel_joints;
  }
  // v_shaped's gradient G where the blend shapes' gradients need it, beside grad_P
  const bool need_G = need_betas || need_template || need_dirs;
  Tensor grad_posedirs = need_posedirs ? new_output({d.P, D}, options) : empty_of();
  Tensor grad_shaped = need_G ? new_output({B, V, 3}, options) : empty_of();
  const int64_t posedirs_count = need_posedirs ? tiles(d.P, kPosedirsTile) * D : 0;
  exec.map(posedirs_count + (need_G ? B * D : 0),
           map_pair(PosedirsGradMap<scalar_t>{features.data_ptr<scalar_t>(),
                                              grad_posed.data_ptr<scalar_t>(),
                                              need_posedirs ? grad_posedirs.data_ptr<scalar_t>()
                                                            : nullptr,
                                              B, D, d.P},
                    posedirs_count,
                    ShapedGradMap<scalar_t>{grad_posed.data_ptr<scalar_t>(),
                                            need_G ? grad_joints.data_ptr<scalar_t>() : nullptr,
                                            regressor.data_ptr<scalar_t>(),
                                            need_G ? grad_shaped.data_ptr<scalar_t>() : nullptr,
                                            V, J}));
  Tensor grad_betas = empty_of();
  Tensor grad_template = need_template ? new_output({V, 3}, options) : empty_of();
  Tensor grad_shapedirs = need_dirs ? new_output({V, 3, NB}, options) : empty_of();
  Tensor grad_regressor = need_regressor ? new_output({J, V}, options) : empty_of();
  const int64_t nk = need_dirs ? NB : 0;
  const int64_t blend_count = need_template || need_dirs ? D * (nk + 1) : 0;
  const auto ptr = [](bool need, Tensor& t) { return need ? t.data_ptr<scalar_t>() : nullptr; };
  exec.map(blend_count + (need_regressor ? J * V : 0),
           map_pair(BlendShapesGradMap<scalar_t>{ptr(need_G, grad_shaped),
                                                 betas.data_ptr<scalar_t>(),
                                                 ptr(need_template, grad_template),
                                                 ptr(need_dirs, grad_shapedirs), B, D, NB, nk},
                    blend_count,
                    RegressorGradMap<scalar_t>{
                        need_regressor ? grad_joints.data_ptr<scalar_t>() : nullptr,
                        v_shaped.data_ptr<scalar_t>(), ptr(need_regressor, grad_regressor),
                        shaped_layout(route, V), B, V, J}));
  if (need_betas) {
    grad_betas = new_output({B, NB}, options);
    exec.reduce(tiles(B, kBetasBatchTile) * tiles(NB, kBetasTile),
                DirsGradTerm<scalar_t, kBetasBatchTile, kBetasTile>{
                    shapedirs.data_ptr<scalar_t>(), grad_shaped.data_ptr<scalar_t>(),
                    grad_betas.data_ptr<scalar_t>(), B, D, NB, 1, NB, tiles(NB, kBetasTile)});
  }
  (void)v_template;
  return {grad_betas, grad_pose, grad_template, grad_shapedirs, grad_posedirs, grad_regressor,
          grad_weights};
}

// The ops' kernels (lbs_direct_forward / lbs_direct_backward, the fused ops' schemas), one per
// executor: the inputs must be eligible(); the dtype picks the kernels. Exec(betas) binds the
// device (CUDA: its guard and current stream).
template <typename Exec>
std::tuple<Tensor, Tensor, std::vector<Tensor>> forward_op(
    const Tensor& betas, const Tensor& pose, const Tensor& v_template,
    const Tensor& shapedirs, const Tensor& posedirs, const Tensor& J_regressor,
    const Tensor& lbs_weights, const Tensor& parents, bool pose2rot, int64_t route) {
  TORCH_CHECK(eligible(betas, pose, v_template, shapedirs, J_regressor, route),
              "lbs_direct_forward: the direct kernels take float or double inputs, a (V, 3) "
              "v_template, as many betas rows as pose rows (1 to ", kMaxBatch, "), 2 to ",
              kMaxJoints, " joints, at least one beta, route 0 or 3; got betas ", betas.sizes(),
              " ", betas.scalar_type(), ", pose ", pose.sizes(), ", v_template ",
              v_template.sizes(), ", J_regressor ", J_regressor.sizes(), ", route ", route);
  check_inputs("lbs_direct_forward", betas, pose, v_template, shapedirs, posedirs, J_regressor,
               lbs_weights, parents, pose2rot, route);
  Exec exec(betas);
  return AT_DISPATCH_FLOATING_TYPES(betas.scalar_type(), "lbs_direct_forward", [&] {
    return forward<scalar_t>(exec, betas, pose, v_template, shapedirs, posedirs, J_regressor,
                             lbs_weights, parents, pose2rot, route);
  });
}

template <typename Exec>
std::vector<Tensor> backward_op(const std::optional<Tensor>& grad_vertices,
                                const std::optional<Tensor>& grad_joints, const Tensor& betas,
                                const Tensor& pose, const Tensor& v_template,
                                const Tensor& shapedirs, const Tensor& posedirs,
                                const Tensor& J_regressor, const Tensor& lbs_weights,
                                const Tensor& parents, at::TensorList saved, bool pose2rot,
                                int64_t route, std::array<bool, 7> needs) {
  TORCH_CHECK(eligible(betas, pose, v_template, shapedirs, J_regressor, route),
              "lbs_direct_backward: the inputs must be those the direct kernels take (see "
              "lbs_direct_forward); got betas ", betas.sizes(), " ", betas.scalar_type(),
              ", pose ", pose.sizes(), ", route ", route);
  TORCH_CHECK(saved.size() == 5, "lbs_direct_backward: saved must be lbs_direct_forward's list "
              "of 5 tensors, got ", saved.size());
  check_inputs("lbs_direct_backward", betas, pose, v_template, shapedirs, posedirs,
               J_regressor, lbs_weights, parents, pose2rot, route);
  Exec exec(betas);
  return AT_DISPATCH_FLOATING_TYPES(betas.scalar_type(), "lbs_direct_backward", [&] {
    return backward<scalar_t>(exec, grad_vertices, grad_joints, betas, pose, v_template,
                              shapedirs, posedirs, J_regressor, lbs_weights, parents, saved,
                              pose2rot, route, needs);
  });
}

}  // namespace direct
}  // namespace skinning
}  // namespace portrait_engine
