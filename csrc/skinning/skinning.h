// Math of linear blend skinning, shared by the CPU (skinning_cpu.cpp) and CUDA
// (skinning_cuda.cu) kernels. See docs/kernel_contract_skinning.md.
//
// Templated on the accumulation type T (float for float / half / bfloat16 storage, double for
// double). No allocation, no tensors: plain values and pointers. Matrices are row-major:
// a 3x3 rotation is R[r * 3 + c], an affine transform's top rows are A[r * 4 + c] (r < 3) of
// its 4x4 storage (the bottom row is never read).
//
// Formulas (SMPL, as smplx.lbs.lbs computes them):
//   Rodrigues   theta = |r + 1e-8|, k = r / theta, R = I + sin(theta) [k]x + (1 - cos(theta)) [k]x^2
//   kinematics  G_0 = [R_0 | j_0], G_i = G_p(i) [R_i | j_i - j_p(i)]; posed joint i = t(G_i);
//               A_i = [Rg_i | tg_i - Rg_i j_i] (the relative transform)
//   skinning    M = sum_j w_j A_j; out = M (p, 1) or, inverse, M[:, :3]^-1 (p - M[:, 3])
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace portrait_engine {
namespace skinning {

template <typename T>
HOST_DEVICE PE_INLINE T sqrt_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

template <typename T>
HOST_DEVICE PE_INLINE T sin_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::sin(x);
#else
  return std::sin(x);
#endif
}

template <typename T>
HOST_DEVICE PE_INLINE T cos_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::cos(x);
#else
  return std::cos(x);
#endif
}

// ------------------------------------------------------------------------------------------
// Rodrigues (smplx's batch_rodrigues, including its 1e-8 offset inside the norm)
// ------------------------------------------------------------------------------------------

template <typename T>
HOST_DEVICE PE_INLINE void skew(const T k[3], T K[9]) {
  K[0] = T(0);
  K[1] = -k[2];
  K[2] = k[1];
  K[3] = k[2];
  K[4] = T(0);
  K[5] = -k[0];
  K[6] = -k[1];
  K[7] = k[0];
  K[8] = T(0);
}

template <typename T>
HOST_DEVICE PE_INLINE void matmul3(const T a[9], const T b[9], T out[9]) {
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) {
      out[r * 3 + c] = a[r * 3] * b[c] + a[r * 3 + 1] * b[3 + c] + a[r * 3 + 2] * b[6 + c];
    }
  }
}

template <typename T>
HOST_DEVICE PE_INLINE T rodrigues_angle(const T r[3]) {
  const T a0 = r[0] + T(1e-8), a1 = r[1] + T(1e-8), a2 = r[2] + T(1e-8);
  return sqrt_of(a0 * a0 + a1 * a1 + a2 * a2);
}

template <typename T>
HOST_DEVICE PE_INLINE void rodrigues(const T r[3], T R[9]) {
  const T angle = rodrigues_angle(r);
  const T k[3] = {r[0] / angle, r[1] / angle, r[2] / angle};
  T K[9], K2[9];
  skew(k, K);
  matmul3(K, K, K2);
  const T s = sin_of(angle), c1 = T(1) - cos_of(angle);
  for (int i = 0; i < 9; ++i) R[i] = s * K[i] + c1 * K2[i];
  R[0] += T(1);
  R[4] += T(1);
  R[8] += T(1);
}

// dr = (dR/dr)^T dR for R = rodrigues(r).
template <typename T>
HOST_DEVICE PE_INLINE void rodrigues_backward(const T r[3], const T dR[9], T dr[3]) {
  const T a[3] = {r[0] + T(1e-8), r[1] + T(1e-8), r[2] + T(1e-8)};
  const T angle = sqrt_of(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
  const T k[3] = {r[0] / angle, r[1] / angle, r[2] / angle};
  T K[9], K2[9];
  skew(k, K);
  matmul3(K, K, K2);
  const T s = sin_of(angle), c = cos_of(angle), c1 = T(1) - c;
  // R = I + s K + c1 K^2: dK = s dR + c1 (dR K^T + K^T dR); dtheta = c <dR, K> + s <dR, K^2>
  T dK[9];
  T dangle = T(0);
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      T sym = T(0);
      for (int m = 0; m < 3; ++m) sym += dR[i * 3 + m] * K[j * 3 + m] + K[m * 3 + i] * dR[m * 3 + j];
      dK[i * 3 + j] = s * dR[i * 3 + j] + c1 * sym;
      dangle += c * dR[i * 3 + j] * K[i * 3 + j] + s * dR[i * 3 + j] * K2[i * 3 + j];
    }
  }
  const T dk[3] = {dK[7] - dK[5], dK[2] - dK[6], dK[3] - dK[1]};
  // k = r / theta
  const T inv = T(1) / angle;
  dangle -= (dk[0] * r[0] + dk[1] * r[1] + dk[2] * r[2]) * inv * inv;
  // theta = |r + 1e-8|
  for (int i = 0; i < 3; ++i) dr[i] = dk[i] * inv + dangle * a[i] * inv;
}

// ------------------------------------------------------------------------------------------
// Forward kinematics of one batch element. G is a 12-value-per-joint workspace (the global
// transforms' top rows); parents[0] = -1, parents[i] < i.
// ------------------------------------------------------------------------------------------

template <typename T>
HOST_DEVICE PE_INLINE void chain_joint(const T* rot, const T* joints, const int64_t* parents,
                                       int64_t i, T* G) {
  const T* R = rot + i * 9;
  const T* j = joints + i * 3;
  T* g = G + i * 12;
  if (i == 0) {
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 3; ++c) g[r * 4 + c] = R[r * 3 + c];
      g[r * 4 + 3] = j[r];
    }
    return;
  }
  const int64_t p = parents[i];
  const T* gp = G + p * 12;
  const T* jp = joints + p * 3;
  const T t[3] = {j[0] - jp[0], j[1] - jp[1], j[2] - jp[2]};
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) {
      g[r * 4 + c] = gp[r * 4] * R[c] + gp[r * 4 + 1] * R[3 + c] + gp[r * 4 + 2] * R[6 + c];
    }
    g[r * 4 + 3] = gp[r * 4] * t[0] + gp[r * 4 + 1] * t[1] + gp[r * 4 + 2] * t[2] + gp[r * 4 + 3];
  }
}

// The relative transform A_i = [Rg | tg - Rg j] (top rows, 12 values) of joint i.
template <typename T>
HOST_DEVICE PE_INLINE void relative_transform(const T* g, const T* j, T A[12]) {
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) A[r * 4 + c] = g[r * 4 + c];
    A[r * 4 + 3] = g[r * 4 + 3] - (g[r * 4] * j[0] + g[r * 4 + 1] * j[1] + g[r * 4 + 2] * j[2]);
  }
}

// Backward of the kinematic chain of one batch element. Inputs: rot (J x 9), joints (J x 3),
// G (recomputed global transforms), dRel (J x 12: the gradient of A's top rows), dPJ (J x 3).
// Workspace dG (J x 12), zeroed here. Outputs: dRot (J x 9, gradient of the local rotations
// through the chain only) and dJ (J x 3).
template <typename T>
HOST_DEVICE PE_INLINE void chain_backward(const T* rot, const T* joints, const int64_t* parents,
                                          int64_t J, const T* G, const T* dRel, const T* dPJ,
                                          T* dG, T* dRot, T* dJ) {
  for (int64_t i = 0; i < J; ++i) {
    const T* j = joints + i * 3;
    const T* g = G + i * 12;
    const T* d = dRel + i * 12;
    T* dg = dG + i * 12;
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 3; ++c) dg[r * 4 + c] = d[r * 4 + c] - d[r * 4 + 3] * j[c];
      dg[r * 4 + 3] = d[r * 4 + 3] + dPJ[i * 3 + r];
    }
    for (int c = 0; c < 3; ++c) {
      dJ[i * 3 + c] = -(g[c] * d[3] + g[4 + c] * d[7] + g[8 + c] * d[11]);
    }
  }
  for (int64_t i = J - 1; i >= 1; --i) {
    const int64_t p = parents[i];
    const T* R = rot + i * 9;
    const T* gp = G + p * 12;
    const T* dg = dG + i * 12;
    T* dgp = dG + p * 12;
    const T* j = joints + i * 3;
    const T* jp = joints + p * 3;
    const T t[3] = {j[0] - jp[0], j[1] - jp[1], j[2] - jp[2]};
    T* dR = dRot + i * 9;
    for (int a = 0; a < 3; ++a) {
      for (int b = 0; b < 3; ++b) {
        dR[a * 3 + b] = gp[a] * dg[b] + gp[4 + a] * dg[4 + b] + gp[8 + a] * dg[8 + b];
      }
    }
    T dt[3];
    for (int a = 0; a < 3; ++a) dt[a] = gp[a] * dg[3] + gp[4 + a] * dg[7] + gp[8 + a] * dg[11];
    for (int r = 0; r < 3; ++r) {
      for (int a = 0; a < 3; ++a) {
        dgp[r * 4 + a] += dg[r * 4] * R[a * 3] + dg[r * 4 + 1] * R[a * 3 + 1] +
                          dg[r * 4 + 2] * R[a * 3 + 2] + dg[r * 4 + 3] * t[a];
      }
      dgp[r * 4 + 3] += dg[r * 4 + 3];
    }
    for (int a = 0; a < 3; ++a) {
      dJ[i * 3 + a] += dt[a];
      dJ[p * 3 + a] -= dt[a];
    }
  }
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) dRot[r * 3 + c] = dG[r * 4 + c];
    dJ[r] += dG[r * 4 + 3];
  }
}

// ------------------------------------------------------------------------------------------
// Forward kinematics of one batch element, end to end: what one CPU task or one CUDA thread
// runs. Every pointer is already offset to the batch element (pose: J x 3 axis-angle or
// J x 9 rotations; joints, posed joints: J x 3; rel: J x 16; rot: J x 9). The workspaces are
// in the accumulation type T.
// ------------------------------------------------------------------------------------------

// jnt (J x 3) <- joints; rot (J x 9) <- the local rotations (Rodrigues of pose, or pose).
template <typename scalar_t, typename T>
HOST_DEVICE PE_INLINE void load_local_frames(const scalar_t* pose, const scalar_t* joints,
                                             int64_t J, bool pose2rot, T* rot, T* jnt) {
  for (int64_t i = 0; i < J; ++i) {
    for (int c = 0; c < 3; ++c) jnt[i * 3 + c] = static_cast<T>(joints[i * 3 + c]);
    if (pose2rot) {
      const scalar_t* r = pose + i * 3;
      const T rv[3] = {static_cast<T>(r[0]), static_cast<T>(r[1]), static_cast<T>(r[2])};
      rodrigues(rv, rot + i * 9);
    } else {
      for (int k = 0; k < 9; ++k) rot[i * 9 + k] = static_cast<T>(pose[i * 9 + k]);
    }
  }
}

// Workspaces: rot (9J), jnt (3J), G (12J). Outputs: rot_out (J x 9), pj_out (J x 3),
// rel_out (J x 16, bottom rows written as 0 0 0 1).
template <typename scalar_t, typename T>
HOST_DEVICE PE_INLINE void forward_kinematics_element(const scalar_t* pose, const scalar_t* joints,
                                                      const int64_t* parents, int64_t J,
                                                      bool pose2rot, T* rot, T* jnt, T* G,
                                                      scalar_t* rot_out, scalar_t* pj_out,
                                                      scalar_t* rel_out) {
  load_local_frames(pose, joints, J, pose2rot, rot, jnt);
  for (int64_t i = 0; i < J; ++i) {
    chain_joint(rot, jnt, parents, i, G);
    T A[12];
    relative_transform(G + i * 12, jnt + i * 3, A);
    scalar_t* rel = rel_out + i * 16;
    for (int k = 0; k < 12; ++k) rel[k] = static_cast<scalar_t>(A[k]);
    rel[12] = rel[13] = rel[14] = scalar_t(0);
    rel[15] = scalar_t(1);
    for (int r = 0; r < 3; ++r) pj_out[i * 3 + r] = static_cast<scalar_t>(G[i * 12 + r * 4 + 3]);
    for (int k = 0; k < 9; ++k) rot_out[i * 9 + k] = static_cast<scalar_t>(rot[i * 9 + k]);
  }
}

// The number of T values of forward_kinematics_backward_element's workspace per joint.
constexpr int64_t kChainBackwardWorkspace = 63;

// Backward of forward_kinematics_element: the gradients of its three outputs (grad_rot J x 9,
// grad_pj J x 3, grad_rel J x 16, only the top rows read) to grad_pose (J x 3 or J x 9) and
// grad_joints (J x 3). The global transforms are recomputed. ws: kChainBackwardWorkspace * J
// values (rot 9J, jnt 3J, G 12J, dRel 12J, dPJ 3J, dG 12J, dRot 9J, dJ 3J).
// rot_first: the first joint that grad_rot holds (0, or 1 when it holds joints 1..J-1 and the
// root's is zero: lbs's pose features leave out the root); grad_pj null: zeros.
template <typename scalar_t, typename T>
HOST_DEVICE PE_INLINE void forward_kinematics_backward_element(
    const scalar_t* grad_rot, int64_t rot_first, const scalar_t* grad_pj,
    const scalar_t* grad_rel, const scalar_t* pose, const scalar_t* joints,
    const int64_t* parents, int64_t J, bool pose2rot, T* ws, scalar_t* grad_pose,
    scalar_t* grad_joints) {
  T* rot = ws;
  T* jnt = rot + 9 * J;
  T* G = jnt + 3 * J;
  T* dRel = G + 12 * J;
  T* dPJ = dRel + 12 * J;
  T* dG = dPJ + 3 * J;
  T* dRot = dG + 12 * J;
  T* dJ = dRot + 9 * J;
  load_local_frames(pose, joints, J, pose2rot, rot, jnt);
  for (int64_t i = 0; i < J; ++i) {
    for (int c = 0; c < 3; ++c) {
      dPJ[i * 3 + c] = grad_pj ? static_cast<T>(grad_pj[i * 3 + c]) : T(0);
    }
    for (int k = 0; k < 12; ++k) dRel[i * 12 + k] = static_cast<T>(grad_rel[i * 16 + k]);
  }
  for (int64_t i = 0; i < J; ++i) chain_joint(rot, jnt, parents, i, G);
  chain_backward(rot, jnt, parents, J, G, dRel, dPJ, dG, dRot, dJ);
  for (int64_t i = 0; i < J; ++i) {
    T dR[9];
    if (i >= rot_first) {
      const scalar_t* g = grad_rot + (i - rot_first) * 9;
      for (int k = 0; k < 9; ++k) dR[k] = dRot[i * 9 + k] + static_cast<T>(g[k]);
    } else {
      for (int k = 0; k < 9; ++k) dR[k] = dRot[i * 9 + k];
    }
    if (pose2rot) {
      const scalar_t* r = pose + i * 3;
      const T rv[3] = {static_cast<T>(r[0]), static_cast<T>(r[1]), static_cast<T>(r[2])};
      T dr[3];
      rodrigues_backward(rv, dR, dr);
      for (int c = 0; c < 3; ++c) grad_pose[i * 3 + c] = static_cast<scalar_t>(dr[c]);
    } else {
      for (int k = 0; k < 9; ++k) grad_pose[i * 9 + k] = static_cast<scalar_t>(dR[k]);
    }
    for (int c = 0; c < 3; ++c) grad_joints[i * 3 + c] = static_cast<scalar_t>(dJ[i * 3 + c]);
  }
}

// ------------------------------------------------------------------------------------------
// Skinning of one point
// ------------------------------------------------------------------------------------------

// M = sum_j w_j A_j (top rows). w is read with stride 1, A with stride 16 per joint.
template <typename T, typename scalar_t>
HOST_DEVICE PE_INLINE void blend(const scalar_t* w, const scalar_t* A, int64_t J, T M[12]) {
  for (int i = 0; i < 12; ++i) M[i] = T(0);
  for (int64_t j = 0; j < J; ++j) {
    const T wj = static_cast<T>(w[j]);
    const scalar_t* a = A + j * 16;
    for (int i = 0; i < 12; ++i) M[i] += wj * static_cast<T>(a[i]);
  }
}

// The inverse of M's 3x3 block, by the adjugate (det = 0 gives inf / NaN, like a solve).
template <typename T>
HOST_DEVICE PE_INLINE void inverse3(const T M[12], T inv[9]) {
  const T a = M[0], b = M[1], c = M[2], d = M[4], e = M[5], f = M[6], g = M[8], h = M[9],
          i = M[10];
  const T c0 = e * i - f * h, c1 = f * g - d * i, c2 = d * h - e * g;
  const T rdet = T(1) / (a * c0 + b * c1 + c * c2);
  inv[0] = c0 * rdet;
  inv[1] = (c * h - b * i) * rdet;
  inv[2] = (b * f - c * e) * rdet;
  inv[3] = c1 * rdet;
  inv[4] = (a * i - c * g) * rdet;
  inv[5] = (c * d - a * f) * rdet;
  inv[6] = c2 * rdet;
  inv[7] = (b * g - a * h) * rdet;
  inv[8] = (a * e - b * d) * rdet;
}

// out = M (p, 1), or with inverse M^-1 (p - t).
template <typename T>
HOST_DEVICE PE_INLINE void skin_point(const T M[12], const T p[3], bool inverse, T out[3]) {
  if (!inverse) {
    for (int r = 0; r < 3; ++r) {
      out[r] = M[r * 4] * p[0] + M[r * 4 + 1] * p[1] + M[r * 4 + 2] * p[2] + M[r * 4 + 3];
    }
    return;
  }
  T inv[9];
  inverse3(M, inv);
  const T q[3] = {p[0] - M[3], p[1] - M[7], p[2] - M[11]};
  for (int r = 0; r < 3; ++r) out[r] = inv[r * 3] * q[0] + inv[r * 3 + 1] * q[1] + inv[r * 3 + 2] * q[2];
}

// Gradients of one point: gp (3) and dM (12, the gradient of the blended transform).
//   forward: gp = M^T g, dM = g (p, 1)^T
//   inverse: g' = M^-T g, gp = g', dM = -g' (out, 1)^T
template <typename T>
HOST_DEVICE PE_INLINE void skin_point_backward(const T M[12], const T p[3], const T g[3],
                                               bool inverse, T gp[3], T dM[12]) {
  if (!inverse) {
    for (int c = 0; c < 3; ++c) gp[c] = M[c] * g[0] + M[4 + c] * g[1] + M[8 + c] * g[2];
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 3; ++c) dM[r * 4 + c] = g[r] * p[c];
      dM[r * 4 + 3] = g[r];
    }
    return;
  }
  T inv[9];
  inverse3(M, inv);
  const T q[3] = {p[0] - M[3], p[1] - M[7], p[2] - M[11]};
  T o[3];
  for (int r = 0; r < 3; ++r) o[r] = inv[r * 3] * q[0] + inv[r * 3 + 1] * q[1] + inv[r * 3 + 2] * q[2];
  for (int c = 0; c < 3; ++c) gp[c] = inv[c] * g[0] + inv[3 + c] * g[1] + inv[6 + c] * g[2];
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) dM[r * 4 + c] = -gp[r] * o[c];
    dM[r * 4 + 3] = -gp[r];
  }
}

}  // namespace skinning
}  // namespace portrait_engine
