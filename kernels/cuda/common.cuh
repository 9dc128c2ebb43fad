// Device helpers shared by kernels/cuda/*.cu: loading and storing elements as
// f32 whatever the storage type (f32, bf16 or f16), warp/block reductions in f32,
// grid sizing, the per-launch error check, and dtype dispatch on the host.
//
// Every kernel here reads bf16, f16 or f32, computes in f32 and rounds once on the
// store (round-to-nearest-even, the same rounding as runtime/half.h). f16 keeps
// 11 significant bits but only 5 exponent bits: a store above 65504 is inf
// (the fp16 loss scaler, optim/loss_scaler.h, skips such a step).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "runtime/cuda_check.h"
#include "runtime/tensor.h"

namespace nq::kernels::cuda {

using bf16 = __nv_bfloat16;
using f16 = __half;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(f16 v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ f16 from_f32<f16>(float v) { return __float2half_rn(v); }

// The 16-bit activation types the tensor-core kernels take (bf16 on sm_80 and newer, f16 on all).
template <typename T> constexpr bool is_half16 = std::is_same<T, bf16>::value || std::is_same<T, f16>::value;
template <typename T> constexpr DType dtype_of16 = std::is_same<T, bf16>::value ? DType::BF16 : DType::F16;

// bf16 arithmetic needs compute capability 8.0 (sm_80); the kernels' bf16
// instantiations for sm_70/75 are empty. The host refuses bf16 on such a GPU
// before any launch, with the flag to use (here, once per process, the query cached).
void require_bf16_support(const char* op);

// Sum of v over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024);
// every thread gets the result. `scratch` is 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < n_warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// Blocks for a grid-stride loop over n items (capped; the loop covers the rest).
inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(blocks, 65536)));
}

// After every launch: configuration errors surface here, with file:line.
#define NQ_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

// Calls f(T{}) with T = float, bf16 or f16 for the tensor's dtype.
template <typename F> void dispatch_float(const Tensor& t, const char* op, F&& f) {
  if (t.dtype() == DType::F32) f(float{});
  else if (t.dtype() == DType::BF16) require_bf16_support(op), f(bf16{});
  else if (t.dtype() == DType::F16) f(f16{});
  else throw Error(str(op, ": CUDA kernel takes f32, bf16 or f16, got ", t.desc()));
}
// The same over the 16-bit types only (the tensor-core kernels).
template <typename F> void dispatch_half16(const Tensor& t, const char* op, F&& f) {
  if (t.dtype() == DType::BF16) require_bf16_support(op), f(bf16{});
  else if (t.dtype() == DType::F16) f(f16{});
  else throw Error(str(op, ": this CUDA kernel takes bf16 or f16, got ", t.desc()));
}

template <typename T> T* ptr(const Tensor& t) { return static_cast<T*>(t.raw()); }

// Token ids / labels are user data and index tables on the device, so they are
// copied to the host and checked (N x 4 bytes: cheap next to the kernels that use
// them). `allow` is one extra permitted value (-100 for ignored labels), or 0.
inline std::vector<int32_t> checked_ids(const Tensor& ids, int64_t limit, const char* op, const char* name,
                                        int32_t allow = 0) {
  std::vector<int32_t> host(size_t(ids.numel()));
  if (!host.empty())
    CUDA_CHECK(cudaMemcpy(host.data(), ids.raw(), host.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < host.size(); ++i)
    NQ_CHECK((host[i] >= 0 && host[i] < limit) || (allow && host[i] == allow), op, ": ", name, "[", i, "] = ", host[i],
             " out of range [0, ", limit, ")");
  return host;
}

// Copies a host array of POD records (a multi-tensor chunk table, a grouped GEMM's tile
// list) to the device, ordered on the default stream before the kernels that read it. An
// asynchronous copy from pageable memory is staged at the call, so `rows` may go at once,
// and unlike cudaMemcpy it does not first wait for the stream's earlier work: launching
// a kernel with a table does not drain the GPU.
template <typename Pod> Tensor upload_table(const std::vector<Pod>& rows) {
  Tensor t = Tensor::empty({int64_t(rows.size() * sizeof(Pod))}, DType::U8, Device::CUDA, MemCategory::Workspace);
  if (!rows.empty())
    CUDA_CHECK(cudaMemcpyAsync(t.raw(), rows.data(), rows.size() * sizeof(Pod), cudaMemcpyHostToDevice, nullptr));
  return t;
}

// Multi-tensor launches split every tensor into chunks of this many elements,
// one block per chunk, so a single launch covers a whole list of tensors.
constexpr int64_t kChunkElems = 65536;

}  // namespace nq::kernels::cuda
