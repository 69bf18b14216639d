// CUDA kernels of portrait_engine::softplus_{forward,backward} (contract:
// docs/kernel_contract_activation.md; per-element math: rays.h's softplus with CUDA's exp and
// log1p, the one ray_march uses), and of decoder_outputs_{forward,backward} (EG3D's output head:
// sigma = x[:, :1], rgb = render.h's rgb_of(sigmoid(x[:, 1:]))). One thread per element,
// grid-stride, computed in the accumulation type (float for half / bfloat16).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "activation/checks.h"
#include "rays/rays.h"
#include "render/render.h"

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

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    decoder_outputs_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ sigma,
                                   scalar_t* __restrict__ rgb, int64_t n, int64_t O) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n;
       e += stride) {
    const int64_t i = e / O, c = e % O;
    if (c == 0) {
      sigma[i] = x[e];
    } else {
      const acc_t state = render::sigmoid_of(static_cast<acc_t>(x[e]));
      rgb[i * (O - 1) + c - 1] =
          static_cast<scalar_t>(render::rgb_of(state, render::kActSigmoid));
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    decoder_outputs_backward_kernel(const scalar_t* __restrict__ grad_sigma,
                                    const scalar_t* __restrict__ grad_rgb,
                                    const scalar_t* __restrict__ x,
                                    scalar_t* __restrict__ grad_x, int64_t n, int64_t O) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n;
       e += stride) {
    const int64_t i = e / O, c = e % O;
    if (c == 0) {
      grad_x[e] = grad_sigma[i];
    } else {
      const acc_t state = render::sigmoid_of(static_cast<acc_t>(x[e]));
      const acc_t slope = render::rgb_grad(state, render::kActSigmoid);
      grad_x[e] = static_cast<scalar_t>(static_cast<acc_t>(grad_rgb[i * (O - 1) + c - 1]) * slope);
    }
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

std::tuple<at::Tensor, at::Tensor> decoder_outputs_forward_cuda(const at::Tensor& x) {
  check_decoder_outputs(x, kCudaSide);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), O = x.size(1), n = x.numel();
  at::Tensor sigma = new_output({rows, 1}, x.options());
  at::Tensor rgb = new_output({rows, O - 1}, x.options());
  if (n == 0) return {sigma, rgb};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "decoder_outputs_forward_cuda", [&] {
        decoder_outputs_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), sigma.data_ptr<scalar_t>(), rgb.data_ptr<scalar_t>(), n, O);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {sigma, rgb};
}

at::Tensor decoder_outputs_backward_cuda(const at::Tensor& grad_sigma, const at::Tensor& grad_rgb,
                                         const at::Tensor& x) {
  check_decoder_outputs_backward(grad_sigma, grad_rgb, x, kCudaSide);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t O = x.size(1), n = x.numel();
  at::Tensor grad_x = new_output(x.sizes(), x.options());
  if (n == 0) return grad_x;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "decoder_outputs_backward_cuda", [&] {
        decoder_outputs_backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
            grad_sigma.data_ptr<scalar_t>(), grad_rgb.data_ptr<scalar_t>(),
            x.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), n, O);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_x;
}

}  // namespace
}  // namespace activation
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CUDA, m) {
  m.impl("softplus_forward", &portrait_engine::activation::softplus_forward_cuda);
  m.impl("softplus_backward", &portrait_engine::activation::softplus_backward_cuda);
  m.impl("decoder_outputs_forward", &portrait_engine::activation::decoder_outputs_forward_cuda);
  m.impl("decoder_outputs_backward", &portrait_engine::activation::decoder_outputs_backward_cuda);
}
