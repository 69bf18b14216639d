// Allocation of large CPU outputs that the kernel writes in full.
//
// Why: PyTorch's CPU allocator takes a large block straight from the kernel (glibc mmaps it and
// unmaps it on free), so every call of an op with a large output pays one page fault per 4 KiB
// on its first write. Measured on the 2-core x86 development machine (1 thread, 2026-11-26):
// a fresh 52 MB float32 tensor cost 25-30 ms to fill with 12.7k faults and 7 ms with 2 MiB
// transparent huge pages (409 faults), against 3.8 ms to copy into memory already mapped. The
// kernels of merge_samples write such outputs on every call, so the faults were most of their
// time; ray_march's colour gradient (50 MB at 64² rays x 96 samples x 32 channels) likewise
// (its 64x64x96 backward went from 34 to 12-18 ms, 1 thread, loaded machine). PyTorch offers the
// same hint process-wide (THP_MEM_ALLOC_ENABLE=1, which then helps
// the eager reference too); this header applies it to the outputs of the kernels that include it.
//
// madvise(MADV_HUGEPAGE) on the 2 MiB-aligned interior of a block that nothing has touched yet
// is only a hint: where transparent huge pages are off ("never") or the call fails, the memory
// stays 4 KiB pages and nothing else changes (same allocator, same accounting in the profiler).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "host.h"

namespace portrait_engine {

// Blocks below this size keep 4 KiB pages: a huge page is 2 MiB, and the aligned interior of a
// block under two of them holds at most one.
inline constexpr int64_t kHugePageAdviceBytes = int64_t(4) << 20;

// Ask for 2 MiB pages under the untouched memory of `t` (CPU, freshly allocated).
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const int64_t bytes = static_cast<int64_t>(t.nbytes());
  if (!t.device().is_cpu() || bytes < kHugePageAdviceBytes) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (last > first) {
    // the result is ignored on purpose: a refused hint leaves ordinary pages
    (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#else
  (void)t;
#endif
}

// new_output (host.h) for a floating-point CPU output the kernel writes in full: the huge-page
// hint is given before the NaN poison of the tests (or the kernel) first touches the memory.
inline at::Tensor new_large_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t);
  if (poison_outputs()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

}  // namespace portrait_engine
