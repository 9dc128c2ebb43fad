// SwiGLU forward/backward (math in swiglu.h). 1 / (1 + e^-g) is safe for any g:
// e^-g overflows to inf for very negative g and s becomes 0, as it should.
#include "kernels/cpu/swiglu.h"

#include <cmath>

namespace nq::cpu {

template <typename T> static T sigmoid(T g) { return T(1) / (T(1) + std::exp(-g)); }

template <typename T> void swiglu_forward(const T* gate, const T* up, T* y, int64_t n) {
#pragma omp parallel for if (n > (1 << 17))
  for (int64_t i = 0; i < n; ++i) y[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

template <typename T>
void swiglu_backward(const T* grad_y, const T* gate, const T* up, T* grad_gate, T* grad_up, int64_t n) {
#pragma omp parallel for if (n > (1 << 17))
  for (int64_t i = 0; i < n; ++i) {
    T g = gate[i], s = sigmoid(g);
    if (grad_gate) grad_gate[i] = grad_y[i] * up[i] * s * (T(1) + g * (T(1) - s));
    if (grad_up) grad_up[i] = grad_y[i] * g * s;
  }
}

template void swiglu_forward<float>(const float*, const float*, float*, int64_t);
template void swiglu_forward<double>(const double*, const double*, double*, int64_t);
template void swiglu_backward<float>(const float*, const float*, const float*, float*, float*, int64_t);
template void swiglu_backward<double>(const double*, const double*, const double*, double*, double*, int64_t);

}  // namespace nq::cpu
