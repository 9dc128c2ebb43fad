// GGUF export: the writer (formats/gguf_writer.h) read back by our reader, the
// block encoders (quant/gguf_blocks.h) byte-identical to gguf-py's quantizers on
// adversarial blocks, the merged-model and LoRA-adapter exports (model/gguf_export.h)
// against what llama.cpp's converters write (fixtures from tools/ref), and bad input.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "quant/gguf_blocks.h"
#include "tests/temp_dir.h"

using namespace nq;
using json = nlohmann::json;

namespace {

std::string fixture(const std::string& rel) {
  std::string here = __FILE__;  // .../tests/test_gguf_export.cpp
  return here.substr(0, here.rfind('/')) + "/fixtures/" + rel;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::vector<float> read_f32(const std::string& path) {
  std::string b = read_bytes(path);
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

Tensor ramp(Shape shape, float scale) {
  Tensor t = Tensor::empty(shape, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = scale * std::sin(0.37f * float(i) + 0.1f);
  return t;
}

}  // namespace

TEST_CASE("gguf export: quantize_row is byte-identical to gguf-py on adversarial blocks") {
  const std::vector<float> x = read_f32(fixture("gguf_export/quant_input.f32"));
  const json names = json::parse(read_bytes(fixture("gguf_export/quant_cases.json")));
  REQUIRE(x.size() == names.size() * 32);
  for (GGMLType type : {GGMLType::F16, GGMLType::BF16, GGMLType::Q8_0, GGMLType::Q4_0, GGMLType::Q4_1}) {
    const GGMLTypeInfo* info = ggml_type_info(uint32_t(type));
    const std::string want = read_bytes(fixture(std::string("gguf_export/quant_") + info->name + ".bin"));
    const size_t block_bytes = size_t(32 / info->block_elems * info->block_bytes);
    REQUIRE(want.size() == names.size() * block_bytes);
    for (size_t b = 0; b < names.size(); ++b) {
      std::string got(block_bytes, '\0');
      quantize_row(type, x.data() + b * 32, reinterpret_cast<uint8_t*>(got.data()), 32);
      CHECK_MESSAGE(got == want.substr(b * block_bytes, block_bytes), std::string(info->name), ": block '",
                    names[b].get<std::string>(), "'");
    }
    // All blocks at once (the parallel path) gives the same bytes.
    std::string all(want.size(), '\0');
    quantize_row(type, x.data(), reinterpret_cast<uint8_t*>(all.data()), int64_t(x.size()));
    CHECK(all == want);
  }
}

TEST_CASE("gguf export: encoders round trip through the decoders within the block's step") {
  Tensor w = ramp({4, 64}, 2.0f);
  for (GGMLType type : {GGMLType::F32, GGMLType::F16, GGMLType::BF16, GGMLType::Q8_0, GGMLType::Q4_0, GGMLType::Q4_1}) {
    const GGMLTypeInfo* info = ggml_type_info(uint32_t(type));
    std::vector<uint8_t> bytes(size_t(256 / info->block_elems * info->block_bytes));
    quantize_row(type, w.data<float>(), bytes.data(), 256);
    std::vector<float> back(256);
    dequantize_row(type, bytes.data(), back.data(), 256);
    // Largest error allowed for a block spanning [-2, 2]: half a quantization step;
    // Q4_0 a whole one (its 16 levels run from -8d to 7d, so the extreme of the sign
    // opposite to the largest weight is clipped to 7d); plus the f16 rounding of the
    // scale, 2^-11 relative: |q d| * 2^-11 <= 2 * 2^-10 more.
    const float bound = type == GGMLType::Q8_0 ? 1.0f / 127 : type == GGMLType::Q4_0 ? 2.0f / 8
                      : type == GGMLType::Q4_1 ? 2.0f / 15 : type == GGMLType::F32 ? 0.0f : 1.0f / 128;
    float worst = 0;
    for (int i = 0; i < 256; ++i) worst = std::max(worst, std::fabs(back[i] - w.data<float>()[i]));
    const float scale_rounding = ggml_type_info(uint32_t(type))->block_elems > 1 ? 2.0f / 1024 : 0.0f;
    CHECK_MESSAGE(worst <= bound * (1 + 1e-3f) + scale_rounding, std::string(info->name), " worst error ", worst);
  }
  std::vector<uint8_t> out(64);
  float bad[32] = {};
  bad[5] = NAN;
  CHECK(thrown_message([&] { quantize_row(GGMLType::Q8_0, bad, out.data(), 32); }).find("weight 5 is nan") !=
        std::string::npos);
  CHECK(thrown_message([&] { quantize_row(GGMLType::Q4_K, bad, out.data(), 32); }).find("cannot be written") !=
        std::string::npos);
}

TEST_CASE("gguf export: permute_qk_rows is the converter's permutation and unpermute_qk_rows undoes it") {
  const json p = json::parse(read_bytes(fixture("gguf/permute.json")));
  const int64_t heads = p["n_head"], head_dim = p["head_dim"], cols = p["cols"];
  std::vector<float> hf = read_f32(fixture("gguf/permute_hf.f32"));
  const std::vector<float> gguf = read_f32(fixture("gguf/permute_gguf.f32"));
  std::vector<float> w = hf;
  permute_qk_rows(w.data(), heads * head_dim, cols, heads);
  CHECK(w == gguf);
  unpermute_qk_rows(w.data(), heads * head_dim, cols, heads);
  CHECK(w == hf);
}

TEST_CASE("gguf export: every file the writer writes reads back with our reader") {
  TempDir dir;
  GGUFWriter w;
  w.set("general.architecture", gguf_string("llama"));
  w.set("test.u32", gguf_u32(4000000000u));
  w.set("test.i32", gguf_i32(-7));
  w.set("test.u64", gguf_u64(1ull << 40));
  w.set("test.f32", gguf_f32(0.125f));
  w.set("test.bool", gguf_bool(true));
  w.set("test.strings", gguf_string_array({"a", "", "ü b"}));
  w.set("test.ints", gguf_i32_array({1, -2, 3}));
  w.set("test.i32", gguf_i32(-8));  // replaced in place
  const Tensor a = ramp({3, 64}, 1.0f), b = ramp({64}, 0.5f), c = ramp({2, 32}, 3.0f);
  w.add_tensor("a", a, GGMLType::Q8_0);
  w.add_tensor("b", b, GGMLType::F32);
  w.add_tensor("c", c, GGMLType::F16);
  std::vector<uint8_t> raw(18, 0);
  w.add_tensor_bytes("d", Shape{32}, GGMLType::Q4_0, raw);
  w.write(dir / "x.gguf");

  GGUFFile f = GGUFFile::open(dir / "x.gguf");
  CHECK(f.version() == 3);
  CHECK(f.alignment() == 32);
  CHECK(f.keys() == std::vector<std::string>{"general.alignment", "general.architecture", "test.u32", "test.i32",
                                             "test.u64", "test.f32", "test.bool", "test.strings", "test.ints"});
  CHECK(f.value("test.u32").type == GGUFValueType::U32);
  CHECK(f.get_u64("test.u32") == 4000000000u);
  CHECK(f.get_i64("test.i32") == -8);
  CHECK(f.get_u64("test.u64") == (1ull << 40));
  CHECK(f.get_f64("test.f32") == 0.125);
  CHECK(f.get_bool("test.bool"));
  CHECK(f.get_string_array("test.strings") == std::vector<std::string>{"a", "", "ü b"});
  CHECK(f.get_int_array("test.ints") == std::vector<int64_t>{1, -2, 3});
  REQUIRE(f.tensors().size() == 4);
  CHECK(f.tensor("a").ne == std::vector<int64_t>{64, 3});
  CHECK(f.tensor("a").type == GGMLType::Q8_0);
  for (const GGUFTensorInfo& t : f.tensors()) CHECK(t.offset % 32 == 0);
  Tensor b2 = f.load_f32("b");
  CHECK(std::memcmp(b2.data<float>(), b.data<float>(), 64 * 4) == 0);
  Tensor a2 = f.load_f32("a");
  std::vector<uint8_t> qa(3 * 2 * 34);
  quantize_row(GGMLType::Q8_0, a.data<float>(), qa.data(), a.numel());
  CHECK(std::memcmp(f.tensor_data("a"), qa.data(), qa.size()) == 0);
  CHECK(a2.shape() == (Shape{3, 64}));
  // The file size is the data start plus each tensor padded to 32.
  CHECK(std::filesystem::file_size(dir / "x.gguf") % 32 == 0);
  CHECK(!std::filesystem::exists(dir / "x.gguf.tmp"));
}

TEST_CASE("gguf export: writer errors name the path or tensor; a failed write keeps the previous file") {
  TempDir dir;
  GGUFWriter w;
  w.add_tensor("t", ramp({2, 64}, 1.0f), GGMLType::Q4_1);
  CHECK(thrown_message([&] { w.add_tensor("t", ramp({64}, 1.0f), GGMLType::F32); }).find("'t' added twice") !=
        std::string::npos);
  CHECK(thrown_message([&] { w.add_tensor("odd", ramp({2, 48}, 1.0f), GGMLType::Q8_0); })
            .find("innermost dimension 48 is not a multiple of the Q8_0 block of 32") != std::string::npos);
  CHECK(thrown_message([&] { w.add_tensor_bytes("short", Shape{32}, GGMLType::Q8_0, std::vector<uint8_t>(3)); })
            .find("3 bytes given") != std::string::npos);

  std::filesystem::create_directory(dir / "folder.gguf");
  CHECK(thrown_message([&] { w.write(dir / "folder.gguf"); }).find("folder.gguf: is a folder") != std::string::npos);
  CHECK(thrown_message([&] { w.write(dir / "no/such/dir/x.gguf"); }).find("cannot create") != std::string::npos);

  // A full disk: the file-size limit makes write() fail part way (EFBIG, as ENOSPC
  // would); the previous file at the path is untouched and no temp file is left.
  const std::string path = dir / "model.gguf";
  write_bytes(path, "previous contents");
  GGUFWriter big;
  big.add_tensor("big", ramp({64, 1024}, 1.0f), GGMLType::F32);  // 256 KiB
  struct rlimit old_limit;
  REQUIRE(getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
  struct rlimit small = old_limit;
  small.rlim_cur = 64 * 1024;
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
  const std::string message = thrown_message([&] { big.write(path); });
  setrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, old_handler);
  CHECK_MESSAGE(message.find("model.gguf.tmp: write failed") != std::string::npos, message);
  CHECK(read_bytes(path) == "previous contents");
  CHECK(!std::filesystem::exists(path + ".tmp"));
}
