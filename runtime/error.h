// Errors: every failure the user can cause is an nq::Error whose message names
// the thing at fault (file, tensor, op, shape, flag). Programs catch it at the
// top, print one line and exit non-zero (see tools/cli.h).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace nq {

struct Error : std::runtime_error {
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// str("op ", name, ": shape ", s) — concatenates anything streamable.
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

#define NQ_CHECK(cond, ...)                                   \
  do {                                                        \
    if (!(cond)) throw ::nq::Error(::nq::str(__VA_ARGS__));   \
  } while (0)

}  // namespace nq
