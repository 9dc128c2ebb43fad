// JSON text parsed with nlohmann::json, the one place where a parse error becomes
// the one-line "SOURCE: invalid JSON: <what and where>" (SOURCE: the file, or the
// flag, the text came from). Every reader of config, tokenizer, adapter, checkpoint
// and --config files parses through it, so what is checked of a stranger's JSON is
// checked once.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/error.h"

namespace nq {

inline nlohmann::json parse_json(const std::string& text, const std::string& source) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(str(source, ": invalid JSON: ", e.what()));
  }
}

}  // namespace nq
