// Host-side CUDA glue: the device allocator and copies. Compiled in every build;
// without NQ_CUDA the functions report that this build has no CUDA.
#include <cstring>
#include <map>

#include "runtime/allocator.h"
#include "runtime/device_copy.h"
#include "runtime/error.h"

#ifdef NQ_CUDA
#include <cuda_runtime.h>

#include "runtime/cuda_check.h"
#endif

namespace nq {

#ifdef NQ_CUDA
// cudaMalloc with a cache of freed blocks keyed by exact byte size: a block
// freed by one step is handed out again for the next tensor of the same size
// (training steps and benchmark loops repeat their shapes), so the steady
// state calls neither cudaMalloc nor cudaFree, which synchronises the device.
// When cudaMalloc fails, the cached blocks are released and it is retried.
// MemStats count live tensors; cached blocks are held on top of them. (A
// general caching allocator with size classes is the GPU-training issue's job.)
class CudaAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes, MemCategory cat) override {
    size_t size = bytes == 0 ? 256 : bytes;
    std::lock_guard<std::mutex> g(mu_);
    void* p = nullptr;
    auto it = cache_.find(size);
    if (it != cache_.end()) {
      p = it->second;
      cache_.erase(it);
    } else {
      cudaError_t e = cudaMalloc(&p, size);
      if (e != cudaSuccess) {
        cudaGetLastError();
        release_cache();
        e = cudaMalloc(&p, size);
      }
      if (e != cudaSuccess)
        throw Error(str("cudaMalloc of ", format_bytes(bytes), " for ", mem_category_name(cat),
                        " failed: ", cudaGetErrorString(e)));
    }
    stats_.on_alloc(cat, bytes);
    return p;
  }
  void deallocate(void* ptr, size_t bytes, MemCategory cat) override {
    std::lock_guard<std::mutex> g(mu_);
    cache_.emplace(bytes == 0 ? 256 : bytes, ptr);
    stats_.on_free(cat, bytes);
  }
  Device device() const override { return Device::CUDA; }

 private:
  void release_cache() {
    for (auto& [size, p] : cache_) cudaFree(p);
    cache_.clear();
  }
  std::multimap<size_t, void*> cache_;  // byte size -> free block
};

Allocator& allocator_for(Device d) {
  static CpuAllocator cpu;
  if (d == Device::CPU) return cpu;
  NQ_CHECK(cuda_available(), "device cuda: no CUDA device is available");
  static CudaAllocator cuda;
  return cuda;
}

bool cuda_available() {
  static int n = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) { cudaGetLastError(); return 0; }
    return count;
  }();
  return n > 0;
}

void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  cudaMemcpyKind kind = dst_dev == Device::CPU ? (src_dev == Device::CPU ? cudaMemcpyHostToHost : cudaMemcpyDeviceToHost)
                                               : (src_dev == Device::CPU ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice);
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
}
void device_memset_zero(void* dst, size_t bytes) { CUDA_CHECK(cudaMemset(dst, 0, bytes)); }
void device_memset(void* dst, int byte, size_t bytes) { CUDA_CHECK(cudaMemset(dst, byte, bytes)); }

#else
bool cuda_available() { return false; }
void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  NQ_CHECK(dst_dev == Device::CPU && src_dev == Device::CPU, "device cuda: this build has no CUDA support");
  memcpy(dst, src, bytes);
}
void device_memset_zero(void*, size_t) { throw Error("device cuda: this build has no CUDA support"); }
void device_memset(void*, int, size_t) { throw Error("device cuda: this build has no CUDA support"); }
#endif

}  // namespace nq
