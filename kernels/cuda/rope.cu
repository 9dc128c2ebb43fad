// Rotary position embedding, rotate-half (NeoX / HF Llama-Qwen) layout.
// x [N, H, Dh] (f32/bf16), positions [N] i32, the model's RoPE table
// (kernels/rope_table.h: inv_freq [Dh/2], attention scaling s). For i < Dh/2:
//   angle = pos[n] * inv_freq_i   (f32, as HF),  cos, sin = s cos(angle), s sin(angle)
// The table is the host's, computed once per model by the CPU's rope_table() and
// passed as a kernel argument: the device powf is not correctly rounded, and one ulp
// of inv_freq is an angle error of pos * 6e-8 rad (2e-3 at position 32k).
//   y[i]      = x[i] cos - x[i + Dh/2] sin
//   y[i+Dh/2] = x[i + Dh/2] cos + x[i] sin
// Backward is the transpose: s times the rotation by -angle, so both directions
// are one kernel with sign = +1 / -1.
// Launch: one thread per rotation pair (n, h, i), grid-stride, 256 threads.
// The output may alias the input (each thread reads its pair before writing).
//   ./bench rope --tokens 16384 --heads 16 --head-dim 128
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

// inv_freq_i for i < Dh/2, by value in the kernel's parameters (Dh <= 2 * kMaxRopePairs).
constexpr int kMaxRopePairs = 256;
struct RopeFreqs {
  float inv_freq[kMaxRopePairs];
};

template <typename T>
__global__ void rope_kernel(T* y, const T* x, const int32_t* positions, int64_t N, int64_t H, int64_t Dh,
                            RopeFreqs freqs, float scaling, float sign) {
  int64_t half = Dh / 2, pairs = N * H * half;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < pairs; p += int64_t(gridDim.x) * blockDim.x) {
    int64_t i = p % half, nh = p / half, n = nh / H;
    float angle = float(positions[n]) * freqs.inv_freq[i], s, c;
    sincosf(angle, &s, &c);
    c *= scaling;
    s = sign * (s * scaling);
    int64_t base = nh * Dh;
    float a = to_f32(x[base + i]), b = to_f32(x[base + i + half]);
    y[base + i] = from_f32<T>(a * c - b * s);
    y[base + i + half] = from_f32<T>(b * c + a * s);
  }
}

static Tensor rope(const Tensor& x, const Tensor& positions, const RopeTable& table, float sign, const char* op) {
  int64_t N = x.size(0), H = x.size(1), Dh = x.size(2);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  int64_t pairs = N * H * (Dh / 2);
  if (pairs == 0) return y;
  NQ_CHECK(Dh / 2 <= kMaxRopePairs, op, ": head_dim ", Dh, " of x ", x.shape().str(), " exceeds the GPU kernel's ",
           2 * kMaxRopePairs);
  RopeFreqs freqs{};
  for (int64_t i = 0; i < Dh / 2; ++i) freqs.inv_freq[i] = table.inv_freq[i];
  dispatch_float(x, op, [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<grid_for(pairs, 256), 256>>>(ptr<T>(y), ptr<T>(x), ptr<int32_t>(positions), N, H, Dh, freqs,
                                                  table.attention_scaling, sign);
    NQ_LAUNCH_CHECK();
  });
  return y;
}

Tensor rope_forward(const Tensor& x, const Tensor& positions, const RopeTable& table) {
  return rope(x, positions, table, +1.0f, "rope_forward");
}
Tensor rope_backward(const Tensor& grad_y, const Tensor& positions, const RopeTable& table) {
  return rope(grad_y, positions, table, -1.0f, "rope_backward");
}

}  // namespace nq::kernels::cuda
