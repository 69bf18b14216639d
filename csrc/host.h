// Host-side helpers shared by every op family's CPU (*_cpu.cpp) and CUDA (*_cuda.cu) entry
// points: output allocation (NaN-poisoned under the tests), the accumulation dtype, and the
// device a kernel's tensors must live on. The per-family input checks (csrc/<family>/checks.h)
// are written once against these and called by both files, with the message tag ("cpu" or
// "cuda") and the device type of the caller.
#pragma once

#include <ATen/ATen.h>

#include <limits>

#include "common.h"

namespace portrait_engine {

// The side of the extension a check speaks for: the device type its tensors must be on, and
// the tag its messages carry ("ray_march (cpu): ...").
struct KernelSide {
  at::DeviceType type;
  const char* tag;
};
inline constexpr KernelSide kCpuSide{at::kCPU, "cpu"};
inline constexpr KernelSide kCudaSide{at::kCUDA, "cuda"};

// t lives on the side's device type and, on a GPU, on the same device as `ref`.
inline bool on_side(const at::Tensor& t, const at::Tensor& ref, const KernelSide& side) {
  return t.device().type() == side.type && t.device() == ref.device();
}

// The dtype the kernels accumulate in: double for double, float otherwise.
inline at::ScalarType acc_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// An output tensor the kernel writes in full. When the tests ask, it is poisoned first so an
// element the kernel forgot shows up: NaN for floating dtypes, the lowest value for integer
// ones (never a valid index, position or "no face" -1).
inline void poison_if_asked(at::Tensor& t) {
  if (poison_outputs()) {
    const at::ScalarType type = t.scalar_type();
    if (at::isFloatingType(type)) {
      t.fill_(std::numeric_limits<double>::quiet_NaN());
    } else if (type == at::kInt) {
      t.fill_(std::numeric_limits<int32_t>::min());
    } else {
      t.fill_(std::numeric_limits<int64_t>::min());
    }
  }
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  poison_if_asked(t);
  return t;
}

}  // namespace portrait_engine
