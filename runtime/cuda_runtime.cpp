// Host-side CUDA glue: the device allocator and copies. Compiled in every build;
// without NQ_CUDA the functions report that this build has no CUDA.
#include <cstring>

#include "runtime/allocator.h"
#include "runtime/device_copy.h"
#include "runtime/error.h"

#ifdef NQ_CUDA
#include <cuda_runtime.h>

#include "runtime/cuda_check.h"
#endif

namespace nq {

#ifdef NQ_CUDA
// Plain cudaMalloc per tensor with accounting. (A caching allocator that keeps
// freed blocks for reuse is the GPU-training issue's job.)
class CudaAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes, MemCategory cat) override {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes == 0 ? 256 : bytes);
    if (e != cudaSuccess)
      throw Error(str("cudaMalloc of ", format_bytes(bytes), " for ", mem_category_name(cat),
                      " failed: ", cudaGetErrorString(e)));
    std::lock_guard<std::mutex> g(mu_);
    stats_.on_alloc(cat, bytes);
    return p;
  }
  void deallocate(void* ptr, size_t bytes, MemCategory cat) override {
    cudaFree(ptr);
    std::lock_guard<std::mutex> g(mu_);
    stats_.on_free(cat, bytes);
  }
  Device device() const override { return Device::CUDA; }
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
