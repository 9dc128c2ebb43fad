// Atomic file writes (see atomic_file.h).
#include "formats/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "runtime/error.h"

namespace nq {

namespace {
std::atomic<int64_t> g_fault_budget{-1};  // bytes left before writes fail; < 0: no fault

// How many of `n` bytes may be written now (all of them unless the fault hook is armed).
size_t allowed_bytes(size_t n) {
  int64_t budget = g_fault_budget.load();
  if (budget < 0) return n;
  const size_t allowed = size_t(budget) < n ? size_t(budget) : n;
  g_fault_budget.store(budget - int64_t(allowed));
  return allowed;
}
}  // namespace

void set_write_fault_after(int64_t bytes) { g_fault_budget.store(bytes < 0 ? -1 : bytes); }

void sync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  NQ_CHECK(fd >= 0, path, ": cannot open to sync: ", std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  NQ_CHECK(rc == 0, path, ": fsync failed: ", std::strerror(err));
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  NQ_CHECK(fd_ >= 0, tmp_, ": cannot create: ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  NQ_CHECK(fd_ >= 0, path_, ": write after commit");
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const size_t chunk = allowed_bytes(n);
    ssize_t w = chunk == 0 ? (errno = ENOSPC, -1) : ::write(fd_, p, chunk);
    if (w < 0 && errno == EINTR) continue;
    NQ_CHECK(w > 0, tmp_, ": write failed: ", std::strerror(errno));
    p += w;
    n -= size_t(w);
  }
}

void AtomicFile::commit() {
  NQ_CHECK(fd_ >= 0, path_, ": committed twice");
  NQ_CHECK(::fsync(fd_) == 0, tmp_, ": fsync failed: ", std::strerror(errno));
  NQ_CHECK(::close(fd_) == 0, tmp_, ": close failed: ", std::strerror(errno));
  fd_ = -1;
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp_.c_str());
    throw Error(str(path_, ": cannot rename ", tmp_, " over it: ", std::strerror(err)));
  }
  const size_t slash = path_.rfind('/');
  sync_path(slash == std::string::npos ? "." : path_.substr(0, slash + 1));
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

}  // namespace nq
