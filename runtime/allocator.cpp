#include "runtime/allocator.h"

#include <cstdio>
#include <cstdlib>
#include <new>

#include "runtime/error.h"

namespace nq {

const char* mem_category_name(MemCategory c) {
  switch (c) {
    case MemCategory::Weights: return "weights";
    case MemCategory::Activations: return "activations";
    case MemCategory::LoRA: return "lora";
    case MemCategory::Optimizer: return "optimizer";
    case MemCategory::Workspace: return "workspace";
    default: return "?";
  }
}

void MemStats::on_alloc(MemCategory c, size_t bytes) {
  size_t i = size_t(c);
  current[i] += bytes;
  if (current[i] > peak[i]) peak[i] = current[i];
  current_total += bytes;
  if (current_total > peak_total) peak_total = current_total;
}
void MemStats::on_free(MemCategory c, size_t bytes) {
  current[size_t(c)] -= bytes;
  current_total -= bytes;
}
void MemStats::reset_peak() {
  peak = current;
  peak_total = current_total;
}
std::string MemStats::summary() const {
  std::string s;
  for (size_t i = 0; i < size_t(MemCategory::Count); ++i) {
    if (!s.empty()) s += ", ";
    s += str(mem_category_name(MemCategory(i)), " ", format_bytes(peak[i]));
  }
  return str("peak ", format_bytes(peak_total), " (", s, ")");
}

std::string format_bytes(size_t bytes) {
  char buf[32];
  double b = double(bytes);
  if (b >= 1024.0 * 1024 * 1024) snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else if (b >= 1024.0 * 1024) snprintf(buf, sizeof buf, "%.1f MiB", b / (1024.0 * 1024));
  else if (b >= 1024.0) snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  else snprintf(buf, sizeof buf, "%zu B", bytes);
  return buf;
}

void* CpuAllocator::allocate(size_t bytes, MemCategory cat) {
  size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  if (!p) throw Error(str("out of host memory allocating ", format_bytes(bytes), " for ", mem_category_name(cat)));
  std::lock_guard<std::mutex> g(mu_);
  stats_.on_alloc(cat, bytes);
  return p;
}
void CpuAllocator::deallocate(void* ptr, size_t bytes, MemCategory cat) {
  std::free(ptr);
  std::lock_guard<std::mutex> g(mu_);
  stats_.on_free(cat, bytes);
}

#ifndef NQ_CUDA
Allocator& allocator_for(Device d) {
  static CpuAllocator cpu;
  if (d == Device::CPU) return cpu;
  throw Error("device cuda: this build has no CUDA support (rebuild with nvcc on the PATH)");
}
#endif

}  // namespace nq
