// Shared plumbing of the fuzz targets (tests/fuzz/fuzz_*.cpp, built by `make fuzz`):
// the input as one or several files in a private scratch folder, and the one rule of
// every target: a parser may reject its input only with nq::Error; anything else (an
// exception of another type, a sanitizer report, a hang, a crash) is a finding.
//
// A target reading several files (a config next to its tensors) gets them from one
// input cut at kFileSeparator, so the fuzzer mutates all of them together.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"
#include "runtime/error.h"

namespace nq::fuzz {

constexpr std::string_view kFileSeparator = "\n--8<--\n";

// The input cut at kFileSeparator into exactly `n` parts (missing ones empty; the last
// keeps any further separators).
inline std::vector<std::string> split_input(const uint8_t* data, size_t size, size_t n) {
  std::string_view s(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  while (parts.size() + 1 < n) {
    size_t at = s.find(kFileSeparator);
    if (at == std::string_view::npos) break;
    parts.emplace_back(s.substr(0, at));
    s.remove_prefix(at + kFileSeparator.size());
  }
  parts.emplace_back(s);
  parts.resize(n);
  return parts;
}

// A scratch folder of this process (in /dev/shm when there is one: no disk traffic),
// removed at exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    std::string base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string tmpl = base + "/nq_fuzz_XXXXXX";
    if (!mkdtemp(tmpl.data())) std::abort();
    static std::string removal = "rm -rf '" + tmpl + "'";
    std::atexit([] { (void)!std::system(removal.c_str()); });
    return tmpl;
  }();
  return dir;
}

inline std::string write_file(const std::string& name, const std::string& bytes) {
  const std::string path = scratch_dir() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::abort();
  std::fclose(f);
  return path;
}

inline void remove_file(const std::string& name) { std::remove((scratch_dir() + "/" + name).c_str()); }

// Runs f; nq::Error is the expected rejection, anything else escapes to the fuzzer.
template <typename F>
void expect_only_nq_errors(F f) {
  try {
    f();
  } catch (const nq::Error&) {
  }
}

// A property the target checks beyond "no crash": a violated one aborts with its text.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz property violated: %s\n", what);
    std::abort();
  }
}

// The repository's test data (the Qwen3 tokenizer unpacked by make into build/fixtures):
// the fuzz targets run from the repository root.
inline std::string repo_file(const std::string& relative) {
  const char* root = std::getenv("NQ_REPO_ROOT");
  return (root ? std::string(root) + "/" : std::string()) + relative;
}

// The real Qwen3 tokenizer (build/fixtures, unpacked by make), loaded once; when it
// cannot be loaded the target aborts with the reason, naming itself.
inline const Tokenizer& qwen3_tokenizer(const char* target) {
  static const Tokenizer tok = [target] {
    try {
      return Tokenizer::from_file(repo_file("build/fixtures/qwen3-tokenizer/tokenizer.json"));
    } catch (const Error& e) {
      std::fprintf(stderr, "%s: %s (run from the repository root after make)\n", target, e.what());
      std::abort();
    }
  }();
  return tok;
}

}  // namespace nq::fuzz
