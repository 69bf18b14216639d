// Large CPU outputs from a small cache of blocks that stay mapped (contract:
// docs/kernel_contract_skinning.md, "Large CPU outputs").
//
// Why: glibc serves a block of many MB from the top of the heap or from mmap and gives it back
// to the kernel when it is freed (heap trim, munmap), so an op that returns such a tensor every
// step, freed by the next step's `zero_grad(set_to_none=True)`, pays a page fault and the
// zeroing of a page per 4 KiB on its first write every time. lbs's 17 MB grad_posedirs at SMPL's
// size did: 500-1300 faults per step at B = 1 on the 2-core Zen 4, and when the host's page
// faults were slow the blend backward took 1.45-1.88 ms in the lbs loop against 0.71 ms with the
// faults removed (2026-11-28). Here a freed block of at least kCachedOutputMinBytes goes back to
// a cache instead (at most cached_output_limit() bytes of idle blocks, PORTRAIT_ENGINE_CPU_CACHE_MB
// sets it, 0 turns the cache off) and the next request of the same rounded size takes it, with
// its pages still mapped. The blocks are reported to the profiler as PyTorch's CPU allocator
// reports its own (profiledCPUMemoryReporter), so memory profiles count them while a tensor
// holds them. portrait_engine::cpu_output_cache() reports the cache (blocks and bytes idle) and
// cpu_output_cache_clear() frees its idle blocks (portrait_engine.ops.empty_cpu_cache()).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace portrait_engine {

// Outputs below this size come from at::empty as before (glibc keeps small blocks mapped).
inline constexpr int64_t kCachedOutputMinBytes = int64_t(1) << 20;

// An uninitialised CPU tensor for an output the kernel writes in full (NaN-poisoned under the
// tests, as new_output): from the cache from kCachedOutputMinBytes on, at::empty below it or
// with the cache off.
at::Tensor new_cached_output(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace portrait_engine
