// The CPU twin of lbs's direct kernels (lbs_direct.h): the same per-thread functions and host
// driver as lbs_direct_cuda.cu, run in loops, so that the GPU's indexing and algebra are tested
// where there is no GPU (tests/ops/test_lbs_direct.py). Not a fast path: the CPU's own native
// lbs (lbs_fused.cpp and the kernels of skinning_cpu.cpp) is.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "skinning/lbs_direct.h"

namespace portrait_engine {
namespace skinning {
namespace direct {
namespace {

struct CpuExec {
  explicit CpuExec(const Tensor& /*like*/) {}

  template <class Term>
  void reduce(int64_t groups, const Term& term) {
    using T = typename Term::value_type;
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        T acc[Term::K] = {};
        for (int64_t i = 0; i < term.length(); ++i) term.add(g, i, acc);
        term.store(g, acc);
      }
    });
  }

  template <class Map>
  void map(int64_t count, const Map& fn) {
    at::parallel_for(0, count, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) fn(i);
    });
  }

  template <class F>
  void vertices(const Dims& d, const F& fn) {
    using T = typename F::value_type;
    std::vector<T> f(kBatchTile * d.P);
    for (int64_t b0 = 0; b0 < d.B; b0 += kBatchTile) {
      const int nb = static_cast<int>(std::min<int64_t>(kBatchTile, d.B - b0));
      fn.fill_features(b0, nb, f.data(), 0, 1, true);
      at::parallel_for(0, d.V, 256, [&](int64_t begin, int64_t end) {
        for (int64_t v = begin; v < end; ++v) fn(v, b0, nb, f.data());
      });
    }
  }
};

}  // namespace
}  // namespace direct
}  // namespace skinning
}  // namespace portrait_engine

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def(
      "lbs_direct_forward(Tensor betas, Tensor pose, Tensor v_template, Tensor shapedirs, "
      "Tensor posedirs, Tensor J_regressor, Tensor lbs_weights, Tensor parents, bool pose2rot, "
      "int route) -> (Tensor, Tensor, Tensor[])");
  m.def(
      "lbs_direct_backward(Tensor? grad_vertices, Tensor? grad_joints, Tensor betas, "
      "Tensor pose, Tensor v_template, Tensor shapedirs, Tensor posedirs, Tensor J_regressor, "
      "Tensor lbs_weights, Tensor parents, Tensor[] saved, bool pose2rot, int route, "
      "bool[7] needs) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  using portrait_engine::skinning::direct::CpuExec;
  m.impl("lbs_direct_forward", &portrait_engine::skinning::direct::forward_op<CpuExec>);
  m.impl("lbs_direct_backward", &portrait_engine::skinning::direct::backward_op<CpuExec>);
}
