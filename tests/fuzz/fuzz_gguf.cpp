// Fuzz target: a GGUF file through GGUFFile: the header, every metadata value through
// each typed accessor, and every decodable tensor decoded to f32.
#include "formats/gguf.h"
#include "tests/fuzz/fuzz_util.h"

using namespace nq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_file("model.gguf", std::string(reinterpret_cast<const char*>(data), size));
  fuzz::expect_only_nq_errors([&] {
    GGUFFile f = GGUFFile::open(path);
    for (const std::string& key : f.keys()) {
      fuzz::expect_only_nq_errors([&] { (void)f.get_u64(key); });
      fuzz::expect_only_nq_errors([&] { (void)f.get_i64(key); });
      fuzz::expect_only_nq_errors([&] { (void)f.get_f64(key); });
      fuzz::expect_only_nq_errors([&] { (void)f.get_bool(key); });
      fuzz::expect_only_nq_errors([&] { (void)f.get_string(key); });
      fuzz::expect_only_nq_errors([&] { (void)f.get_string_array(key); });
      fuzz::expect_only_nq_errors([&] { (void)f.get_int_array(key); });
      fuzz::expect_only_nq_errors([&] { (void)f.get_float_array(key); });
    }
    for (const GGUFTensorInfo& t : f.tensors()) {
      fuzz::expect_only_nq_errors([&] {
        Tensor x = f.load_f32(t.name);
        fuzz::require(x.numel() == t.numel(), "load_f32 returns numel() values");
      });
    }
  });
  return 0;
}
