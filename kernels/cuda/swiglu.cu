// SwiGLU: y = silu(gate) * up, silu(g) = g * sigmoid(g).
//   backward: dup   = dy * silu(g)
//             dgate = dy * up * sigmoid(g) * (1 + g * (1 - sigmoid(g)))
// Shapes: gate, up, y and their grads [N, F] (f32/bf16), elementwise.
// Launch: grid-stride loop, 256 threads per block. Forward and backward each
// read their inputs once and write once (memory bound).
//   ./bench swiglu --n 50331648     ./bench swiglu_bwd --n 50331648
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

template <typename T>
__global__ void swiglu_forward_kernel(T* y, const T* gate, const T* up, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float g = to_f32(gate[i]);
    y[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[i]));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dy, const T* gate, const T* up, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float g = to_f32(gate[i]), u = to_f32(up[i]), d = to_f32(dy[i]);
    float sig = 1.0f / (1.0f + expf(-g));
    if (dup) dup[i] = from_f32<T>(d * g * sig);
    if (dgate) dgate[i] = from_f32<T>(d * u * sig * (1.0f + g * (1.0f - sig)));
  }
}

Tensor swiglu_forward(const Tensor& gate, const Tensor& up) {
  Tensor y = Tensor::empty(gate.shape(), gate.dtype(), Device::CUDA);
  int64_t n = gate.numel();
  if (n == 0) return y;
  dispatch_float(gate, "swiglu_forward", [&](auto tag) {
    using T = decltype(tag);
    swiglu_forward_kernel<T><<<grid_for(n, 256), 256>>>(ptr<T>(y), ptr<T>(gate), ptr<T>(up), n);
    NQ_LAUNCH_CHECK();
  });
  return y;
}

void swiglu_backward(const Tensor& grad_y, const Tensor& gate, const Tensor& up, Tensor* grad_gate, Tensor* grad_up) {
  if (grad_gate) *grad_gate = Tensor::empty(gate.shape(), gate.dtype(), Device::CUDA);
  if (grad_up) *grad_up = Tensor::empty(up.shape(), up.dtype(), Device::CUDA);
  int64_t n = gate.numel();
  if (n == 0 || (!grad_gate && !grad_up)) return;
  dispatch_float(gate, "swiglu_backward", [&](auto tag) {
    using T = decltype(tag);
    swiglu_backward_kernel<T><<<grid_for(n, 256), 256>>>(grad_gate ? ptr<T>(*grad_gate) : nullptr,
                                                         grad_up ? ptr<T>(*grad_up) : nullptr, ptr<T>(grad_y),
                                                         ptr<T>(gate), ptr<T>(up), n);
    NQ_LAUNCH_CHECK();
  });
}

}  // namespace nq::kernels::cuda
