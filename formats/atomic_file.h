// Files written so that a failure at any point (a full disk, a crash, a kill) leaves
// the previous version of the file intact: the bytes go to PATH.tmp, are fsync'ed, and
// only then renamed over PATH (rename is atomic), and the folder is fsync'ed so the
// rename itself survives a power cut. Every file nanoqlora writes for keeps
// (safetensors, adapter_config.json, config.json, checkpoint files) goes through here.
//
// The test hook set_write_fault_after(N) makes every write fail once N more bytes have
// been written in all (ENOSPC, as a disk filling up would), so tests can stop a save at
// any byte and check what is left.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace nq {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // creates PATH.tmp; an error naming it when it cannot
  ~AtomicFile();                          // without commit(): PATH.tmp removed, PATH untouched
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);  // all of it, or an error naming PATH.tmp and the OS reason
  void commit();                           // fsync, rename over PATH, fsync the folder

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

void write_file_atomically(const std::string& path, const std::string& bytes);

// fsync of a file or folder by path; an error naming it when that fails.
void sync_path(const std::string& path);

// Test hook: after `bytes` more bytes written through AtomicFile in all, writes fail
// with ENOSPC. A negative value turns the fault off (the default).
void set_write_fault_after(int64_t bytes);

}  // namespace nq
