// Elementwise ops on f32 or bf16 tensors of n elements: dst += src, a + b,
// a * b, s * a, and sum(a). Math in f32, one rounding on the store.
// Launch: grid-stride loop, 256 threads per block, up to 65536 blocks.
// sum: each block reduces its part in f32 and writes one double partial; the
// host adds the partials in double (at most 1024 of them).
//   ./bench add --n 16777216      ./bench sum --n 16777216
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

enum class Binary { Add, Mul };

template <typename T>
__global__ void binary_kernel(T* out, const T* a, const T* b, int64_t n, Binary op) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float x = to_f32(a[i]), y = to_f32(b[i]);
    out[i] = from_f32<T>(op == Binary::Add ? x + y : x * y);
  }
}

template <typename T>
__global__ void scale_kernel(T* out, const T* a, float s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f32<T>(s * to_f32(a[i]));
}

template <typename T>
__global__ void sum_kernel(double* partials, const T* a, int64_t n) {
  __shared__ float scratch[32];
  float acc = 0.0f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    acc += to_f32(a[i]);
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

static void launch_binary(Tensor& out, const Tensor& a, const Tensor& b, Binary op, const char* name) {
  int64_t n = a.numel();
  if (n == 0) return;
  dispatch_float(a, name, [&](auto tag) {
    using T = decltype(tag);
    binary_kernel<T><<<grid_for(n, 256), 256>>>(ptr<T>(out), ptr<T>(a), ptr<T>(b), n, op);
    NQ_LAUNCH_CHECK();
  });
}

void add_inplace(Tensor& dst, const Tensor& src) { launch_binary(dst, dst, src, Binary::Add, "add_inplace"); }

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = Tensor::empty(a.shape(), a.dtype(), Device::CUDA);
  launch_binary(out, a, b, Binary::Add, "add");
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = Tensor::empty(a.shape(), a.dtype(), Device::CUDA);
  launch_binary(out, a, b, Binary::Mul, "mul");
  return out;
}

Tensor scale(const Tensor& a, float s) {
  Tensor out = Tensor::empty(a.shape(), a.dtype(), Device::CUDA);
  int64_t n = a.numel();
  if (n == 0) return out;
  dispatch_float(a, "scale", [&](auto tag) {
    using T = decltype(tag);
    scale_kernel<T><<<grid_for(n, 256), 256>>>(ptr<T>(out), ptr<T>(a), s, n);
    NQ_LAUNCH_CHECK();
  });
  return out;
}

float sum(const Tensor& a) {
  int64_t n = a.numel();
  if (n == 0) return 0.0f;
  unsigned blocks = std::min<unsigned>(grid_for(n, 256), 1024);
  Tensor partials = Tensor::empty({int64_t(blocks)}, DType::I64, Device::CUDA, MemCategory::Workspace);
  dispatch_float(a, "sum", [&](auto tag) {
    using T = decltype(tag);
    sum_kernel<T><<<blocks, 256>>>(static_cast<double*>(partials.raw()), ptr<T>(a), n);
    NQ_LAUNCH_CHECK();
  });
  std::vector<double> host(blocks);
  CUDA_CHECK(cudaMemcpy(host.data(), partials.raw(), blocks * sizeof(double), cudaMemcpyDeviceToHost));
  double total = 0.0;
  for (double p : host) total += p;
  return float(total);
}

}  // namespace nq::kernels::cuda
