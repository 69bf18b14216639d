// Host-side input checks of the importance-sampling and merge kernels, shared by
// importance_cpu.cpp and importance_cuda.cu (which pass their KernelSide). The public ops
// validate user input with clear errors; these guard the kernels' own contract against direct
// callers.
#pragma once

#include <ATen/ATen.h>

#include "host.h"

namespace portrait_engine {
namespace importance {

inline void check_contiguous(const at::Tensor& t, const char* name, int64_t dim,
                             const at::Tensor& ref, const KernelSide& side) {
  TORCH_CHECK(on_side(t, ref, side) && t.is_contiguous() && t.dim() == dim, "importance (",
              side.tag, "): ", name, " must be a contiguous ", side.tag, " tensor of rank ", dim,
              " on ", ref.device());
}

inline void check_sample_importance(const at::Tensor& depths, const at::Tensor& weights,
                                    const at::Tensor& u, const KernelSide& side) {
  check_contiguous(depths, "depths", 2, depths, side);
  check_contiguous(weights, "weights", 2, depths, side);
  check_contiguous(u, "u", 2, depths, side);
  const int64_t rays = depths.size(0), samples = depths.size(1);
  TORCH_CHECK(samples >= 4 && weights.size(0) == rays && weights.size(1) == samples - 1 &&
                  u.size(0) == rays,
              "sample_importance (", side.tag,
              "): expected depths (N, S >= 4), weights (N, S-1), u (N, n)");
  TORCH_CHECK(weights.scalar_type() == depths.scalar_type() && u.scalar_type() == at::kFloat,
              "sample_importance (", side.tag,
              "): weights must have the dtype of depths, u must be float32");
}

inline void check_merge_index(const at::Tensor& depths1, const at::Tensor& depths2,
                              const KernelSide& side) {
  check_contiguous(depths1, "depths1", 2, depths1, side);
  check_contiguous(depths2, "depths2", 2, depths1, side);
  TORCH_CHECK(depths1.size(0) == depths2.size(0) &&
                  depths1.scalar_type() == depths2.scalar_type(),
              "merge_samples_index (", side.tag, "): depths1 and depths2 must share N and dtype");
}

inline void check_positions(const at::Tensor& positions, int64_t rays, int64_t count,
                            const at::Tensor& ref, const char* name, const KernelSide& side) {
  TORCH_CHECK(on_side(positions, ref, side) && positions.is_contiguous() && positions.dim() == 2 &&
                  positions.size(0) == rays && positions.size(1) == count &&
                  positions.scalar_type() == at::kInt,
              "merge_samples (", side.tag, "): ", name,
              " must be the contiguous int32 (N, S) positions");
}

inline void check_merge_scatter(const at::Tensor& values1, const at::Tensor& values2,
                                const at::Tensor& positions1, const at::Tensor& positions2,
                                const KernelSide& side) {
  check_contiguous(values1, "values1", 3, values1, side);
  check_contiguous(values2, "values2", 3, values1, side);
  const int64_t rays = values1.size(0);
  TORCH_CHECK(values2.size(0) == rays && values2.size(2) == values1.size(2) &&
                  values2.scalar_type() == values1.scalar_type(),
              "merge_samples_scatter (", side.tag,
              "): values1 and values2 must share N, C and dtype");
  check_positions(positions1, rays, values1.size(1), values1, "positions1", side);
  check_positions(positions2, rays, values2.size(1), values1, "positions2", side);
}

inline void check_merge_gather(const at::Tensor& grad, const at::Tensor& positions1,
                               const at::Tensor& positions2, const KernelSide& side) {
  check_contiguous(grad, "grad", 3, grad, side);
  const int64_t rays = grad.size(0);
  TORCH_CHECK(positions1.dim() == 2 && positions2.dim() == 2 &&
                  positions1.size(1) + positions2.size(1) == grad.size(1),
              "merge_samples_gather (", side.tag, "): grad must hold S1 + S2 samples per ray");
  check_positions(positions1, rays, positions1.size(1), grad, "positions1", side);
  check_positions(positions2, rays, positions2.size(1), grad, "positions2", side);
}

}  // namespace importance
}  // namespace portrait_engine
