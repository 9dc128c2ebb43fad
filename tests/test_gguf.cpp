// model/gguf + quant/gguf_blocks: block decoders bit-exact against gguf-py's
// dequantize, the Q/K un-permutation against convert_hf_to_gguf's permutation,
// a GGUF file written here (every metadata type, every decodable block type),
// a GGUF file written by gguf-py's GGUFWriter, and corrupt files.
#include <doctest/doctest.h>


#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "tests/gguf_builder.h"
#include "tests/temp_dir.h"

using namespace nq;
using json = nlohmann::json;

namespace {

std::string fixture(const std::string& rel) {
  std::string here = __FILE__;  // .../tests/test_gguf.cpp
  return here.substr(0, here.rfind('/')) + "/fixtures/gguf/" + rel;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::vector<float> read_f32(const std::string& path) {
  std::string b = read_bytes(path);
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

// Bitwise equality of float arrays (NaN == NaN when the bits match).
bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * 4) == 0; }

// The decodable types, each with a fixture of 2 x 256 weights.
const std::vector<std::pair<const char*, GGMLType>> kTypes = {
    {"F32", GGMLType::F32},   {"F16", GGMLType::F16},   {"BF16", GGMLType::BF16}, {"Q4_0", GGMLType::Q4_0},
    {"Q4_1", GGMLType::Q4_1}, {"Q5_0", GGMLType::Q5_0}, {"Q5_1", GGMLType::Q5_1}, {"Q8_0", GGMLType::Q8_0},
    {"Q4_K", GGMLType::Q4_K}, {"Q6_K", GGMLType::Q6_K},
};

std::string open_error(const std::string& bytes) {
  return ::open_error(bytes, "bad.gguf", [](const std::string& path) { GGUFFile::open(path); });
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("ggml block decoders are bit-exact with gguf-py dequantize") {
  for (const auto& [name, type] : kTypes) {
    INFO("type ", name);
    std::string raw = read_bytes(fixture(std::string("blocks/") + name + ".bin"));
    std::vector<float> want = read_f32(fixture(std::string("blocks/") + name + ".f32"));
    const GGMLTypeInfo* info = ggml_type_info(uint32_t(type));
    REQUIRE(info != nullptr);
    CHECK(std::string(info->name) == name);
    REQUIRE(raw.size() == want.size() / info->block_elems * info->block_bytes);
    std::vector<float> got(want.size(), NAN);
    dequantize_row(type, reinterpret_cast<const uint8_t*>(raw.data()), got.data(), int64_t(got.size()));
    CHECK(same_bits(got.data(), want.data(), want.size()));
  }
  std::vector<float> out(256);
  uint8_t zeros[256] = {};
  CHECK_THROWS_WITH_AS(dequantize_row(GGMLType::Q2_K, zeros, out.data(), 256),
                       doctest::Contains("ggml type Q2_K (10) is not supported"), Error);
  CHECK_THROWS_WITH_AS(dequantize_row(GGMLType::Q4_0, zeros, out.data(), 40),
                       doctest::Contains("40 weights is not a multiple of the Q4_0 block of 32"), Error);
}

TEST_CASE("unpermute_qk_rows undoes convert_hf_to_gguf's Q/K permutation") {
  json p = json::parse(read_bytes(fixture("permute.json")));
  int64_t n_head = p["n_head"], head_dim = p["head_dim"], cols = p["cols"];
  std::vector<float> hf = read_f32(fixture("permute_hf.f32")), w = read_f32(fixture("permute_gguf.f32"));
  REQUIRE(int64_t(w.size()) == n_head * head_dim * cols);
  CHECK(!same_bits(w.data(), hf.data(), w.size()));  // the permutation moved rows
  unpermute_qk_rows(w.data(), n_head * head_dim, cols, n_head);
  CHECK(same_bits(w.data(), hf.data(), w.size()));
  CHECK_THROWS_WITH_AS(unpermute_qk_rows(w.data(), 9, cols, 2),
                       doctest::Contains("9 rows do not split into 2 heads of an even size"), Error);
}

TEST_CASE("GGUF written here: every metadata type and every decodable tensor type") {
  GGUFBuilder b;
  b.alignment = 64;
  b.add<uint32_t>("general.alignment", GGUFValueType::U32, 64);
  b.add<uint8_t>("t.u8", GGUFValueType::U8, 200);
  b.add<int8_t>("t.i8", GGUFValueType::I8, -100);
  b.add<uint16_t>("t.u16", GGUFValueType::U16, 60000);
  b.add<int16_t>("t.i16", GGUFValueType::I16, -30000);
  b.add<uint32_t>("t.u32", GGUFValueType::U32, 4000000000u);
  b.add<int32_t>("t.i32", GGUFValueType::I32, -2000000000);
  b.add<uint64_t>("t.u64", GGUFValueType::U64, 1ull << 60);
  b.add<int64_t>("t.i64", GGUFValueType::I64, -(1ll << 60));
  b.add<float>("t.f32", GGUFValueType::F32, 0.1f);
  b.add<double>("t.f64", GGUFValueType::F64, 0.1);
  b.add<uint8_t>("t.bool", GGUFValueType::BOOL, 1);
  b.add_string("t.string", "héllo");
  std::string strs;
  for (std::string s : {"<|im_start|>", "", "Ġthe"}) GGUFBuilder::put_str(strs, s);
  b.add_array("t.strings", GGUFValueType::STRING, 3, strs);
  std::string ints;
  for (int32_t v : {3, -1, 7}) GGUFBuilder::put<int32_t>(ints, v);
  b.add_array("t.ints", GGUFValueType::I32, 3, ints);
  std::string floats;
  for (float v : {0.5f, -2.0f}) GGUFBuilder::put<float>(floats, v);
  b.add_array("t.floats", GGUFValueType::F32, 2, floats);
  // [[1, 2], []]: an array of arrays of u16.
  std::string nested;
  GGUFBuilder::put<uint32_t>(nested, uint32_t(GGUFValueType::U16)); GGUFBuilder::put<uint64_t>(nested, 2);
  GGUFBuilder::put<uint16_t>(nested, 1); GGUFBuilder::put<uint16_t>(nested, 2);
  GGUFBuilder::put<uint32_t>(nested, uint32_t(GGUFValueType::U16)); GGUFBuilder::put<uint64_t>(nested, 0);
  b.add_array("t.nested", GGUFValueType::ARRAY, 2, nested);
  for (const auto& [name, type] : kTypes)  // ggml order: ne = {256, 2} is a [2, 256] matrix
    b.add_tensor(std::string("w.") + name, {256, 2}, uint32_t(type), read_bytes(fixture(std::string("blocks/") + name + ".bin")));
  b.add_tensor("w.3d", {256, 1, 2}, uint32_t(GGMLType::Q8_0), read_bytes(fixture("blocks/Q8_0.bin")));

  TempDir dir;
  std::string path = dir / "all.gguf";
  write_bytes(path, b.build());
  GGUFFile g = GGUFFile::open(path);
  CHECK(g.version() == 3);
  CHECK(g.alignment() == 64);
  CHECK(g.keys().size() == 17);
  CHECK(g.keys()[1] == "t.u8");  // file order kept
  CHECK(g.get_u64("t.u8") == 200);
  CHECK(g.get_i64("t.i8") == -100);
  CHECK(g.get_u64("t.u16") == 60000);
  CHECK(g.get_i64("t.i16") == -30000);
  CHECK(g.get_u64("t.u32") == 4000000000u);
  CHECK(g.get_i64("t.i32") == -2000000000);
  CHECK(g.get_u64("t.u64") == (1ull << 60));
  CHECK(g.get_i64("t.i64") == -(1ll << 60));
  CHECK(g.get_f64("t.f32") == double(0.1f));
  CHECK(g.get_f64("t.f64") == 0.1);
  CHECK(g.get_bool("t.bool") == true);
  CHECK(g.get_string("t.string") == "héllo");
  CHECK(g.get_string_array("t.strings") == std::vector<std::string>{"<|im_start|>", "", "Ġthe"});
  CHECK(g.get_int_array("t.ints") == std::vector<int64_t>{3, -1, 7});
  CHECK(g.get_float_array("t.floats") == std::vector<double>{0.5, -2.0});
  const GGUFValue& nv = g.value("t.nested");
  REQUIRE(nv.array.size() == 2);
  CHECK(nv.elem_type == GGUFValueType::ARRAY);
  CHECK(nv.array[0].elem_type == GGUFValueType::U16);
  REQUIRE(nv.array[0].array.size() == 2);
  CHECK(nv.array[0].array[1].u == 2);
  CHECK(nv.array[1].array.empty());

  // Typed accessors refuse other types, and missing keys, naming the key.
  CHECK_THROWS_WITH_AS(g.get_string("t.u32"), doctest::Contains("metadata key 't.u32' is u32, not a string"), Error);
  CHECK_THROWS_WITH_AS(g.get_u64("t.i8"), doctest::Contains("metadata key 't.i8' = -100 is negative"), Error);
  CHECK_THROWS_WITH_AS(g.get_i64("t.string"), doctest::Contains("'t.string' is string, not an integer"), Error);
  CHECK_THROWS_WITH_AS(g.get_f64("t.i32"), doctest::Contains("'t.i32' is i32, not a float"), Error);
  CHECK_THROWS_WITH_AS(g.get_bool("t.u8"), doctest::Contains("'t.u8' is u8, not a bool"), Error);
  CHECK_THROWS_WITH_AS(g.get_string_array("t.ints"), doctest::Contains("'t.ints' is array of i32, not an array of strings"),
                       Error);
  CHECK_THROWS_WITH_AS(g.get_i64("tokenizer.ggml.bos_token_id"),
                       doctest::Contains("no metadata key 'tokenizer.ggml.bos_token_id'"), Error);

  CHECK(g.tensors().size() == kTypes.size() + 1);
  for (const auto& [name, type] : kTypes) {
    INFO("tensor w.", name);
    const GGUFTensorInfo& info = g.tensor(std::string("w.") + name);
    CHECK(info.type == type);
    CHECK(info.offset % 64 == 0);
    Tensor t = g.load_f32(info.name);
    CHECK(t.shape() == Shape{2, 256});
    std::vector<float> want = read_f32(fixture(std::string("blocks/") + name + ".f32"));
    CHECK(same_bits(t.data<float>(), want.data(), want.size()));
  }
  Tensor t3 = g.load_f32("w.3d");
  CHECK(t3.shape() == Shape{2, 1, 256});
  CHECK_THROWS_WITH_AS(g.load_f32("w.q9"), doctest::Contains("no tensor 'w.q9' (it has w.F32, w.F16"), Error);
}

TEST_CASE("GGUF written by gguf-py's GGUFWriter reads back") {
  json want = json::parse(read_bytes(fixture("tiny.json")));
  GGUFFile g = GGUFFile::open(fixture("tiny.gguf"));
  CHECK(g.version() == 3);
  CHECK(g.get_string("general.architecture") == "llama");
  CHECK(g.get_u64("llama.block_count") == 2);
  CHECK(g.get_f64("llama.rope.freq_base") == 10000.0);
  CHECK(g.get_i64("test.i32") == -7);
  CHECK(g.get_u64("test.u64") == (1ull << 40));
  CHECK(g.get_bool("test.bool"));
  CHECK(g.get_string("tokenizer.ggml.model") == "gpt2");
  CHECK(g.get_string_array("tokenizer.ggml.tokens") == std::vector<std::string>{"<s>", "a", "b", "ab"});
  CHECK(g.get_int_array("tokenizer.ggml.token_type") == std::vector<int64_t>{3, 1, 1, 1});
  CHECK(g.get_string_array("tokenizer.ggml.merges") == std::vector<std::string>{"a b"});
  CHECK(g.tensors().size() == want["tensors"].size());
  for (auto it = want["tensors"].begin(); it != want["tensors"].end(); ++it) {
    INFO("tensor ", it.key());
    CHECK(std::string(ggml_type_info(uint32_t(g.tensor(it.key()).type))->name) == it.value()["type"].get<std::string>());
    Tensor t = g.load_f32(it.key());
    CHECK(t.shape() == Shape::of(it.value()["shape"].get<std::vector<int64_t>>()));
    std::vector<double> v = it.value()["values"];
    REQUIRE(int64_t(v.size()) == t.numel());
    for (size_t i = 0; i < v.size(); ++i) REQUIRE(t.data<float>()[i] == float(v[i]));
  }
}

TEST_CASE("GGUF reader refuses corrupt files naming the file and the key or tensor") {
  auto valid = [] {
    GGUFBuilder b;
    b.add<uint32_t>("llama.block_count", GGUFValueType::U32, 2);
    b.add_tensor("tok", {32, 2}, uint32_t(GGMLType::Q8_0), std::string(68, '\x01'));
    return b;
  };
  CHECK(open_error(valid().build()) == "");

  std::string bad = valid().build();
  bad[0] = 'X';
  CHECK(contains(open_error(bad), "not a GGUF file (magic is not \"GGUF\")"));
  CHECK(contains(open_error("GG"), "truncated at byte 0"));
  GGUFBuilder v1 = valid();
  v1.version = 1;
  CHECK(contains(open_error(v1.build()), "GGUF version 1 is not supported (only 2 and 3)"));
  GGUFBuilder v2 = valid();
  v2.version = 2;
  CHECK(open_error(v2.build()) == "");

  // Truncated inside the metadata / the tensor infos / the data.
  std::string full = valid().build();
  CHECK(contains(open_error(full.substr(0, 40)), "while reading metadata key #0"));
  // Header 24 bytes, the u32 pair 8+17+4+4 = 33, the tensor info 8+3+4+16+4+8 = 43,
  // padding to 128, 68 bytes of data.
  CHECK(contains(open_error(full.substr(0, 57 + 6)), "tensor count 1 cannot fit in the 6 bytes left"));
  CHECK(contains(open_error(full.substr(0, 57 + 30)), "truncated at byte 80 (file is 87 bytes) while reading the info of tensor 'tok'"));
  CHECK(contains(open_error(full.substr(0, full.size() - 10)),
                 "tensor 'tok' data [128, 196) runs past the end of the file (186 bytes): truncated?"));

  GGUFBuilder unknown;
  unknown.add_tensor("blk.0.w", {32}, 99, std::string(32, '\0'));
  CHECK(contains(open_error(unknown.build()), "tensor 'blk.0.w' has unknown ggml type 99"));
  GGUFBuilder bad_kv;
  bad_kv.add<uint32_t>("x.key", GGUFValueType(13), 0);
  CHECK(contains(open_error(bad_kv.build()), "metadata key 'x.key' has unknown value type 13"));

  GGUFBuilder absurd = valid();
  absurd.n_tensors = 1ull << 60;
  CHECK(contains(open_error(absurd.build()), "tensor count 1152921504606846976 cannot fit in the"));
  absurd = valid();
  absurd.n_kv = 1ull << 40;
  CHECK(contains(open_error(absurd.build()), "metadata count 1099511627776 cannot fit in the"));
  GGUFBuilder long_array;
  long_array.add_array("tokenizer.ggml.tokens", GGUFValueType::STRING, 1ull << 50, "");
  CHECK(contains(open_error(long_array.build()),
                 "metadata key 'tokenizer.ggml.tokens': array of 1125899906842624 string cannot fit in the"));
  // 5M one-byte values fit in the file but not under the cap on array values.
  GGUFBuilder many;
  many.add_array("t.bytes", GGUFValueType::U8, 5000000, std::string(5000000, '\0'));
  CHECK(contains(open_error(many.build()), "metadata key 't.bytes': metadata arrays hold more than 4194304 values"));
  GGUFBuilder long_string;
  long_string.add_string("general.name", "abc");
  std::string ls = long_string.build();
  ls[24 + 8 + 12 + 4] = '\x7f';  // the string's length byte
  CHECK(contains(open_error(ls), "while reading the value of metadata key 'general.name'"));

  GGUFBuilder dims;
  dims.add_tensor("w5", {1, 1, 1, 1, 32}, uint32_t(GGMLType::F32), std::string(128, '\0'));
  CHECK(contains(open_error(dims.build()), "tensor 'w5' has 5 dims"));
  GGUFBuilder ragged;
  ragged.add_tensor("w", {40, 2}, uint32_t(GGMLType::Q4_0), std::string(90, '\0'));
  CHECK(contains(open_error(ragged.build()), "tensor 'w': innermost dimension 40 is not a multiple of the Q4_0 block of 32"));
  GGUFBuilder dup = valid();
  dup.add<uint32_t>("llama.block_count", GGUFValueType::U32, 3);
  CHECK(contains(open_error(dup.build()), "metadata key 'llama.block_count' appears twice"));
  GGUFBuilder dup_t = valid();
  dup_t.add_tensor("tok", {32, 2}, uint32_t(GGMLType::Q8_0), std::string(68, '\x01'));
  CHECK(contains(open_error(dup_t.build()), "tensor 'tok' appears twice"));
  GGUFBuilder align;
  align.add<uint32_t>("general.alignment", GGUFValueType::U32, 48);
  CHECK(contains(open_error(align.build()), "general.alignment must be a u32 power of two"));
  GGUFBuilder boolean;
  boolean.add<uint8_t>("b", GGUFValueType::BOOL, 7);
  CHECK(contains(open_error(boolean.build()), "metadata key 'b': bool byte is 7"));

  // A known type nanoqlora cannot decode: the file opens, load_f32 refuses.
  GGUFBuilder q2k;
  q2k.add_tensor("blk.0.ffn_up.weight", {256}, uint32_t(GGMLType::Q2_K), std::string(84, '\0'));
  TempDir dir;
  std::string path = dir / "q2k.gguf";
  write_bytes(path, q2k.build());
  GGUFFile g = GGUFFile::open(path);
  CHECK_THROWS_WITH_AS(g.load_f32("blk.0.ffn_up.weight"),
                       doctest::Contains("tensor 'blk.0.ffn_up.weight' has ggml type Q2_K, which nanoqlora cannot decode"),
                       Error);
}
