// cuda_emu: the device side of CUDA C++ as host C++ (see cuda_emu/emu.h):
// qualifiers, vector types, barriers, warp shuffles, atomics and the math
// functions the kernels call. Barriers and shuffles go through the scheduler
// (cuda_emu/scheduler.cpp); everything else is plain host code.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_emu/emu.h"
#include "runtime/error.h"

// ---- qualifiers: host functions, statics for __shared__ (blocks run one at a time)
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

// ---- vector types (alignment as in CUDA's vector_types.h)
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

// ---- barriers
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  cuda_emu::sync_block(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  cuda_emu::sync_warp(mask, file, line);
}
inline void __threadfence() {}
// A kernel that must never run here (e.g. one not built for this compute capability).
inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  cuda_emu::fault(nq::str("__trap() at ", file, ":", line));
}
inline void __threadfence_block() {}

// ---- warp shuffles (any type of at most 8 bytes; `width` splits the warp into segments)
namespace cuda_emu {
template <typename T> uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move up to 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T> T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
template <typename T>
T shuffle_from(unsigned mask, T v, int src, const char* what, const char* file, int line) {
  return from_bits<T>(shuffle(mask, to_bits(v), src, what, file, line));
}
}  // namespace cuda_emu

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  int lane = cuda_emu::lane_id(), base = lane & ~(width - 1);
  return cuda_emu::shuffle_from(mask, v, base + (src & (width - 1)), "__shfl_sync", file, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  int lane = cuda_emu::lane_id(), src = lane ^ lane_mask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;  // outside the segment: own value
  return cuda_emu::shuffle_from(mask, v, src, "__shfl_xor_sync", file, line);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  int lane = cuda_emu::lane_id(), src = lane + int(delta);
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return cuda_emu::shuffle_from(mask, v, src, "__shfl_down_sync", file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  int lane = cuda_emu::lane_id(), src = lane - int(delta);
  if (src < (lane & ~(width - 1))) src = lane;
  return cuda_emu::shuffle_from(mask, v, src, "__shfl_up_sync", file, line);
}

// ---- atomics (blocks and threads never run at the same time: plain read-modify-write)
template <typename T> T cuda_emu_atomic_add(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
inline float atomicAdd(float* p, float v) { return cuda_emu_atomic_add(p, v); }
inline double atomicAdd(double* p, double v) { return cuda_emu_atomic_add(p, v); }
inline int atomicAdd(int* p, int v) { return cuda_emu_atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return cuda_emu_atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return cuda_emu_atomic_add(p, v); }
// Vector atomics (sm_90): the address must be aligned to the vector's size, as on the GPU.
inline float2 atomicAdd(float2* p, float2 v) {
  if (reinterpret_cast<uintptr_t>(p) % 8) cuda_emu::fault("atomicAdd(float2*): address not 8-byte aligned");
  float2 old = *p;
  *p = {old.x + v.x, old.y + v.y};
  return old;
}
inline float4 atomicAdd(float4* p, float4 v) {
  if (reinterpret_cast<uintptr_t>(p) % 16) cuda_emu::fault("atomicAdd(float4*): address not 16-byte aligned");
  float4 old = *p;
  *p = {old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w};
  return old;
}
inline int atomicMax(int* p, int v) { int old = *p; if (v > old) *p = v; return old; }
inline int atomicMin(int* p, int v) { int old = *p; if (v < old) *p = v; return old; }
inline int atomicExch(int* p, int v) { int old = *p; *p = v; return old; }
inline float atomicExch(float* p, float v) { float old = *p; *p = v; return old; }
inline int atomicCAS(int* p, int cmp, int v) { int old = *p; if (old == cmp) *p = v; return old; }

// ---- loads
template <typename T> T __ldg(const T* p) { return *p; }

// ---- math: the host's libm (correctly rounded or within an ulp or two; the GPU's
// intrinsics round differently, which a pass does not cover)
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
// _rn: one IEEE rounding (the host build compiles with -ffp-contract=off: no fusion)
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
// CUDA's overloaded integer/float min and max (in the global namespace, as CUDA declares them)
#define CUDA_EMU_MIN_MAX(T)                         \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
CUDA_EMU_MIN_MAX(int)
CUDA_EMU_MIN_MAX(unsigned int)
CUDA_EMU_MIN_MAX(long)
CUDA_EMU_MIN_MAX(unsigned long)
CUDA_EMU_MIN_MAX(long long)
CUDA_EMU_MIN_MAX(unsigned long long)
CUDA_EMU_MIN_MAX(float)
CUDA_EMU_MIN_MAX(double)
#undef CUDA_EMU_MIN_MAX
