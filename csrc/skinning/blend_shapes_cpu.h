// Constants of the CPU blend_shapes kernel (skinning_cpu.cpp) that Python needs too: the module
// init (csrc/module.cpp) publishes them as portrait_engine._C constants, so the front end
// (portrait_engine/ops/skinning.py) reads the kernel's own value instead of a copy.
#pragma once

#include <cstdint>

namespace portrait_engine {
namespace skinning {

// From this batch the CPU kernel splits its products into column slices; below it the products
// are matrix-vector-like and memory-bound, and one BLAS call each is faster than the slices'
// many calls (measured at B = 1 and 32; the crossover is rough). lbs's front end passes the
// shape blend shapes as (NB, V * 3) rows for the sliced path from the same batch
// (_C.CPU_SLICED_BLEND_BATCH).
inline constexpr int64_t kBlendSliceMinBatch = 8;

}  // namespace skinning
}  // namespace portrait_engine
