// formats/safetensors: round trip of every dtype through our writer, files
// written by the real `safetensors` library (single file + sharded index), and
// every corruption the reader must refuse with a message naming file and tensor.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "runtime/half.h"
#include "formats/safetensors.h"
#include "tests/temp_dir.h"

using namespace nq;
using json = nlohmann::json;

namespace {

std::string fixture(const std::string& rel) {
  std::string here = __FILE__;  // .../tests/test_safetensors.cpp
  return here.substr(0, here.rfind('/')) + "/fixtures/safetensors/" + rel;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A safetensors file from a header text and `data_bytes` zero bytes of data.
std::string raw_file(const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return s + header + std::string(data_bytes, '\0');
}

// The error message of opening `bytes` as a safetensors file ("" when it opens).
std::string open_error(const std::string& bytes) {
  return ::open_error(bytes, "bad.safetensors", [](const std::string& path) { SafetensorsFile::open(path); });
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("safetensors round trip of every dtype with metadata") {
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> u(-4, 4);
  std::vector<std::pair<std::string, Tensor>> tensors;
  Tensor f32 = Tensor::empty({3, 5}, DType::F32);
  for (int64_t i = 0; i < f32.numel(); ++i) f32.data<float>()[i] = u(gen);
  tensors.push_back({"model.layers.0.w", f32});
  for (DType t : {DType::BF16, DType::F16, DType::I32, DType::I64, DType::U8}) {
    Tensor x = Tensor::empty({2, 3, 1, 7}, t);
    auto* b = static_cast<uint8_t*>(x.raw());
    for (size_t i = 0; i < x.nbytes(); ++i) b[i] = uint8_t(gen());
    tensors.push_back({std::string("t_") + dtype_name(t), x});
  }
  tensors.push_back({"scalar", Tensor::empty(Shape{}, DType::F32)});
  tensors.back().second.data<float>()[0] = 1.25f;
  tensors.push_back({"empty", Tensor::empty({0, 4}, DType::F32)});

  TempDir dir;
  std::string path = dir / "x.safetensors";
  std::map<std::string, std::string> meta{{"format", "pt"}, {"step", "12"}};
  save_safetensors(path, tensors, meta);
  struct stat st {};
  CHECK(stat((path + ".tmp").c_str(), &st) != 0);  // the temporary is gone

  // The data section starts 8-byte aligned (the writer pads the JSON).
  std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[i]);
  CHECK((8 + n) % 8 == 0);

  SafetensorsFile f = SafetensorsFile::open(path);
  CHECK(f.metadata() == meta);
  CHECK(f.names().size() == tensors.size());
  for (const auto& [name, want] : tensors) {
    Tensor got = f.get(name);
    CHECK(got.dtype() == want.dtype());
    CHECK(got.shape() == want.shape());
    CHECK(std::memcmp(got.raw(), want.raw(), want.nbytes()) == 0);
  }
  // Zero-copy: the same tensor read twice views the same mapped bytes.
  CHECK(f.get("model.layers.0.w").raw() == f.get("model.layers.0.w").raw());
}

TEST_CASE("safetensors tensors outlive the SafetensorsFile (they keep the mapping)") {
  TempDir dir;
  std::string path = dir / "keep.safetensors";
  save_safetensors(path, {{"w", Tensor::from_vector({1, 2, 3, 4}, {2, 2})}});
  Tensor t;
  { t = SafetensorsFile::open(path).get("w"); }
  CHECK(t.to_vector() == std::vector<float>{1, 2, 3, 4});
}

// Compares a loaded tensor with expected.json's {dtype, shape, values}.
static void check_expected(const Tensor& t, const json& want, const std::string& name) {
  INFO("tensor ", name);
  CHECK(std::string(safetensors_dtype_name(t.dtype())) == want["dtype"].get<std::string>());
  CHECK(t.shape() == Shape::of(want["shape"].get<std::vector<int64_t>>()));
  const json& v = want["values"];
  REQUIRE(int64_t(v.size()) == t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (t.dtype()) {
      case DType::F32: CHECK(t.data<float>()[i] == v[i].get<double>()); break;
      case DType::BF16: CHECK(bf16_to_f32(t.data_u16()[i]) == v[i].get<double>()); break;
      case DType::F16: CHECK(f16_to_f32(t.data_u16()[i]) == v[i].get<double>()); break;
      case DType::I32: CHECK(t.data<int32_t>()[i] == v[i].get<int64_t>()); break;
      case DType::I64: CHECK(t.data<int64_t>()[i] == v[i].get<int64_t>()); break;
      case DType::U8: CHECK(t.data<uint8_t>()[i] == v[i].get<int64_t>()); break;
    }
  }
}

TEST_CASE("safetensors files written by the safetensors library load identically") {
  json expected = json::parse(read_bytes(fixture("expected.json")));
  SafetensorsFile f = SafetensorsFile::open(fixture("single.safetensors"));
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  CHECK(f.names().size() == expected["single"].size());
  for (auto it = expected["single"].begin(); it != expected["single"].end(); ++it)
    check_expected(f.get(it.key()), it.value(), it.key());

  // Sharded: the index maps each name to its shard; a single directory works too.
  SafetensorsDir d = SafetensorsDir::open(fixture("sharded"));
  CHECK(d.files().size() == 2);
  CHECK(d.names().size() == expected["sharded"].size());
  for (auto it = expected["sharded"].begin(); it != expected["sharded"].end(); ++it)
    check_expected(d.get(it.key()), it.value(), it.key());
  CHECK(contains(d.file_of("lm_head.weight").path(), "model-00002-of-00002.safetensors"));
  CHECK_THROWS_WITH_AS(d.get("model.nope"), doctest::Contains("no tensor 'model.nope' (it has lm_head.weight"),
                       Error);

  TempDir dir, empty_dir;
  save_safetensors(dir / "model.safetensors", {{"a", Tensor::from_vector({5}, {1})}});
  CHECK(SafetensorsDir::open(dir.path).get("a").to_vector() == std::vector<float>{5});
  CHECK_THROWS_WITH_AS(SafetensorsDir::open(empty_dir.path),
                       doctest::Contains("neither model.safetensors nor model.safetensors.index.json"), Error);
}

TEST_CASE("safetensors reader refuses corrupt files with a message naming the file and tensor") {
  const std::string ok_entry = R"("w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  // Sanity: the well-formed base opens.
  CHECK(open_error(raw_file("{" + ok_entry + "}", 8)) == "");

  CHECK(contains(open_error("abc"), "shorter than the 8-byte header length"));
  // Header length absurd (flipped high byte) and header past the end of the file.
  std::string huge = raw_file("{" + ok_entry + "}", 8);
  huge[7] = '\x7f';
  CHECK(contains(open_error(huge), "exceeds the 104857600-byte cap"));
  std::string past = raw_file("{" + ok_entry + "}", 8);
  past[0] = char(uint8_t(past[0]) + 100);
  CHECK(contains(open_error(past), "runs past the end of the file"));

  CHECK(contains(open_error(raw_file("{\"w\": [1, 2", 0)), "header: invalid JSON"));
  CHECK(contains(open_error(raw_file("[1, 2]", 0)), "header is not a JSON object"));
  CHECK(contains(open_error(raw_file(R"({"flag": {"dtype": "BOOL", "shape": [1], "data_offsets": [0, 1]}})", 1)),
                 "tensor 'flag': unsupported dtype BOOL"));
  CHECK(contains(open_error(raw_file(R"({"d": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", 8)),
                 "tensor 'd': unsupported dtype F64"));
  // Offsets outside the data = truncated file (8 bytes promised, 4 present).
  CHECK(contains(open_error(raw_file("{" + ok_entry + "}", 4)),
                 "tensor 'w': data_offsets [0, 8] run past the end of the data (4 bytes): file truncated?"));
  CHECK(contains(open_error(raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12)),
                 "tensors 'a' [0, 8) and 'b' [4, 12) overlap"));
  CHECK(contains(open_error(raw_file(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8)),
                 "tensor 'w': data_offsets [0, 8] hold 8 bytes but F32[3] needs 12"));
  CHECK(contains(open_error(raw_file(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8)),
                 "tensor 'w': data_offsets [8, 0] end before they begin"));
  CHECK(contains(open_error(raw_file("{" + ok_entry + ", " + ok_entry + "}", 8)),
                 "tensor 'w' appears twice in the header"));
  CHECK(contains(open_error(raw_file(R"({"w": {"dtype": "F32", "shape": [1,1,1,1,1], "data_offsets": [0, 4]}})", 4)),
                 "tensor 'w': shape has 5 dims"));
  CHECK(contains(open_error(raw_file(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4)),
                 "tensor 'w': shape [-1] holds a non-integer or negative"));
  CHECK(contains(open_error(raw_file(R"({"w": {"dtype": "F32", "shape": [1]}})", 4)),
                 "tensor 'w': header entry has no \"data_offsets\""));
  CHECK(contains(open_error(raw_file(R"({"__metadata__": {"step": 3}})", 0)),
                 "__metadata__ value of 'step' is not a string"));

  // A real file cut short.
  TempDir dir;
  std::string path = dir / "cut.safetensors";
  save_safetensors(path, {{"a", Tensor::from_vector({1, 2}, {2})}, {"b", Tensor::from_vector({3, 4}, {2})}});
  std::string full = read_bytes(path);
  CHECK(contains(open_error(full.substr(0, full.size() - 3)), "file truncated?"));

  // Lookup of a missing tensor lists what exists.
  SafetensorsFile f = SafetensorsFile::open(path);
  CHECK_THROWS_WITH_AS(f.get("c"), doctest::Contains("no tensor 'c' (it has a, b)"), Error);
}

TEST_CASE("sharded index errors name the index and the tensor") {
  TempDir dir;
  save_safetensors(dir / "s1.safetensors", {{"a", Tensor::from_vector({1}, {1})}});
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})");
  CHECK_THROWS_WITH_AS(SafetensorsDir::open(dir.path), doctest::Contains("weight_map puts tensor 'b' in s1.safetensors"),
                       Error);
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": {"a": "missing.safetensors"}})");
  CHECK_THROWS_WITH_AS(SafetensorsDir::open(dir.path), doctest::Contains("missing.safetensors: cannot open"), Error);
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": )");
  CHECK_THROWS_WITH_AS(SafetensorsDir::open(dir.path), doctest::Contains("model.safetensors.index.json: invalid JSON"),
                       Error);
}

TEST_CASE("safetensors writer: bad input is refused and a failed save keeps the old file") {
  TempDir dir;
  std::string path = dir / "w.safetensors";
  Tensor a = Tensor::from_vector({1, 2}, {2});
  save_safetensors(path, {{"a", a}});
  std::string before = read_bytes(path);
  CHECK_THROWS_WITH_AS(save_safetensors(path, {{"a", a}, {"a", a}}), doctest::Contains("tensor 'a' given twice"),
                       Error);
  CHECK_THROWS_WITH_AS(save_safetensors(path, {{"u", Tensor()}}), doctest::Contains("tensor 'u' is undefined"),
                       Error);
  CHECK_THROWS_WITH_AS(save_safetensors(path, {{"bad\xff", a}}), doctest::Contains("cannot write the header"), Error);
  // The temporary cannot be created (a directory is in the way): the save
  // fails and the previous file is untouched.
  REQUIRE(mkdir((path + ".tmp").c_str(), 0755) == 0);
  CHECK_THROWS_WITH_AS(save_safetensors(path, {{"b", a}}), doctest::Contains("w.safetensors.tmp: cannot create"),
                       Error);
  CHECK(read_bytes(path) == before);
  CHECK_THROWS_WITH_AS(save_safetensors(dir / "no/such/dir/x.safetensors", {{"a", a}}),
                       doctest::Contains("cannot create"), Error);
}
