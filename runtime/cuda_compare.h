// What tests/test_cuda.cpp and ./bench need to hold a CUDA kernel against its
// CPU reference: reproducible random inputs and a relative error by norm.
//
// Inputs come from the Philox stream (runtime/philox.h), so the same seed gives
// the same tensor everywhere. Values are N(0, 1) * scale, never exactly zero
// (a zero input can hide a kernel that ignores it).
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace nq {

// f32 CPU tensor of N(0, scale^2) values (Box-Muller on the Philox stream `seed`).
Tensor random_normal(Shape shape, uint64_t seed, float scale = 1.0f);
// i32 CPU tensor of uniform integers in [lo, hi).
Tensor random_ints(Shape shape, uint64_t seed, int32_t lo, int32_t hi);
// The values `t` holds after rounding to `dtype` and back (f32 CPU): the input
// the CPU reference must see so that it computes on what the GPU computes on.
Tensor rounded_to(const Tensor& t, DType dtype);
// t rounded to `dtype` and copied to the GPU.
Tensor to_device(const Tensor& t, DType dtype);

// ||got - want||_2 / ||want||_2 over all elements (any float dtype, any device);
// infinity when a value is NaN or the shapes differ, |got| when want is all zero.
double relative_error(const Tensor& got, const Tensor& want);

}  // namespace nq
