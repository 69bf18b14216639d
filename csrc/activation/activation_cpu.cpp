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

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "activation/checks.h"
#include "cpu_math.h"
#include "rays/rays.h"

namespace portrait_engine {
namespace activation {
namespace {

using cpu_math::Isa;

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
template <typename scalar_t>
PE_TARGET_AVX2 void forward_range_avx2(const Args<scalar_t>& a, int64_t begin, int64_t end) {
  forward_range<scalar_t>(a, begin, end);
}
template <typename scalar_t>
PE_TARGET_AVX512 void forward_range_avx512(const Args<scalar_t>& a, int64_t begin, int64_t end) {
  forward_range<scalar_t>(a, begin, end);
}
template <typename scalar_t>
PE_TARGET_AVX2 void backward_range_avx2(const Args<scalar_t>& a, int64_t begin, int64_t end) {
  backward_range<scalar_t>(a, begin, end);
}
template <typename scalar_t>
PE_TARGET_AVX512 void backward_range_avx512(const Args<scalar_t>& a, int64_t begin,
                                            int64_t end) {
  backward_range<scalar_t>(a, begin, end);
}
#endif

template <typename scalar_t>
using RangeFn = void (*)(const Args<scalar_t>&, int64_t, int64_t);

template <typename scalar_t>
RangeFn<scalar_t> pick(bool backward) {
#if PE_HAVE_ISA_CLONES
  switch (cpu_math::cpu_isa()) {
    case Isa::kAvx512:
      return backward ? backward_range_avx512<scalar_t> : forward_range_avx512<scalar_t>;
    case Isa::kAvx2:
      return backward ? backward_range_avx2<scalar_t> : forward_range_avx2<scalar_t>;
    case Isa::kBaseline:
      break;
  }
#endif
  return backward ? backward_range<scalar_t> : forward_range<scalar_t>;
}

template <typename scalar_t>
void run(const Args<scalar_t>& a, int64_t n, bool backward) {
  const RangeFn<scalar_t> fn = pick<scalar_t>(backward);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { fn(a, begin, end); });
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
}
