// CPU kernels of portrait_engine::shape_blend_{forward,backward}: lbs's shape blend shapes and
// the joint regressor's product (contract: docs/kernel_contract_skinning.md).
//
//   v_shaped[b] = T + S β_b                     (V, 3) per batch element; S = shapedirs (V, 3, NB)
//   regressed   = 𝒥 [T | S]                      (J, 3 + 3 NB); 𝒥 = J_regressor (J, V)
//
// lbs's joints are 𝒥 v_shaped[b] = regressed[:, :3] + (𝒥 S) β_b: the front end forms them from
// `regressed` with two small products (and autograd gives their gradients).
//
// Why a kernel: the front end ran these as a transposed copy of S, a sliced product, a
// concatenation [T | S] and two N = 33 BLAS products, and in the backward a transposed gradient
// and a strided sum of S's two gradients: 1.6-2.1 ms at B = 32 (2 threads, loaded machine) for
// ~75 MFLOP. Here each direction is one pass over blocks of kShapeBlock vertices (parallel),
// every product of a block a small dense one on the inputs in place (one transposed copy of the
// block's blend shapes each way):
//   forward:  v_shaped of the block (β S); the block's partial of regressed (𝒥 T, 𝒥 S).
//   backward: with g = grad_v_shaped and gR = grad_regressed,
//             grad_T = Σ_b g_b + (𝒥ᵀ gR)[:, :3]     grad_S = Σ_b g_b β_bᵀ + (𝒥ᵀ gR)[:, 3:]
//             grad_𝒥 = gR [T | S]ᵀ                  grad_β_b = Sᵀ g_b (a partial per block)
// Partials per block, summed in block order (the blocks do not depend on the thread count), no
// atomics. Float on an AVX-512 CPU runs register-tiled products, other types and CPUs plain
// loops (the capped ISA, PORTRAIT_ENGINE_CPU_ISA, included); half types are converted to fp32.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu_math.h"
#include "host.h"
#include "skinning/checks.h"
#include "skinning/lanes_avx512.h"
#include "skinning/shape_direct.h"
#include "skinning/tile_product.h"


namespace portrait_engine {
namespace skinning {
namespace {

// Vertices per block: 64 (192 columns of v_shaped) keeps a block's buffers (~40 KB in float at
// SMPL's NB = 10) within L1 and L2 while giving 108 blocks at SMPL's 6890 vertices.
constexpr int64_t kShapeBlock = 64;


// The kernels run on tensors in the accumulation type (float or double; half types are
// converted by the caller): the blocks' products read the inputs in place, with their strides.
template <typename acc_t>
struct ShapeArgs {
  const acc_t* tmpl;       // (V, 3)
  const acc_t* betas;      // (B, NB)
  const acc_t* dirs;       // (V * 3, NB)
  const acc_t* regressor;  // (J, V)
  const acc_t* grad_v;     // (B, V * 3), backward
  const acc_t* grad_reg;   // (J, M), backward
  acc_t* v_shaped;         // (B, V * 3), forward
  acc_t* partial;          // forward (blocks, J, Mp): regressed; backward (blocks, B, NBp): grad_β
  acc_t* grad_tmpl;        // (V, 3), backward
  acc_t* grad_dirs;        // (V * 3, NB), backward
  acc_t* grad_regressor;   // (J, V), backward
  int64_t B, NB, V, J;
  bool avx512;  // float on an AVX-512 CPU: the register-tiled products
};

// The blocks: kShapeBlock vertices from v0 = index * kShapeBlock, cols = 3 nv blend-shape columns.
struct Block {
  int64_t v0, nv, cols, colsp, nvp;
  Block(int64_t index, int64_t V)
      : v0(index * kShapeBlock), nv(std::min(kShapeBlock, V - index * kShapeBlock)),
        cols(3 * nv), colsp(padded(3 * nv)), nvp(padded(nv)) {}
};

// v_shaped rows of block k: T + β S, written in place (B rows of V * 3), through st (NB, colsp):
// the block's blend shapes by columns, st[l, c] = S[v0 * 3 + c, l], the product's right side
// (the one transposed copy of the forward). Returns the block's blend shapes in S.
template <typename Args>
const auto* shaped_block(const Args& a, const Block& k, decltype(a.v_shaped) st) {
  const int64_t NB = a.NB;
  const auto* s = a.dirs + k.v0 * 3 * NB;
  for (int64_t c = 0; c < k.cols; ++c) {
    for (int64_t l = 0; l < NB; ++l) st[l * k.colsp + c] = s[c * NB + l];
  }
  using acc_t = std::remove_const_t<std::remove_pointer_t<decltype(a.dirs)>>;
  product<acc_t>({a.B, NB, k.cols, NB, 1, k.colsp, 0, a.V * 3}, a.betas, st, a.tmpl + k.v0 * 3,
                 a.v_shaped + k.v0 * 3, a.avx512);
  return s;
}

template <typename acc_t>
void shape_forward_range(const ShapeArgs<acc_t>& a, int64_t begin, int64_t end) {
  const int64_t NB = a.NB, V = a.V, J = a.J, Mp = padded(3 + 3 * NB);
  std::vector<acc_t> st(NB * padded(3 * kShapeBlock));
  for (int64_t index = begin; index < end; ++index) {
    const Block k(index, V);
    const acc_t* s = shaped_block(a, k, st.data());
    // the block's partial of regressed = 𝒥 [T | S], (J, Mp): 𝒥 T and 𝒥 S side by side
    acc_t* part = a.partial + index * J * Mp;
    const acc_t* w = a.regressor + k.v0;
    product<acc_t>({J, k.nv, 3, V, 1, 3, 0, Mp}, w, a.tmpl + k.v0 * 3, nullptr, part, a.avx512);
    product<acc_t>({J, k.nv, 3 * NB, V, 1, 3 * NB, 0, Mp}, w, s, nullptr, part + 3, a.avx512);
  }
}

template <typename acc_t>
void shape_backward_range(const ShapeArgs<acc_t>& a, int64_t begin, int64_t end) {
  const int64_t B = a.B, NB = a.NB, V = a.V, J = a.J, M = 3 + 3 * NB, NBp = padded(NB);
  const int64_t colsp_max = padded(3 * kShapeBlock), nvp_max = padded(kShapeBlock);
  // ts (M, nvp): [T | S] of the block by values (m < 3: T[v, m]; then S[v, (m - 3) / NB,
  // (m - 3) % NB]), grad_𝒥's right side (the one transposed copy of the backward)
  std::vector<acc_t> ts(M * nvp_max), ones(B, acc_t(1)), gsum(colsp_max), gst(NB * colsp_max);
  std::vector<acc_t> jr(M * nvp_max), gw(J * nvp_max);
  for (int64_t index = begin; index < end; ++index) {
    const Block k(index, V);
    const acc_t* t = a.tmpl + k.v0 * 3;
    const acc_t* s = a.dirs + k.v0 * 3 * NB;
    for (int64_t v = 0; v < k.nv; ++v) {
      for (int64_t m = 0; m < 3; ++m) ts[m * k.nvp + v] = t[v * 3 + m];
      for (int64_t m = 0; m < 3 * NB; ++m) ts[(3 + m) * k.nvp + v] = s[v * 3 * NB + m];
    }
    const acc_t* g = a.grad_v + k.v0 * 3;
    // Σ_b g_b (1, cols) and Σ_b β_b g_bᵀ by columns (NB, cols)
    product<acc_t>({1, B, k.cols, 0, 1, V * 3, 0, k.colsp}, ones.data(), g, nullptr, gsum.data(),
                   a.avx512);
    product<acc_t>({NB, B, k.cols, 1, NB, V * 3, 0, k.colsp}, a.betas, g, nullptr, gst.data(),
                   a.avx512);
    // this block's partial of grad_β = g S, (B, NBp)
    product<acc_t>({B, k.cols, NB, V * 3, 1, NB, 0, NBp}, g, s, nullptr,
                   a.partial + index * B * NBp, a.avx512);
    // the regressor's side: jr = gRᵀ 𝒥[:, block] (M, nv) and grad_𝒥[:, block] = gR [T | S]ᵀ
    product<acc_t>({M, J, k.nv, 1, M, V, 0, k.nvp}, a.grad_reg, a.regressor + k.v0, nullptr,
                   jr.data(), a.avx512);
    product<acc_t>({J, M, k.nv, M, 1, k.nvp, 0, V}, a.grad_reg, ts.data(), nullptr,
                   a.grad_regressor + k.v0, a.avx512);
    for (int64_t v = 0; v < k.nv; ++v) {
      acc_t* gt = a.grad_tmpl + (k.v0 + v) * 3;
      acc_t* gs = a.grad_dirs + (k.v0 + v) * 3 * NB;
      for (int64_t c = 0; c < 3; ++c) {
        gt[c] = gsum[v * 3 + c] + jr[c * k.nvp + v];
        for (int64_t l = 0; l < NB; ++l) {
          gs[c * NB + l] = gst[l * k.colsp + v * 3 + c] + jr[(3 + c * NB + l) * k.nvp + v];
        }
      }
    }
  }
}

bool shape_avx512(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && cpu_math::cpu_isa() == cpu_math::Isa::kAvx512;
}

int64_t shape_blocks(int64_t V) { return (V + kShapeBlock - 1) / kShapeBlock; }

// The inputs in the accumulation type, contiguous (no copy for float and double).
std::vector<at::Tensor> in_acc(std::initializer_list<at::Tensor> tensors) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : tensors) out.push_back(t.to(acc_dtype(t)).contiguous());
  return out;
}

std::tuple<at::Tensor, at::Tensor> shape_blend_forward_cpu(const at::Tensor& v_template,
                                                           const at::Tensor& betas,
                                                           const at::Tensor& shapedirs,
                                                           const at::Tensor& regressor) {
  check_shape_blend(v_template, betas, shapedirs, regressor, kCpuSide);
  const int64_t B = betas.size(0), NB = betas.size(1), V = v_template.size(0);
  const int64_t J = regressor.size(0), M = 3 + 3 * NB, blocks = shape_blocks(V);
  const auto dtype = v_template.scalar_type();
  const auto acc = v_template.options().dtype(acc_dtype(v_template));
  at::Tensor v_shaped = new_output({B, V, 3}, acc);
  // each block writes the first M values of its J rows (the padding is never read)
  at::Tensor partial = at::empty({blocks, J, padded(M)}, acc);
  if (V > 0) {
    const auto in = in_acc({v_template, betas, shapedirs, regressor});
    AT_DISPATCH_FLOATING_TYPES(acc.dtype().toScalarType(), "shape_blend_forward_cpu", [&] {
      ShapeArgs<scalar_t> a{};
      a.tmpl = in[0].data_ptr<scalar_t>();
      a.betas = in[1].data_ptr<scalar_t>();
      a.dirs = in[2].data_ptr<scalar_t>();
      a.regressor = in[3].data_ptr<scalar_t>();
      a.v_shaped = v_shaped.data_ptr<scalar_t>();
      a.partial = partial.data_ptr<scalar_t>();
      a.B = B, a.NB = NB, a.V = V, a.J = J;
      a.avx512 = shape_avx512(v_shaped);
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        shape_forward_range(a, begin, end);
      });
    });
  }
  return {v_shaped.to(dtype), partial.narrow(2, 0, M).sum(0).to(dtype)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shape_blend_backward_cpu(
    const at::Tensor& grad_v_shaped, const at::Tensor& grad_regressed,
    const at::Tensor& v_template, const at::Tensor& betas, const at::Tensor& shapedirs,
    const at::Tensor& regressor) {
  check_shape_blend(v_template, betas, shapedirs, regressor, kCpuSide);
  check_shape_blend_grad(grad_v_shaped, grad_regressed, v_template, betas, regressor, kCpuSide);
  const int64_t B = betas.size(0), NB = betas.size(1), V = v_template.size(0);
  const int64_t J = regressor.size(0), blocks = shape_blocks(V);
  const auto dtype = v_template.scalar_type();
  const auto acc = v_template.options().dtype(acc_dtype(v_template));
  at::Tensor grad_tmpl = new_output(v_template.sizes(), acc);
  at::Tensor grad_dirs = new_output(shapedirs.sizes(), acc);
  at::Tensor grad_regressor = new_output(regressor.sizes(), acc);
  // each block writes the first NB values of its B rows (the padding is never read)
  at::Tensor partial = at::empty({blocks, B, padded(NB)}, acc);
  if (V > 0) {
    const auto in =
        in_acc({v_template, betas, shapedirs, regressor, grad_v_shaped, grad_regressed});
    AT_DISPATCH_FLOATING_TYPES(acc.dtype().toScalarType(), "shape_blend_backward_cpu", [&] {
      ShapeArgs<scalar_t> a{};
      a.tmpl = in[0].data_ptr<scalar_t>();
      a.betas = in[1].data_ptr<scalar_t>();
      a.dirs = in[2].data_ptr<scalar_t>();
      a.regressor = in[3].data_ptr<scalar_t>();
      a.grad_v = in[4].data_ptr<scalar_t>();
      a.grad_reg = in[5].data_ptr<scalar_t>();
      a.partial = partial.data_ptr<scalar_t>();
      a.grad_tmpl = grad_tmpl.data_ptr<scalar_t>();
      a.grad_dirs = grad_dirs.data_ptr<scalar_t>();
      a.grad_regressor = grad_regressor.data_ptr<scalar_t>();
      a.B = B, a.NB = NB, a.V = V, a.J = J;
      a.avx512 = shape_avx512(grad_tmpl);
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        shape_backward_range(a, begin, end);
      });
    });
  }
  return {grad_tmpl.to(dtype), partial.narrow(2, 0, NB).sum(0).to(dtype),
          grad_dirs.to(dtype), grad_regressor.to(dtype)};
}

// ------------------------------------------------------------------------------------------
// The direct route's passes (shape_direct.h): the blocks and products above, with the joints
// 𝒥 v_shaped per batch row in place of 𝒥 [T | S].
// ------------------------------------------------------------------------------------------

template <typename acc_t>
struct DirectArgs {
  const acc_t* tmpl;         // (V, 3)
  const acc_t* betas;        // (B, NB)
  const acc_t* dirs;         // (V * 3, NB)
  const acc_t* regressor;    // (J, V)
  const acc_t* grad_v;       // (B, V * 3), backward
  const acc_t* grad_joints;  // (B, J, 3), backward
  acc_t* v_shaped;           // (B, V * 3), forward
  acc_t* columns;            // (B, 3, V): written forward, read backward
  acc_t* partial;            // forward (blocks or slabs, B, J * 3): joints; backward: grad_β
  acc_t* grad_tmpl;          // (V, 3) or null
  acc_t* grad_dirs;          // (V * 3, NB) or null
  acc_t* grad_regressor;     // (J, V) or null
  int64_t B, NB, V, J;
  bool avx512;
};

// v_shaped rows of block k (shaped_block, st its buffer) and their copy by components into the
// columns (B, 3, V)
template <typename acc_t>
void shaped_columns_block(const DirectArgs<acc_t>& a, const Block& k, acc_t* st) {
  shaped_block(a, k, st);
  for (int64_t b = 0; b < a.B; ++b) {
    const acc_t* vs = a.v_shaped + b * a.V * 3 + k.v0 * 3;
    acc_t* col = a.columns + b * 3 * a.V + k.v0;
    for (int64_t v = 0; v < k.nv; ++v) {
      for (int64_t c = 0; c < 3; ++c) col[c * a.V + v] = vs[v * 3 + c];
    }
  }
}

template <typename acc_t>
void direct_forward_range(const DirectArgs<acc_t>& a, int64_t begin, int64_t end) {
  const int64_t B = a.B, NB = a.NB, V = a.V, J = a.J;
  std::vector<acc_t> st(NB * padded(3 * kShapeBlock));
  for (int64_t index = begin; index < end; ++index) {
    const Block k(index, V);
    shaped_columns_block(a, k, st.data());
    for (int64_t b = 0; b < B; ++b) {
      const acc_t* vs = a.v_shaped + b * V * 3 + k.v0 * 3;
      // the block's partial of the joints: 𝒥[:, block] (J, nv) x v_shaped_b (nv, 3)
      product<acc_t>({J, k.nv, 3, V, 1, 3, 0, 3}, a.regressor + k.v0, vs, nullptr,
                     a.partial + (index * B + b) * J * 3, a.avx512);
    }
  }
}

template <typename acc_t>
void direct_backward_range(const DirectArgs<acc_t>& a, int64_t begin, int64_t end) {
  const int64_t B = a.B, NB = a.NB, V = a.V, J = a.J, NBp = padded(NB);
  const int64_t colsp_max = padded(3 * kShapeBlock);
  // gt: the block's gradient reaching v_shaped, (B, 3 nv) by the block's columns
  std::vector<acc_t> gt(B * 3 * kShapeBlock), ones(B, acc_t(1)), gsum(colsp_max);
  for (int64_t index = begin; index < end; ++index) {
    const Block k(index, V);
    const acc_t* s = a.dirs + k.v0 * 3 * NB;
    for (int64_t b = 0; b < B; ++b) {
      // gt_b (nv, 3) = g_b (nv, 3) + 𝒥[:, block]ᵀ (nv, J) x gJ_b (J, 3)
      product<acc_t>({k.nv, J, 3, 1, V, 3, 3, 3}, a.regressor + k.v0, a.grad_joints + b * J * 3,
                     a.grad_v + b * V * 3 + k.v0 * 3, gt.data() + b * k.cols, a.avx512);
    }
    // this block's partial of grad_β = gt S, (B, NBp)
    product<acc_t>({B, k.cols, NB, k.cols, 1, NB, 0, NBp}, gt.data(), s, nullptr,
                   a.partial + index * B * NBp, a.avx512);
    if (a.grad_tmpl != nullptr || a.grad_dirs != nullptr) {
      // Σ_b gt_b (1, cols) and Σ_b β_b gt_bᵀ by columns (NB, cols)
      product<acc_t>({1, B, k.cols, 0, 1, k.cols, 0, k.colsp}, ones.data(), gt.data(), nullptr,
                     gsum.data(), a.avx512);
      if (a.grad_tmpl != nullptr) {
        std::copy(gsum.begin(), gsum.begin() + k.cols, a.grad_tmpl + k.v0 * 3);
      }
      if (a.grad_dirs != nullptr) {
        // grad_S rows of the block (cols, NB) = gtᵀ (cols, B) β (B, NB), in place
        product<acc_t>({k.cols, B, NB, 1, k.cols, NB, 0, NB}, gt.data(), a.betas, nullptr,
                       a.grad_dirs + k.v0 * 3 * NB, a.avx512);
      }
    }
    if (a.grad_regressor != nullptr) {
      // grad_𝒥[:, block] = Σ_b gJ_b (J, 3) x columns_b[:, block] (3, nv), b in order
      for (int64_t b = 0; b < B; ++b) {
        acc_t* out = a.grad_regressor + k.v0;
        product<acc_t>({J, 3, k.nv, 3, 1, V, b == 0 ? 0 : V, V}, a.grad_joints + b * J * 3,
                       a.columns + b * 3 * V + k.v0, b == 0 ? nullptr : out, out, a.avx512);
      }
    }
  }
}

#if PE_HAVE_ISA_CLONES
// The direct backward vectorised along vertices (float on an AVX-512 CPU), one slab of blocks
// (kDirectSlabs, below) per call, in groups of 16 vertices (the last group masked). Per batch
// row, three passes over the slab:
//   gt = g + 𝒥ᵀ gJ by components into a slab buffer (3 x the slab's vertices, ~10 KB at SMPL's
//   size, in L1): g's triples split, then J FMAs per component, each of 𝒥's rows read as one
//   run of the slab's width;
//   per group, gt's components joined into rows r = 3 v + c (three vectors of 48 values);
//   grad_T the rows; the group's blend shapes S[r, l] (row-major, NB values per row) are NB
//   whole vectors, lane i of vector k holding row (16 k + i) / NB and shape (16 k + i) % NB:
//   grad_S's NB vectors the rows permuted to those lanes times β's lanes; grad_β's partial the
//   same permuted rows times S's vectors, accumulated by lanes over the slab and summed by shape
//   at its end;
//   grad_𝒥[j, v] = Σ_c gJ[j, c] columns[c, v], each of grad_𝒥's rows written as one run.
// B > 1 adds each batch row's terms in order.
// The product-based backward above made ~6 small products per block on 3-wide tiles. Measured
// inside lbs_fused at SMPL's size, B = 1, cold inputs, 2 threads (2026-11-28, alternated in one
// process): 193-218 µs against 254-278 (four runs) with 𝒥's and grad_𝒥's rows swept once per
// 16-vertex group; 171-174 µs against 176-178 once per block of 64 vertices (256-byte runs;
// prefetching the next block's rows of 𝒥, grad_𝒥 and S measured 4-13 µs slower); 136-137 µs
// against 165-170 once per slab (~3.4 KB runs, the prefetchers' length: the same values to the
// bit, lbs fwd+bwd medians 2.091 / 2.072 / 2.087 -> 2.056 / 2.033 / 2.053 ms, three runs).
// The forward goes by the same slabs (direct_forward_slab_avx512).
struct ShapeLanes {
  std::vector<int32_t> row;    // NB x 16: (16 k + i) / NB, the row of lane i of vector k
  std::vector<int32_t> shape;  // NB x 16: (16 k + i) % NB
  explicit ShapeLanes(int64_t NB) : row(NB * 16), shape(NB * 16) {
    for (int64_t p = 0; p < NB * 16; ++p) {
      row[p] = static_cast<int32_t>(p / NB);
      shape[p] = static_cast<int32_t>(p % NB);
    }
  }
};

__attribute__((target("avx512f"))) void direct_backward_avx512(const DirectArgs<float>& a,
                                                              const ShapeLanes& lanes,
                                                              int64_t slab, int64_t begin,
                                                              int64_t end) {
  const int64_t B = a.B, NB = a.NB, V = a.V, J = a.J, NBp = padded(NB);
  const TripleIndices& t = triple_indices();
  // β's lanes per batch row: lane i of vector k is β_b[(16 k + i) % NB]
  std::vector<float> beta_lanes(B * NB * 16);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p = 0; p < NB * 16; ++p) {
      beta_lanes[b * NB * 16 + p] = a.betas[b * NB + lanes.shape[p]];
    }
  }
  std::vector<float> acc(B * NB * 16);  // grad_β's partial by (row, shape) lanes
  const int64_t v0 = begin * kShapeBlock, v1 = std::min(V, end * kShapeBlock), n = v1 - v0;
  const int64_t np = (n + 15) / 16 * 16;
  std::vector<float> gtc(3 * np);  // gt by components, (3, np)
  float* gc[3] = {gtc.data(), gtc.data() + np, gtc.data() + 2 * np};
  for (int64_t b = 0; b < B; ++b) {
    const float* gJ = a.grad_joints + b * J * 3;
    // gt = g + 𝒥ᵀ gJ by components over the slab: g's triples split, then 𝒥's rows as runs
    for (int64_t g0 = 0; g0 < n; g0 += 16) {
      __m512 gt[3];
      load_triples(t, a.grad_v + b * V * 3 + (v0 + g0) * 3, std::min<int64_t>(16, n - g0), gt);
      for (int c = 0; c < 3; ++c) _mm512_storeu_ps(gc[c] + g0, gt[c]);
    }
    for (int64_t j = 0; j < J; ++j) {
      const float* w = a.regressor + j * V + v0;
      const __m512 gx = _mm512_set1_ps(gJ[j * 3]), gy = _mm512_set1_ps(gJ[j * 3 + 1]),
                   gz = _mm512_set1_ps(gJ[j * 3 + 2]);
      for (int64_t g0 = 0; g0 < n; g0 += 16) {
        const __m512 wq = _mm512_maskz_loadu_ps(first_lanes(n - g0), w + g0);
        _mm512_storeu_ps(gc[0] + g0, _mm512_fmadd_ps(wq, gx, _mm512_loadu_ps(gc[0] + g0)));
        _mm512_storeu_ps(gc[1] + g0, _mm512_fmadd_ps(wq, gy, _mm512_loadu_ps(gc[1] + g0)));
        _mm512_storeu_ps(gc[2] + g0, _mm512_fmadd_ps(wq, gz, _mm512_loadu_ps(gc[2] + g0)));
      }
    }
    // per group: gt as rows, then grad_T, grad_S and grad_β's lanes
    for (int64_t g0 = 0; g0 < n; g0 += 16) {
      const int64_t count = std::min<int64_t>(16, n - g0);
      const __m512 gt[3] = {_mm512_loadu_ps(gc[0] + g0), _mm512_loadu_ps(gc[1] + g0),
                            _mm512_loadu_ps(gc[2] + g0)};
      __m512 rows[3];
      join_triples(t, gt, rows);
      for (int m = 0; m < 3; ++m) {
        const int64_t valid_rows = std::min<int64_t>(16, 3 * count - 16 * m);
        if (valid_rows <= 0) break;
        const int64_t r0 = (v0 + g0) * 3 + 16 * m;
        if (a.grad_tmpl != nullptr) {
          float* out = a.grad_tmpl + r0;
          const __mmask16 valid = first_lanes(valid_rows);
          const __m512 sum =
              b == 0 ? rows[m] : _mm512_add_ps(_mm512_maskz_loadu_ps(valid, out), rows[m]);
          _mm512_mask_storeu_ps(out, valid, sum);
        }
        const float* s = a.dirs + r0 * NB;
        float* gs = a.grad_dirs == nullptr ? nullptr : a.grad_dirs + r0 * NB;
        for (int64_t kk = 0; kk < NB; ++kk) {
          const __mmask16 valid = first_lanes(valid_rows * NB - 16 * kk);
          if (valid == 0) break;
          const __m512i row = _mm512_loadu_si512(lanes.row.data() + kk * 16);
          const __m512 g = _mm512_maskz_permutexvar_ps(0xffff, row, rows[m]);
          float* lane = acc.data() + (b * NB + kk) * 16;
          _mm512_storeu_ps(lane, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(valid, s + 16 * kk), g,
                                                 _mm512_loadu_ps(lane)));
          if (gs != nullptr) {
            const __m512 value =
                _mm512_mul_ps(g, _mm512_loadu_ps(beta_lanes.data() + (b * NB + kk) * 16));
            _mm512_mask_storeu_ps(
                gs + 16 * kk, valid,
                b == 0 ? value
                       : _mm512_add_ps(_mm512_maskz_loadu_ps(valid, gs + 16 * kk), value));
          }
        }
      }
    }
    if (a.grad_regressor != nullptr) {
      const float* cx = a.columns + b * 3 * V + v0;
      const float* cy = cx + V;
      const float* cz = cy + V;
      for (int64_t j = 0; j < J; ++j) {
        float* out = a.grad_regressor + j * V + v0;
        const __m512 gx = _mm512_set1_ps(gJ[j * 3]), gy = _mm512_set1_ps(gJ[j * 3 + 1]),
                     gz = _mm512_set1_ps(gJ[j * 3 + 2]);
        for (int64_t g0 = 0; g0 < n; g0 += 16) {
          const __mmask16 m = first_lanes(n - g0);
          __m512 value = _mm512_mul_ps(gx, _mm512_maskz_loadu_ps(m, cx + g0));
          value = _mm512_fmadd_ps(gy, _mm512_maskz_loadu_ps(m, cy + g0), value);
          value = _mm512_fmadd_ps(gz, _mm512_maskz_loadu_ps(m, cz + g0), value);
          if (b > 0) value = _mm512_add_ps(_mm512_maskz_loadu_ps(m, out + g0), value);
          _mm512_mask_storeu_ps(out + g0, m, value);
        }
      }
    }
  }
  // the slab's partial of grad_β: each (row, shape) lane summed into its shape, in order
  for (int64_t b = 0; b < B; ++b) {
    const float* lane = acc.data() + b * NB * 16;
    float* part = a.partial + (slab * B + b) * NBp;
    std::fill(part, part + NB, 0.f);
    for (int64_t p = 0; p < NB * 16; ++p) part[lanes.shape[p]] += lane[p];
  }
}
#endif

// The vectorised passes' slabs: fixed ranges of blocks (from V alone, not the thread count),
// kDirectSlabs of them, or one per block when fewer. The forward writes a partial of the joints
// per slab, the backward accumulates its partial of grad_β in vector lanes and sums them once at
// the slab's end; the caller sums the partials in slab order.
constexpr int64_t kDirectSlabs = 8;

#if PE_HAVE_ISA_CLONES
// The direct forward by slabs (float on an AVX-512 CPU): a slab's blocks as in
// direct_forward_range (v_shaped and its columns), then the slab's partial of the joints,
// joints[b, j, c] = Σ_v 𝒥[j, v] columns[b, c, v] over the slab's vertices, each of 𝒥's rows read
// as one run of the slab's width (~3.4 KB at SMPL's size) against the columns just written (in
// L1 / L2), three accumulators of 16 vertices per row. Per block (64 vertices), as the product
// form does, each of 𝒥's J rows is a 256-byte run, too short for the hardware prefetchers: timed
// inside lbs_fused at SMPL's size, B = 1, 2 threads, the forward took 90-92 µs by 8 or 4 slabs,
// 99 by 16, against 116-118 per block (2026-11-28, alternated in one process, three runs; lbs
// fwd+bwd medians 2.071 / 2.016 / 2.071 -> 2.043 / 1.982 / 2.042 ms).
__attribute__((target("avx512f"))) void direct_forward_slab_avx512(const DirectArgs<float>& a,
                                                                  int64_t slab, int64_t begin,
                                                                  int64_t end) {
  const int64_t B = a.B, NB = a.NB, V = a.V, J = a.J;
  std::vector<float> st(NB * padded(3 * kShapeBlock));
  for (int64_t index = begin; index < end; ++index) {
    shaped_columns_block(a, Block(index, V), st.data());
  }
  const int64_t v0 = begin * kShapeBlock, v1 = std::min(V, end * kShapeBlock), n = v1 - v0;
  for (int64_t b = 0; b < B; ++b) {
    const float* cx = a.columns + b * 3 * V + v0;
    const float* cy = cx + V;
    const float* cz = cy + V;
    float* part = a.partial + (slab * B + b) * J * 3;
    for (int64_t j = 0; j < J; ++j) {
      const float* w = a.regressor + j * V + v0;
      __m512 ax = _mm512_setzero_ps(), ay = _mm512_setzero_ps(), az = _mm512_setzero_ps();
      for (int64_t v = 0; v < n; v += 16) {
        const __mmask16 m = first_lanes(n - v);
        const __m512 wv = _mm512_maskz_loadu_ps(m, w + v);
        ax = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, cx + v), ax);
        ay = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, cy + v), ay);
        az = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, cz + v), az);
      }
      part[j * 3] = sum_lanes(ax);
      part[j * 3 + 1] = sum_lanes(ay);
      part[j * 3 + 2] = sum_lanes(az);
    }
  }
}
#endif

// Runs one direct pass over the blocks in parallel: slab(args, slab, first block, end block) over
// the kDirectSlabs slabs for float on an AVX-512 CPU (the vectorised passes), range(begin, end)
// over the blocks otherwise (the product-based ones). Returns how many partials the pass wrote
// (one per slab or per block: of the joints forward, of grad_β backward), for the caller to sum
// in order.
template <typename acc_t, typename Slab, typename Range>
int64_t run_direct(const DirectArgs<acc_t>& a, int64_t blocks, const Slab& slab,
                   const Range& range) {
#if PE_HAVE_ISA_CLONES
  if constexpr (std::is_same_v<acc_t, float>) {
    if (a.avx512) {
      const int64_t slabs = std::min(kDirectSlabs, blocks);
      at::parallel_for(0, slabs, 1, [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          slab(a, s, s * blocks / slabs, (s + 1) * blocks / slabs);
        }
      });
      return slabs;
    }
  }
#else
  (void)slab;
#endif
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) { range(begin, end); });
  return blocks;
}

template <typename acc_t>
int64_t run_direct_forward(const DirectArgs<acc_t>& a, int64_t blocks) {
  const auto slab = [](const auto& args, int64_t s, int64_t begin, int64_t end) {
#if PE_HAVE_ISA_CLONES
    direct_forward_slab_avx512(args, s, begin, end);
#else
    (void)args, (void)s, (void)begin, (void)end;
#endif
  };
  return run_direct(a, blocks, slab,
                    [&](int64_t begin, int64_t end) { direct_forward_range(a, begin, end); });
}

template <typename acc_t>
int64_t run_direct_backward(const DirectArgs<acc_t>& a, int64_t blocks) {
#if PE_HAVE_ISA_CLONES
  const ShapeLanes lanes(a.avx512 ? a.NB : 0);  // the (row, shape) lanes of the vectorised pass
#endif
  const auto slab = [&](const auto& args, int64_t s, int64_t begin, int64_t end) {
#if PE_HAVE_ISA_CLONES
    direct_backward_avx512(args, lanes, s, begin, end);
#else
    (void)args, (void)s, (void)begin, (void)end;
#endif
  };
  return run_direct(a, blocks, slab,
                    [&](int64_t begin, int64_t end) { direct_backward_range(a, begin, end); });
}

}  // namespace

// The sizes the passes index by (lbs validated them; lbs_fused's ops are public).
static void check_direct_sizes(const at::Tensor& v_template, const at::Tensor& betas,
                               const at::Tensor& shapedirs, const at::Tensor& regressor,
                               const char* name) {
  const int64_t NB = betas.size(1), V = v_template.size(0);
  TORCH_CHECK(v_template.size(1) == 3, name, ": v_template must be (V, 3), got ",
              v_template.sizes());
  TORCH_CHECK(shapedirs.dim() == 3 && shapedirs.size(0) == V && shapedirs.size(1) == 3 &&
                  shapedirs.size(2) == NB,
              name, ": shapedirs must be (", V, ", 3, ", NB, "), got ", shapedirs.sizes());
  TORCH_CHECK(regressor.dim() == 2 && regressor.size(1) == V, name,
              ": J_regressor must be (J, ", V, "), got ", regressor.sizes());
}

bool shape_direct_cpu_takes(const at::Tensor& betas, const at::Tensor& v_template,
                            const at::Tensor& shapedirs, const at::Tensor& J_regressor) {
  const auto dtype = betas.scalar_type();
  const bool cpu = betas.is_cpu() && v_template.is_cpu() && shapedirs.is_cpu() &&
                   J_regressor.is_cpu();
  return cpu && (dtype == at::kFloat || dtype == at::kDouble) &&
         v_template.scalar_type() == dtype && shapedirs.scalar_type() == dtype &&
         J_regressor.scalar_type() == dtype && v_template.dim() == 2 && betas.dim() == 2 &&
         betas.size(0) >= 1;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> shape_direct_forward_cpu(
    const at::Tensor& v_template_in, const at::Tensor& betas_in, const at::Tensor& shapedirs_in,
    const at::Tensor& regressor_in) {
  const at::Tensor v_template = v_template_in.contiguous(), betas = betas_in.contiguous(),
                   shapedirs = shapedirs_in.contiguous(), regressor = regressor_in.contiguous();
  const int64_t B = betas.size(0), NB = betas.size(1), V = v_template.size(0);
  const int64_t J = regressor.size(0), blocks = shape_blocks(V);
  check_direct_sizes(v_template, betas, shapedirs, regressor, "shape_direct_forward_cpu");
  const auto options = betas.options();
  at::Tensor v_shaped = new_output({B, V * 3}, options);
  at::Tensor columns = new_output({B, 3, V}, options);
  at::Tensor partial = at::empty({blocks, B, J * 3}, options);
  at::Tensor joints = at::zeros({B, J, 3}, options);
  if (V == 0) return {v_shaped, columns, joints};
  AT_DISPATCH_FLOATING_TYPES(betas.scalar_type(), "shape_direct_forward_cpu", [&] {
    DirectArgs<scalar_t> a{};
    a.tmpl = v_template.data_ptr<scalar_t>();
    a.betas = betas.data_ptr<scalar_t>();
    a.dirs = shapedirs.data_ptr<scalar_t>();
    a.regressor = regressor.data_ptr<scalar_t>();
    a.v_shaped = v_shaped.data_ptr<scalar_t>();
    a.columns = columns.data_ptr<scalar_t>();
    a.partial = partial.data_ptr<scalar_t>();
    a.B = B, a.NB = NB, a.V = V, a.J = J;
    a.avx512 = shape_avx512(betas);
    const int64_t parts = run_direct_forward(a, blocks);
    // the partials in order
    scalar_t* out = joints.data_ptr<scalar_t>();
    const scalar_t* part = a.partial;
    for (int64_t index = 0; index < parts; ++index) {
      for (int64_t i = 0; i < B * J * 3; ++i) out[i] += part[index * B * J * 3 + i];
    }
  });
  return {v_shaped, columns, joints};
}

std::array<at::Tensor, 4> shape_direct_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& grad_joints_in, const at::Tensor& columns_in,
    const at::Tensor& v_template, const at::Tensor& betas_in, const at::Tensor& shapedirs_in,
    const at::Tensor& regressor_in, const std::array<bool, 4>& needs) {
  const at::Tensor grad = grad_in.contiguous(), grad_joints = grad_joints_in.contiguous(),
                   columns = columns_in.contiguous(), betas = betas_in.contiguous(),
                   shapedirs = shapedirs_in.contiguous(), regressor = regressor_in.contiguous();
  const int64_t B = betas.size(0), NB = betas.size(1), V = v_template.size(0);
  const int64_t J = regressor.size(0), blocks = shape_blocks(V), NBp = padded(NB);
  const char* name = "shape_direct_backward_cpu";
  check_direct_sizes(v_template, betas, shapedirs, regressor, name);
  // the gradients and the saved columns: lbs_fused_backward's arguments, from Python
  TORCH_CHECK(grad.numel() == B * V * 3, name, ": grad_v_shaped must have ", B * V * 3,
              " values (B, V * 3), got ", grad_in.sizes());
  TORCH_CHECK(grad_joints.numel() == B * J * 3, name, ": grad_joints must be (", B, ", ", J,
              ", 3), got ", grad_joints_in.sizes());
  TORCH_CHECK(columns.sizes() == at::IntArrayRef({B, 3, V}), name,
              ": saved columns must be (", B, ", 3, ", V, "), got ", columns_in.sizes());
  TORCH_CHECK(grad.scalar_type() == betas.scalar_type() &&
                  grad_joints.scalar_type() == betas.scalar_type() &&
                  columns.scalar_type() == betas.scalar_type(),
              name, ": the gradients and saved columns must be ", betas.scalar_type());
  const auto options = betas.options();
  std::array<at::Tensor, 4> out;
  if (needs[1]) out[1] = new_output(v_template.sizes(), options);
  if (needs[2]) out[2] = new_output(shapedirs.sizes(), options);
  if (needs[3]) out[3] = new_output(regressor.sizes(), options);
  at::Tensor grad_betas = at::zeros({B, NB}, options);
  if (V > 0) {
    // each block (or slab: run_direct_backward) writes the first NB values of its B rows (the
    // padding is never read)
    at::Tensor partial = at::empty({blocks, B, NBp}, options);
    AT_DISPATCH_FLOATING_TYPES(betas.scalar_type(), "shape_direct_backward_cpu", [&] {
      DirectArgs<scalar_t> a{};
      a.betas = betas.data_ptr<scalar_t>();
      a.dirs = shapedirs.data_ptr<scalar_t>();
      a.regressor = regressor.data_ptr<scalar_t>();
      a.grad_v = grad.data_ptr<scalar_t>();
      a.grad_joints = grad_joints.data_ptr<scalar_t>();
      a.columns = columns.data_ptr<scalar_t>();
      a.partial = partial.data_ptr<scalar_t>();
      a.grad_tmpl = needs[1] ? out[1].data_ptr<scalar_t>() : nullptr;
      a.grad_dirs = needs[2] ? out[2].data_ptr<scalar_t>() : nullptr;
      a.grad_regressor = needs[3] ? out[3].data_ptr<scalar_t>() : nullptr;
      a.B = B, a.NB = NB, a.V = V, a.J = J;
      a.avx512 = shape_avx512(betas);
      const int64_t parts = run_direct_backward(a, blocks);
      scalar_t* gb = grad_betas.data_ptr<scalar_t>();
      for (int64_t index = 0; index < parts; ++index) {
        for (int64_t b = 0; b < B; ++b) {
          for (int64_t l = 0; l < NB; ++l) gb[b * NB + l] += a.partial[(index * B + b) * NBp + l];
        }
      }
    });
  }
  if (needs[0]) out[0] = grad_betas;
  return out;
}

}  // namespace skinning
}  // namespace portrait_engine

TORCH_LIBRARY_IMPL(portrait_engine, CPU, m) {
  m.impl("shape_blend_forward", &portrait_engine::skinning::shape_blend_forward_cpu);
  m.impl("shape_blend_backward", &portrait_engine::skinning::shape_blend_backward_cpu);
}
