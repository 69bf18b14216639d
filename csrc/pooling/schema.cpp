// Schemas of the attention_pool kernels (contract: docs/kernel_contract_attention_pool.md).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def("attention_pool_forward(Tensor features, Tensor scores) -> (Tensor, Tensor)");
  m.def(
      "attention_pool_backward(Tensor grad_out, Tensor features, Tensor scores, Tensor lse, "
      "Tensor out) -> (Tensor, Tensor)");
}
