// Large CPU outputs backed by transparent huge pages.
//
// A kernel output of tens of MB (ray_march's colour gradient: 50 MB at 64² rays × 96 samples ×
// 32 channels) is fresh memory on every call: glibc maps it anew, and the kernel's first writes
// fault it in 4 KiB at a time. On the project's machines that costs more than the kernel itself
// (50 MB: empty + fill 22-28 ms, of which the fill alone is 2.4 ms; with the advice below
// 6.2-6.5 ms; 1 thread, loaded machine). Where the system's THP mode is `madvise` (the usual
// default), madvise(MADV_HUGEPAGE) on the 2 MiB-aligned inside of the buffer, before anything
// writes it, lets the kernel fault it in 2 MiB pages. It is advice only: any failure (another
// OS, THP off, memory already touched) leaves an ordinary tensor.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

#include "host.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace portrait_engine {

constexpr int64_t kHugePageBytes = int64_t(2) << 20;

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(t.nbytes());
  const uintptr_t mask = static_cast<uintptr_t>(kHugePageBytes - 1);
  const uintptr_t first = (begin + mask) & ~mask, last = end & ~mask;
  if (last > first) {
    (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice only
  }
#else
  (void)t;
#endif
}

// new_output (NaN-poisoned under the tests) for a floating-point output the kernel writes in
// full, advised to huge pages when it spans at least two of them.
inline at::Tensor new_large_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (static_cast<int64_t>(t.nbytes()) >= 2 * kHugePageBytes) advise_huge_pages(t);
  if (poison_outputs()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

}  // namespace portrait_engine
