// SwiGLU: y = silu(gate) * up, silu(g) = g * s, s = sigmoid(g) = 1 / (1 + e^-g).
// Backward: dgate = dy * up * s * (1 + g * (1 - s)),  dup = dy * g * s.
#pragma once
#include <cstdint>

namespace nq::cpu {

template <typename T> void swiglu_forward(const T* gate, const T* up, T* y, int64_t n);
template <typename T>
void swiglu_backward(const T* grad_y, const T* gate, const T* up, T* grad_gate, T* grad_up, int64_t n);

}  // namespace nq::cpu
