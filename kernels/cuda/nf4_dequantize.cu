// NF4 (+ double quant) dequantization of a whole weight: W [out, in] as f32,
// bf16 or f16, with bitsandbytes' arithmetic (kernels/cuda/nf4.cuh), so the f32
// output is bit-identical to bitsandbytes' dequantize_4bit, and the 16-bit ones
// to its bf16 / fp16 dequantization (the f32 product code x absmax, rounded once
// to nearest even). The NF4 matmuls call it for large M (nf4.h: their Dequantized
// path, W -> x's dtype then cuBLASLt); it also serves
// tests, and is the memory-bound baseline in ./bench.
// Launch: one thread per element, grid-stride, 256 threads per block.
//   ./bench nf4_dequantize --n 4096 --k 4096    (out, in)
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nf4.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

template <typename T>
__global__ void nf4_dequantize_kernel(T* out, Nf4Weight w) {
  int64_t n = w.out * w.in;
  for (int64_t f = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; f < n; f += int64_t(gridDim.x) * blockDim.x)
    out[f] = from_f32<T>(nf4_element(w, f));
}

Tensor nf4_dequantize(const Nf4Weight& w, DType dtype, MemCategory category) {
  Tensor out = Tensor::empty({w.out, w.in}, dtype, Device::CUDA, category);
  int64_t n = w.out * w.in;
  if (n == 0) return out;
  dispatch_float(out, "nf4_dequantize", [&](auto tag) {
    using T = decltype(tag);
    nf4_dequantize_kernel<T><<<grid_for(n, 256), 256>>>(ptr<T>(out), w);
    NQ_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace nq::kernels::cuda
