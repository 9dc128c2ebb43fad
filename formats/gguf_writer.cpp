// GGUF v3 writer (see gguf_writer.h): metadata and tensor infos serialized in
// memory, then the file streamed to PATH.tmp tensor by tensor and renamed.
#include "formats/gguf_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include "runtime/error.h"

namespace nq {

GGUFValue gguf_u32(uint32_t v) { GGUFValue g; g.type = GGUFValueType::U32; g.u = v; return g; }
GGUFValue gguf_i32(int32_t v) { GGUFValue g; g.type = GGUFValueType::I32; g.i = v; return g; }
GGUFValue gguf_u64(uint64_t v) { GGUFValue g; g.type = GGUFValueType::U64; g.u = v; return g; }
GGUFValue gguf_f32(float v) { GGUFValue g; g.type = GGUFValueType::F32; g.f = v; return g; }
GGUFValue gguf_bool(bool v) { GGUFValue g; g.type = GGUFValueType::BOOL; g.b = v; return g; }
GGUFValue gguf_string(const std::string& v) { GGUFValue g; g.type = GGUFValueType::STRING; g.s = v; return g; }

GGUFValue gguf_string_array(const std::vector<std::string>& v) {
  GGUFValue g;
  g.type = GGUFValueType::ARRAY;
  g.elem_type = GGUFValueType::STRING;
  g.array.reserve(v.size());
  for (const std::string& s : v) g.array.push_back(gguf_string(s));
  return g;
}

GGUFValue gguf_i32_array(const std::vector<int32_t>& v) {
  GGUFValue g;
  g.type = GGUFValueType::ARRAY;
  g.elem_type = GGUFValueType::I32;
  g.array.reserve(v.size());
  for (int32_t x : v) g.array.push_back(gguf_i32(x));
  return g;
}

GGUFWriter::GGUFWriter() { set("general.alignment", gguf_u32(kAlignment)); }

void GGUFWriter::set(const std::string& key, GGUFValue value) {
  NQ_CHECK(!key.empty(), "GGUF writer: empty metadata key");
  for (auto& kv : kv_)
    if (kv.first == key) return void(kv.second = std::move(value));
  kv_.emplace_back(key, std::move(value));
}

bool GGUFWriter::has(const std::string& key) const {
  for (const auto& kv : kv_)
    if (kv.first == key) return true;
  return false;
}

void GGUFWriter::erase(const std::string& key) {
  for (size_t i = 0; i < kv_.size(); ++i)
    if (kv_[i].first == key) return void(kv_.erase(kv_.begin() + long(i)));
}

namespace {

// Bytes of a tensor of ggml dims `ne` in `type`; checks the block divides ne[0].
uint64_t tensor_bytes(const std::string& name, const std::vector<int64_t>& ne, GGMLType type) {
  const GGMLTypeInfo* info = ggml_type_info(uint32_t(type));
  NQ_CHECK(info, "GGUF writer: tensor '", name, "': unknown ggml type ", uint32_t(type));
  NQ_CHECK(!ne.empty() && ne[0] % info->block_elems == 0, "GGUF writer: tensor '", name, "': innermost dimension ",
           ne.empty() ? 0 : ne[0], " is not a multiple of the ", info->name, " block of ", info->block_elems);
  uint64_t numel = 1;
  for (int64_t d : ne) numel *= uint64_t(d);
  return numel / uint64_t(info->block_elems) * uint64_t(info->block_bytes);
}

std::vector<int64_t> ggml_dims(const Shape& shape) {
  std::vector<int64_t> ne;
  for (int d = shape.ndim - 1; d >= 0; --d) ne.push_back(shape[d]);
  return ne;
}

// Little-endian serialization of the header (the host is little-endian, as the reader assumes).
struct Bytes {
  std::string out;
  template <typename T> void put(T v) { out.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    out += s;
  }
  void put_value(const GGUFValue& v) {
    switch (v.type) {
      case GGUFValueType::U8: put<uint8_t>(uint8_t(v.u)); break;
      case GGUFValueType::U16: put<uint16_t>(uint16_t(v.u)); break;
      case GGUFValueType::U32: put<uint32_t>(uint32_t(v.u)); break;
      case GGUFValueType::U64: put<uint64_t>(v.u); break;
      case GGUFValueType::I8: put<int8_t>(int8_t(v.i)); break;
      case GGUFValueType::I16: put<int16_t>(int16_t(v.i)); break;
      case GGUFValueType::I32: put<int32_t>(int32_t(v.i)); break;
      case GGUFValueType::I64: put<int64_t>(v.i); break;
      case GGUFValueType::F32: put<float>(float(v.f)); break;
      case GGUFValueType::F64: put<double>(v.f); break;
      case GGUFValueType::BOOL: put<uint8_t>(v.b ? 1 : 0); break;
      case GGUFValueType::STRING: put_string(v.s); break;
      case GGUFValueType::ARRAY:
        put<uint32_t>(uint32_t(v.elem_type));
        put<uint64_t>(v.array.size());
        for (const GGUFValue& e : v.array) {
          NQ_CHECK(e.type == v.elem_type, "GGUF writer: an array of ", gguf_value_type_name(v.elem_type),
                   " holds a ", gguf_value_type_name(e.type));
          put_value(e);
        }
        break;
    }
  }
};

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    NQ_CHECK(w > 0, path, ": write failed: ", w < 0 ? std::strerror(errno) : "no progress");
    p += w;
    n -= size_t(w);
  }
}

uint64_t align_up(uint64_t x) { return (x + GGUFWriter::kAlignment - 1) / GGUFWriter::kAlignment * GGUFWriter::kAlignment; }

}  // namespace

void GGUFWriter::add_tensor(const std::string& name, const Tensor& values, GGMLType type) {
  NQ_CHECK(values.defined() && values.dtype() == DType::F32 && values.device() == Device::CPU, "GGUF writer: tensor '",
           name, "' must be an f32 CPU tensor");
  NQ_CHECK(ggml_encodable(type), "GGUF writer: tensor '", name, "': cannot encode ",
           ggml_type_info(uint32_t(type)) ? ggml_type_info(uint32_t(type))->name : "?", " (supported: ",
           ggml_encodable_types(), ")");
  for (const PendingTensor& t : tensors_) NQ_CHECK(t.name != name, "GGUF writer: tensor '", name, "' added twice");
  PendingTensor t;
  t.name = name;
  t.ne = ggml_dims(values.shape());
  t.type = type;
  t.nbytes = tensor_bytes(name, t.ne, type);
  t.values = values;
  tensors_.push_back(std::move(t));
}

void GGUFWriter::add_tensor_bytes(const std::string& name, const Shape& shape, GGMLType type,
                                  std::vector<uint8_t> bytes) {
  for (const PendingTensor& t : tensors_) NQ_CHECK(t.name != name, "GGUF writer: tensor '", name, "' added twice");
  PendingTensor t;
  t.name = name;
  t.ne = ggml_dims(shape);
  t.type = type;
  t.nbytes = tensor_bytes(name, t.ne, type);
  NQ_CHECK(bytes.size() == t.nbytes, "GGUF writer: tensor '", name, "': ", bytes.size(), " bytes given, ", shape.str(),
           " in ", ggml_type_info(uint32_t(type))->name, " takes ", t.nbytes);
  t.bytes = std::move(bytes);
  tensors_.push_back(std::move(t));
}

void GGUFWriter::write(const std::string& path) const {
  struct stat st;
  NQ_CHECK(!(::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)), path,
           ": is a folder; give the path of the .gguf file to write");

  Bytes h;
  h.out = "GGUF";
  h.put<uint32_t>(3);
  h.put<uint64_t>(tensors_.size());
  h.put<uint64_t>(kv_.size());
  for (const auto& [key, value] : kv_) {
    h.put_string(key);
    h.put<uint32_t>(uint32_t(value.type));
    h.put_value(value);
  }
  uint64_t offset = 0;
  for (const PendingTensor& t : tensors_) {
    h.put_string(t.name);
    h.put<uint32_t>(uint32_t(t.ne.size()));
    for (int64_t d : t.ne) h.put<uint64_t>(uint64_t(d));
    h.put<uint32_t>(uint32_t(t.type));
    h.put<uint64_t>(offset);
    offset = align_up(offset + t.nbytes);
  }
  h.out.resize(align_up(h.out.size()), '\0');

  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  NQ_CHECK(fd >= 0, tmp, ": cannot create: ", std::strerror(errno));
  try {
    write_all(fd, h.out.data(), h.out.size(), tmp);
    std::vector<uint8_t> buf;
    static const char kZeros[GGUFWriter::kAlignment] = {};
    for (const PendingTensor& t : tensors_) {
      const uint8_t* data = t.bytes.data();
      if (t.values.defined()) {
        buf.resize(t.nbytes);
        try {
          quantize_row(t.type, t.values.data<float>(), buf.data(), t.values.numel());
        } catch (const Error& e) {
          throw Error(str(path, ": tensor '", t.name, "': ", e.what()));
        }
        data = buf.data();
      }
      write_all(fd, data, t.nbytes, tmp);
      write_all(fd, kZeros, align_up(t.nbytes) - t.nbytes, tmp);
    }
    NQ_CHECK(::fsync(fd) == 0, tmp, ": fsync failed: ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw Error(str(path, ": cannot rename ", tmp, " over it: ", std::strerror(err)));
  }
  std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/') + 1);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace nq
