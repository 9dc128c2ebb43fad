// Raw copies between devices. The CUDA build implements these with cudaMemcpy
// (runtime/cuda_runtime.cpp); the CPU build throws if a CUDA pointer shows up.
#pragma once
#include <cstddef>

#include "runtime/dtype.h"

namespace nq {
void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
void device_memset_zero(void* dst, size_t bytes);  // CUDA memory
void device_memset(void* dst, int byte, size_t bytes);  // CUDA memory, every byte = `byte`
bool cuda_available();                             // a usable CUDA device is present
}  // namespace nq
