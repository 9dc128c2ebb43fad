// cuda_emu: the CUDA runtime API on the host (see include/cuda_runtime.h):
// the device, memory, copies and the launch-configuration check. One emulated
// device; memory is host memory. Default-stream (null) calls complete before
// they return; work on a created stream is queued and runs when a
// synchronisation needs it, streams in an adversarial order (cuda_emu/streams.cpp,
// which also holds the stream and event API). The launch-configuration check
// follows the GPU's limits so that a launch the GPU would refuse fails here too,
// at the launch, whatever the stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace {

constexpr size_t kDefaultSharedPerBlock = size_t(48) << 10;   // without cudaFuncSetAttribute
constexpr size_t kOptinSharedPerBlock = size_t(227) << 10;    // sharedMemPerBlockOptin (H100/H200)
constexpr size_t kSharedPerSm = size_t(228) << 10;
constexpr size_t kTotalMemory = size_t(143771) << 20;         // an H200's 141 GiB as reported by the driver

thread_local cudaError_t last_error = cudaSuccess;
std::mutex mu;
std::map<void*, size_t> device_blocks;      // cudaMalloc'ed pointer -> bytes
std::map<void*, size_t> host_blocks;        // cudaHostAlloc'ed pointer -> bytes
std::map<const void*, int> max_dynamic_shared;  // per kernel, set by cudaFuncSetAttribute
size_t device_bytes = 0;

cudaError_t fail(cudaError_t e) {
  last_error = e;
  return e;
}

}  // namespace

// ---- errors
const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
  }
  return "unknown error";
}
const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
  }
  return "cudaErrorUnknown";
}
cudaError_t cudaGetLastError() {
  cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return last_error; }

// ---- device
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }
// The compute capability whose code paths the build emulates (EMU_ARCH, 900 = 9.0);
// NQ_EMU_CC=75 in the environment reports another (the host-side choices of a T4's
// paths, e.g. f16 instead of bf16, tested without a second build).
static int emulated_compute_capability() {
  static const int cc = [] {
    const char* env = std::getenv("NQ_EMU_CC");
    const int v = env ? std::atoi(env) : 0;
    return v >= 50 && v <= 120 ? v : NQ_EMU_ARCH / 10;
  }();
  return cc;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "cuda_emu (emulated on the CPU, H200-like)");
  prop->totalGlobalMem = kTotalMemory;
  prop->sharedMemPerBlock = kDefaultSharedPerBlock;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = 1024; prop->maxThreadsDim[1] = 1024; prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647; prop->maxGridSize[1] = 65535; prop->maxGridSize[2] = 65535;
  prop->major = emulated_compute_capability() / 10;
  prop->minor = emulated_compute_capability() % 10;
  prop->multiProcessorCount = 132;
  prop->sharedMemPerMultiprocessor = kSharedPerSm;
  prop->sharedMemPerBlockOptin = kOptinSharedPerBlock;
  prop->l2CacheSize = 60 << 20;
  prop->memoryBusWidth = 6144;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(kDefaultSharedPerBlock); break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *value = emulated_compute_capability() / 10; break;
    case cudaDevAttrComputeCapabilityMinor: *value = emulated_compute_capability() % 10; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = int(kSharedPerSm); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(kOptinSharedPerBlock); break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> g(mu);
  *total_bytes = kTotalMemory;
  *free_bytes = kTotalMemory > device_bytes ? kTotalMemory - device_bytes : 0;
  return cudaSuccess;
}

// ---- memory
// Each block ends right before a guard page (cuda_emu/guard_pages.cpp), so a kernel
// reading or writing past it faults with a message naming the kernel thread.
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (!ptr) return fail(cudaErrorInvalidValue);
  void* p = cuda_emu::guarded_alloc(bytes, "cudaMalloc");
  if (!p) return fail(cudaErrorMemoryAllocation);
  std::memset(p, 0xff, bytes);  // uninitialised device memory: NaN as f32 and bf16
  std::lock_guard<std::mutex> g(mu);
  device_blocks[p] = bytes;
  device_bytes += bytes;
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  cuda_emu::synchronize_device();  // as on the GPU, where cudaFree synchronises the device
  std::lock_guard<std::mutex> g(mu);
  auto it = device_blocks.find(ptr);
  if (it == device_blocks.end()) return fail(cudaErrorInvalidValue);
  device_bytes -= it->second;
  cuda_emu::guarded_free(ptr, it->second);
  device_blocks.erase(it);
  return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned) {
  if (!ptr) return fail(cudaErrorInvalidValue);
  void* p = cuda_emu::guarded_alloc(bytes, "cudaHostAlloc");
  if (!p) return fail(cudaErrorMemoryAllocation);
  std::memset(p, 0xff, bytes);
  std::lock_guard<std::mutex> g(mu);
  host_blocks[p] = bytes;
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** ptr, size_t bytes) { return cudaHostAlloc(ptr, bytes, cudaHostAllocDefault); }
cudaError_t cudaFreeHost(void* ptr) {
  if (!ptr) return cudaSuccess;
  cuda_emu::synchronize_device();
  std::lock_guard<std::mutex> g(mu);
  auto it = host_blocks.find(ptr);
  if (it == host_blocks.end()) return fail(cudaErrorInvalidValue);
  cuda_emu::guarded_free(ptr, it->second);
  host_blocks.erase(it);
  return cudaSuccess;
}
// Whether [p, p + bytes) lies inside one block of `blocks`.
static bool inside(const std::map<void*, size_t>& blocks, const void* p, size_t bytes) {
  std::lock_guard<std::mutex> g(mu);
  auto it = blocks.upper_bound(const_cast<void*>(p));
  if (it == blocks.begin()) return false;
  --it;
  const char *base = static_cast<const char*>(it->first), *q = static_cast<const char*>(p);
  return q >= base && q + bytes <= base + std::max<size_t>(it->second, 1);
}
static bool on_device(const void* p, size_t bytes) { return inside(device_blocks, p, bytes); }
// Host memory that is neither device nor pinned (cudaHostAlloc) memory.
static bool pageable(const void* p, size_t bytes) { return !on_device(p, bytes) && !inside(host_blocks, p, bytes); }
// The kind must name where the pointers are (host memory is anything not from cudaMalloc),
// as the GPU's runtime refuses a device pointer passed as host memory and vice versa.
static cudaError_t check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (unsigned(kind) > cudaMemcpyDefault || (bytes && (!dst || !src))) return cudaErrorInvalidValue;
  if (!bytes || kind == cudaMemcpyDefault) return cudaSuccess;
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (on_device(dst, bytes) != dst_dev || on_device(src, bytes) != src_dev) return cudaErrorInvalidValue;
  return cudaSuccess;
}
// Copies and sets are checked at the call; on a stream, the bytes move when the stream
// runs. Pageable host memory follows CUDA's rules for cudaMemcpyAsync: a pageable
// source is staged at the call (the host may reuse it at once), and a copy into
// pageable memory is complete when the call returns; pinned memory is only safe
// to touch after a synchronisation.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  cudaError_t e = check_copy(dst, src, bytes, kind);
  if (e != cudaSuccess) return fail(e);
  if (!bytes) return cudaSuccess;
  std::function<void()> copy = [dst, src, bytes] {
    cuda_emu::install_fault_handler();
    std::memmove(dst, src, bytes);
  };
  if (stream && pageable(src, bytes)) {
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + bytes);
    copy = [dst, staged] {
      cuda_emu::install_fault_handler();
      std::memmove(dst, staged->data(), staged->size());
    };
  }
  e = cudaError_t(cuda_emu::submit(stream, std::move(copy)));
  if (e == cudaSuccess && stream && pageable(dst, bytes)) e = cudaStreamSynchronize(stream);
  return e == cudaSuccess ? e : fail(e);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  if (bytes && !dst) return fail(cudaErrorInvalidValue);
  if (!bytes) return cudaSuccess;
  cudaError_t e = cudaError_t(cuda_emu::submit(stream, [dst, value, bytes] {
    cuda_emu::install_fault_handler();
    std::memset(dst, value, bytes);
  }));
  return e == cudaSuccess ? e : fail(e);
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) { return cudaMemsetAsync(dst, value, bytes, nullptr); }

// ---- kernel attributes and the launch check
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (!func) return fail(cudaErrorInvalidValue);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) > kOptinSharedPerBlock) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(mu);
    max_dynamic_shared[func] = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) return cudaSuccess;
  return fail(cudaErrorInvalidValue);
}

namespace cuda_emu {

int check_launch(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
    return cudaErrorInvalidConfiguration;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    return cudaErrorInvalidConfiguration;
  size_t limit = kDefaultSharedPerBlock;
  {
    std::lock_guard<std::mutex> g(mu);
    auto it = max_dynamic_shared.find(kernel);
    if (it != max_dynamic_shared.end()) limit = size_t(it->second);
  }
  if (shared_bytes > limit) return cudaErrorInvalidValue;
  return cudaSuccess;
}

void set_last_error(int err) { last_error = cudaError_t(err); }

}  // namespace cuda_emu
