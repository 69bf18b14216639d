// Host-side input checks of the attention_pool kernels, shared by attention_pool_cpu.cpp and
// attention_pool_cuda.cu (which pass their KernelSide). The public op validates user input
// with clear errors; these guard the kernels' own contract against direct callers.
#pragma once

#include <ATen/ATen.h>

#include "host.h"

namespace portrait_engine {
namespace pooling {

struct Sizes {
  int64_t B, C, K, L;
  int64_t sb, sc, sl;  // strides of features (B, C, L)
  bool channels_last;  // stride_c == 1 and C > 1: the channel vector of a position is contiguous
};

inline Sizes check_inputs(const at::Tensor& features, const at::Tensor& scores,
                          const KernelSide& side) {
  TORCH_CHECK(features.dim() == 3, "attention_pool (", side.tag, "): features must be (B, C, L)");
  TORCH_CHECK(scores.dim() == 3, "attention_pool (", side.tag, "): scores must be (B, K, L)");
  TORCH_CHECK(features.size(0) == scores.size(0) && features.size(2) == scores.size(2),
              "attention_pool (", side.tag, "): features and scores disagree on B or L");
  TORCH_CHECK(scores.is_contiguous(), "attention_pool (", side.tag,
              "): scores must be contiguous");
  TORCH_CHECK(scores.scalar_type() == features.scalar_type(), "attention_pool (", side.tag,
              "): dtype mismatch");
  TORCH_CHECK(on_side(features, features, side) && on_side(scores, features, side),
              "attention_pool (", side.tag, "): tensors must be on one ", side.tag, " device");
  Sizes z;
  z.B = features.size(0);
  z.C = features.size(1);
  z.L = features.size(2);
  z.K = scores.size(1);
  z.sb = features.stride(0);
  z.sc = features.stride(1);
  z.sl = features.stride(2);
  z.channels_last = z.sc == 1 && z.C > 1;
  return z;
}

// The backward's output gradient and the forward's saved outputs.
inline void check_backward(const at::Tensor& grad_out, const at::Tensor& lse,
                           const at::Tensor& out, const at::Tensor& features, const Sizes& z,
                           const KernelSide& side) {
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == z.B && grad_out.size(1) == z.K &&
                  grad_out.size(2) == z.C && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == features.scalar_type() &&
                  on_side(grad_out, features, side),
              "attention_pool (", side.tag,
              "): grad_out must be a contiguous (B, K, C) tensor in the input dtype and device");
  TORCH_CHECK(out.sizes() == grad_out.sizes() && out.is_contiguous() &&
                  out.scalar_type() == features.scalar_type() && on_side(out, features, side),
              "attention_pool (", side.tag,
              "): out must be the forward's contiguous (B, K, C) output");
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == z.B && lse.size(1) == z.K && lse.is_contiguous() &&
                  lse.scalar_type() == acc_dtype(features) && on_side(lse, features, side),
              "attention_pool (", side.tag, "): lse must be the forward's contiguous (B, K) output");
}

}  // namespace pooling
}  // namespace portrait_engine
