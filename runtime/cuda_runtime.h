// The CUDA runtime pieces the trainer uses directly: memory statistics of the
// caching device allocator, pinned (page-locked) host memory, streams and
// events. Every function compiles in every build; without NQ_CUDA each one
// throws nq::Error saying that this build has no CUDA.
//
// The device allocator (runtime/cuda_runtime.cpp) rounds each request up to a
// size class and keeps freed blocks in a cache per class, so a training step
// that repeats the previous step's shapes calls neither cudaMalloc nor cudaFree
// (cudaFree synchronises the whole device). Two kinds of bytes are counted, per
// MemCategory, each with current and peak values:
//   allocated: bytes handed out to live tensors (the request, not the rounding);
//   reserved:  bytes obtained from cudaMalloc, i.e. allocated + rounding + the
//              cache. A cached block stays counted under the category that last
//              used it until another category reuses it or the cache is emptied.
// Pinned host memory is needed for asynchronous copies (cudaMemcpyAsync from
// pageable memory is synchronous); the paged optimizer keeps its states there.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "runtime/allocator.h"
#include "runtime/tensor.h"

namespace nq {

// Whether this build has CUDA (nvcc was found when it was compiled, or the emulated GPU).
bool cuda_built();
// The current GPU's name and memory, "NVIDIA H200, 139.8 GiB"; "" when it cannot be
// queried (no CUDA in this build, no device): the text is informative only.
std::string cuda_device_description();
// The current GPU's compute capability as major * 10 + minor (75 for a T4, 80 for an
// A100, 90 for an H100/H200); 0 when it cannot be queried. bf16 tensor cores need 80.
int cuda_compute_capability();
// Whether the current GPU has bf16 tensor cores (compute capability 8.0 or newer; an
// unknown one, 0, is taken for a current GPU). Older GPUs compute in f16.
bool cuda_has_bf16();
// "" when this build has GPU code the current GPU can run, else why not (the GPU, its
// sm_XY, the targets built, the make command that fixes it). Code built for sm_XY runs
// on GPUs of the same major version and minor >= Y (sm_80 code on an sm_86 card).
std::string cuda_arch_mismatch();

struct CudaMemoryStats {
  MemStats allocated;          // live tensors, per category
  MemStats reserved;           // cudaMalloc'ed, per category (includes the cache)
  size_t cached_bytes = 0;     // free blocks held for reuse
  int64_t cuda_mallocs = 0;    // cudaMalloc calls so far
  int64_t cache_hits = 0;      // requests served from the cache
};
CudaMemoryStats cuda_memory_stats();
// cudaMemGetInfo: the GPU's free and total bytes (free: what this process has not
// reserved and no other process uses).
struct CudaMemInfo {
  size_t free = 0, total = 0;
};
CudaMemInfo cuda_mem_info();
void cuda_reset_peak_memory();   // peaks := current (allocated and reserved)
void cuda_empty_cache();         // cudaFree every cached block
// The size class a request of `bytes` is rounded to (exposed for tests and the memory plan):
// multiples of 512 B below 1 MiB, above it the next of 8 steps per power of two (waste < 12.5%).
size_t cuda_size_class(size_t bytes);

// Page-locked host memory (cudaHostAlloc), counted like any other allocator.
// device() is CPU: the CPU reads and writes it directly.
Allocator& pinned_host_allocator();
// An f32/any-dtype CPU tensor in pinned memory, zero-filled.
Tensor pinned_zeros(Shape shape, DType dtype, MemCategory cat);

// A CUDA stream (cudaStreamNonBlocking) owned by this object.
class CudaStream {
 public:
  CudaStream();
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  void* handle() const { return handle_; }  // cudaStream_t
  void synchronize() const;

 private:
  void* handle_ = nullptr;
};

// A CUDA event without timing (cudaEventDisableTiming): a marker in a stream
// that other streams can wait for.
class CudaEvent {
 public:
  CudaEvent();
  ~CudaEvent();
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  void record(const CudaStream& stream);
  void record_on_default_stream();  // the legacy stream the kernels of kernels/cuda launch on
  void wait_in(const CudaStream& stream) const;  // stream waits until this event completes
  void wait_on_default_stream() const;           // later default-stream work waits until it completes
  void synchronize() const;                      // the host waits

 private:
  void* handle_ = nullptr;
};

// Seconds the GPU takes for the work fn launches on the default stream, between two
// timing events recorded around it (the host waits for the second).
double cuda_time_seconds(const std::function<void()>& fn);

// Asynchronous copy on `stream` (host memory must be pinned for true overlap).
void device_copy_async(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes,
                       const CudaStream& stream);

}  // namespace nq
