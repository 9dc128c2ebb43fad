// Small helpers shared by the programs in tools/: reading flag values with
// errors that name the flag, the OpenMP wait policy, and the main() wrapper that turns an nq::Error
// into one line on stderr and exit status 1.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>

#include "runtime/error.h"

namespace nq::cli {

// libgomp's default wait policy keeps OpenMP worker threads spinning after each
// parallel region; between them OpenBLAS runs its own threads, which then fight
// the spinners for the same cores (perf: ~30% of the time in libgomp). PASSIVE
// lets idle workers sleep: 1.5-2.7x more tokens/s measured on 2 cores for
// ./train (docs/training.md), up to 8x for ./generate's decoding. libgomp reads
// the variable once, when it loads, so the program re-executes itself with it
// set (unless the user chose a policy). Called first thing in main().
inline void prefer_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
}

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
