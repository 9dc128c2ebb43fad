// ggml tensor types, their block decoders (dequantize_row_* of ggml-quants.c) and
// the encoders the GGUF export writes (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
//
// A quantized ggml tensor is a sequence of fixed-size blocks along its innermost
// dimension; each block packs `block_elems` weights into `block_bytes` bytes with
// one or two fp16 scales. The decoders here reproduce ggml's arithmetic (the same
// float operations in the same order), so they are bit-exact with llama.cpp and
// gguf-py. Layouts and formulas: docs/formats.md.
#pragma once
#include <cstdint>

namespace nq {

// The numbering is ggml's (enum ggml_type); gaps are types ggml removed.
enum class GGMLType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct GGMLTypeInfo {
  const char* name;   // "Q4_K"
  int block_elems;    // weights per block (1 for plain float types)
  int block_bytes;    // bytes per block
  bool decodable;     // dequantize_row() supports it
};

// Null for a number that is no ggml type (a corrupt file).
const GGMLTypeInfo* ggml_type_info(uint32_t type);

// "F32 F16 BF16 Q4_0 ...": the types dequantize_row() decodes, for error messages.
const char* ggml_decodable_types();

// Decodes n weights (a multiple of the type's block_elems) from `src` into `dst`.
// Throws nq::Error for a type that is not decodable.
void dequantize_row(GGMLType type, const uint8_t* src, float* dst, int64_t n);

// "F32 F16 BF16 Q8_0 Q4_0 Q4_1": the types quantize_row() encodes.
const char* ggml_encodable_types();
bool ggml_encodable(GGMLType type);

// Encodes n weights (a multiple of the type's block_elems) into `dst`
// (n / block_elems * block_bytes bytes), byte for byte what gguf-py's
// gguf.quants.quantize writes (the same float32 operations in the same order):
//   F16, BF16  round to nearest even (NaN kept quiet)
//   Q8_0  d = amax/127;          q = round_half_away(x/d)  (x * (1/d), as gguf-py)
//   Q4_0  d = x[argmax |x|]/-8;  q = min(15, trunc(x * (1/d) + 8.5))
//   Q4_1  d = (max-min)/15;      q = min(15, trunc((x-min) * (1/d) + 0.5)), m = min
// with 1/d taken as 0 when d is 0, and d, m stored as f16. Formulas: docs/gguf_export.md.
// Quantized types refuse a non-finite weight (nq::Error naming its index).
void quantize_row(GGMLType type, const float* src, uint8_t* dst, int64_t n);

// llama.cpp's convert_hf_to_gguf permutes the rows of attn_q / attn_k of
// llama-architecture models so that RoPE rotates adjacent pairs (x0,x1),(x2,x3)..
// instead of HF's halves (x_i, x_{i+d/2}). Within each head of d = rows/n_heads
// rows, GGUF row 2i+j holds HF row j*d/2+i (j in {0,1}). This undoes it in place:
// w is [rows, cols] row-major; n_heads is n_head for Q and n_head_kv for K.
void unpermute_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads);
// The converter's permutation itself (HF row j*d/2+i -> GGUF row 2i+j): the export
// of a llama-architecture model applies it; permute then unpermute is the identity.
void permute_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads);

}  // namespace nq
