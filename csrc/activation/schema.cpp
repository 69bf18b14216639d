// Schemas of the decoder's element-wise activation kernels (contract:
// docs/kernel_contract_activation.md).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def("softplus_forward(Tensor x) -> Tensor");
  m.def("softplus_backward(Tensor grad, Tensor x) -> Tensor");
}
