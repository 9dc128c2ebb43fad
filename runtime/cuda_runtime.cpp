// Host-side CUDA glue: the caching device allocator, pinned host memory,
// streams, events and copies (see runtime/cuda_runtime.h). Compiled in every
// build; without NQ_CUDA the functions report that this build has no CUDA.
#include "runtime/cuda_runtime.h"

#include <cstring>
#include <map>
#include <sstream>
#include <unordered_map>

#include "runtime/allocator.h"
#include "runtime/device_copy.h"
#include "runtime/error.h"

#ifdef NQ_CUDA
#include <cuda_runtime.h>

#include "runtime/cuda_check.h"
#endif

namespace nq {

size_t cuda_size_class(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t(1) << 20;
  if (bytes == 0) return kSmall;
  if (bytes < kLarge) return (bytes + kSmall - 1) / kSmall * kSmall;
  size_t octave = kLarge;  // largest power of two <= bytes
  while (octave * 2 <= bytes) octave *= 2;
  const size_t step = octave / 8;
  return (bytes + step - 1) / step * step;
}

#ifdef NQ_CUDA
namespace {

// cudaMalloc behind a cache of free blocks per size class (cuda_size_class).
// Allocator::stats_ counts the bytes handed out; reserved_ counts what
// cudaMalloc returned, per category. When cudaMalloc fails, the cache is
// released and the call retried once.
// Not stream-aware: a freed block is reused at once, which is safe because all
// kernels run on the legacy default stream in issue order; side streams (the
// paged optimizer's) may only touch memory that outlives their work (docs/cuda.md).
class CudaAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes, MemCategory cat) override {
    const size_t size = cuda_size_class(bytes);
    std::lock_guard<std::mutex> g(mu_);
    void* p = nullptr;
    auto it = cache_.find(size);
    if (it != cache_.end()) {
      p = it->second;
      cache_.erase(it);
      cached_bytes_ -= size;
      ++cache_hits_;
      Block& b = blocks_.at(p);
      if (b.category != cat) {  // the reserved bytes move to the new user's category
        reserved_.on_free(b.category, size);
        reserved_.on_alloc(cat, size);
        b.category = cat;
      }
    } else {
      cudaError_t e = cudaMalloc(&p, size);
      if (e != cudaSuccess) {
        cudaGetLastError();
        release_cache();
        e = cudaMalloc(&p, size);
      }
      if (e != cudaSuccess)
        throw Error(str("cudaMalloc of ", format_bytes(size), " for ", mem_category_name(cat), " failed at ", __FILE__,
                        ":", __LINE__, ": ", cudaGetErrorString(e), " (live tensors: ", stats_.summary(), ")"));
      ++cuda_mallocs_;
      blocks_[p] = Block{size, cat};
      reserved_.on_alloc(cat, size);
    }
    stats_.on_alloc(cat, bytes);
    return p;
  }
  void deallocate(void* ptr, size_t bytes, MemCategory cat) override {
    std::lock_guard<std::mutex> g(mu_);
    const Block& b = blocks_.at(ptr);
    cache_.emplace(b.size, ptr);
    cached_bytes_ += b.size;
    stats_.on_free(cat, bytes);
  }
  Device device() const override { return Device::CUDA; }

  CudaMemoryStats memory_stats() const {
    std::lock_guard<std::mutex> g(mu_);
    return CudaMemoryStats{stats_, reserved_, cached_bytes_, cuda_mallocs_, cache_hits_};
  }
  void reset_peak() override {
    std::lock_guard<std::mutex> g(mu_);
    stats_.reset_peak();
    reserved_.reset_peak();
  }
  void empty_cache() {
    std::lock_guard<std::mutex> g(mu_);
    release_cache();
  }

 private:
  struct Block {
    size_t size;           // the size class (bytes obtained from cudaMalloc)
    MemCategory category;  // the category its reserved bytes are counted under
  };
  void release_cache() {  // caller holds mu_
    for (auto& [size, p] : cache_) {
      CUDA_CHECK(cudaFree(p));
      reserved_.on_free(blocks_.at(p).category, size);
      blocks_.erase(p);
    }
    cache_.clear();
    cached_bytes_ = 0;
  }
  std::multimap<size_t, void*> cache_;         // size class -> free block
  std::unordered_map<void*, Block> blocks_;    // every block obtained from cudaMalloc
  MemStats reserved_;
  size_t cached_bytes_ = 0;
  int64_t cuda_mallocs_ = 0, cache_hits_ = 0;
};

// Page-locked host memory for asynchronous copies.
class PinnedHostAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes, MemCategory cat) override {
    void* p = nullptr;
    CUDA_CHECK(cudaHostAlloc(&p, bytes == 0 ? 64 : bytes, cudaHostAllocDefault));
    std::lock_guard<std::mutex> g(mu_);
    stats_.on_alloc(cat, bytes);
    return p;
  }
  void deallocate(void* ptr, size_t bytes, MemCategory cat) override {
    cudaFreeHost(ptr);  // unchecked: runs from destructors, which must not throw (as the destroys below)
    std::lock_guard<std::mutex> g(mu_);
    stats_.on_free(cat, bytes);
  }
  Device device() const override { return Device::CPU; }
};

// The kernels need f16 tensor cores (WMMA): compute capability 7.0 or newer (bf16
// needs 8.0: kernels/cuda/common.cuh refuses it on older GPUs, naming --dtype float16).
// Checked once, on the first device allocation (every kernel needs one), with whether
// this build has code for the GPU (cuda_arch_mismatch), so an unsupported GPU is one
// clear error instead of "no kernel image" per launch.
void check_compute_capability() {
  static const bool checked = [] {
    int device = 0, major = 0, minor = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    NQ_CHECK(major >= 7, "device cuda: GPU ", device, " has compute capability ", major, ".", minor,
             "; the CUDA kernels need 7.0 or newer (f16 tensor cores)");
    const std::string mismatch = cuda_arch_mismatch();
    NQ_CHECK(mismatch.empty(), "device cuda: ", mismatch);
    return true;
  }();
  (void)checked;
}

CudaAllocator& cuda_allocator() {
  NQ_CHECK(cuda_available(), "device cuda: no CUDA device is available");
  check_compute_capability();
  static CudaAllocator cuda;
  return cuda;
}

cudaStream_t stream_of(const CudaStream& s) { return static_cast<cudaStream_t>(s.handle()); }

cudaMemcpyKind copy_kind(Device dst_dev, Device src_dev) {
  return dst_dev == Device::CPU ? (src_dev == Device::CPU ? cudaMemcpyHostToHost : cudaMemcpyDeviceToHost)
                                : (src_dev == Device::CPU ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice);
}

}  // namespace

Allocator& allocator_for(Device d) {
  static CpuAllocator cpu;
  if (d == Device::CPU) return cpu;
  return cuda_allocator();
}

bool cuda_available() {
  static int n = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) { cudaGetLastError(); return 0; }
    return count;
  }();
  return n > 0;
}

bool cuda_built() { return true; }

std::string cuda_device_description() {
  int index = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&index) == cudaSuccess && cudaGetDeviceProperties(&prop, index) == cudaSuccess)
    return str(prop.name, ", ", format_bytes(prop.totalGlobalMem));
  cudaGetLastError();  // clear the error: the description is informative only
  return "";
}

CudaMemInfo cuda_mem_info() {
  CudaMemInfo m;
  CUDA_CHECK(cudaMemGetInfo(&m.free, &m.total));
  return m;
}

bool cuda_has_bf16() {
  static const int cc = cuda_compute_capability();  // one query per process
  return cc == 0 || cc >= 80;
}

std::string cuda_arch_mismatch() {
#ifdef NQ_CUDA_ARCHS
  const int cc = cuda_compute_capability();
  if (cc == 0) return "";
  std::istringstream built(NQ_CUDA_ARCHS);
  for (int arch; built >> arch;)
    if (arch / 10 == cc / 10 && arch % 10 <= cc % 10) return "";
  std::string targets;
  std::istringstream list(NQ_CUDA_ARCHS);
  for (int arch; list >> arch;) targets += str(targets.empty() ? "" : " ", "sm_", arch);
  return str("this build has GPU code for ", targets, ", none of which runs on the ", cuda_device_description(),
             " (sm_", cc, "): rebuild with make CUDA_ARCH=", cc, " (make's default is the GPU nvidia-smi reports)");
#else
  return "";  // the emulated GPU runs whatever it is asked to
#endif
}

int cuda_compute_capability() {
  int index = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&index) == cudaSuccess && cudaGetDeviceProperties(&prop, index) == cudaSuccess)
    return prop.major * 10 + prop.minor;
  cudaGetLastError();
  return 0;
}

double cuda_time_seconds(const std::function<void()>& fn) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  CUDA_CHECK(cudaEventRecord(start));
  fn();
  CUDA_CHECK(cudaEventRecord(stop));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return ms * 1e-3;
}

CudaMemoryStats cuda_memory_stats() { return cuda_allocator().memory_stats(); }
void cuda_reset_peak_memory() { cuda_allocator().reset_peak(); }
void cuda_empty_cache() { cuda_allocator().empty_cache(); }

Allocator& pinned_host_allocator() {
  NQ_CHECK(cuda_available(), "pinned host memory: no CUDA device is available");
  static PinnedHostAllocator pinned;
  return pinned;
}

CudaStream::CudaStream() {
  NQ_CHECK(cuda_available(), "CudaStream: no CUDA device is available");
  cudaStream_t s;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  handle_ = s;
}
CudaStream::~CudaStream() { cudaStreamDestroy(static_cast<cudaStream_t>(handle_)); }
void CudaStream::synchronize() const { CUDA_CHECK(cudaStreamSynchronize(stream_of(*this))); }

CudaEvent::CudaEvent() {
  NQ_CHECK(cuda_available(), "CudaEvent: no CUDA device is available");
  cudaEvent_t e;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  handle_ = e;
}
CudaEvent::~CudaEvent() { cudaEventDestroy(static_cast<cudaEvent_t>(handle_)); }
void CudaEvent::record(const CudaStream& stream) {
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(handle_), stream_of(stream)));
}
void CudaEvent::record_on_default_stream() { CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(handle_), 0)); }
void CudaEvent::wait_in(const CudaStream& stream) const {
  CUDA_CHECK(cudaStreamWaitEvent(stream_of(stream), static_cast<cudaEvent_t>(handle_), 0));
}
void CudaEvent::wait_on_default_stream() const {
  CUDA_CHECK(cudaStreamWaitEvent(0, static_cast<cudaEvent_t>(handle_), 0));
}
void CudaEvent::synchronize() const { CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(handle_))); }

void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, copy_kind(dst_dev, src_dev)));
}
void device_copy_async(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes,
                       const CudaStream& stream) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, copy_kind(dst_dev, src_dev), stream_of(stream)));
}
void device_memset_zero(void* dst, size_t bytes) { CUDA_CHECK(cudaMemset(dst, 0, bytes)); }
void device_memset(void* dst, int byte, size_t bytes) { CUDA_CHECK(cudaMemset(dst, byte, bytes)); }

#else
namespace {
[[noreturn]] void no_cuda(const char* what) { throw Error(str(what, ": this build has no CUDA support")); }
}  // namespace

bool cuda_available() { return false; }
bool cuda_built() { return false; }
std::string cuda_device_description() { return ""; }
int cuda_compute_capability() { return 0; }
bool cuda_has_bf16() { return true; }  // no GPU to ask: as for an unknown one
std::string cuda_arch_mismatch() { return ""; }
double cuda_time_seconds(const std::function<void()>&) { no_cuda("cuda_time_seconds"); }
CudaMemoryStats cuda_memory_stats() { no_cuda("cuda_memory_stats"); }
CudaMemInfo cuda_mem_info() { no_cuda("cuda_mem_info"); }
void cuda_reset_peak_memory() { no_cuda("cuda_reset_peak_memory"); }
void cuda_empty_cache() { no_cuda("cuda_empty_cache"); }
Allocator& pinned_host_allocator() { no_cuda("pinned host memory"); }
CudaStream::CudaStream() { no_cuda("CudaStream"); }
CudaStream::~CudaStream() = default;
void CudaStream::synchronize() const { no_cuda("CudaStream"); }
CudaEvent::CudaEvent() { no_cuda("CudaEvent"); }
CudaEvent::~CudaEvent() = default;
void CudaEvent::record(const CudaStream&) { no_cuda("CudaEvent"); }
void CudaEvent::record_on_default_stream() { no_cuda("CudaEvent"); }
void CudaEvent::wait_in(const CudaStream&) const { no_cuda("CudaEvent"); }
void CudaEvent::wait_on_default_stream() const { no_cuda("CudaEvent"); }
void CudaEvent::synchronize() const { no_cuda("CudaEvent"); }
void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  NQ_CHECK(dst_dev == Device::CPU && src_dev == Device::CPU, "device cuda: this build has no CUDA support");
  memcpy(dst, src, bytes);
}
void device_copy_async(void*, Device, const void*, Device, size_t, const CudaStream&) { no_cuda("device_copy_async"); }
void device_memset_zero(void*, size_t) { no_cuda("device cuda"); }
void device_memset(void*, int, size_t) { no_cuda("device cuda"); }
#endif

Tensor pinned_zeros(Shape shape, DType dtype, MemCategory cat) {
  Allocator& alloc = pinned_host_allocator();
  const size_t bytes = size_t(shape.numel()) * dtype_size(dtype);
  void* p = alloc.allocate(bytes, cat);
  memset(p, 0, bytes);
  std::shared_ptr<void> owner(p, [&alloc, bytes, cat](void* q) { alloc.deallocate(q, bytes, cat); });
  return Tensor::external(p, shape, dtype, Device::CPU, owner);
}

}  // namespace nq
