// RMSNorm forward and backward (HF Qwen3 semantics), also the per-head q/k norm
// when called on [N*H, Dh].
//   forward:  rstd[n] = 1 / sqrt(mean_d x[n,d]^2 + eps)        (f32)
//             y[n,d]  = w[d] * round_T(x[n,d] * rstd[n])        (HF casts x_hat to the
//             input dtype before the weight multiply; round_T is that cast)
//   backward: x_hat = x * rstd, g = dy * w,
//             dx = rstd * (g - x_hat * mean_d(g * x_hat)),   dw[d] = sum_n dy * x_hat
// Shapes: x, y, dy, dx [N, D] (f32/bf16), w [D] f32, rstd [N] f32, dw [D] f32.
// Launch: one warp per row, 8 rows per 256-thread block; the row is read twice
// (sum of squares, then normalise), the second read coming from L1/L2. dw:
// each block sums its 8 rows per column and atomically adds into dw (zeroed).
//   ./bench rmsnorm --tokens 16384 --hidden 1024     ./bench rmsnorm_bwd --tokens 16384 --hidden 1024
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

constexpr int kRowsPerBlock = 8;

template <typename T>
__global__ void rmsnorm_forward_kernel(T* y, float* rstd_out, const T* x, const float* w, int64_t N, int64_t D,
                                       float eps) {
  int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= N) return;
  const T* xr = x + row * D;
  float ss = 0.0f;
  for (int64_t d = lane; d < D; d += 32) { float v = to_f32(xr[d]); ss += v * v; }
  float rstd = rsqrtf(warp_sum(ss) / float(D) + eps);
  for (int64_t d = lane; d < D; d += 32) {
    float x_hat = to_f32(from_f32<T>(to_f32(xr[d]) * rstd));
    y[row * D + d] = from_f32<T>(w[d] * x_hat);
  }
  if (lane == 0 && rstd_out) rstd_out[row] = rstd;
}

template <typename T>
__global__ void rmsnorm_backward_kernel(T* dx, float* dw, const T* dy, const T* x, const float* w, const float* rstd,
                                        int64_t N, int64_t D) {
  int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row < N && dx) {
    const T *xr = x + row * D, *dyr = dy + row * D;
    float r = rstd[row], dot = 0.0f;
    for (int64_t d = lane; d < D; d += 32) dot += to_f32(dyr[d]) * w[d] * to_f32(xr[d]) * r;
    float mean_gx = warp_sum(dot) / float(D);
    for (int64_t d = lane; d < D; d += 32) {
      float x_hat = to_f32(xr[d]) * r;
      dx[row * D + d] = from_f32<T>(r * (to_f32(dyr[d]) * w[d] - x_hat * mean_gx));
    }
  }
  if (!dw) return;
  // Column sums of dy * x_hat over this block's rows, one thread per column.
  int64_t row0 = int64_t(blockIdx.x) * kRowsPerBlock, row1 = min(row0 + kRowsPerBlock, N);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t n = row0; n < row1; ++n) acc += to_f32(dy[n * D + d]) * to_f32(x[n * D + d]) * rstd[n];
    atomicAdd(dw + d, acc);
  }
}

static void check_weight_f32(const Tensor& w, const char* op) {
  NQ_CHECK(w.dtype() == DType::F32, op, ": the RMSNorm weight must be f32 on the GPU, got ", w.desc());
}

Tensor rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor* rstd) {
  check_weight_f32(w, "rmsnorm_forward");
  int64_t D = x.size(-1), N = D ? x.numel() / D : 0;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  if (rstd) *rstd = Tensor::empty({N}, DType::F32, Device::CUDA);
  if (N == 0) return y;
  dispatch_float(x, "rmsnorm_forward", [&](auto tag) {
    using T = decltype(tag);
    unsigned blocks = unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock);
    rmsnorm_forward_kernel<T><<<blocks, 32 * kRowsPerBlock>>>(ptr<T>(y), rstd ? ptr<float>(*rstd) : nullptr,
                                                              ptr<T>(x), ptr<float>(w), N, D, eps);
    NQ_LAUNCH_CHECK();
  });
  return y;
}

void rmsnorm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* grad_x,
                      Tensor* grad_w) {
  check_weight_f32(w, "rmsnorm_backward");
  NQ_CHECK(grad_y.dtype() == x.dtype(), "rmsnorm_backward: grad_y ", grad_y.desc(), " and x ", x.desc(), " differ in dtype");
  int64_t D = x.size(-1), N = D ? x.numel() / D : 0;
  if (grad_x) *grad_x = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  if (grad_w) *grad_w = Tensor::zeros({D}, DType::F32, Device::CUDA);
  if (N == 0 || (!grad_x && !grad_w)) return;
  dispatch_float(x, "rmsnorm_backward", [&](auto tag) {
    using T = decltype(tag);
    unsigned blocks = unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock);
    rmsnorm_backward_kernel<T><<<blocks, 32 * kRowsPerBlock>>>(
        grad_x ? ptr<T>(*grad_x) : nullptr, grad_w ? ptr<float>(*grad_w) : nullptr, ptr<T>(grad_y), ptr<T>(x),
        ptr<float>(w), ptr<float>(rstd), N, D);
    NQ_LAUNCH_CHECK();
  });
}

}  // namespace nq::kernels::cuda
