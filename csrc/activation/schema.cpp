// Schemas of the decoder's element-wise activation kernels (softplus, the output head) (contract:
// docs/kernel_contract_activation.md).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def("softplus_forward(Tensor x) -> Tensor");
  m.def("softplus_backward(Tensor grad, Tensor x) -> Tensor");
  m.def("decoder_outputs_forward(Tensor x) -> (Tensor, Tensor)");
  m.def("decoder_outputs_backward(Tensor grad_sigma, Tensor grad_rgb, Tensor x) -> Tensor");
}
