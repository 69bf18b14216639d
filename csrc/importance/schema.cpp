// Schemas of the importance-sampling and sample-merging kernels
// (contract: docs/kernel_contract_importance.md).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def("sample_importance(Tensor depths, Tensor weights, Tensor u, bool sort) -> Tensor");
  m.def("merge_samples_index(Tensor depths1, Tensor depths2) -> (Tensor, Tensor)");
  m.def(
      "merge_samples_scatter(Tensor values1, Tensor values2, Tensor positions1, "
      "Tensor positions2) -> Tensor");
  m.def(
      "merge_samples_gather(Tensor grad, Tensor positions1, Tensor positions2) -> "
      "(Tensor, Tensor)");
}
