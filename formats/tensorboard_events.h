// TensorBoard event files: what `tensorboard --logdir` and HF Trainer's
// report_to="tensorboard" read and write (events.out.tfevents.*).
//
// A file is a sequence of TFRecords:
//
//   uint64 length (little-endian) | uint32 masked_crc32c(length's 8 bytes)
//   | data[length] | uint32 masked_crc32c(data)
//
//   masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8,  c = CRC-32C (Castagnoli) of x
//
// and each record's data is one serialized tensorflow.Event protobuf. The first
// event carries file_version "brain.Event:2"; each later one a Summary with
// one value: a scalar (simple_value, a float32) or a text (a DT_STRING tensor
// with the "text" plugin's metadata, as torch.utils.tensorboard's add_text).
//
// Why no protobuf dependency: the writer emits three message types (Event,
// Summary.Value, TensorProto) with seven fields between them, each a varint,
// a fixed32/fixed64 or a length-delimited field. Encoding them by hand is
// about fifty lines; libprotobuf plus the .proto files (and their generated
// code, in the build) would be the largest dependency of the project for it.
// The reader below is for our own tests: it checks the framing and CRCs and
// decodes just these fields. The real check is tools/ref/read_tensorboard.py,
// which reads our files with tensorboard's own reader (tests/test_report.cpp).
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace nq {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `n` bytes, and
// TFRecord's masked form of it.
uint32_t crc32c(const void* data, size_t n);
uint32_t masked_crc32c(const void* data, size_t n);

// One TFRecord: the framing above around `data`.
std::string tfrecord(const std::string& data);

// Serialized tensorflow.Event messages (event.proto, summary.proto, tensor.proto).
std::string event_file_version(double wall_time);  // Event{wall_time, file_version: "brain.Event:2"}
std::string event_scalar(double wall_time, int64_t step, const std::string& tag, float value);
// Tag becomes "<tag>/text_summary" as torch's add_text writes it; TensorBoard's
// text plugin renders `text` as Markdown.
std::string event_text(double wall_time, int64_t step, const std::string& tag, const std::string& text);

// Appends events to OUT_DIR/events.out.tfevents.<unix time>.<hostname>.<pid>
// (the file name TensorBoard globs for), each record flushed so a run in
// progress can be watched. Throws nq::Error naming the file when it cannot be
// created or written.
class EventFileWriter {
 public:
  explicit EventFileWriter(const std::string& dir);
  void scalar(int64_t step, const std::string& tag, double value);
  void text(int64_t step, const std::string& tag, const std::string& text);
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);
  std::string path_;
  std::ofstream f_;
};

// What the test reader decodes of one event (the fields the writer uses).
struct DecodedEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;  // the first event's
  std::string tag;           // a summary's one value ...
  bool has_scalar = false;
  float scalar = 0;
  std::vector<std::string> text;  // ... or its string tensor
};

// Reads every record of an event file, checking both CRCs of each and that the
// file ends on a record boundary; throws nq::Error naming the file, the record
// and what is wrong. Decodes Event / Summary / TensorProto as far as above.
std::vector<DecodedEvent> read_event_file(const std::string& path);

}  // namespace nq
