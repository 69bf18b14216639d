// The schemas of every native op of portrait_engine (one TORCH_LIBRARY block for the library).
// Device kernels register themselves with TORCH_LIBRARY_IMPL in their own files:
// csrc/triplane/triplane_cpu.cpp (CPU) and csrc/triplane/triplane_cuda.cu (CUDA).

#include <torch/headeronly/version.h>
#include <torch/library.h>

#include <sstream>
#include <string>

#include "common.h"

namespace portrait_engine {
namespace {

// "key=value;..." describing how the extension was built; parsed by
// portrait_engine._extension.build_info().
std::string build_info() {
  std::ostringstream s;
#if defined(PORTRAIT_ENGINE_WITH_CUDA)
  s << "cuda=1;" << cuda_build_info() << ";";
#else
  s << "cuda=0;";
#endif
#if defined(__clang__)
  s << "compiler=clang-" << __clang_major__ << "." << __clang_minor__ << "."
    << __clang_patchlevel__ << ";";
#elif defined(__GNUC__)
  s << "compiler=gcc-" << __GNUC__ << "." << __GNUC_MINOR__ << "." << __GNUC_PATCHLEVEL__ << ";";
#elif defined(_MSC_VER)
  s << "compiler=msvc-" << _MSC_VER << ";";
#else
  s << "compiler=unknown;";
#endif
#if defined(_OPENMP)
  s << "openmp=" << _OPENMP << ";";
#else
  s << "openmp=0;";
#endif
#if defined(TORCH_VERSION_MAJOR)
  s << "torch=" << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH
    << ";";
#else
  s << "torch=unknown;";
#endif
  s << "cxx_std=" << __cplusplus;
  return s.str();
}

}  // namespace
}  // namespace portrait_engine

TORCH_LIBRARY(portrait_engine, m) {
  m.def(
      "triplane_sample_forward(Tensor planes, Tensor points, Tensor proj, bool trilinear, "
      "bool reduce_mean, bool nan_propagate) -> Tensor");
  m.def(
      "triplane_sample_backward(Tensor grad_out, Tensor planes, Tensor points, Tensor proj, "
      "bool trilinear, bool reduce_mean, bool nan_propagate) -> (Tensor, Tensor)");
  m.def("attention_pool_forward(Tensor features, Tensor scores) -> (Tensor, Tensor)");
  m.def(
      "attention_pool_backward(Tensor grad_out, Tensor features, Tensor scores, Tensor lse, "
      "Tensor out) -> (Tensor, Tensor)");
  m.def("build_info() -> str", &portrait_engine::build_info);
}
