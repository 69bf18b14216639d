// Shared macros and declarations of the portrait_engine C++ / CUDA extension.
#pragma once

#include <cstdlib>
#include <string>

// HOST_DEVICE marks the inline math shared by the CPU (.cpp, host compiler) and CUDA (.cu,
// nvcc) kernels. PE_INLINE forces inlining on the device, where a call would spill its
// arguments to local memory.
#if defined(__CUDACC__)
#define HOST_DEVICE __host__ __device__
#define PE_INLINE __forceinline__
#else
#define HOST_DEVICE
#define PE_INLINE inline
#endif

// `#pragma omp simd` (reduction) on the CPU channel loops when OpenMP is on; nothing in nvcc's
// device pass or without OpenMP.
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define PE_PRAGMA(x) _Pragma(#x)
#define PE_SIMD PE_PRAGMA(omp simd)
#define PE_SIMD_SUM(var) PE_PRAGMA(omp simd reduction(+ : var))
#else
#define PE_SIMD
#define PE_SIMD_SUM(var)
#endif

namespace portrait_engine {

// PORTRAIT_ENGINE_POISON_OUTPUTS=1 (set by the tests): outputs that a kernel must write in full
// are filled with NaN first, so an element the kernel forgot shows up as NaN.
inline bool poison_outputs() {
  const char* value = std::getenv("PORTRAIT_ENGINE_POISON_OUTPUTS");
  return value != nullptr && value[0] == '1';
}

// "key=value;..." describing how the extension was built (csrc/ops.cpp).
std::string build_info();

#if defined(PORTRAIT_ENGINE_WITH_CUDA)
// Defined in csrc/triplane/triplane_cuda.cu (compiled by nvcc): "key=value;..." items that
// only nvcc knows (the CUDA runtime version the kernels were compiled against).
std::string cuda_build_info();
#endif

}  // namespace portrait_engine
