// CUDA kernels of portrait_engine::softplus_{forward,backward} (contract:
// docs/kernel_contract_activation.md; per-element math: rays.h's softplus with CUDA's exp and
// log1p, the one ray_march uses). One thread per element, grid-stride, computed in the
// accumulation type (float for half / bfloat16).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>

#include "activation/checks.h"
#include "rays/rays.h"

namespace portrait_engine {
namespace activation {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    softplus_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                            int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += stride) {
    out[i] = static_cast<scalar_t>(rays::softplus<acc_t>(static_cast<acc_t>(x[i])).value);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    softplus_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                             scalar_t* __restrict__ out, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += stride) {
    const acc_t slope = rays::softplus<acc_t>(static_cast<acc_t>(x[i])).grad;
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(grad[i]) * slope);
  }
}

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

at::Tensor softplus_forward_cuda(const at::Tensor& x) {
  check_input(x, "x", x, kCudaSide);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = new_output(x.sizes(), x.options());
  const int64_t n = x.numel();
  if (n == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "softplus_forward_cuda", [&] {
        softplus_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

at::Tensor softplus_backward_cuda(const at::Tensor& grad, const at::Tensor& x) {
  check_backward(grad, x, kCudaSide);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = new_output(x.sizes(), x.options());
  const int64_t n = x.numel();
  if (n == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "softplus_backward_cuda", [&] {
        softplus_backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
            grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

}  // namespace
}  // namespace activation
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  m.impl("softplus_forward", &portrait_engine::activation::softplus_forward_cuda);
  m.impl("softplus_backward", &portrait_engine::activation::softplus_backward_cuda);
}
