// A read-only memory mapping of a whole file (mmap), shared by the safetensors
// and GGUF readers. Tensors read from a checkpoint point straight into the
// mapping (zero-copy); they hold a shared_ptr<MappedFile> so the mapping lives
// as long as any of them does, and the kernel pages weights in on first touch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace nq {

class MappedFile {
 public:
  // Throws nq::Error naming the file when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Drops the pages that lie wholly inside [p, p + n) from this process's memory
  // (madvise MADV_DONTNEED): a loader that has consumed a tensor calls it, so the
  // mapping's resident pages do not add up to the whole file. The bytes stay
  // readable (a later read pages them in again from the file); pages shared with
  // a neighbouring tensor are kept.
  void release(const uint8_t* p, size_t n) const;

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace nq
