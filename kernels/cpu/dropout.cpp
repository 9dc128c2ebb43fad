// Dropout mask application (see dropout.h).
#include "kernels/cpu/dropout.h"

#include "runtime/philox.h"

namespace nq::cpu {

namespace {

// Eight Philox4x32-10 blocks side by side: the rounds of runtime/philox.h's
// philox4x32_10, each 32-bit word held in a 64-bit lane of a GCC vector, so one
// instruction does a step for all eight (the 32 x 32 -> 64-bit products become
// vector multiplies; the compiler picks the widest the CPU has). out[4 j + lane] =
// philox4x32_10(first + j, seed).v[lane], the same bits (tests/test_kernels.cpp).
constexpr int kBlocks = 8;
typedef uint64_t Lanes __attribute__((vector_size(kBlocks * sizeof(uint64_t))));

void philox_8_blocks(uint64_t first, uint64_t seed, uint32_t* out) {
  Lanes counter;
  for (int j = 0; j < kBlocks; ++j) counter[j] = first + uint64_t(j);
  Lanes c0 = counter & 0xffffffffu, c1 = counter >> 32, c2 = c0 ^ c0, c3 = c0 ^ c0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const Lanes p0 = c0 * uint64_t(kPhiloxM0), p1 = c2 * uint64_t(kPhiloxM1);
    const Lanes n0 = (p1 >> 32) ^ c1 ^ uint64_t(k0), n1 = p1 & 0xffffffffu;
    const Lanes n2 = (p0 >> 32) ^ c3 ^ uint64_t(k1), n3 = p0 & 0xffffffffu;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kPhiloxW0; k1 += kPhiloxW1;
  }
  for (int j = 0; j < kBlocks; ++j) {
    out[4 * j] = uint32_t(c0[j]); out[4 * j + 1] = uint32_t(c1[j]);
    out[4 * j + 2] = uint32_t(c2[j]); out[4 * j + 3] = uint32_t(c3[j]);
  }
}

}  // namespace

template <typename T> void dropout_apply(const T* in, T* out, int64_t n, float p, uint64_t seed, uint64_t offset) {
  const T keep_scale = T(1) / (T(1) - T(p));
  // Element i's uniform is lane i % 4 of Philox block offset + i / 4, so a chunk of
  // 8 blocks serves 32 elements. (Drawing a whole block per element and one block at
  // a time, as this first did, took a quarter of ./train's CPU time with LoRA
  // dropout on; docs/training.md.)
  constexpr int64_t kChunk = 4 * kBlocks;  // elements per chunk
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for if (n > (1 << 17))
  for (int64_t c = 0; c < chunks; ++c) {
    uint32_t u[kChunk];
    philox_8_blocks(offset + uint64_t(c * kBlocks), seed, u);
    const int64_t begin = c * kChunk, count = n - begin < kChunk ? n - begin : kChunk;
    for (int64_t e = 0; e < count; ++e)
      out[begin + e] = u32_to_uniform(u[e]) >= p ? in[begin + e] * keep_scale : T(0);
  }
}

template void dropout_apply<float>(const float*, float*, int64_t, float, uint64_t, uint64_t);
template void dropout_apply<double>(const double*, double*, int64_t, float, uint64_t, uint64_t);

}  // namespace nq::cpu
