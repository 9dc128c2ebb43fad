// "a, b, c, ... (12 in all)": the names that do exist, for "not found" errors.
#pragma once
#include <string>
#include <vector>

namespace nq {

inline std::string some_names(const std::vector<std::string>& names, size_t shown = 5) {
  if (names.empty()) return "(none)";
  std::string s;
  for (size_t i = 0; i < names.size() && i < shown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > shown) s += ", ... (" + std::to_string(names.size()) + " in all)";
  return s;
}

}  // namespace nq
