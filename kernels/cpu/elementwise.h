// Elementwise CPU kernels: out = a + b, a * b, s * a, dst += src, and the sum of
// all elements. fp32 is the reference; templated so tests can run them in double.
#pragma once
#include <cstdint>

namespace nq::cpu {

template <typename T> void add_inplace(T* dst, const T* src, int64_t n);       // dst[i] += src[i]
template <typename T> void add(const T* a, const T* b, T* out, int64_t n);     // out[i] = a[i] + b[i]
template <typename T> void mul(const T* a, const T* b, T* out, int64_t n);     // out[i] = a[i] * b[i]
template <typename T> void scale(const T* a, T s, T* out, int64_t n);          // out[i] = s * a[i]
template <typename T> double sum(const T* a, int64_t n);                       // sum in double

}  // namespace nq::cpu
