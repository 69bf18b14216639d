// Host-side checks of the activation kernels, shared by the CPU and CUDA entry points. The
// public op (portrait_engine/ops/activation.py) validates and prepares the inputs; these only
// guard the kernel contract (contiguous floating tensors on the kernel's device).
#pragma once

#include <ATen/ATen.h>

#include "host.h"

namespace portrait_engine {
namespace activation {

inline void check_input(const at::Tensor& x, const char* name, const at::Tensor& ref,
                        const KernelSide& side) {
  TORCH_CHECK(on_side(x, ref, side), "softplus (", side.tag, "): ", name, " must be on ",
              ref.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "softplus (", side.tag, "): ", name,
              " must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "softplus (", side.tag, "): ", name, " must be contiguous");
}

inline void check_backward(const at::Tensor& grad, const at::Tensor& x, const KernelSide& side) {
  check_input(x, "x", x, side);
  check_input(grad, "grad", x, side);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(), "softplus (",
              side.tag, "): grad must have the shape and dtype of x, got ", grad.sizes(), " ",
              grad.scalar_type(), " for ", x.sizes(), " ", x.scalar_type());
}

}  // namespace activation
}  // namespace portrait_engine
