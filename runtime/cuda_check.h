// CUDA_CHECK(call): throws nq::Error naming the call, file and line on failure.
#pragma once
#include <cuda_runtime.h>

#include "runtime/error.h"

#define CUDA_CHECK(call)                                                                   \
  do {                                                                                     \
    cudaError_t err_ = (call);                                                             \
    if (err_ != cudaSuccess)                                                               \
      throw ::nq::Error(::nq::str(#call, " failed at ", __FILE__, ":", __LINE__, ": ",     \
                                  cudaGetErrorString(err_)));                              \
  } while (0)
