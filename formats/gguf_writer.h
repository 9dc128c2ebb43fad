// GGUF v3 writer: typed metadata in insertion order, tensor infos, data aligned to
// general.alignment (32), written atomically (PATH.tmp, fsync, rename), so a failed
// write (full disk, a crash) leaves the previous file at PATH as it was.
//
//   "GGUF" | u32 3 | u64 n_tensors | u64 n_kv | kv... | tensor infos... | pad to 32
//   data: each tensor at a multiple of 32 from the data start, padded with zeros
//
// The layout is the reader's (formats/gguf.h); every file written here reads back
// with GGUFFile::open and with gguf-py (tests/test_gguf_export.cpp, tools/ref).
// Tensors are given as f32 and encoded at write time (quant/gguf_blocks.h's
// quantize_row), one tensor at a time, or as bytes already encoded.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "runtime/tensor.h"

namespace nq {

// Typed values for GGUFWriter::set (the reader's GGUFValue).
GGUFValue gguf_u32(uint32_t v);
GGUFValue gguf_i32(int32_t v);
GGUFValue gguf_u64(uint64_t v);
GGUFValue gguf_f32(float v);
GGUFValue gguf_bool(bool v);
GGUFValue gguf_string(const std::string& v);
GGUFValue gguf_string_array(const std::vector<std::string>& v);
GGUFValue gguf_i32_array(const std::vector<int32_t>& v);

class GGUFWriter {
 public:
  static constexpr uint32_t kAlignment = 32;

  GGUFWriter();  // general.alignment = 32 is the first key

  // Adds `key`, or replaces its value in place (the key keeps its position).
  void set(const std::string& key, GGUFValue value);
  bool has(const std::string& key) const;
  void erase(const std::string& key);
  const std::vector<std::pair<std::string, GGUFValue>>& metadata() const { return kv_; }

  // A tensor of logical row-major `shape` ([rows, cols] for a matrix: ne = {cols,
  // rows}) from the f32 CPU tensor `values`, encoded as `type` when written. The
  // innermost dimension must be a multiple of the type's block. Names are unique.
  void add_tensor(const std::string& name, const Tensor& values, GGMLType type);
  // Bytes already in `type`'s encoding for `shape` (checked to be the right size).
  void add_tensor_bytes(const std::string& name, const Shape& shape, GGMLType type, std::vector<uint8_t> bytes);
  size_t tensor_count() const { return tensors_.size(); }

  // Writes the file: PATH.tmp, fsync, rename over PATH. Errors name PATH (a folder
  // at PATH, an unwritable folder, a write that fails: the temp file is removed).
  void write(const std::string& path) const;

 private:
  struct PendingTensor {
    std::string name;
    std::vector<int64_t> ne;  // ggml order
    GGMLType type;
    Tensor values;               // f32, encoded at write time; or
    std::vector<uint8_t> bytes;  // already encoded
    uint64_t nbytes = 0;
  };
  std::vector<std::pair<std::string, GGUFValue>> kv_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace nq
