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

// decoder_outputs: x (N, O), O >= 2; grad_sigma (N, 1) and grad_rgb (N, O - 1) like x.
inline void check_decoder_outputs(const at::Tensor& x, const KernelSide& side) {
  check_input(x, "x", x, side);
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 2, "decoder_outputs (", side.tag,
              "): x must be (N, 1 + C_out) with C_out >= 1, got ", x.sizes());
}

inline void check_decoder_outputs_backward(const at::Tensor& grad_sigma, const at::Tensor& grad_rgb,
                                           const at::Tensor& x, const KernelSide& side) {
  check_decoder_outputs(x, side);
  check_input(grad_sigma, "grad_sigma", x, side);
  check_input(grad_rgb, "grad_rgb", x, side);
  const int64_t n = x.size(0), o = x.size(1);
  TORCH_CHECK(grad_sigma.dim() == 2 && grad_sigma.size(0) == n && grad_sigma.size(1) == 1 &&
                  grad_rgb.dim() == 2 && grad_rgb.size(0) == n && grad_rgb.size(1) == o - 1 &&
                  grad_sigma.scalar_type() == x.scalar_type() &&
                  grad_rgb.scalar_type() == x.scalar_type(),
              "decoder_outputs (", side.tag, "): grad_sigma (N, 1) and grad_rgb (N, C_out) must "
              "match x ", x.sizes(), " ", x.scalar_type(), ", got ", grad_sigma.sizes(), " ",
              grad_sigma.scalar_type(), " and ", grad_rgb.sizes(), " ", grad_rgb.scalar_type());
}

}  // namespace activation
}  // namespace portrait_engine
