// The cache of large CPU output blocks (output_cache.h says why).

#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "host.h"

namespace portrait_engine {
namespace {

constexpr size_t kBlockAlignment = 64;                // as PyTorch's CPU allocator (gAlignment)
constexpr size_t kSizeGranularity = size_t(64) << 10;  // blocks rounded up to 64 KiB
constexpr int64_t kDefaultLimitMiB = 256;

// Idle bytes the cache may hold: PORTRAIT_ENGINE_CPU_CACHE_MB (read once), else 256 MiB.
size_t cached_output_limit() {
  static const size_t limit = [] {
    const char* value = std::getenv("PORTRAIT_ENGINE_CPU_CACHE_MB");
    int64_t mib = kDefaultLimitMiB;
    if (value != nullptr && value[0] != '\0') {
      char* end = nullptr;
      const long long parsed = std::strtoll(value, &end, 10);
      TORCH_CHECK(end != value && *end == '\0' && parsed >= 0,
                  "PORTRAIT_ENGINE_CPU_CACHE_MB must be a whole number of MiB (0 turns the CPU "
                  "output cache off), got '", value, "'");
      mib = parsed;
    }
    return static_cast<size_t>(mib) << 20;
  }();
  return limit;
}

class BlockCache {
 public:
  // A block of `bytes` (a multiple of kSizeGranularity): an idle one of that size, else new.
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = idle_.find(bytes);
      if (it != idle_.end()) {
        void* block = it->second;
        idle_.erase(it);
        idle_bytes_ -= bytes;
        return block;
      }
    }
    void* block = nullptr;
    const int status = posix_memalign(&block, kBlockAlignment, bytes);
    TORCH_CHECK_WITH(OutOfMemoryError, status == 0 && block != nullptr,
                     "portrait_engine: could not allocate ", bytes, " bytes for a CPU output");
    return block;
  }

  // A block whose tensor was freed: kept while the idle bytes stay within the limit.
  void give(void* block, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (idle_bytes_ + bytes <= cached_output_limit()) {
        idle_.emplace(bytes, block);
        idle_bytes_ += bytes;
        return;
      }
    }
    std::free(block);
  }

  // Frees every idle block.
  void clear() {
    std::multimap<size_t, void*> idle;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      idle.swap(idle_);
      idle_bytes_ = 0;
    }
    for (auto& entry : idle) std::free(entry.second);
  }

  std::vector<int64_t> info() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(idle_.size()), static_cast<int64_t>(idle_bytes_),
            static_cast<int64_t>(cached_output_limit())};
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> idle_;  // by size
  size_t idle_bytes_ = 0;
};

// Never destroyed: a tensor may outlive the library's static destructors at exit.
BlockCache& cache() {
  static BlockCache* instance = new BlockCache();
  return *instance;
}

struct Block {
  void* data;
  size_t bytes;
};

void release_block(void* context) {
  Block* block = static_cast<Block*>(context);
  c10::profiledCPUMemoryReporter().Delete(block->data);
  cache().give(block->data, block->bytes);
  delete block;
}

class CachedCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = (n + kSizeGranularity - 1) / kSizeGranularity * kSizeGranularity;
    void* data = cache().take(bytes);
    c10::profiledCPUMemoryReporter().New(data, n);
    return {data, new Block{data, bytes}, &release_block, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CachedCpuAllocator& cached_allocator() {
  static CachedCpuAllocator* instance = new CachedCpuAllocator();
  return *instance;
}

std::vector<int64_t> cpu_output_cache() { return cache().info(); }

void cpu_output_cache_clear() { cache().clear(); }

}  // namespace

at::Tensor new_cached_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t size : sizes) numel *= size;
  const int64_t bytes = numel * static_cast<int64_t>(options.dtype().itemsize());
  if (!options.device().is_cpu() || bytes < kCachedOutputMinBytes || cached_output_limit() == 0) {
    return new_output(sizes, options);
  }
  at::Tensor t = at::detail::empty_generic(sizes, &cached_allocator(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU),
                                           options.dtype().toScalarType(), std::nullopt);
  poison_if_asked(t);
  return t;
}

}  // namespace portrait_engine

TORCH_LIBRARY_FRAGMENT(portrait_engine, m) {
  m.def("cpu_output_cache() -> int[]", &portrait_engine::cpu_output_cache);
  m.def("cpu_output_cache_clear() -> ()", &portrait_engine::cpu_output_cache_clear);
}
