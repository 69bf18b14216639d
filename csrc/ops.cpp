// The portrait_engine library: its one TORCH_LIBRARY block (build_info). Each op family
// declares its schemas with TORCH_LIBRARY_FRAGMENT in csrc/<family>/schema.cpp, and its device
// kernels register with TORCH_LIBRARY_IMPL in csrc/<family>/<family>_cpu.cpp and _cuda.cu.

#include <torch/headeronly/version.h>
#include <torch/library.h>

#include <sstream>
#include <string>

#include "common.h"

namespace portrait_engine {

// "key=value;..." describing how the extension was built; parsed by
// portrait_engine._extension.build_info() (read from the module constant _C.BUILD_INFO, which
// csrc/module.cpp fills from this function; the op below serves C++ and TorchScript callers).
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
#if defined(PE_NO_ISA_CLONES)
  s << "isa_clones=0;";  // CPU kernels for baseline x86-64 only (PORTRAIT_ENGINE_ISA_CLONES=0)
#else
  s << "isa_clones=1;";
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

}  // namespace portrait_engine

TORCH_LIBRARY(portrait_engine, m) {
  m.def("build_info() -> str", &portrait_engine::build_info);
}
