// JSON from files (config, tokenizer, adapter, checkpoint, --config): the one parse and
// the one set of typed reads, so that what is checked of a stranger's JSON is checked
// here, once, for every reader.
//
//   parse_json(text, SOURCE)   nlohmann::json, or the one-line
//                              "SOURCE: invalid JSON: <what and where>"; nesting deeper
//                              than kMaxJsonDepth is refused before parsing (nlohmann's
//                              copy, dump and comparison recurse once per level, and so do
//                              our readers of nested tokenizer parts: unbounded nesting
//                              would overflow the stack)
//   JsonIn(j, SOURCE)          a value with where it came from; .at("key"), .find("key"),
//                              [i] walk it, .integer(lo, hi) / .number() / .boolean() /
//                              .string() read it, each error one line naming the file, the
//                              key path and the type expected:
//                                config.json: "num_hidden_layers" must be an integer, got 1.5
//                                config.json: "vocab_size" = 4294967296 is outside [1, 4194304]
//
// An integer field never takes a float (1.0 included: Python's json writes ints as ints,
// so a float is a mistyped file) and never converts out of range (no float-to-int or
// narrowing conversion of a file's number reaches C++ arithmetic).
#pragma once
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "runtime/error.h"

namespace nq {

// Real files nest a handful of levels (tokenizer.json's Sequence of normalizers: 4-5);
// 64 is far above any of them and far below what the recursions above can take.
constexpr int kMaxJsonDepth = 64;

// The nesting depth of JSON text ({ and [ outside strings), refused above kMaxJsonDepth.
inline void check_json_depth(const char* begin, const char* end, const std::string& source) {
  int depth = 0;
  bool in_string = false;
  for (const char* p = begin; p < end; ++p) {
    const char c = *p;
    if (in_string) {
      if (c == '\\') ++p;  // the escaped character cannot end the string
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      NQ_CHECK(++depth <= kMaxJsonDepth, source, ": invalid JSON: nested deeper than ", kMaxJsonDepth,
               " levels at byte ", p - begin);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
}

inline nlohmann::json parse_json(const char* begin, const char* end, const std::string& source,
                                 const nlohmann::json::parser_callback_t& callback = nullptr) {
  check_json_depth(begin, end, source);
  try {
    return nlohmann::json::parse(begin, end, callback);
  } catch (const nlohmann::json::exception& e) {
    throw Error(str(source, ": invalid JSON: ", e.what()));
  }
}

inline nlohmann::json parse_json(const std::string& text, const std::string& source) {
  return parse_json(text.data(), text.data() + text.size(), source);
}

// A short printable form of a value for error messages (never throws, at most ~60 chars).
inline std::string json_excerpt(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// The JSON type name as an error message says it: "a string", "an integer", ...
inline std::string json_kind(const nlohmann::json& v) {
  switch (v.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::object: return "an object";
    case nlohmann::json::value_t::array: return "an array";
    case nlohmann::json::value_t::string: return "a string";
    case nlohmann::json::value_t::boolean: return "a boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return "an integer";
    case nlohmann::json::value_t::number_float: return "a float";
    default: return "a binary value";
  }
}

// A JSON value of file `source` at key path `path` ("" for the whole document).
class JsonIn {
 public:
  JsonIn(const nlohmann::json& value, std::string source, std::string path = "")
      : v_(&value), source_(std::move(source)), path_(std::move(path)) {}

  const nlohmann::json& json() const { return *v_; }
  const std::string& source() const { return source_; }
  const std::string& path() const { return path_; }
  // 'SOURCE: "a.b[2]"', or 'SOURCE' for the whole document: how errors begin.
  std::string where() const { return path_.empty() ? source_ : source_ + ": \"" + path_ + "\""; }
  [[noreturn]] void fail(const std::string& why) const { throw Error(where() + (path_.empty() ? ": " : " ") + why); }

  bool is_null() const { return v_->is_null(); }
  bool is_string() const { return v_->is_string(); }
  bool is_object() const { return v_->is_object(); }
  bool is_array() const { return v_->is_array(); }

  const JsonIn& expect_object() const {
    if (!v_->is_object()) fail("must be an object, got " + got());
    return *this;
  }
  const JsonIn& expect_array() const {
    if (!v_->is_array()) fail("must be an array, got " + got());
    return *this;
  }

  // Members of an object. A null member counts as absent (HF and PEFT write null for unset).
  bool has(const std::string& key) const {
    expect_object();
    auto it = v_->find(key);
    return it != v_->end() && !it->is_null();
  }
  std::optional<JsonIn> find(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return JsonIn(*v_->find(key), source_, child(key));
  }
  JsonIn at(const std::string& key) const {
    if (!has(key)) throw Error(str(where(), path_.empty() ? ": " : " ", "missing field \"", key, "\""));
    return JsonIn(*v_->find(key), source_, child(key));
  }
  // Array elements, or an object's members in key order.
  size_t size() const {
    if (!v_->is_array() && !v_->is_object()) fail("must be an array or an object, got " + got());
    return v_->size();
  }
  JsonIn operator[](size_t i) const {
    expect_array();
    NQ_CHECK(i < v_->size(), where(), " has ", v_->size(), " elements, not ", i + 1);
    return JsonIn((*v_)[i], source_, path_ + "[" + std::to_string(i) + "]");
  }
  template <typename F>  // f(JsonIn element) for each element of an array
  void for_each_element(F f) const {
    expect_array();
    for (size_t i = 0; i < v_->size(); ++i) f(JsonIn((*v_)[i], source_, path_ + "[" + std::to_string(i) + "]"));
  }
  template <typename F>  // f(key, JsonIn value) for each member of an object
  void for_each_member(F f) const {
    expect_object();
    for (auto it = v_->begin(); it != v_->end(); ++it) f(it.key(), JsonIn(it.value(), source_, child(it.key())));
  }

  // Scalars. Integers: a JSON integer (never a float) within [lo, hi].
  int64_t integer(int64_t lo = std::numeric_limits<int64_t>::min(),
                  int64_t hi = std::numeric_limits<int64_t>::max()) const {
    // An integer too large for uint64 parses as a float: say it is out of range.
    if (v_->is_number_float() && std::abs(v_->get<double>()) >= 0x1p63) out_of_range(lo, hi);
    if (!v_->is_number_integer()) fail("must be an integer, got " + got());
    if (v_->is_number_unsigned() && v_->get<uint64_t>() > uint64_t(hi)) out_of_range(lo, hi);
    const int64_t x = v_->is_number_unsigned() ? int64_t(v_->get<uint64_t>()) : v_->get<int64_t>();
    if (x < lo || x > hi) out_of_range(lo, hi);
    return x;
  }
  uint64_t unsigned_integer() const {
    if (!v_->is_number_unsigned()) fail("must be a non-negative integer, got " + got());
    return v_->get<uint64_t>();
  }
  // Any finite JSON number (an integer too), within [lo, hi].
  double number(double lo = -std::numeric_limits<double>::max(),
                double hi = std::numeric_limits<double>::max()) const {
    if (!v_->is_number()) fail("must be a number, got " + got());
    const double x = v_->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi) fail(str("= ", json_excerpt(*v_), " is outside [", lo, ", ", hi, "]"));
    return x;
  }
  bool boolean() const {
    if (!v_->is_boolean()) fail("must be true or false, got " + got());
    return v_->get<bool>();
  }
  const std::string& string() const {
    if (!v_->is_string()) fail("must be a string, got " + got());
    return v_->get_ref<const std::string&>();
  }
  std::vector<std::string> strings() const {  // an array of strings
    std::vector<std::string> out;
    for_each_element([&](const JsonIn& e) { out.push_back(e.string()); });
    return out;
  }

  // Optional members with a default (absent or null -> fallback).
  int64_t integer_or(const std::string& key, int64_t fallback, int64_t lo = std::numeric_limits<int64_t>::min(),
                     int64_t hi = std::numeric_limits<int64_t>::max()) const {
    auto f = find(key);
    return f ? f->integer(lo, hi) : fallback;
  }
  double number_or(const std::string& key, double fallback, double lo = -std::numeric_limits<double>::max(),
                   double hi = std::numeric_limits<double>::max()) const {
    auto f = find(key);
    return f ? f->number(lo, hi) : fallback;
  }
  bool boolean_or(const std::string& key, bool fallback) const {
    auto f = find(key);
    return f ? f->boolean() : fallback;
  }
  std::string string_or(const std::string& key, const std::string& fallback) const {
    auto f = find(key);
    return f ? f->string() : fallback;
  }

 private:
  std::string child(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  std::string got() const {
    const std::string kind = json_kind(*v_);
    if (v_->is_object() || v_->is_array() || v_->is_null()) return kind;
    return kind + " (" + json_excerpt(*v_) + ")";
  }
  [[noreturn]] void out_of_range(int64_t lo, int64_t hi) const {
    fail(str("= ", json_excerpt(*v_), " is outside [", lo, ", ", hi, "]"));
  }

  const nlohmann::json* v_;
  std::string source_, path_;
};

}  // namespace nq
