// safetensors reader (mmap, validated header) and atomic writer; see safetensors.h.
#include "formats/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "formats/atomic_file.h"
#include "formats/checked_size.h"
#include "formats/json.h"
#include "formats/name_list.h"

namespace nq {

using json = nlohmann::json;

// A header larger than this is refused before any allocation (the format's own
// reference implementation uses the same 100 MB cap).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  return "?";
}

static bool parse_dtype(const std::string& s, DType* out) {
  for (DType t : {DType::F32, DType::BF16, DType::F16, DType::I32, DType::I64, DType::U8})
    if (s == safetensors_dtype_name(t)) { *out = t; return true; }
  return false;
}

static uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses one header entry {"dtype", "shape", "data_offsets"}; errors name the tensor.
static SafetensorsFile::Entry parse_entry(const std::string& where, const std::string& name,
                                          const json& j) {
  auto fail = [&](const std::string& why) {
    return Error(str(where, ": tensor '", name, "': ", why));
  };
  if (!j.is_object()) throw fail("header entry is not an object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!j.contains(key)) throw fail(str("header entry has no \"", key, "\""));
  const json& jd = j["dtype"];
  if (!jd.is_string()) throw fail("\"dtype\" is not a string");
  SafetensorsFile::Entry e{};
  if (!parse_dtype(jd.get<std::string>(), &e.dtype))
    throw fail(str("unsupported dtype ", jd.get<std::string>(),
                   " (supported: F32, BF16, F16, I32, I64, U8)"));
  const json& js = j["shape"];
  if (!js.is_array()) throw fail("\"shape\" is not an array");
  if (js.size() > size_t(kMaxDims))
    throw fail(str("shape has ", js.size(), " dims, at most ", kMaxDims, " are supported"));
  std::vector<uint64_t> dims;
  for (const json& d : js) {
    if (!d.is_number_unsigned()) throw fail(str("shape ", json_excerpt(js), " holds a non-integer or negative"));
    dims.push_back(d.get<uint64_t>());
  }
  const std::string what = str(where, ": tensor '", name, "' of shape ", json_excerpt(js));
  const int64_t numel = checked_numel(dims, what);
  e.shape = Shape::of(std::vector<int64_t>(dims.begin(), dims.end()));
  const json& jo = j["data_offsets"];
  if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
    throw fail(str("\"data_offsets\" must be [begin, end], got ", json_excerpt(jo)));
  e.begin = jo[0].get<uint64_t>();
  e.end = jo[1].get<uint64_t>();
  if (e.end < e.begin) throw fail(str("data_offsets [", e.begin, ", ", e.end, "] end before they begin"));
  // Overflow-checked here; the bytes must then equal the offsets' span, which open()
  // checks against the data section.
  const uint64_t want = checked_bytes(numel, dtype_size(e.dtype), UINT64_MAX, what);
  if (e.end - e.begin != want)
    throw fail(str("data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin, " bytes but ",
                   safetensors_dtype_name(e.dtype), e.shape.str(), " needs ", want));
  return e;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.map_ = MappedFile::open(path);
  const size_t size = f.map_->size();
  const uint8_t* bytes = f.map_->data();
  NQ_CHECK(size >= 8, path, ": not a safetensors file: ", size, " bytes, shorter than the 8-byte header length");
  const uint64_t n = read_u64_le(bytes);
  NQ_CHECK(n <= kMaxHeaderBytes, path, ": header length ", n, " exceeds the ", kMaxHeaderBytes,
           "-byte cap (corrupt or not a safetensors file)");
  NQ_CHECK(8 + n <= size, path, ": header length ", n, " runs past the end of the file (",
           size, " bytes): truncated?");

  // Parse the JSON, refusing duplicate tensor names (a JSON object with a key
  // twice would otherwise silently keep the last one).
  std::set<std::string> seen;
  json::parser_callback_t on_key = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (depth == 1 && ev == json::parse_event_t::key) {
      const std::string& k = parsed.get_ref<const std::string&>();
      NQ_CHECK(seen.insert(k).second, path, ": tensor '", k, "' appears twice in the header");
    }
    return true;
  };
  const auto* text = reinterpret_cast<const char*>(bytes + 8);
  json header = parse_json(text, text + n, path + ": header", on_key);
  NQ_CHECK(header.is_object(), path, ": header is not a JSON object");

  f.data_ = bytes + 8 + n;
  const uint64_t data_bytes = size - 8 - n;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      NQ_CHECK(it.value().is_object(), path, ": __metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        NQ_CHECK(m.value().is_string(), path, ": __metadata__ value of '", m.key(), "' is not a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    Entry e = parse_entry(path, it.key(), it.value());
    NQ_CHECK(e.end <= data_bytes, path, ": tensor '", it.key(), "': data_offsets [", e.begin, ", ", e.end,
             "] run past the end of the data (", data_bytes, " bytes): file truncated?");
    f.entries_.emplace(it.key(), e);
  }

  // No two tensors may share bytes: sort by begin, each must start at or after
  // the previous one's end (empty tensors occupy nothing).
  std::vector<std::pair<uint64_t, const std::string*>> spans;
  for (const auto& [name, e] : f.entries_)
    if (e.end > e.begin) spans.push_back({e.begin, &name});
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    const Entry& prev = f.entries_.at(*spans[i - 1].second);
    const Entry& cur = f.entries_.at(*spans[i].second);
    NQ_CHECK(cur.begin >= prev.end, path, ": tensors '", *spans[i - 1].second, "' [", prev.begin, ", ", prev.end,
             ") and '", *spans[i].second, "' [", cur.begin, ", ", cur.end, ") overlap");
  }
  return f;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  NQ_CHECK(it != entries_.end(), path_, ": no tensor '", name, "' (it has ", some_names(names()), ")");
  return it->second;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const Entry& e = entry(name);
  const uint8_t* p = data_ + e.begin;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) == 0) {
    // Zero-copy: the tensor views the mapping and keeps it alive.
    return Tensor::external(const_cast<uint8_t*>(p), e.shape, e.dtype, Device::CPU,
                            std::shared_ptr<void>(map_, nullptr));
  }
  // Misaligned element data (the format does not promise alignment): copy.
  Tensor t = Tensor::empty(e.shape, e.dtype, Device::CPU, MemCategory::Weights);
  std::memcpy(t.raw(), p, e.end - e.begin);
  return t;
}

void SafetensorsFile::release(const std::string& name) const {
  const Entry& e = entry(name);
  map_->release(data_ + e.begin, e.end - e.begin);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

// ---------------------------------------------------------------- directories

static bool is_file(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

SafetensorsDir SafetensorsDir::open(const std::string& path) {
  SafetensorsDir d;
  d.path_ = path;
  const std::string single = path + "/model.safetensors";
  const std::string index = path + "/model.safetensors.index.json";
  auto add_all = [&](size_t i) {
    for (const std::string& n : d.files_[i].names()) d.shard_of_[n] = i;
  };
  if (is_file(path)) {
    d.files_.push_back(SafetensorsFile::open(path));
    add_all(0);
  } else if (is_file(index)) {
    auto map = MappedFile::open(index);
    const auto* text = reinterpret_cast<const char*>(map->data());
    json j = parse_json(text, text + map->size(), index);
    NQ_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index,
             ": no \"weight_map\" object");
    std::map<std::string, size_t> shard_index;  // shard file name -> index into files_
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      NQ_CHECK(it.value().is_string(), index, ": weight_map entry '", it.key(), "' is not a file name");
      const std::string shard = it.value().get<std::string>();
      NQ_CHECK(shard.find('/') == std::string::npos, index, ": shard '", shard, "' of tensor '", it.key(),
               "' is not a plain file name");
      if (!shard_index.count(shard)) {
        shard_index[shard] = d.files_.size();
        d.files_.push_back(SafetensorsFile::open(path + "/" + shard));
      }
      size_t i = shard_index[shard];
      NQ_CHECK(d.files_[i].has(it.key()), index, ": weight_map puts tensor '", it.key(), "' in ", shard,
               ", which does not hold it");
      d.shard_of_[it.key()] = i;
    }
  } else if (is_file(single)) {
    d.files_.push_back(SafetensorsFile::open(single));
    add_all(0);
  } else {
    throw Error(str(path, ": neither model.safetensors nor model.safetensors.index.json found"));
  }
  return d;
}

const SafetensorsFile& SafetensorsDir::file_of(const std::string& name) const {
  auto it = shard_of_.find(name);
  NQ_CHECK(it != shard_of_.end(), path_, ": no tensor '", name, "' (it has ", some_names(names()), ")");
  return files_[it->second];
}

Tensor SafetensorsDir::get(const std::string& name) const { return file_of(name).get(name); }

std::vector<std::string> SafetensorsDir::names() const {
  std::vector<std::string> out;
  for (const auto& kv : shard_of_) out.push_back(kv.first);
  return out;
}

// ---------------------------------------------------------------- writer

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> host;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    NQ_CHECK(t.defined(), path, ": tensor '", name, "' is undefined");
    NQ_CHECK(name != "__metadata__", path, ": '__metadata__' is reserved and cannot name a tensor");
    NQ_CHECK(!header.contains(name), path, ": tensor '", name, "' given twice");
    std::vector<int64_t> shape(t.shape().dims.begin(), t.shape().dims.begin() + t.ndim());
    header[name] = {{"dtype", safetensors_dtype_name(t.dtype())},
                    {"shape", shape},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
    host.push_back(t.to(Device::CPU));
  }
  // Pad the JSON with spaces so the data section starts 8-byte aligned.
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {  // a name or metadata value that is not UTF-8
    throw Error(str(path, ": cannot write the header: ", e.what()));
  }
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  AtomicFile file(path);
  file.write(len, 8);
  file.write(text.data(), text.size());
  for (const Tensor& t : host) file.write(t.raw(), size_t(t.nbytes()));
  file.commit();
}

}  // namespace nq
