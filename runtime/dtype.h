// Element types and devices.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace nq {

enum class DType : uint8_t { F32, BF16, F16, I32, I64, U8 };
enum class Device : uint8_t { CPU, CUDA };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: return 2;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
  }
  return "?";
}
// The floating-point dtype a flag names, in the seed's long spelling (torch's
// float32, bfloat16, float16) or the short one (f32, bf16, f16; fp32, fp16 too).
// False for any other name.
inline bool parse_float_dtype(const std::string& name, DType* out) {
  if (name == "float32" || name == "f32" || name == "fp32") *out = DType::F32;
  else if (name == "bfloat16" || name == "bf16") *out = DType::BF16;
  else if (name == "float16" || name == "f16" || name == "fp16") *out = DType::F16;
  else return false;
  return true;
}
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

// C++ type -> DType, for the typed accessors Tensor::data<T>().
template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::U8; };

}  // namespace nq
