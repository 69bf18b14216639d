// CPU kernels of portrait_engine::softplus_{forward,backward} (contract:
// docs/kernel_contract_activation.md; per-element math: rays.h's softplus, the one ray_march
// uses).
//
// torch.nn.functional.softplus (beta 1, threshold 20) of EG3D's decoder, whose hidden layer
// (N samples x 64) makes it the renderer's largest element-wise cost: PyTorch's CPU kernel
// calls libm's exp and log1p per element. Here float (and half / bfloat16, computed in float)
// uses cpu_math::VectorMath's branch-free polynomial exp / log1p, so the loop vectorises; it is
// compiled for baseline x86-64, AVX2 and AVX-512 and picked at run time (cpu_math::cpu_isa(),
// capped by PORTRAIT_ENGINE_CPU_ISA). Double uses libm. at::parallel_for over blocks of
// elements: every element is independent, so the result does not depend on the threads.
//   forward:  y = x > 20 ? x : log1p(exp(x))
//   backward: dx = g · (x > 20 ? 1 : z / (z + 1)), z = exp(x)   (torch's softplus_backward)
//
// decoder_outputs_{forward,backward}: EG3D's OSGDecoder output head over rows x (N, 1 + Co):
// sigma = x[:, :1], rgb = sigmoid(x[:, 1:]) · (1 + 2·0.001) − 0.001 (render.h's rgb_of, the
// fused renderer's), and its backward dx = (g_sigma | g_rgb · (1 + 2·0.001) s (1 − s)): one
// pass each way where eager runs a split, a sigmoid, a multiply and a subtract (and their
// backward: a concatenation and three element-wise kernels). Same per-ISA loops, over rows.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "activation/checks.h"
#include "cpu_math.h"
#include "rays/rays.h"
#include "render/render.h"

namespace portrait_engine {
namespace activation {
namespace {

template <typename acc_t>
using MathOf =
    std::conditional_t<std::is_same_v<acc_t, float>, cpu_math::VectorMath, rays::LibMath>;

// Elements per parallel_for chunk: a few L1-sized blocks per task.
constexpr int64_t kGrain = 16384;

template <typename scalar_t>
struct Args {
  const scalar_t* x;
  const scalar_t* grad;  // backward only
  scalar_t* out;
};

template <typename scalar_t>
void forward_range(const Args<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* __restrict__ x = a.x;
  scalar_t* __restrict__ out = a.out;
  PE_SIMD
  for (int64_t i = begin; i < end; ++i) {
    const acc_t v = static_cast<acc_t>(x[i]);
    out[i] = static_cast<scalar_t>(rays::softplus<acc_t, MathOf<acc_t>>(v).value);
  }
}

template <typename scalar_t>
void backward_range(const Args<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* __restrict__ x = a.x;
  const scalar_t* __restrict__ grad = a.grad;
  scalar_t* __restrict__ out = a.out;
  PE_SIMD
  for (int64_t i = begin; i < end; ++i) {
    const acc_t v = static_cast<acc_t>(x[i]);
    const acc_t slope = rays::softplus<acc_t, MathOf<acc_t>>(v).grad;
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(grad[i]) * slope);
  }
}

// The same loops compiled for AVX2 and AVX-512 (flatten: the math inlined into the loop).
#if PE_HAVE_ISA_CLONES
PE_ISA_CLONES(forward_range, Args)
PE_ISA_CLONES(backward_range, Args)
#endif

template <typename scalar_t>
using RangeFn = void (*)(const Args<scalar_t>&, int64_t, int64_t);

template <typename scalar_t>
RangeFn<scalar_t> pick(bool backward) {
  return backward ? PE_ISA_PICK(backward_range, scalar_t) : PE_ISA_PICK(forward_range, scalar_t);
}

template <typename scalar_t>
void run(const Args<scalar_t>& a, int64_t n, bool backward) {
  const RangeFn<scalar_t> fn = pick<scalar_t>(backward);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { fn(a, begin, end); });
}

// ---- decoder_outputs ---------------------------------------------------------------------

template <typename scalar_t>
struct HeadArgs {
  const scalar_t* x;           // (N, O)
  const scalar_t* grad_sigma;  // (N, 1), backward
  const scalar_t* grad_rgb;    // (N, O - 1), backward
  scalar_t* sigma;             // forward
  scalar_t* rgb;               // forward
  scalar_t* grad_x;            // backward
  int64_t O;
};

// The sigmoid colour state s of a raw output (render.h's vocabulary) with the loop's exp.
template <typename acc_t>
inline acc_t sigmoid_state(acc_t v) {
  return acc_t(1) / (acc_t(1) + MathOf<acc_t>::exp(-v));
}

template <typename scalar_t>
void head_forward_range(const HeadArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t O = a.O, Co = O - 1;
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t* __restrict__ row = a.x + i * O;
    scalar_t* __restrict__ rgb = a.rgb + i * Co;
    a.sigma[i] = row[0];
    PE_SIMD
    for (int64_t c = 0; c < Co; ++c) {
      const acc_t state = sigmoid_state(static_cast<acc_t>(row[1 + c]));
      rgb[c] = static_cast<scalar_t>(render::rgb_of(state, render::kActSigmoid));
    }
  }
}

template <typename scalar_t>
void head_backward_range(const HeadArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t O = a.O, Co = O - 1;
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t* __restrict__ row = a.x + i * O;
    const scalar_t* __restrict__ g = a.grad_rgb + i * Co;
    scalar_t* __restrict__ out = a.grad_x + i * O;
    out[0] = a.grad_sigma[i];
    PE_SIMD
    for (int64_t c = 0; c < Co; ++c) {
      const acc_t state = sigmoid_state(static_cast<acc_t>(row[1 + c]));
      const acc_t slope = render::rgb_grad(state, render::kActSigmoid);
      out[1 + c] = static_cast<scalar_t>(static_cast<acc_t>(g[c]) * slope);
    }
  }
}

#if PE_HAVE_ISA_CLONES
PE_ISA_CLONES(head_forward_range, HeadArgs)
PE_ISA_CLONES(head_backward_range, HeadArgs)
#endif

template <typename scalar_t>
using HeadFn = void (*)(const HeadArgs<scalar_t>&, int64_t, int64_t);

template <typename scalar_t>
HeadFn<scalar_t> pick_head(bool backward) {
  return backward ? PE_ISA_PICK(head_backward_range, scalar_t)
                  : PE_ISA_PICK(head_forward_range, scalar_t);
}

template <typename scalar_t>
void run_head(const HeadArgs<scalar_t>& a, int64_t rows, bool backward) {
  const HeadFn<scalar_t> fn = pick_head<scalar_t>(backward);
  const int64_t grain = std::max<int64_t>(1, kGrain / a.O);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { fn(a, begin, end); });
}

std::tuple<at::Tensor, at::Tensor> decoder_outputs_forward_cpu(const at::Tensor& x) {
  check_decoder_outputs(x, kCpuSide);
  const int64_t rows = x.size(0), O = x.size(1);
  at::Tensor sigma = new_output({rows, 1}, x.options());
  at::Tensor rgb = new_output({rows, O - 1}, x.options());
  if (rows == 0) return {sigma, rgb};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "decoder_outputs_forward_cpu", [&] {
        HeadArgs<scalar_t> a{x.data_ptr<scalar_t>(), nullptr, nullptr,
                             sigma.data_ptr<scalar_t>(), rgb.data_ptr<scalar_t>(), nullptr, O};
        run_head<scalar_t>(a, rows, false);
      });
  return {sigma, rgb};
}

at::Tensor decoder_outputs_backward_cpu(const at::Tensor& grad_sigma, const at::Tensor& grad_rgb,
                                        const at::Tensor& x) {
  check_decoder_outputs_backward(grad_sigma, grad_rgb, x, kCpuSide);
  const int64_t rows = x.size(0), O = x.size(1);
  at::Tensor grad_x = new_output({rows, O}, x.options());
  if (rows == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "decoder_outputs_backward_cpu", [&] {
        HeadArgs<scalar_t> a{x.data_ptr<scalar_t>(),  grad_sigma.data_ptr<scalar_t>(),
                             grad_rgb.data_ptr<scalar_t>(), nullptr, nullptr,
                             grad_x.data_ptr<scalar_t>(), O};
        run_head<scalar_t>(a, rows, true);
      });
  return grad_x;
}

at::Tensor softplus_forward_cpu(const at::Tensor& x) {
  check_input(x, "x", x, kCpuSide);
  at::Tensor out = new_output(x.sizes(), x.options());
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softplus_forward_cpu",
                                  [&] {
                                    Args<scalar_t> a{x.data_ptr<scalar_t>(), nullptr,
                                                     out.data_ptr<scalar_t>()};
                                    run<scalar_t>(a, x.numel(), false);
                                  });
  return out;
}

at::Tensor softplus_backward_cpu(const at::Tensor& grad, const at::Tensor& x) {
  check_backward(grad, x, kCpuSide);
  at::Tensor out = new_output(x.sizes(), x.options());
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "softplus_backward_cpu", [&] {
        Args<scalar_t> a{x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                         out.data_ptr<scalar_t>()};
        run<scalar_t>(a, x.numel(), true);
      });
  return out;
}

}  // namespace
}  // namespace activation
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("softplus_forward", &portrait_engine::activation::softplus_forward_cpu);
  m.impl("softplus_backward", &portrait_engine::activation::softplus_backward_cpu);
  m.impl("decoder_outputs_forward", &portrait_engine::activation::decoder_outputs_forward_cpu);
  m.impl("decoder_outputs_backward", &portrait_engine::activation::decoder_outputs_backward_cpu);
}
