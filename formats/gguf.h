// GGUF: llama.cpp's single-file model format (v3; v2 has the same layout).
//
//   magic "GGUF" | u32 version | u64 tensor_count | u64 metadata_kv_count
//   metadata_kv_count x { string key | u32 value_type | value }
//   tensor_count x { string name | u32 n_dims | n_dims x u64 ne | u32 ggml_type | u64 offset }
//   padding to general.alignment (default 32)
//   data section: each tensor at data_start + offset (offsets are aligned too)
//
// Strings are u64 length + bytes (no NUL). All integers are little-endian.
// ne[0] is the innermost (fastest) dimension, so a [rows, cols] matrix is stored
// with ne = {cols, rows}. The file is mmap'ed; metadata is parsed eagerly, tensor
// data is decoded on request. Byte-level description: docs/formats.md.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "quant/gguf_blocks.h"
#include "formats/mapped_file.h"
#include "runtime/tensor.h"

namespace nq {

enum class GGUFValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_value_type_name(GGUFValueType t);

// One metadata value. Integers of every width land in `i` (signed) or `u`
// (unsigned), floats in `f`; arrays hold their typed elements (arrays of arrays
// are allowed by the format).
struct GGUFValue {
  GGUFValueType type = GGUFValueType::U8;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  GGUFValueType elem_type = GGUFValueType::U8;  // for arrays
  std::vector<GGUFValue> array;
};

struct GGUFTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] innermost
  GGMLType type;
  uint64_t offset;          // from the start of the data section
  uint64_t nbytes;
  int64_t numel() const;
  Shape shape() const;      // logical row-major [ne[n-1], ..., ne[0]]
};

class GGUFFile {
 public:
  // Maps and parses the header; every error names the file and the key or
  // tensor at fault (bad magic, version, truncation, absurd counts, unknown
  // types, tensor data outside the file, misaligned offsets, duplicates).
  static GGUFFile open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  // --- metadata
  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const GGUFValue& value(const std::string& key) const;  // throws when missing
  std::vector<std::string> keys() const;                  // in file order
  // Typed accessors: throw when the key is missing or holds another type.
  // Integer accessors accept any integer width whose value fits.
  uint64_t get_u64(const std::string& key) const;
  int64_t get_i64(const std::string& key) const;
  double get_f64(const std::string& key) const;  // f32 or f64
  bool get_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;

  // --- tensors
  const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }
  bool has_tensor(const std::string& name) const { return tensor_index_.count(name) != 0; }
  const GGUFTensorInfo& tensor(const std::string& name) const;
  const uint8_t* tensor_data(const std::string& name) const;  // raw bytes in the mapping
  // Decodes a tensor to fp32 with the logical row-major shape [ne[n-1], ..., ne[0]].
  Tensor load_f32(const std::string& name) const;
  // The tensor's mapped pages dropped from memory once it is decoded (MappedFile::release).
  void release(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_start_ = 0;
  std::vector<std::string> key_order_;
  std::map<std::string, GGUFValue> kv_;
  std::vector<GGUFTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace nq
