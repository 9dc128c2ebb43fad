// ggml block decoders, one function per type, mirroring ggml-quants.c's
// dequantize_row_*, and the encoders of gguf-py's quants.py (F16, BF16, Q8_0,
// Q4_0, Q4_1); see gguf_blocks.h and docs/formats.md for the layouts.
#include "quant/gguf_blocks.h"

#include <cmath>
#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "runtime/error.h"
#include "runtime/half.h"

namespace nq {

const GGMLTypeInfo* ggml_type_info(uint32_t type) {
  // {name, block_elems, block_bytes, decodable}; sizes from ggml's type_traits.
  static const struct { uint32_t id; GGMLTypeInfo info; } kTypes[] = {
      {0, {"F32", 1, 4, true}},        {1, {"F16", 1, 2, true}},
      {2, {"Q4_0", 32, 18, true}},     {3, {"Q4_1", 32, 20, true}},
      {6, {"Q5_0", 32, 22, true}},     {7, {"Q5_1", 32, 24, true}},
      {8, {"Q8_0", 32, 34, true}},     {9, {"Q8_1", 32, 40, false}},
      {10, {"Q2_K", 256, 84, false}},  {11, {"Q3_K", 256, 110, false}},
      {12, {"Q4_K", 256, 144, true}},  {13, {"Q5_K", 256, 176, false}},
      {14, {"Q6_K", 256, 210, true}},  {15, {"Q8_K", 256, 292, false}},
      {16, {"IQ2_XXS", 256, 66, false}}, {17, {"IQ2_XS", 256, 74, false}},
      {18, {"IQ3_XXS", 256, 98, false}}, {19, {"IQ1_S", 256, 50, false}},
      {20, {"IQ4_NL", 32, 18, false}}, {21, {"IQ3_S", 256, 110, false}},
      {22, {"IQ2_S", 256, 82, false}}, {23, {"IQ4_XS", 256, 136, false}},
      {24, {"I8", 1, 1, false}},       {25, {"I16", 1, 2, false}},
      {26, {"I32", 1, 4, false}},      {27, {"I64", 1, 8, false}},
      {28, {"F64", 1, 8, false}},      {29, {"IQ1_M", 256, 56, false}},
      {30, {"BF16", 1, 2, true}},      {34, {"TQ1_0", 256, 54, false}},
      {35, {"TQ2_0", 256, 66, false}}, {39, {"MXFP4", 32, 17, false}},
  };
  for (const auto& t : kTypes)
    if (t.id == type) return &t.info;
  return nullptr;
}

const char* ggml_decodable_types() { return "F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q6_K"; }

static float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);  // little-endian host
  return f16_to_f32(h);
}

// Q4_0: {f16 d; u8 qs[16]} -> 32 weights. Low nibbles are weights 0..15, high
// nibbles 16..31; w = (q - 8) * d.
static void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = float((qs[j] & 0x0F) - 8) * d;
    y[j + 16] = float((qs[j] >> 4) - 8) * d;
  }
}

// Q4_1: {f16 d; f16 m; u8 qs[16]}; w = q * d + m.
static void dequant_q4_1(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = float(qs[j] & 0x0F) * d + m;
    y[j + 16] = float(qs[j] >> 4) * d + m;
  }
}

// The fifth bit of weight j of a Q5 block is bit j of the 32-bit qh.
static uint32_t u32_at(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Q5_0: {f16 d; u32 qh; u8 qs[16]}; w = (q - 16) * d with q = nibble | qh bit << 4.
static void dequant_q5_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  const uint32_t qh = u32_at(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int hi0 = ((qh >> j) << 4) & 0x10, hi1 = (qh >> (j + 12)) & 0x10;
    y[j] = float(((qs[j] & 0x0F) | hi0) - 16) * d;
    y[j + 16] = float(((qs[j] >> 4) | hi1) - 16) * d;
  }
}

// Q5_1: {f16 d; f16 m; u32 qh; u8 qs[16]}; w = q * d + m.
static void dequant_q5_1(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  const uint32_t qh = u32_at(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int hi0 = ((qh >> j) << 4) & 0x10, hi1 = (qh >> (j + 12)) & 0x10;
    y[j] = float((qs[j] & 0x0F) | hi0) * d + m;
    y[j + 16] = float((qs[j] >> 4) | hi1) * d + m;
  }
}

// Q8_0: {f16 d; i8 qs[32]}; w = q * d.
static void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int j = 0; j < 32; ++j) y[j] = float(int8_t(b[2 + j])) * d;
}

// Q4_K super-block of 256 = 8 sub-blocks of 32: {f16 d; f16 dmin; u8 scales[12];
// u8 qs[128]}. Sub-block s has a 6-bit scale sc and 6-bit min mn packed in
// `scales`; w = d*sc * q - dmin*mn. Each 32 bytes of qs hold two sub-blocks
// (low nibbles, then high nibbles).
static void q4_k_scale_min(int s, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  if (s < 4) {
    *sc = q[s] & 63;
    *mn = q[s + 4] & 63;
  } else {
    *sc = (q[s + 4] & 0x0F) | ((q[s - 4] >> 6) << 4);
    *mn = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
  }
}
static void dequant_q4_k(const uint8_t* b, float* y) {
  const float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int s = 0; s < 8; s += 2, q += 32) {
    uint8_t sc, mn;
    q4_k_scale_min(s, scales, &sc, &mn);
    const float d1 = d * float(sc), m1 = dmin * float(mn);
    q4_k_scale_min(s + 1, scales, &sc, &mn);
    const float d2 = d * float(sc), m2 = dmin * float(mn);
    for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0x0F) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
  }
}

// Q6_K super-block of 256 = 16 sub-blocks of 16: {u8 ql[128]; u8 qh[64];
// i8 scales[16]; f16 d}. A 6-bit q = 4 low bits from ql | 2 high bits from qh;
// w = d * scale * (q - 32). Two halves of 128 weights, each laid out as four
// runs of 32 that share ql/qh bytes.
static void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16_at(b + 208);
  for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = int((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * float(sc[is + 0]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
  }
}

void dequantize_row(GGMLType type, const uint8_t* src, float* dst, int64_t n) {
  const GGMLTypeInfo* info = ggml_type_info(uint32_t(type));
  NQ_CHECK(info && info->decodable, "dequantize_row: ggml type ", info ? info->name : "?", " (",
           uint32_t(type), ") is not supported (supported: ", ggml_decodable_types(), ")");
  NQ_CHECK(n % info->block_elems == 0, "dequantize_row: ", n, " weights is not a multiple of the ",
           info->name, " block of ", info->block_elems);
  void (*block)(const uint8_t*, float*) = nullptr;
  switch (type) {
    case GGMLType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case GGMLType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_at(src + 2 * i);
      return;
    case GGMLType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case GGMLType::Q4_0: block = dequant_q4_0; break;
    case GGMLType::Q4_1: block = dequant_q4_1; break;
    case GGMLType::Q5_0: block = dequant_q5_0; break;
    case GGMLType::Q5_1: block = dequant_q5_1; break;
    case GGMLType::Q8_0: block = dequant_q8_0; break;
    case GGMLType::Q4_K: block = dequant_q4_k; break;
    case GGMLType::Q6_K: block = dequant_q6_k; break;
    default: break;
  }
  const int64_t blocks = n / info->block_elems;
#pragma omp parallel for if (blocks > 4096)
  for (int64_t i = 0; i < blocks; ++i)
    block(src + i * info->block_bytes, dst + i * info->block_elems);
}

// ---------------------------------------------------------------- encoders
//
// gguf-py quantizes with numpy on float32 arrays; every step below is the same
// IEEE float32 operation (no FMA: the build uses -ffp-contract=off), so the bytes
// are the same. Its casts of float to int8/uint8 are C casts, which on x86 go
// through a 32-bit truncating conversion: a NaN or out-of-range value becomes
// INT32_MIN, whose low byte is 0. That only happens for a block whose scale is a
// float32 subnormal (1/d overflows to inf); as_byte reproduces it.

const char* ggml_encodable_types() { return "F32 F16 BF16 Q8_0 Q4_0 Q4_1"; }

bool ggml_encodable(GGMLType type) {
  switch (type) {
    case GGMLType::F32: case GGMLType::F16: case GGMLType::BF16:
    case GGMLType::Q8_0: case GGMLType::Q4_0: case GGMLType::Q4_1: return true;
    default: return false;
  }
}

static uint8_t as_byte(float v) {
  const int32_t i = (v > -2147483904.0f && v < 2147483648.0f) ? int32_t(v) : INT32_MIN;
  return uint8_t(uint32_t(i) & 0xFF);
}

static void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// numpy's np_roundf of gguf-py: round half away from zero, as floor arithmetic.
static float round_half_away(float v) {
  const float a = std::fabs(v), fl = std::floor(a);
  const float b = fl + std::floor(2.0f * (a - fl));
  return v > 0 ? b : v < 0 ? -b : v * b;  // np.sign(v) * b (NaN stays NaN)
}

// Q8_0: {f16 d; i8 qs[32]}.
static void quant_q8_0(const float* x, uint8_t* b) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d == 0 ? 0.0f : 1.0f / d;
  put_f16(b, d);
  for (int j = 0; j < 32; ++j) b[2 + j] = as_byte(round_half_away(x[j] * id));
}

// Q4_0: {f16 d; u8 qs[16]}, d from the weight of largest magnitude (the first one
// when several tie, as argmax), so that weight maps to q = 0 exactly.
static void quant_q4_0(const float* x, uint8_t* b) {
  int imax = 0;
  for (int j = 1; j < 32; ++j)
    if (std::fabs(x[j]) > std::fabs(x[imax])) imax = j;
  const float d = x[imax] / -8.0f;
  const float id = d == 0 ? 0.0f : 1.0f / d;
  put_f16(b, d);
  uint8_t q[32];
  for (int j = 0; j < 32; ++j) q[j] = std::min<uint8_t>(as_byte(std::trunc(x[j] * id + 8.5f)), 15);
  for (int j = 0; j < 16; ++j) b[2 + j] = uint8_t(q[j] | (q[j + 16] << 4));
}

// Q4_1: {f16 d; f16 m; u8 qs[16]}, m = the block minimum.
static void quant_q4_1(const float* x, uint8_t* b) {
  float lo = x[0], hi = x[0];
  for (int j = 1; j < 32; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
  const float d = (hi - lo) / 15.0f;
  const float id = d == 0 ? 0.0f : 1.0f / d;
  put_f16(b, d);
  put_f16(b + 2, lo);
  uint8_t q[32];
  for (int j = 0; j < 32; ++j) q[j] = std::min<uint8_t>(as_byte(std::trunc((x[j] - lo) * id + 0.5f)), 15);
  for (int j = 0; j < 16; ++j) b[4 + j] = uint8_t(q[j] | (q[j + 16] << 4));
}

void quantize_row(GGMLType type, const float* src, uint8_t* dst, int64_t n) {
  const GGMLTypeInfo* info = ggml_type_info(uint32_t(type));
  NQ_CHECK(info && ggml_encodable(type), "quantize_row: ggml type ", info ? info->name : "?", " (", uint32_t(type),
           ") cannot be written (supported: ", ggml_encodable_types(), ")");
  NQ_CHECK(n % info->block_elems == 0, "quantize_row: ", n, " weights is not a multiple of the ", info->name,
           " block of ", info->block_elems);
  void (*block)(const float*, uint8_t*) = nullptr;
  switch (type) {
    case GGMLType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case GGMLType::F16:
      for (int64_t i = 0; i < n; ++i) put_f16(dst + 2 * i, src[i]);
      return;
    case GGMLType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case GGMLType::Q8_0: block = quant_q8_0; break;
    case GGMLType::Q4_0: block = quant_q4_0; break;
    case GGMLType::Q4_1: block = quant_q4_1; break;
    default: break;
  }
  for (int64_t i = 0; i < n; ++i)
    NQ_CHECK(std::isfinite(src[i]), "quantize_row: weight ", i, " is ", src[i], "; ", info->name,
             " cannot encode a non-finite value");
  const int64_t blocks = n / info->block_elems;
#pragma omp parallel for if (blocks > 4096)
  for (int64_t i = 0; i < blocks; ++i) block(src + i * info->block_elems, dst + i * info->block_bytes);
}

namespace {
// Within each head of `head` rows, HF row j*half+i <-> GGUF row 2i+j (j = 0, 1).
void move_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads, bool hf_to_gguf, const char* name) {
  NQ_CHECK(n_heads > 0 && rows % (2 * n_heads) == 0, name, ": ", rows, " rows do not split into ", n_heads,
           " heads of an even size");
  const int64_t head = rows / n_heads, half = head / 2;
  std::vector<float> tmp(size_t(head * cols));
  for (int64_t h = 0; h < n_heads; ++h) {
    float* hw = w + h * head * cols;
    std::memcpy(tmp.data(), hw, tmp.size() * sizeof(float));
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t hf = j * half + i, gguf = 2 * i + j;
        std::memcpy(hw + (hf_to_gguf ? gguf : hf) * cols, tmp.data() + (hf_to_gguf ? hf : gguf) * cols,
                    size_t(cols) * sizeof(float));
      }
  }
}
}  // namespace

void permute_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads) {
  move_qk_rows(w, rows, cols, n_heads, /*hf_to_gguf=*/true, "permute_qk_rows");
}

void unpermute_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads) {
  move_qk_rows(w, rows, cols, n_heads, /*hf_to_gguf=*/false, "unpermute_qk_rows");
}

}  // namespace nq
