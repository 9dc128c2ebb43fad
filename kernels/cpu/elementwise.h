// Elementwise CPU kernels (fp32 reference; templated so tests can run them in double).
#pragma once
#include <cstdint>

namespace nq::cpu {

template <typename T> void add_inplace(T* dst, const T* src, int64_t n);

}  // namespace nq::cpu
