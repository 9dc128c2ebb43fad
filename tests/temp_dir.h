// TempDir: a fresh directory under /tmp for the files a test writes, removed
// with everything in it when the test ends; and the helpers the corrupt-file
// tests share (write bytes, open them, return the error message).
#pragma once
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "runtime/error.h"

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/nq_test_XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// The message of the nq::Error that fn() throws, or "(no error)".
template <typename Fn>
std::string thrown_message(Fn&& fn) {
  try {
    fn();
  } catch (const nq::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The message of open(path) for a file holding `bytes` ("" when it opens); the
// message must name the file.
template <typename Open>
std::string open_error(const std::string& bytes, const std::string& filename, Open open) {
  TempDir dir;
  std::string path = dir / filename;
  write_bytes(path, bytes);
  try {
    open(path);
  } catch (const nq::Error& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);  // names the file
    return e.what();
  }
  return "";
}
