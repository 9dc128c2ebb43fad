// cuda_emu stand-in for <cuda_bf16.h>: __nv_bfloat16 as 16 bits with the
// conversions of runtime/half.h (round to nearest even, NaN kept quiet), the
// same rounding cvt.rn.bf16.f32 performs on the GPU.
#pragma once
#include <cstdint>

#include "runtime/half.h"

struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(nq::f32_to_bf16(f)) {}
  operator float() const { return nq::bf16_to_f32(__x); }
};
using nv_bfloat16 = __nv_bfloat16;

inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return nq::bf16_to_f32(h.__x); }
