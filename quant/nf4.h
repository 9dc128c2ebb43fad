// NF4 4-bit weights with double quantization, bit-exact with bitsandbytes.
//
// A frozen weight W of logical shape [out, in] is flattened row-major into
// numel = out*in values and cut into blocks of `blocksize` (default 64)
// consecutive values; blocks run across row boundaries and the last block may
// be partial. Each block b stores absmax[b] = max |w| and each value stores the
// 4-bit index of the nearest NF4 code to w / absmax[b] (kNf4Code, 16 quantiles
// of N(0, 1) scaled to [-1, 1]). Dequantized: w ~= kNf4Code[q] * absmax[b].
//
// Layout (exactly bitsandbytes', so files and GPU kernels can share it):
//   packed  u8 [ceil(numel/2)]  value 2i in the HIGH nibble of byte i, value
//                               2i+1 in the low nibble; an odd numel pads the
//                               last low nibble with code 7 (the NF4 zero).
//   plain (double_quant = false):
//     absmax        f32 [n_blocks]
//   double quant (the default, bnb_4bit_use_double_quant=True):
//     absmax        u8  [n_blocks]  8-bit codes of (absmax - offset) into
//                                   nested_code, blockwise with nested blocks of 256
//     nested_absmax f32 [ceil(n_blocks/256)]
//     nested_code   f32 [256]       bitsandbytes' signed dynamic map
//     offset        f32             mean of the f32 absmax values
//   block absmax, reconstructed: float(nested_code[c] * nested_absmax[b/256]) + offset
//
// See docs/nf4.md for the math, the tie rule and the all-zero block.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>

#include "runtime/tensor.h"

namespace nq {

// The 16 NF4 values, ascending (bitsandbytes get_4bit_type("nf4")).
extern const std::array<float, 16> kNf4Code;

// bitsandbytes create_dynamic_map(signed=True): 256 ascending f32 values in
// [-0.99297, 1] with a dynamic exponent (7 decades) and a linear fraction.
std::array<float, 256> dynamic_map_signed();

// torch.mean of a contiguous f32 vector, bit-exact with PyTorch's CPU kernel
// for n <= 32768 (its single-chunk cascade sum over 8-wide vectors); used for
// the double-quant offset. See docs/nf4.md.
float torch_mean_f32(const float* x, int64_t n);

struct Nf4Tensor {
  int64_t out = 0, in = 0;       // logical shape [out, in]
  int64_t blocksize = 64;
  bool double_quant = true;
  std::string dtype = "float32";  // the original weight's torch dtype name, kept for serialization
  Tensor packed;                 // u8 [ceil(numel/2)]
  Tensor absmax;                 // f32 [n_blocks] (plain) or u8 [n_blocks] (double quant)
  // double quant only:
  int64_t nested_blocksize = 256;
  Tensor nested_absmax;          // f32 [ceil(n_blocks / nested_blocksize)]
  Tensor nested_code;            // f32 [256]
  float offset = 0.0f;

  int64_t numel() const { return out * in; }
  int64_t n_blocks() const { return (numel() + blocksize - 1) / blocksize; }
  // Stored bits per weight: packed nibbles + per-block statistics (+ nested
  // statistics and the offset). About 4.127 with double quant at blocksize 64.
  double bits_per_parameter() const;
  // Bytes held: packed codes, block absmax, and (double quant) the nested absmax and code.
  size_t nbytes() const;
  // f32 absmax of block b (undoing the double quantization).
  float block_absmax(int64_t b) const;
  // The same codes and statistics, byte for byte, on `device`, counted as Weights (the
  // tensors already there are shared, not copied).
  Nf4Tensor to(Device device) const;
};

// Quantizes w [out, in] (row-major f32). blocksize: a power of two in [32, 4096]
// as bitsandbytes accepts. Non-finite values raise nq::Error naming `name`.
Nf4Tensor quantize_nf4(const float* w, int64_t out, int64_t in, int64_t blocksize = 64,
                       bool double_quant = true, const std::string& name = "weight");
// The same for a CPU tensor [out, in] in f32, bf16 or f16 (a checkpoint's mapped
// view): the 16-bit values are widened one at a time, never copied to f32, and the
// bytes are those of quantize_nf4 on the widened copy (the widening is exact).
Nf4Tensor quantize_nf4(const Tensor& w, int64_t blocksize = 64, bool double_quant = true,
                       const std::string& name = "weight");

// Dequantizes rows [row_begin, row_end) of the weight into dst [row_end - row_begin, in].
// The tile-by-tile building block of nf4_linear (and of dequantize_nf4).
void dequantize_nf4_rows(const Nf4Tensor& q, int64_t row_begin, int64_t row_end, float* dst);
// The whole weight as f32 [out, in].
Tensor dequantize_nf4(const Nf4Tensor& q);

// The state dict bitsandbytes / transformers save for a Linear4bit weight:
//   <prefix>                                   u8 [ceil(numel/2), 1]
//   <prefix>.absmax                            f32 or u8 [n_blocks]
//   <prefix>.quant_map                         f32 [16]
//   <prefix>.nested_absmax, .nested_quant_map  (double quant only)
//   <prefix>.quant_state.bitsandbytes__nf4     u8 [len] : the JSON of QuantState.as_dict
std::map<std::string, Tensor> nf4_to_state_dict(const Nf4Tensor& q, const std::string& prefix = "weight");
// The inverse; errors name the missing / malformed tensor.
Nf4Tensor nf4_from_state_dict(const std::map<std::string, Tensor>& sd, const std::string& prefix = "weight");

}  // namespace nq
