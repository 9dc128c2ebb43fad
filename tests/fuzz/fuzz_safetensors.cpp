// Fuzz target: a safetensors file (header + data) and, when the input has a second
// part, a sharded directory's model.safetensors.index.json naming it.
// Every tensor read is touched byte by byte (ASan sees any read outside the mapping).
#include "formats/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

using namespace nq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_input(data, size, 2);
  const std::string file = fuzz::write_file("model.safetensors", parts[0]);
  if (parts[1].empty()) fuzz::remove_file("model.safetensors.index.json");
  else fuzz::write_file("model.safetensors.index.json", parts[1]);
  fuzz::expect_only_nq_errors([&] {
    SafetensorsFile f = SafetensorsFile::open(file);
    uint64_t sum = 0;
    for (const std::string& name : f.names()) {
      Tensor t = f.get(name);
      const auto* p = static_cast<const uint8_t*>(t.raw());
      for (int64_t i = 0; i < t.nbytes(); ++i) sum += p[i];
    }
    for (const auto& [key, value] : f.metadata()) sum += key.size() + value.size();
    (void)sum;
  });
  fuzz::expect_only_nq_errors([&] {
    SafetensorsDir d = SafetensorsDir::open(fuzz::scratch_dir());
    for (const std::string& name : d.names()) (void)d.get(name).nbytes();
  });
  return 0;
}
