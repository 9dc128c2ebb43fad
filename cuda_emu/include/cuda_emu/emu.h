// cuda_emu: a CPU emulation of the CUDA runtime, cuBLASLt and the device
// built-ins, so that the engine's CUDA path (kernels/cuda/*.cu, unchanged) runs
// and is tested on machines without a GPU (`make EMU=1`, build/emu/test_all).
//
// How a launch runs. `kernel<<<grid, block, smem, stream>>>(args)` is rewritten
// mechanically (cuda_emu/rewrite.sed, in the Makefile) into
// `::cuda_emu::launch(kernel, "kernel", __FILE__, __LINE__)(grid, block, smem, stream)(args)`.
// The launch is checked like the GPU checks it (block <= 1024 threads, grid
// limits, dynamic shared memory <= 48 KiB unless cudaFuncSetAttribute raised the
// limit, <= 227 KiB ever); a bad configuration sets the error cudaGetLastError
// returns and runs nothing. Otherwise the grid's blocks run one after another,
// and each block as blockDim cooperative threads: user-level fibers on one OS
// thread (cuda_emu/scheduler.cpp), each with its own stack, its own copy of the
// kernel's arguments and its own threadIdx. A fiber runs until it reaches a
// barrier (__syncthreads, __syncwarp, a shuffle) or returns; the scheduler then
// resumes the next fiber, warp by warp, lane by lane in order (ascending in every
// other block, descending in the others). Why fibers and
// not one std::thread per CUDA thread: a barrier costs a user-space context
// switch instead of waking hundreds of OS threads on 2 cores (blocks of 256
// threads with thousands of barriers stay fast), and the interleaving is
// deterministic, so a failure reproduces exactly. Between two barriers the lanes
// run strictly one after another: a thread that reads shared data another thread
// writes later in the same phase (a missing barrier) reads the poison, not the
// data; with both orders, that holds whichever way the data flows.
//
// Streams and events (cuda_emu/streams.cpp). Default-stream (null) work runs
// at the call. Work on a created stream (launches, cudaMemcpyAsync,
// cudaMemsetAsync, cublasLtMatmul, event records and waits) is queued and runs
// as late as possible: when a synchronisation needs it (cudaStreamSynchronize,
// cudaEventSynchronize/Query, cudaDeviceSynchronize, cudaFree/cudaFreeHost,
// cudaStreamDestroy, a default-stream operation for blocking streams: the legacy
// rule) and, among the streams allowed to advance, the one whose next operation
// was issued last first. So a missing cudaStreamWaitEvent runs the two streams'
// work in reverse program order, a host write to a pinned source reaches a copy
// issued before it, a host read of an async download before the sync sees the old
// bytes, and a block reused while a stream still uses it is overwritten under it.
// The launch configuration is checked at the launch; a kernel fault in queued work
// is thrown by the synchronisation that runs it. One host thread drives the emulator.
//
// What it checks, as errors naming kernel, block, thread and source line:
//   __syncthreads reached by only some threads (others returned) or at different
//   lines; shuffles where a lane of the 32 is missing (exited, or beyond
//   blockDim), or lanes at different shuffles; a deadlock (threads waiting at
//   different barriers); WMMA pointers not 32-byte aligned, ldm not a multiple of
//   16 bytes, lanes of a warp issuing different WMMA operations; 16-byte atomics
//   on unaligned addresses; writes past the end of dynamic shared memory (guard
//   bytes after the launch's buffer); cuBLASLt descriptors that do not fit
//   (shapes, leading dims, attribute sizes, pointer alignment vs the algorithm);
//   cudaMemcpy kinds that misname where the pointers are.
// Out-of-bounds accesses past the end of device memory (cudaMalloc) and pinned
// host memory (cudaHostAlloc): each block is its own mapping, 256-byte aligned as
// CUDA guarantees, ending right before a PROT_NONE guard page
// (cuda_emu/guard_pages.cpp). A read or write there kills the process (SIGABRT)
// after one line on stderr naming the kernel, launch site, block and thread
// running and how many bytes past the end of how large a block it landed:
//   cuda_emu: kernel K (launched at F:L), block (x,y,z), thread (x,y,z): access at
//   0x... is N bytes past the end of a B-byte allocation (cudaMalloc at 0x...)
// ("host code (no kernel running)" for cuBLASLt, cudaMemcpy or the host). Not
// caught: an overrun within the <= 255 bytes of alignment slack before the guard,
// nor within the engine's caching allocator (runtime/cuda_runtime.cpp), which asks
// cudaMalloc for size-class-rounded blocks (512-byte steps below 1 MiB, 1/8 of an
// octave above) and hands out tensors smaller than their block; reads before the
// start of a block (they may land in another block's guard page and be named as
// that block's overrun, or in mapped memory and not fault).
// Device memory, pinned memory and dynamic shared memory (per block) are poisoned
// with 0xff bytes (NaN as f32 and bf16), so unwritten data shows up in results.
//
// What a pass does NOT prove: real scheduling inside a kernel (warps never run
// concurrently here, so races that barriers would expose only under true
// parallelism, and inter-block races on global memory, stay hidden: atomics are
// trivially atomic); stream orders other than the one adversarial schedule (work
// of two streams never interleaves within an operation, and where the host
// synchronises stream A before stream B, A's earlier work runs first, as the
// calls force: a kernel on B that misses its wait for A's copy reads the copy's
// result then, where a GPU might have run it earlier; default-stream work runs at
// the call, so a side stream missing its wait for earlier default-stream work is
// not caught); the memory model beyond barriers (no reordering, no caches, fences
// are no-ops); hardware rounding of intrinsics (__expf, rsqrtf, sincosf are the
// host's libm, the accumulation order of tensor-core MMA and of cuBLASLt
// differs); out-of-bounds accesses other than past the end of a cudaMalloc /
// cudaHostAlloc block (above), misaligned plain vector loads (host memory does
// not fault on them); static __shared__ arrays are plain statics (one copy reused
// by every block, not poisoned); resources (registers, occupancy, static shared
// memory size); timing. Performance numbers from an emulated build mean nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

struct CUstream_st;

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};

// The built-in variables of the running CUDA thread (set by the scheduler on every switch).
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace cuda_emu {

// A rule violation inside a kernel (reported by the launch as an nq::Error).
struct KernelFault : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] void fault(const std::string& what);

// Barriers of the running block. file/line name the call site in messages.
void sync_block(const char* file, int line);
void sync_warp(unsigned mask, const char* file, int line);
// Lane `src` of the calling warp's values (all 32 lanes must call with the same site); 8 bytes each.
uint64_t shuffle(unsigned mask, uint64_t value, int src_lane, const char* what, const char* file, int line);
int lane_id();  // threadIdx linearised, mod 32
// Folds one WMMA operation (kind, address, ldm, layout, line) into the lane's record;
// the lanes of a warp must have equal records at every warp-wide sync point.
void note_warp_op(uint64_t op_hash);
// The calling lane's next WMMA product, shared by the lanes of its warp: the first
// lane to reach the k-th product since the warp's last sync point computes it and
// fills the slot; the others reuse the result when their inputs are bit-identical
// (they are, unless a race changed the memory between the lanes' loads).
struct MmaSlot {
  bool filled;
  float in[3][256];  // a, b, c
  float out[256];
};
MmaSlot& next_mma_slot();

// The launch's dynamic shared memory (`extern __shared__ T name[]` is rewritten to use it).
struct SharedPointer {
  void* p;
  template <typename T> operator T*() const { return static_cast<T*>(p); }
};
SharedPointer dynamic_shared_memory();

// Runs every block of the grid; body() is one CUDA thread. Throws nq::Error naming
// the kernel when a thread faults. Launch-configuration errors are checked by the caller.
struct LaunchSite {
  const char* kernel;
  const char* file;
  int line;
};
void run_grid(const LaunchSite& site, dim3 grid, dim3 block, size_t shared_bytes, void (*body)(void*), void* ctx);

// What the scheduler is running now, for the SIGSEGV handler (async-signal-safe:
// reads globals only). False outside run_grid; has_thread false between threads.
struct RunningThread {
  const LaunchSite* site;
  uint3 block, thread;
  bool has_thread;
};
bool running_thread(RunningThread& out);

// Emulated device / pinned memory (cuda_emu/guard_pages.cpp): `bytes` at a 256-byte
// aligned pointer, ending at most 255 bytes before a PROT_NONE page; nullptr when
// out of memory. `api` names the allocation in the fault message.
void* guarded_alloc(size_t bytes, const char* api);
void guarded_free(void* p, size_t bytes);
// (Re)installs the handler that reports a fault in a guard page; called at every
// launch, cudaMemcpy, cudaMemset and cuBLASLt matmul.
void install_fault_handler();

// Streams (cuda_emu/streams.cpp). submit: work for the default stream (null) runs
// now, after the pending work of every blocking stream (the legacy default-stream
// rule); work for a created stream is queued until a synchronisation needs it.
// Returns cudaSuccess, or cudaErrorInvalidResourceHandle when `stream` is not a live stream.
int submit(CUstream_st* stream, std::function<void()> work);
// Runs all queued work (cudaDeviceSynchronize; cudaFree and cudaFreeHost call it first).
void synchronize_device();

// The configuration check of a launch: cudaSuccess or the error the GPU would give.
int check_launch(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes);
void set_last_error(int err);

}  // namespace cuda_emu
