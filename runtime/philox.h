// Philox4x32-10: a counter-based RNG (Salmon et al., "Parallel random numbers:
// as easy as 1, 2, 3", SC'11). random(seed, i) is a pure function, so element i
// of a dropout mask is the same number on the CPU and on the GPU, whatever the
// thread layout, and re-running a checkpointed layer reproduces its mask.
//
// Stream layout: the 64-bit counter `offset + i/4` picks a block of four u32,
// lane i%4 picks one of them. Callers reserve ranges of offsets (runtime/rng.h).
#pragma once
#include <cstdint>

#include "runtime/half.h"  // NQ_HD

namespace nq {

struct Philox4 { uint32_t v[4]; };

// The round multipliers and the key's bump per round (Random123's PHILOX_M4x32_*, PHILOX_W32_*).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

NQ_HD Philox4 philox4x32_10(uint64_t counter, uint64_t seed) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kPhiloxM0) * c0, p1 = uint64_t(kPhiloxM1) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n1 = uint32_t(p1);
    uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1, n3 = uint32_t(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kPhiloxW0; k1 += kPhiloxW1;
  }
  return {{c0, c1, c2, c3}};
}

// The i-th u32 of the stream (seed, offset).
NQ_HD uint32_t philox_u32(uint64_t seed, uint64_t offset, uint64_t i) {
  return philox4x32_10(offset + (i >> 2), seed).v[i & 3];
}
// A u32 to a uniform in [0, 1) with its top 24 bits (exactly representable in f32).
NQ_HD float u32_to_uniform(uint32_t u) { return float(u >> 8) * (1.0f / 16777216.0f); }
// Uniform in [0, 1): element i of the stream (seed, offset).
NQ_HD float philox_uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  return u32_to_uniform(philox_u32(seed, offset, i));
}

}  // namespace nq
