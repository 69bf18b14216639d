// The reductions over points of skin_points' backward, as GEMMs on the host side, shared by
// skinning_cpu.cpp and skinning_cuda.cu. Their kernels write, per point, grad_points and dM:
// the gradient of the point's blended transform (its 12 top-row values), in the accumulation
// type. Then
//   grad_w[n, j] = sum_{b,k} dM[b, n, k] A[b, j, k]
//   grad_A[b, j, k] = sum_n w[n, j] dM[b, n, k]
// With shared weights ((1, N, J)) dM is point-major, (N, B, 12): both products are single
// GEMMs on its (N, B * 12) view. With batched weights it is (B, N, 12), and they are batched.
// No atomics: as deterministic as the BLAS / cuBLAS.
#pragma once

#include <ATen/ATen.h>

#include "constant_cache.h"

#include <tuple>

namespace portrait_engine {
namespace skinning {

// (grad_weights, grad_transforms) in the dtypes of weights and transforms. keep_zero_row:
// take the bottom rows' zeros from constant_cache.h (false while a CUDA stream is being
// captured: the cache's first fill is a blocking copy, which a capture does not allow).
inline std::tuple<at::Tensor, at::Tensor> skin_reductions(const at::Tensor& dM,
                                                         const at::Tensor& weights,
                                                         const at::Tensor& transforms,
                                                         bool keep_zero_row = true) {
  const int64_t B = transforms.size(0), J = transforms.size(1), N = weights.size(1);
  const at::Tensor top = transforms.narrow(2, 0, 3);  // (B, J, 3, 4), the 12 used values
  const at::Tensor W = weights.to(dM.scalar_type());
  at::Tensor grad_weights, grad_A;
  if (weights.size(0) == 1) {
    const at::Tensor dM_n = dM.view({N, B * 12});
    // Aᵀ as (B·12, J) in one copy (a GPU launch each: lbs is bound by host-side work there)
    const at::Tensor A_t = top.permute({0, 2, 3, 1}).reshape({B * 12, J}).to(dM.scalar_type());
    grad_weights = at::mm(dM_n, A_t).unsqueeze(0);
    grad_A = at::mm(W[0].t(), dM_n).view({J, B, 12}).permute({1, 0, 2});
  } else {
    const at::Tensor A12 = top.reshape({B, J, 12}).to(dM.scalar_type());
    grad_weights = at::bmm(dM, A12.transpose(1, 2));
    grad_A = at::bmm(W.transpose(1, 2), dM);
  }
  // the bottom rows' gradient is zero: one concatenation with a kept zero row (a GPU launch;
  // zeros and a copy into them were two)
  const auto make_row = [](const at::TensorOptions& options) {
    return at::zeros({1, 1, 1, 4}, options);
  };
  const at::Tensor zero_row =
      keep_zero_row ? cached_constant(dM.options(), make_row) : make_row(dM.options());
  const at::Tensor grad_transforms =
      at::cat({grad_A.reshape({B, J, 3, 4}), zero_row.expand({B, J, 1, 4})}, 2);
  return {grad_weights.to(weights.scalar_type()).contiguous(),
          grad_transforms.to(transforms.scalar_type())};
}

}  // namespace skinning
}  // namespace portrait_engine
