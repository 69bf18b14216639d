// lbs's shape part on the "direct" route on the CPU as two passes of our own (shape_blend_cpu.cpp),
// called by lbs_fused.cpp in place of its ATen products where shape_direct_cpu_takes() holds.
//
//   forward:  v_shaped[b] = T + S β_b (B, V * 3); columns[b] = v_shaped[b] as (3, V), the direct
//             route's saved tensor; joints[b] = 𝒥 v_shaped[b] (B, J, 3)
//   backward: with g = grad_v_shaped and gJ = grad_joints, gt_b = g_b + 𝒥ᵀ gJ_b (the gradient
//             that reaches v_shaped), then grad_β_b = Sᵀ gt_b, grad_T = Σ_b gt_b,
//             grad_S = Σ_b gt_b β_bᵀ, grad_𝒥 = Σ_b gJ_b v_shaped_bᵀ
//
// Why: the direct route's ATen calls (an addmm, two matmuls with a transposed copy, five
// products in the backward, adds) are small products on cold data, each a BLAS call. Here each
// direction is one pass over blocks of 64 vertices (parallel), on the shape_blend kernels'
// register-tiled products; partials per block summed in block order (no atomics, no BLAS: the
// same result for any thread count). Measured on the 2-core Zen 4 (2026-11-28) at SMPL's size,
// B = 1: the passes take ~120 µs forward and ~280 µs backward (timed inside lbs_fused; the
// backward writes the 0.8 MB grad_S and 0.7 MB grad_𝒥), and lbs fwd+bwd went 2.45 -> 2.39 and
// 2.54 -> 2.52 ms (medians; minimums 2.39 -> 2.34, 2.40 -> 2.32) against the ATen calls, in one
// process, alternated: a small gain. Float on an AVX-512 CPU runs the backward vectorised along
// vertices instead (shape_blend_cpu.cpp; grad_β's partials per fixed slab of blocks):
// 193-218 µs against 254-278 at B = 1 (2026-11-28); both passes by 8 slabs of vertices since
// (𝒥's and grad_𝒥's rows as ~3.4 KB runs rather than 256-byte ones per block): forward 90-92 µs
// against 116-118, backward 136-137 against 165-170.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

namespace portrait_engine {
namespace skinning {

// CPU tensors of one dtype, float or double; a (V, 3) template; betas (B, NB) with B >= 1.
bool shape_direct_cpu_takes(const at::Tensor& betas, const at::Tensor& v_template,
                            const at::Tensor& shapedirs, const at::Tensor& J_regressor);

// (v_shaped (B, V * 3), columns (B, 3, V), joints (B, J, 3))
std::tuple<at::Tensor, at::Tensor, at::Tensor> shape_direct_forward_cpu(
    const at::Tensor& v_template, const at::Tensor& betas, const at::Tensor& shapedirs,
    const at::Tensor& J_regressor);

// (grad_betas, grad_template, grad_shapedirs, grad_regressor); undefined where `needs` (in that
// order) is false.
std::array<at::Tensor, 4> shape_direct_backward_cpu(
    const at::Tensor& grad_v_shaped, const at::Tensor& grad_joints, const at::Tensor& columns,
    const at::Tensor& v_template, const at::Tensor& betas, const at::Tensor& shapedirs,
    const at::Tensor& J_regressor, const std::array<bool, 4>& needs);

}  // namespace skinning
}  // namespace portrait_engine
