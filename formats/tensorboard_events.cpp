// TensorBoard event files: TFRecord framing and the Event protobuf, by hand
// (see tensorboard_events.h for the layout and why no protobuf library).
#include "formats/tensorboard_events.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <iterator>

#include "runtime/error.h"

namespace nq {

// ---------------------------------------------------------------- CRC-32C
namespace {

// The byte-at-a-time table of the reflected Castagnoli polynomial.
const std::array<uint32_t, 256>& crc32c_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  const auto& t = crc32c_table();
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = t[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

namespace {

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(char((v >> (8 * i)) & 0xFF));
}

uint64_t get_le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

}  // namespace

std::string tfrecord(const std::string& data) {
  std::string out, len;
  put_le(len, data.size(), 8);
  out += len;
  put_le(out, masked_crc32c(len.data(), len.size()), 4);
  out += data;
  put_le(out, masked_crc32c(data.data(), data.size()), 4);
  return out;
}

// ---------------------------------------------------------------- protobuf encoding
// A field is key = (number << 3) | wire type, then the value: 0 varint,
// 1 fixed64, 2 length-delimited (varint length + bytes), 5 fixed32.
namespace {

enum Wire : uint32_t { kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(char(v));
}
void put_key(std::string& out, uint32_t field, Wire w) { put_varint(out, (uint64_t(field) << 3) | w); }
void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, kBytes);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_double(std::string& out, uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  put_key(out, field, kFixed64);
  put_le(out, bits, 8);
}
void put_float(std::string& out, uint32_t field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  put_key(out, field, kFixed32);
  put_le(out, bits, 4);
}

// Field numbers of event.proto / summary.proto / tensor.proto / tensor_shape.proto.
constexpr uint32_t kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5;
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1, kValueSimpleValue = 2, kValueTensor = 8, kValueMetadata = 9;
constexpr uint32_t kMetadataPluginData = 1, kPluginName = 1;
constexpr uint32_t kTensorDtype = 1, kTensorShape = 2, kTensorStringVal = 8;
constexpr uint32_t kShapeDim = 2, kDimSize = 1;
constexpr uint64_t kDtString = 7;  // types.proto DT_STRING

std::string event(double wall_time, int64_t step, const std::string& summary_value) {
  std::string e;
  put_double(e, kEventWallTime, wall_time);
  put_key(e, kEventStep, kVarint);
  put_varint(e, uint64_t(step));  // int64: negative steps would take 10 bytes; ours are >= 0
  std::string summary;
  put_bytes(summary, kSummaryValue, summary_value);
  put_bytes(e, kEventSummary, summary);
  return e;
}

}  // namespace

std::string event_file_version(double wall_time) {
  std::string e;
  put_double(e, kEventWallTime, wall_time);
  put_bytes(e, kEventFileVersion, "brain.Event:2");
  return e;
}

std::string event_scalar(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string v;
  put_bytes(v, kValueTag, tag);
  put_float(v, kValueSimpleValue, value);
  return event(wall_time, step, v);
}

std::string event_text(double wall_time, int64_t step, const std::string& tag, const std::string& text) {
  std::string plugin, metadata, dim, shape, tensor, v;
  put_bytes(plugin, kPluginName, "text");  // content: TextPluginData{version 0} serializes to nothing
  put_bytes(metadata, kMetadataPluginData, plugin);
  put_key(dim, kDimSize, kVarint);
  put_varint(dim, 1);
  put_bytes(shape, kShapeDim, dim);  // shape [1]
  put_key(tensor, kTensorDtype, kVarint);
  put_varint(tensor, kDtString);
  put_bytes(tensor, kTensorShape, shape);
  put_bytes(tensor, kTensorStringVal, text);
  put_bytes(v, kValueTag, tag + "/text_summary");
  put_bytes(v, kValueTensor, tensor);
  put_bytes(v, kValueMetadata, metadata);
  return event(wall_time, step, v);
}

// ---------------------------------------------------------------- the writer
namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

EventFileWriter::EventFileWriter(const std::string& dir) {
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  host[sizeof host - 1] = 0;
  const double now = unix_now();
  path_ = str(dir, "/events.out.tfevents.", int64_t(now), ".", host, ".", int64_t(getpid()));
  f_.open(path_, std::ios::binary | std::ios::trunc);
  NQ_CHECK(f_.good(), path_, ": cannot create the TensorBoard event file");
  write_record(event_file_version(now));
}

void EventFileWriter::write_record(const std::string& event) {
  f_ << tfrecord(event) << std::flush;
  NQ_CHECK(f_.good(), path_, ": write failed (disk full?)");
}

void EventFileWriter::scalar(int64_t step, const std::string& tag, double value) {
  write_record(event_scalar(unix_now(), step, tag, float(value)));
}

void EventFileWriter::text(int64_t step, const std::string& tag, const std::string& text) {
  write_record(event_text(unix_now(), step, tag, text));
}

// ---------------------------------------------------------------- the reader (tests)
namespace {

// A bounded cursor over one message's bytes; every read checks the end.
struct Cursor {
  const unsigned char* p;
  const unsigned char* end;
  const std::string& where;  // "FILE: record N" for errors

  bool done() const { return p == end; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      NQ_CHECK(p < end, where, ": truncated varint");
      const unsigned char b = *p++;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    throw Error(str(where, ": varint longer than 10 bytes"));
  }
  uint64_t fixed(int bytes) {
    NQ_CHECK(end - p >= bytes, where, ": truncated fixed", bytes * 8);
    const uint64_t v = get_le(p, bytes);
    p += bytes;
    return v;
  }
  Cursor sub() {
    const uint64_t n = varint();
    NQ_CHECK(n <= uint64_t(end - p), where, ": field length ", n, " runs past the message");
    Cursor c{p, p + n, where};
    p += n;
    return c;
  }
  std::string bytes() {
    Cursor c = sub();
    return std::string(reinterpret_cast<const char*>(c.p), size_t(c.end - c.p));
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case kVarint: varint(); break;
      case kFixed64: fixed(8); break;
      case kBytes: sub(); break;
      case kFixed32: fixed(4); break;
      default: throw Error(str(where, ": unsupported wire type ", wire));
    }
  }
};

void decode_tensor(Cursor c, DecodedEvent& e) {
  while (!c.done()) {
    const uint64_t key = c.varint();
    if (key >> 3 == kTensorStringVal && (key & 7) == kBytes) e.text.push_back(c.bytes());
    else c.skip(uint32_t(key & 7));
  }
}

void decode_value(Cursor c, DecodedEvent& e) {
  while (!c.done()) {
    const uint64_t key = c.varint();
    const uint32_t field = uint32_t(key >> 3), wire = uint32_t(key & 7);
    if (field == kValueTag && wire == kBytes) {
      e.tag = c.bytes();
    } else if (field == kValueSimpleValue && wire == kFixed32) {
      const uint32_t bits = uint32_t(c.fixed(4));
      std::memcpy(&e.scalar, &bits, 4);
      e.has_scalar = true;
    } else if (field == kValueTensor && wire == kBytes) {
      decode_tensor(c.sub(), e);
    } else {
      c.skip(wire);
    }
  }
}

DecodedEvent decode_event(Cursor c) {
  DecodedEvent e;
  int values = 0;
  while (!c.done()) {
    const uint64_t key = c.varint();
    const uint32_t field = uint32_t(key >> 3), wire = uint32_t(key & 7);
    if (field == kEventWallTime && wire == kFixed64) {
      const uint64_t bits = c.fixed(8);
      std::memcpy(&e.wall_time, &bits, 8);
    } else if (field == kEventStep && wire == kVarint) {
      e.step = int64_t(c.varint());
    } else if (field == kEventFileVersion && wire == kBytes) {
      e.file_version = c.bytes();
    } else if (field == kEventSummary && wire == kBytes) {
      Cursor s = c.sub();
      while (!s.done()) {
        const uint64_t k = s.varint();
        if (k >> 3 == kSummaryValue && (k & 7) == kBytes) {
          NQ_CHECK(++values == 1, c.where, ": more than one summary value (the writer emits one)");
          decode_value(s.sub(), e);
        } else {
          s.skip(uint32_t(k & 7));
        }
      }
    } else {
      c.skip(wire);
    }
  }
  return e;
}

}  // namespace

std::vector<DecodedEvent> read_event_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  NQ_CHECK(f.good(), path, ": cannot open the event file");
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  std::vector<DecodedEvent> events;
  for (size_t at = 0, record = 0; at < n; ++record) {
    const std::string where = str(path, ": record ", record, " at byte ", at);
    NQ_CHECK(n - at >= 12, where, ": truncated header (", n - at, " bytes left)");
    const uint64_t len = get_le(p + at, 8);
    NQ_CHECK(uint32_t(get_le(p + at + 8, 4)) == masked_crc32c(p + at, 8), where, ": length CRC mismatch");
    NQ_CHECK(len <= n - at - 12 && n - at - 12 - len >= 4, where, ": length ", len, " runs past the end of the file");
    const unsigned char* data = p + at + 12;
    NQ_CHECK(uint32_t(get_le(data + len, 4)) == masked_crc32c(data, size_t(len)), where, ": data CRC mismatch");
    events.push_back(decode_event(Cursor{data, data + len, where}));
    at += 12 + len + 4;
  }
  return events;
}

}  // namespace nq
