// Memory accounting. Every tensor's bytes come from an Allocator, which keeps
// current and peak bytes per category, so the trainer can print a memory plan
// before step 1 and the measured truth after it.
//
// CpuAllocator: 64-byte aligned host memory. The CUDA caching allocator
// (runtime/cuda_runtime.h) implements the same interface for device memory.
#pragma once
#include <array>
#include <cstddef>
#include <mutex>
#include <string>

#include "runtime/dtype.h"

namespace nq {

enum class MemCategory : uint8_t { Weights, Activations, LoRA, Optimizer, Workspace, Count };
const char* mem_category_name(MemCategory c);

struct MemStats {
  std::array<size_t, size_t(MemCategory::Count)> current{}, peak{};
  size_t current_total = 0, peak_total = 0;
  void on_alloc(MemCategory c, size_t bytes);
  void on_free(MemCategory c, size_t bytes);
  void reset_peak();  // peak := current
  std::string summary() const;  // "weights 1.2 GiB, activations ..."
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t bytes, MemCategory cat) = 0;
  virtual void deallocate(void* ptr, size_t bytes, MemCategory cat) = 0;
  virtual Device device() const = 0;
  MemStats stats() const { std::lock_guard<std::mutex> g(mu_); return stats_; }
  // peak := current; an allocator with more counters (the CUDA cache's reserved bytes) resets them too.
  virtual void reset_peak() { std::lock_guard<std::mutex> g(mu_); stats_.reset_peak(); }

 protected:
  mutable std::mutex mu_;
  MemStats stats_;
};

class CpuAllocator final : public Allocator {
 public:
  static constexpr size_t kAlignment = 64;
  void* allocate(size_t bytes, MemCategory cat) override;
  void deallocate(void* ptr, size_t bytes, MemCategory cat) override;
  Device device() const override { return Device::CPU; }
};

// The process-wide allocator of a device (CUDA: throws when built without CUDA).
Allocator& allocator_for(Device d);

std::string format_bytes(size_t bytes);  // "1.50 GiB"

}  // namespace nq
