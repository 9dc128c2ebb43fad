// Device-side NF4 decoding shared by nf4_dequantize.cu and nf4_matmul.cu:
// element f of the flattened [out, in] weight, as f32 (see nf4.h for the layout).
#pragma once
#include "kernels/cuda/nf4.h"

namespace nq::kernels::cuda {

// absmax of block b: code8[q] * nested + offset (two f32 roundings, as bitsandbytes'
// dequantize_blockwise followed by `absmax += offset`), or the plain f32 value.
__device__ __forceinline__ float nf4_block_absmax(const Nf4Weight& w, int64_t b) {
  if (w.absmax_f32) return w.absmax_f32[b];
  float scaled = __fmul_rn(w.code8[w.absmax_q[b]], w.nested_absmax[b / w.nested_blocksize]);
  return __fadd_rn(scaled, w.offset);
}

__device__ __forceinline__ float nf4_element(const Nf4Weight& w, int64_t f) {
  uint8_t byte = w.packed[f >> 1];
  int nibble = (f & 1) ? (byte & 0x0f) : (byte >> 4);
  return __fmul_rn(kNf4Values[nibble], nf4_block_absmax(w, f / w.blocksize));
}

}  // namespace nq::kernels::cuda
