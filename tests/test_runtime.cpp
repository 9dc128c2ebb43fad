// runtime/: bf16/f16 rounding, Philox known answers, tensor views, accounting.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include "runtime/half.h"
#include "runtime/philox.h"
#include "runtime/rng.h"
#include "runtime/tensor.h"

using namespace nq;

TEST_CASE("bf16 rounds to nearest even") {
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1 + 2^-7: ties go to even (1.0).
  CHECK(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);
  // 1 + 3*2^-8 is halfway between 1+2^-7 (odd mantissa) and 1+2^-6: goes up to even.
  CHECK(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);
  // Just above halfway rounds up.
  CHECK(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 0x3f81);
  CHECK(bf16_to_f32(0x3f80) == 1.0f);
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  CHECK(bf16_to_f32(f32_to_bf16(INFINITY)) == INFINITY);
  // Every bf16 value survives the round trip.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = bf16_to_f32(uint16_t(h));
    if (!std::isnan(f)) REQUIRE(f32_to_bf16(f) == h);
  }
}

TEST_CASE("f16 conversion matches IEEE half on every value") {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) { CHECK(std::isnan(f16_to_f32(f32_to_f16(f)))); continue; }
    REQUIRE(f32_to_f16(f) == h);
  }
  CHECK(f16_to_f32(0x3c00) == 1.0f);
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(f32_to_f16(65504.0f) == 0x7bff);
  CHECK(f32_to_f16(65520.0f) == 0x7c00);             // rounds to inf
  CHECK(f32_to_f16(std::ldexp(1.0f, -25)) == 0x0000);  // halfway to the smallest subnormal: even = 0
  CHECK(f32_to_f16(std::ldexp(1.5f, -25)) == 0x0001);
  // Halfway between 1 and 1+2^-10 goes to even (1.0); 1 + 3*2^-11 goes up.
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
  CHECK(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
}

TEST_CASE("Philox4x32-10 known-answer vectors (Random123 kat_vectors)") {
  // counter {0,0,0,0}, key {0,0}
  Philox4 r = philox4x32_10(0, 0);
  CHECK(r.v[0] == 0x6627e8d5u); CHECK(r.v[1] == 0xe169c58du); CHECK(r.v[2] == 0xbc57ac4cu); CHECK(r.v[3] == 0x9b00dbd8u);
  // uniform draws are in [0, 1) and reproducible
  float a = philox_uniform(42, 7, 5), b = philox_uniform(42, 7, 5);
  CHECK(a == b);
  CHECK(a >= 0.0f);
  CHECK(a < 1.0f);
  double mean = 0;
  for (int i = 0; i < 100000; ++i) mean += philox_uniform(1, 0, i);
  CHECK(std::fabs(mean / 100000 - 0.5) < 0.01);
}

TEST_CASE("rng_reserve hands out disjoint ranges") {
  rng_seed(3);
  uint64_t a = rng_reserve(10), b = rng_reserve(1);
  CHECK(a == 0);
  CHECK(b == 3);  // 10 u32 = 3 Philox blocks
  CHECK(rng_state().offset == 4);
}

TEST_CASE("tensor views share storage; slices pick rows") {
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {3, 2});
  Tensor v = t.view({2, 3});
  CHECK(v.shares_storage(t));
  CHECK(v.data<float>()[4] == 4.0f);
  Tensor s = t.slice(1, 3);
  CHECK(s.shape() == Shape{2, 2});
  CHECK(s.data<float>()[0] == 2.0f);
  s.data<float>()[0] = 9.0f;
  CHECK(t.data<float>()[2] == 9.0f);
  CHECK_THROWS_WITH_AS(t.view({4, 2}), "Tensor::view: cannot view f32[3, 2] cpu as [4, 2]", Error);
  CHECK_THROWS_WITH_AS(t.slice(2, 4), "Tensor::slice: rows [2, 4) out of range for f32[3, 2] cpu", Error);
  CHECK_THROWS_AS(t.data<int32_t>(), Error);
  CHECK(std::isnan(Tensor::empty({4}).data<float>()[3]));  // poisoned by tests/main.cpp
}

TEST_CASE("allocator counts current and peak bytes per category") {
  Allocator& a = allocator_for(Device::CPU);
  MemStats before = a.stats();
  size_t lora0 = before.current[size_t(MemCategory::LoRA)];
  {
    Tensor x = Tensor::empty({1000}, DType::F32, Device::CPU, MemCategory::LoRA);
    CHECK(a.stats().current[size_t(MemCategory::LoRA)] == lora0 + 4000);
    CHECK(a.stats().peak[size_t(MemCategory::LoRA)] >= lora0 + 4000);
  }
  CHECK(a.stats().current[size_t(MemCategory::LoRA)] == lora0);
}

TEST_CASE("dtype conversion round-trips through bf16") {
  Tensor t = Tensor::from_vector({1.0f, -2.5f, 3.140625f}, {3});
  Tensor b = t.to_dtype(DType::BF16);
  CHECK(b.dtype() == DType::BF16);
  std::vector<float> back = b.to_vector();
  CHECK(back[0] == 1.0f);
  CHECK(back[1] == -2.5f);
  CHECK(back[2] == 3.140625f);
}
