// safetensors: the Hugging Face checkpoint format, read (zero-copy, mmap) and
// written (atomically).
//
//   bytes [0, 8)        N, the header length, u64 little-endian
//   bytes [8, 8+N)      JSON: {"name": {"dtype": "BF16", "shape": [r, c],
//                              "data_offsets": [begin, end]}, ...,
//                              "__metadata__": {"key": "value"}}   (optional)
//   bytes [8+N, EOF)    the data; offsets are relative to its start, tensors are
//                       row-major, little-endian
//
// A model too large for one file is sharded: model.safetensors.index.json maps
// each tensor name to the shard holding it ({"weight_map": {name: file}}).
// SafetensorsDir opens either layout. See docs/formats.md.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "formats/mapped_file.h"
#include "runtime/tensor.h"

namespace nq {

class SafetensorsFile {
 public:
  struct Entry {
    DType dtype;
    Shape shape;
    uint64_t begin, end;  // byte offsets into the data section
  };

  // Maps `path` and validates the whole header (every error names the file and,
  // where there is one, the tensor): header length, JSON, dtypes, shapes,
  // offsets inside the data, byte length == numel * dtype size, no overlaps.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  // A CPU tensor viewing the mapped bytes (it keeps the mapping alive). When a
  // tensor's bytes are not aligned to its element size it is copied instead.
  Tensor get(const std::string& name) const;
  const Entry& entry(const std::string& name) const;
  // The tensor's mapped pages dropped from memory once it has been read
  // (MappedFile::release); its bytes stay readable.
  void release(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  const uint8_t* data_ = nullptr;  // start of the data section inside map_
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: model.safetensors, or model.safetensors.index.json plus
// the shards it names. A single .safetensors file path is accepted as well.
class SafetensorsDir {
 public:
  static SafetensorsDir open(const std::string& path);

  bool has(const std::string& name) const { return shard_of_.count(name) != 0; }
  Tensor get(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  void release(const std::string& name) const { file_of(name).release(name); }
  std::vector<std::string> names() const;  // sorted
  const std::vector<SafetensorsFile>& files() const { return files_; }

 private:
  std::string path_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> shard_of_;  // tensor name -> index into files_
};

// Writes `tensors` (any device; copied to the host) in the given order with
// optional string metadata. Atomic: the bytes go to PATH.tmp, are fsync'ed, then
// renamed over PATH, so an interrupted save never leaves a half-written file.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// The header dtype string of a DType: DType::BF16 -> "BF16".
const char* safetensors_dtype_name(DType t);

}  // namespace nq
