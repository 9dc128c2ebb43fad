// GPU_TEST: a test that needs a CUDA device. With one, the body runs; without
// one (or in a CPU-only build, where the body is compiled but never called) the
// test prints one `skipped: no CUDA device (<name>)` line and passes. In the
// emulated build (make EMU=1, cuda_emu/) the device is the CPU emulation: the
// body runs and the test prints one `emulated device: <name>` line.
//
//   #define GPU_TEST(name) NQ_GPU_TEST("cuda " #name, name)   // per file: its label
//   GPU_TEST(rmsnorm) { ... }
#pragma once
#include <doctest/doctest.h>

#include <cstdio>

#include "runtime/device_copy.h"

inline void print_gpu_skip(const char* name) { std::printf("skipped: no CUDA device (%s)\n", name); }

#if defined(NQ_CUDA_EMU)
#define NQ_GPU_TEST(title, name)                                                               \
  static void name();                                                                          \
  TEST_CASE(title) {                                                                           \
    std::printf("emulated device: %s runs on cuda_emu (the CPU), not a GPU\n", #name);          \
    name();                                                                                    \
  }                                                                                            \
  static void name()
#elif defined(NQ_CUDA)
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
