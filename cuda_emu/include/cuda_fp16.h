// cuda_emu stand-in for <cuda_fp16.h>: __half as 16 bits with the conversions of
// runtime/half.h (round to nearest even, subnormals kept, overflow to inf, NaN
// kept quiet), the same rounding cvt.rn.f16.f32 performs on the GPU.
#pragma once
#include <cstdint>

#include "runtime/half.h"

struct __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(nq::f32_to_f16(f)) {}
  operator float() const { return nq::f16_to_f32(__x); }
};
using half = __half;

inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float __half2float(__half h) { return nq::f16_to_f32(h.__x); }
