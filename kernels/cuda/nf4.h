// An NF4 weight on the GPU, in bitsandbytes' layout (4-bit NormalFloat with
// double quantization), as plain device pointers: what the NF4 kernels read.
//
// The weight W has logical shape [out, in], flattened row-major; element f
// (= o * in + i) lives in block b = f / blocksize (blocks span rows when in is
// not a multiple of blocksize):
//   packed[f / 2]: two 4-bit codes per byte, the FIRST element in the HIGH nibble
//   absmax[b]    = code8[absmax_q[b]] * nested_absmax[b / nested_blocksize] + offset   (double quant)
//                  or absmax_f32[b] when absmax_f32 is set (no double quant)
//   W[f]         = NF4[nibble] * absmax[b]     (f32; one more rounding when staged as bf16)
// code8 is bitsandbytes' signed 8-bit dynamic map (256 f32 values); NF4 the 16
// normal-quantile values below (bitsandbytes functional.get_4bit_type("nf4")).
#pragma once
#include <cstdint>

namespace nq::kernels::cuda {

// How the NF4 matmuls (nf4_matmul.cu) multiply, by the number of rows M of x:
//   M <= kNf4GemvMaxRows                     GEMV, each weight decoded once for all rows
//   kNf4GemvMaxRows < M < kNf4DequantMinRows  fused: the tensor-core GEMM dequantizes W tile by tile
//   M >= kNf4DequantMinRows                  dequantized: W -> a bf16 copy in a workspace buffer
//                                            [out, in], then cuBLASLt (as bitsandbytes does)
// Why the switch: dequantizing costs a pass over W (read 0.5, write 2, read 2 bytes per
// weight) whatever M is, while the GEMM's work grows with M. From a few hundred rows on,
// that pass is small next to the product, and cuBLASLt's GEMM (wgmma on Hopper) is far
// faster than the fused WMMA kernel; below it, re-reading a bf16 W would dominate.
// 256 is an estimate from that arithmetic, not yet a measurement: ./bench nf4_matmul_fused
// and nf4_matmul_dequant time both at the training shapes (tools/gpu_check.sh).
constexpr int64_t kNf4GemvMaxRows = 16;
constexpr int64_t kNf4DequantMinRows = 256;

struct Nf4Weight {
  const uint8_t* packed = nullptr;        // [ceil(out * in / 2)]
  const uint8_t* absmax_q = nullptr;      // [n_blocks] indices into code8 (double quant)
  const float* code8 = nullptr;           // [256] signed dynamic map (double quant)
  const float* nested_absmax = nullptr;   // [ceil(n_blocks / nested_blocksize)] (double quant)
  const float* absmax_f32 = nullptr;      // [n_blocks]; set instead of the three above without double quant
  float offset = 0.0f;                    // mean of the absmax values, added back (double quant)
  int64_t out = 0, in = 0;
  int32_t blocksize = 64, nested_blocksize = 256;
};

// The 16 NF4 values (quantiles of N(0, 1) scaled to [-1, 1]), bitsandbytes' exact f32 constants.
// One table for host code and kernels: in .cu files it is a __device__ variable.
#ifdef __CUDACC__
#define NQ_NF4_TABLE __device__ constexpr
#else
#define NQ_NF4_TABLE constexpr
#endif
NQ_NF4_TABLE float kNf4Values[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

}  // namespace nq::kernels::cuda
