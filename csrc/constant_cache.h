// Small constant tensors kept per (dtype, device): made once instead of on every call (at::eye
// or at::zeros is an allocation and a kernel launch or two on a GPU on every call, and lbs is
// bound by such host-side work there). Each call site has its own cache (its own `make`
// lambda, so its own instantiation). Made on the CPU by `make(options)` and copied over with a
// blocking copy, so the values are in place before any stream reads them: the first fill must
// not happen while a CUDA stream is being captured (skin_points' reductions make a fresh tensor
// then; lbs's identity needs a warm-up call before a capture, as any warm-up does). Never freed
// (a CUDA tensor destroyed at exit could outlive its context). Callers must not write to them.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <mutex>
#include <tuple>

namespace portrait_engine {

template <typename Make>
const at::Tensor& cached_constant(const at::TensorOptions& like, Make make) {
  static std::mutex lock;
  static auto* cache = new std::map<std::tuple<int, int, int>, at::Tensor>();
  std::lock_guard<std::mutex> guard(lock);
  const auto key = std::make_tuple(static_cast<int>(like.dtype().toScalarType()),
                                   static_cast<int>(like.device().type()),
                                   static_cast<int>(like.device().index()));
  auto found = cache->find(key);
  if (found == cache->end()) {
    found = cache->emplace(key, make(like.device(at::kCPU)).to(like.device())).first;
  }
  return found->second;
}

}  // namespace portrait_engine
