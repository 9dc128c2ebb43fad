// Small helpers shared by the programs in tools/: reading flag values with
// errors that name the flag, and the main() wrapper that turns an nq::Error
// into one line on stderr and exit status 1.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>

#include "runtime/error.h"

namespace nq::cli {

// The value after argv[i] (advancing i); "--flag needs a value" when absent.
inline std::string value(int argc, char** argv, int& i) {
  NQ_CHECK(i + 1 < argc, argv[i], " needs a value (see --help)");
  return argv[++i];
}

inline int64_t to_int(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  NQ_CHECK(!text.empty() && *end == '\0', flag, ": expected an integer, got '", text, "'");
  return v;
}

inline double to_float(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  NQ_CHECK(!text.empty() && *end == '\0', flag, ": expected a number, got '", text, "'");
  return v;
}

// main() body: runs `fn`, reporting nq::Error (and anything else thrown) as "error: ..." with exit 1.
template <typename Fn>
int run_main(Fn fn) {
  try {
    return fn();
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}

}  // namespace nq::cli
