// GPU_TEST: a test that needs a CUDA device. With one, the body runs; without
// one (or in a CPU-only build, where the body is compiled but never called) the
// test prints one `skipped: no CUDA device (<name>)` line and passes.
//
//   #define GPU_TEST(name) NQ_GPU_TEST("cuda " #name, name)   // per file: its label
//   GPU_TEST(rmsnorm) { ... }
#pragma once
#include <doctest/doctest.h>

#include <cstdio>

#include "runtime/device_copy.h"

inline void print_gpu_skip(const char* name) { std::printf("skipped: no CUDA device (%s)\n", name); }

#ifdef NQ_CUDA
#define NQ_GPU_TEST(title, name)                              \
  static void name();                                         \
  TEST_CASE(title) {                                          \
    if (!::nq::cuda_available()) return print_gpu_skip(#name); \
    name();                                                   \
  }                                                           \
  static void name()
#else
#define NQ_GPU_TEST(title, name)                  \
  TEST_CASE(title) { print_gpu_skip(#name); }     \
  [[maybe_unused]] static void name()
#endif
