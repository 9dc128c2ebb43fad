// A minimal GGUF writer for tests, independent of the reader (formats/gguf.h):
// appends little-endian fields to byte strings and lays the file out as the
// format says. Tests build valid files with it and then corrupt them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "formats/gguf.h"

struct GGUFBuilder {
  std::string kv, infos, data;
  uint64_t n_kv = 0, n_tensors = 0, alignment = 32;
  uint32_t version = 3;

  template <typename T> static void put(std::string& s, T v) { s.append(reinterpret_cast<const char*>(&v), sizeof v); }
  static void put_str(std::string& s, const std::string& v) { put<uint64_t>(s, v.size()); s += v; }

  template <typename T> void add(const std::string& key, nq::GGUFValueType type, T v) {
    put_str(kv, key); put<uint32_t>(kv, uint32_t(type)); put<T>(kv, v); ++n_kv;
  }
  void add_string(const std::string& key, const std::string& v) {
    put_str(kv, key); put<uint32_t>(kv, uint32_t(nq::GGUFValueType::STRING)); put_str(kv, v); ++n_kv;
  }
  // `body` is the encoded elements, already in the element type's encoding.
  void add_array(const std::string& key, nq::GGUFValueType elem, uint64_t n, const std::string& body) {
    put_str(kv, key); put<uint32_t>(kv, uint32_t(nq::GGUFValueType::ARRAY));
    put<uint32_t>(kv, uint32_t(elem)); put<uint64_t>(kv, n); kv += body; ++n_kv;
  }
  void add_string_array(const std::string& key, const std::vector<std::string>& values) {
    std::string body;
    for (const std::string& v : values) put_str(body, v);
    add_array(key, nq::GGUFValueType::STRING, values.size(), body);
  }
  void add_i32_array(const std::string& key, const std::vector<int32_t>& values) {
    std::string body;
    for (int32_t v : values) put<int32_t>(body, v);
    add_array(key, nq::GGUFValueType::I32, values.size(), body);
  }
  void add_tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, const std::string& bytes) {
    while (data.size() % alignment) data += '\0';
    put_str(infos, name); put<uint32_t>(infos, uint32_t(ne.size()));
    for (uint64_t d : ne) put<uint64_t>(infos, d);
    put<uint32_t>(infos, type); put<uint64_t>(infos, data.size());
    data += bytes; ++n_tensors;
  }
  std::string build() const {
    std::string s = "GGUF";
    put<uint32_t>(s, version); put<uint64_t>(s, n_tensors); put<uint64_t>(s, n_kv);
    s += kv + infos;
    while (s.size() % alignment) s += '\0';
    return s + data;
  }
};
