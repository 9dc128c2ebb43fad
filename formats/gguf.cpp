// GGUF container reader: header, typed metadata, tensor infos, fp32 decoding.
// See gguf.h for the layout.
#include "formats/gguf.h"

#include <cstring>

#include "formats/checked_size.h"
#include "formats/name_list.h"

namespace nq {

const char* gguf_value_type_name(GGUFValueType t) {
  static const char* kNames[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                 "bool", "string", "array", "u64", "i64", "f64"};
  uint32_t i = uint32_t(t);
  return i < 13 ? kNames[i] : "?";
}

int64_t GGUFTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

Shape GGUFTensorInfo::shape() const {
  std::vector<int64_t> dims(ne.rbegin(), ne.rend());
  return Shape::of(dims);
}

namespace {

// Bounds-checked little-endian reads from the mapping; running off the end is
// reported as truncation at the byte offset, naming what was being read.
struct Cursor {
  const uint8_t* data;
  uint64_t size, pos = 0;
  const std::string& path;

  void need(uint64_t n, const std::string& what) const {
    NQ_CHECK(n <= size - pos, path, ": truncated at byte ", pos, " (file is ", size, " bytes) while reading ", what);
  }
  template <typename T> T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& what) {
    uint64_t n = read<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(data + pos), size_t(n));
    pos += n;
    return s;
  }
  uint64_t remaining() const { return size - pos; }
  uint64_t array_values = 0;  // array elements parsed so far, against kMaxArrayValues
};

constexpr int kMaxArrayNesting = 8;
// Array elements are kept as GGUFValue (about 100 bytes each); real files hold
// well under a million (vocabulary, merges, token types), so a file claiming
// more is refused rather than allowed to exhaust memory.
constexpr uint64_t kMaxArrayValues = 1ull << 22;

// The fewest bytes one value of a type occupies in the file.
uint64_t min_value_bytes(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::U8: case GGUFValueType::I8: case GGUFValueType::BOOL: return 1;
    case GGUFValueType::U16: case GGUFValueType::I16: return 2;
    case GGUFValueType::U32: case GGUFValueType::I32: case GGUFValueType::F32: return 4;
    case GGUFValueType::STRING: case GGUFValueType::U64: case GGUFValueType::I64: case GGUFValueType::F64: return 8;
    case GGUFValueType::ARRAY: return 12;  // u32 type + u64 count
  }
  return 1;
}

GGUFValue read_value(Cursor& c, GGUFValueType type, const std::string& key, int depth) {
  GGUFValue v;
  v.type = type;
  const std::string what = "the value of metadata key '" + key + "'";
  switch (type) {
    case GGUFValueType::U8: v.u = c.read<uint8_t>(what); break;
    case GGUFValueType::U16: v.u = c.read<uint16_t>(what); break;
    case GGUFValueType::U32: v.u = c.read<uint32_t>(what); break;
    case GGUFValueType::U64: v.u = c.read<uint64_t>(what); break;
    case GGUFValueType::I8: v.i = c.read<int8_t>(what); break;
    case GGUFValueType::I16: v.i = c.read<int16_t>(what); break;
    case GGUFValueType::I32: v.i = c.read<int32_t>(what); break;
    case GGUFValueType::I64: v.i = c.read<int64_t>(what); break;
    case GGUFValueType::F32: v.f = c.read<float>(what); break;
    case GGUFValueType::F64: v.f = c.read<double>(what); break;
    case GGUFValueType::BOOL: {
      uint8_t b = c.read<uint8_t>(what);
      NQ_CHECK(b <= 1, c.path, ": metadata key '", key, "': bool byte is ", int(b), ", not 0 or 1");
      v.b = b != 0;
      break;
    }
    case GGUFValueType::STRING: v.s = c.read_string(what); break;
    case GGUFValueType::ARRAY: {
      NQ_CHECK(depth < kMaxArrayNesting, c.path, ": metadata key '", key, "': arrays nested deeper than ",
               kMaxArrayNesting);
      uint32_t et = c.read<uint32_t>(what);
      NQ_CHECK(et <= 12, c.path, ": metadata key '", key, "': unknown array element type ", et);
      v.elem_type = GGUFValueType(et);
      uint64_t n = c.read<uint64_t>(what);
      NQ_CHECK(n <= c.remaining() / min_value_bytes(v.elem_type), c.path, ": metadata key '", key,
               "': array of ", n, " ", gguf_value_type_name(v.elem_type), " cannot fit in the ", c.remaining(),
               " bytes left in the file");
      c.array_values += n;
      NQ_CHECK(c.array_values <= kMaxArrayValues, c.path, ": metadata key '", key, "': metadata arrays hold more than ",
               kMaxArrayValues, " values in all (corrupt file?)");
      v.array.reserve(size_t(n));
      for (uint64_t k = 0; k < n; ++k) v.array.push_back(read_value(c, v.elem_type, key, depth + 1));
      break;
    }
    default: throw Error(str(c.path, ": metadata key '", key, "' has unknown value type ", uint32_t(type)));
  }
  return v;
}

bool is_unsigned(GGUFValueType t) {
  return t == GGUFValueType::U8 || t == GGUFValueType::U16 || t == GGUFValueType::U32 || t == GGUFValueType::U64;
}
bool is_signed(GGUFValueType t) {
  return t == GGUFValueType::I8 || t == GGUFValueType::I16 || t == GGUFValueType::I32 || t == GGUFValueType::I64;
}

}  // namespace

GGUFFile GGUFFile::open(const std::string& path) {
  GGUFFile g;
  g.path_ = path;
  g.map_ = MappedFile::open(path);
  Cursor c{g.map_->data(), g.map_->size(), 0, g.path_, 0};

  c.need(4, "the magic");
  NQ_CHECK(std::memcmp(c.data, "GGUF", 4) == 0, path, ": not a GGUF file (magic is not \"GGUF\")");
  c.pos = 4;
  g.version_ = c.read<uint32_t>("the version");
  NQ_CHECK(g.version_ != 0x03000000u && g.version_ != 0x02000000u, path,
           ": big-endian GGUF files are not supported");
  NQ_CHECK(g.version_ == 2 || g.version_ == 3, path, ": GGUF version ", g.version_,
           " is not supported (only 2 and 3)");
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the metadata count");
  // A key-value pair takes at least 13 bytes (8 length + 4 type + 1 value), a
  // tensor info at least 24 (8 length + 4 n_dims + 4 type + 8 offset): refuse
  // counts that cannot fit before reserving anything for them.
  NQ_CHECK(n_kv <= c.remaining() / 13, path, ": metadata count ", n_kv, " cannot fit in the ", c.remaining(),
           " bytes left in the file (corrupt or truncated)");

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.read_string(str("metadata key #", k));
    uint32_t type = c.read<uint32_t>("the type of metadata key '" + key + "'");
    NQ_CHECK(type <= 12, path, ": metadata key '", key, "' has unknown value type ", type);
    GGUFValue v = read_value(c, GGUFValueType(type), key, 0);
    NQ_CHECK(!g.kv_.count(key), path, ": metadata key '", key, "' appears twice");
    g.key_order_.push_back(key);
    g.kv_.emplace(key, std::move(v));
  }
  if (g.has("general.alignment")) {
    const GGUFValue& a = g.value("general.alignment");
    NQ_CHECK(a.type == GGUFValueType::U32 && a.u > 0 && (a.u & (a.u - 1)) == 0, path,
             ": general.alignment must be a u32 power of two, got ", gguf_value_type_name(a.type), " ",
             a.type == GGUFValueType::U32 ? a.u : 0);
    g.alignment_ = a.u;
  }

  NQ_CHECK(n_tensors <= c.remaining() / 24, path, ": tensor count ", n_tensors, " cannot fit in the ",
           c.remaining(), " bytes left in the file (corrupt or truncated)");
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GGUFTensorInfo t;
    t.name = c.read_string(str("the name of tensor #", k));
    const std::string what = "the info of tensor '" + t.name + "'";
    uint32_t n_dims = c.read<uint32_t>(what);
    NQ_CHECK(n_dims >= 1 && n_dims <= uint32_t(kMaxDims), path, ": tensor '", t.name, "' has ", n_dims,
             " dims (1 to ", kMaxDims, " supported)");
    std::vector<uint64_t> ne(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) ne[d] = c.read<uint64_t>(what);
    const std::string tensor_what = str(path, ": tensor '", t.name, "'");
    const int64_t numel = checked_numel(ne, tensor_what);
    t.ne.assign(ne.begin(), ne.end());
    uint32_t type = c.read<uint32_t>(what);
    const GGMLTypeInfo* info = ggml_type_info(type);
    NQ_CHECK(info, path, ": tensor '", t.name, "' has unknown ggml type ", type);
    t.type = GGMLType(type);
    t.offset = c.read<uint64_t>(what);
    NQ_CHECK(t.ne[0] % info->block_elems == 0, path, ": tensor '", t.name, "': innermost dimension ", t.ne[0],
             " is not a multiple of the ", info->name, " block of ", info->block_elems);
    // Bounded by the whole file here; the data section's own bound is checked below.
    t.nbytes = checked_bytes(numel / info->block_elems, info->block_bytes, c.size, tensor_what);
    NQ_CHECK(t.offset % g.alignment_ == 0, path, ": tensor '", t.name, "': offset ", t.offset,
             " is not a multiple of the alignment ", g.alignment_);
    NQ_CHECK(!g.tensor_index_.count(t.name), path, ": tensor '", t.name, "' appears twice");
    g.tensor_index_[t.name] = g.tensors_.size();
    g.tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  g.data_start_ = (c.pos + g.alignment_ - 1) / g.alignment_ * g.alignment_;
  for (const GGUFTensorInfo& t : g.tensors_) {
    NQ_CHECK(g.data_start_ <= c.size && t.offset <= c.size - g.data_start_ &&
                 t.nbytes <= c.size - g.data_start_ - t.offset,
             path, ": tensor '", t.name, "' data [", g.data_start_ + t.offset, ", ",
             g.data_start_ + t.offset + t.nbytes, ") runs past the end of the file (", c.size,
             " bytes): truncated?");
  }
  return g;
}

// ---------------------------------------------------------------- metadata

const GGUFValue& GGUFFile::value(const std::string& key) const {
  auto it = kv_.find(key);
  NQ_CHECK(it != kv_.end(), path_, ": no metadata key '", key, "'");
  return it->second;
}

std::vector<std::string> GGUFFile::keys() const { return key_order_; }

// Integer value as int64/uint64 with range checks; `key` names it in errors.
static int64_t as_i64(const GGUFValue& v, const std::string& where) {
  if (is_signed(v.type)) return v.i;
  NQ_CHECK(is_unsigned(v.type), where, " is ", gguf_value_type_name(v.type), ", not an integer");
  NQ_CHECK(v.u <= uint64_t(INT64_MAX), where, " = ", v.u, " does not fit in i64");
  return int64_t(v.u);
}
static uint64_t as_u64(const GGUFValue& v, const std::string& where) {
  if (is_unsigned(v.type)) return v.u;
  NQ_CHECK(is_signed(v.type), where, " is ", gguf_value_type_name(v.type), ", not an integer");
  NQ_CHECK(v.i >= 0, where, " = ", v.i, " is negative");
  return uint64_t(v.i);
}
static double as_f64(const GGUFValue& v, const std::string& where) {
  NQ_CHECK(v.type == GGUFValueType::F32 || v.type == GGUFValueType::F64, where, " is ",
           gguf_value_type_name(v.type), ", not a float");
  return v.f;
}

static std::string where_key(const std::string& path, const std::string& key) {
  return path + ": metadata key '" + key + "'";
}

uint64_t GGUFFile::get_u64(const std::string& key) const { return as_u64(value(key), where_key(path_, key)); }
int64_t GGUFFile::get_i64(const std::string& key) const { return as_i64(value(key), where_key(path_, key)); }
double GGUFFile::get_f64(const std::string& key) const { return as_f64(value(key), where_key(path_, key)); }

bool GGUFFile::get_bool(const std::string& key) const {
  const GGUFValue& v = value(key);
  NQ_CHECK(v.type == GGUFValueType::BOOL, where_key(path_, key), " is ", gguf_value_type_name(v.type),
           ", not a bool");
  return v.b;
}

std::string GGUFFile::get_string(const std::string& key) const {
  const GGUFValue& v = value(key);
  NQ_CHECK(v.type == GGUFValueType::STRING, where_key(path_, key), " is ", gguf_value_type_name(v.type),
           ", not a string");
  return v.s;
}

// The array under `key`, checked to hold `want`-kind elements.
static const GGUFValue& array_of(const GGUFFile& g, const std::string& key, const char* want,
                                 bool (*ok)(GGUFValueType)) {
  const GGUFValue& v = g.value(key);
  NQ_CHECK(v.type == GGUFValueType::ARRAY && ok(v.elem_type), where_key(g.path(), key), " is ",
           gguf_value_type_name(v.type),
           v.type == GGUFValueType::ARRAY ? str(" of ", gguf_value_type_name(v.elem_type)) : std::string(),
           ", not an array of ", want);
  return v;
}

std::vector<std::string> GGUFFile::get_string_array(const std::string& key) const {
  const GGUFValue& v = array_of(*this, key, "strings", [](GGUFValueType t) { return t == GGUFValueType::STRING; });
  std::vector<std::string> out;
  out.reserve(v.array.size());
  for (const GGUFValue& e : v.array) out.push_back(e.s);
  return out;
}

std::vector<int64_t> GGUFFile::get_int_array(const std::string& key) const {
  const GGUFValue& v =
      array_of(*this, key, "integers", [](GGUFValueType t) { return is_signed(t) || is_unsigned(t); });
  std::vector<int64_t> out;
  out.reserve(v.array.size());
  for (const GGUFValue& e : v.array) out.push_back(as_i64(e, where_key(path_, key)));
  return out;
}

std::vector<double> GGUFFile::get_float_array(const std::string& key) const {
  const GGUFValue& v = array_of(*this, key, "floats",
                                [](GGUFValueType t) { return t == GGUFValueType::F32 || t == GGUFValueType::F64; });
  std::vector<double> out;
  out.reserve(v.array.size());
  for (const GGUFValue& e : v.array) out.push_back(e.f);
  return out;
}

// ---------------------------------------------------------------- tensors

const GGUFTensorInfo& GGUFFile::tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  if (it == tensor_index_.end()) {
    std::vector<std::string> names;
    for (const GGUFTensorInfo& t : tensors_) names.push_back(t.name);
    throw Error(str(path_, ": no tensor '", name, "' (it has ", some_names(names), ")"));
  }
  return tensors_[it->second];
}

const uint8_t* GGUFFile::tensor_data(const std::string& name) const {
  return map_->data() + data_start_ + tensor(name).offset;
}

void GGUFFile::release(const std::string& name) const { map_->release(tensor_data(name), tensor(name).nbytes); }

Tensor GGUFFile::load_f32(const std::string& name) const {
  const GGUFTensorInfo& t = tensor(name);
  const GGMLTypeInfo* info = ggml_type_info(uint32_t(t.type));
  NQ_CHECK(info->decodable, path_, ": tensor '", name, "' has ggml type ", info->name,
           ", which nanoqlora cannot decode (supported: ", ggml_decodable_types(), ")");
  Tensor out = Tensor::empty(t.shape(), DType::F32, Device::CPU, MemCategory::Weights);
  dequantize_row(t.type, tensor_data(name), out.data<float>(), t.numel());
  return out;
}

}  // namespace nq
