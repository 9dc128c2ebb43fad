// bf16 and f16 <-> f32 conversions, round-to-nearest-even, NaN preserved.
// Host and device: the CUDA kernels use the same functions for their reference math.
//
//   bf16: the top 16 bits of an IEEE f32 (8-bit exponent, 7-bit mantissa).
//   f16 : IEEE half (5-bit exponent, 10-bit mantissa, subnormals below 2^-14).
#pragma once
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define NQ_HD __host__ __device__ __forceinline__
#else
#define NQ_HD inline
#endif

namespace nq {

NQ_HD uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
NQ_HD float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

NQ_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit.
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
NQ_HD float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

NQ_HD uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);           // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);          // rounds to >= 65520: inf
  if (a < 0x38800000u) {                                          // below 2^-14: subnormal or 0
    if (a < 0x33000000u) return uint16_t(sign);                   // below 2^-25: rounds to 0
    // Subnormal: value = m * 2^-24. Shift the 24-bit significand and round to even.
    uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;                                     // 14..24
    uint32_t half_m = m >> shift, rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_m & 1u))) half_m++;
    return uint16_t(sign | half_m);
  }
  // Normal: rebias exponent (127 -> 15), round 23 -> 10 mantissa bits to even.
  uint32_t r = a - 0x38000000u;
  r += 0xfffu + ((r >> 13) & 1u);
  return uint16_t(sign | (r >> 13));
}
NQ_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));  // inf / NaN
  if (e == 0) {                                                    // zero or subnormal: m * 2^-24
    float v = float(m) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

}  // namespace nq
