// Quantize while loading (model/weights.h WeightLoad): the QLoRA base arrives NF4
// tensor by tensor, straight from the file's bf16 / f16 / f32 bytes, and must be
// byte for byte the base of the old way (every weight to f32 first, then
// Linear::quantize_nf4), while the host never holds more than the result plus one
// tensor. The GGUF reader's case is in test_gguf_model.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/device.h"
#include "model/load_model.h"
#include "runtime/allocator.h"
#include "runtime/half.h"
#include "tests/gpu_test.h"
#include "tests/nf4_compare.h"
#include "training/memory_plan.h"

using namespace nq;

namespace {

// n values of a fixed pseudo-random normal-ish spread, with a few exact zeros and
// large values so blocks of every kind occur.
std::vector<float> test_values(int64_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t s = seed;
  for (int64_t i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    const float u = float(s >> 8) / float(1 << 24) - 0.5f;
    v[i] = (i % 97 == 0) ? 0.0f : (i % 131 == 0) ? 3.0f * u : 0.05f * u;
  }
  return v;
}

// A CPU tensor [out, in] of `dtype` holding `values` rounded to it; `widened` gets its exact f32 values.
Tensor half_tensor(const std::vector<float>& values, int64_t out, int64_t in, DType dtype, std::vector<float>& widened) {
  Tensor t = Tensor::empty({out, in}, dtype, Device::CPU, MemCategory::Workspace);
  uint16_t* h = t.data_u16();
  widened.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    h[i] = dtype == DType::BF16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
    widened[i] = dtype == DType::BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
  }
  return t;
}

// Loads `dir` both ways and checks the decoders' NF4 bases and other parameters are identical.
void check_same_base(const std::string& dir) {
  CAPTURE(dir);
  LoadedModel streamed = load_model(dir, WeightLoad::qlora(true));
  LoadedModel dense = load_model(dir);
  for (const auto& [name, t] : streamed.weights) CHECK_FALSE(is_projection_weight(name));  // no f32 copy kept
  CHECK(streamed.nf4.size() == size_t(7 * streamed.config.num_layers));
  Decoder a = build_decoder(streamed, {}, true), b = build_decoder(dense, {}, true);
  const std::vector<Linear*> la = a.linears(), lb = b.linears();
  REQUIRE(la.size() == lb.size());
  for (size_t i = 0; i < la.size(); ++i) {
    CAPTURE(la[i]->name());
    REQUIRE(la[i]->is_nf4());
    CHECK(same_nf4(*la[i]->nf4(), *lb[i]->nf4()));
  }
  const std::vector<Var> pa = a.parameters(), pb = b.parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) CHECK(same_tensor_bytes(pa[i].value(), pb[i].value()));
}

}  // namespace

TEST_CASE("quantize_nf4 of a bf16 / f16 tensor == quantize_nf4 of its exact f32 widening, byte for byte") {
  struct Case { int64_t out, in, blocksize; bool double_quant; };
  // [7, 96]: a partial last block; [5, 33]: an odd numel (padded nibble); 300 blocks: two nested blocks.
  for (const Case& c : {Case{7, 96, 64, true}, Case{5, 33, 64, true}, Case{5, 33, 32, false},
                        Case{300, 64, 64, true}, Case{16, 256, 128, true}}) {
    for (DType dtype : {DType::BF16, DType::F16}) {
      CAPTURE(c.out);
      CAPTURE(c.in);
      CAPTURE(dtype_name(dtype));
      std::vector<float> widened;
      const Tensor t = half_tensor(test_values(c.out * c.in, uint32_t(c.out * 131 + c.in)), c.out, c.in, dtype, widened);
      const Nf4Tensor want = quantize_nf4(widened.data(), c.out, c.in, c.blocksize, c.double_quant, "w");
      const Nf4Tensor got = quantize_nf4(t, c.blocksize, c.double_quant, "w");
      CHECK(same_nf4(got, want));
      Tensor f32 = Tensor::empty({c.out, c.in}, DType::F32, Device::CPU, MemCategory::Workspace);
      std::memcpy(f32.raw(), widened.data(), f32.nbytes());
      CHECK(same_nf4(quantize_nf4(f32, c.blocksize, c.double_quant, "w"), want));
    }
  }
  std::vector<float> widened;
  std::vector<float> values = test_values(6 * 64, 1);
  values[2 * 64 + 5] = INFINITY;
  const Tensor bad = half_tensor(values, 6, 64, DType::BF16, widened);
  CHECK_THROWS_WITH_AS(quantize_nf4(bad, 64, true, "model.layers.0.mlp.up_proj.weight"),
                       "quantize_nf4: tensor 'model.layers.0.mlp.up_proj.weight' [6, 64] has a non-finite value (inf) "
                       "at row 2, column 5",
                       Error);
  const Tensor ids = Tensor::zeros({2, 64}, DType::I32);
  CHECK_THROWS_WITH_AS(quantize_nf4(ids, 64, true, "w"), ("quantize_nf4: tensor 'w' is " + ids.desc() +
                                                           " (expected f32, bf16 or f16)").c_str(), Error);
}

TEST_CASE("load_model with NF4 projections: the same QLoRA base as loading f32 and quantizing after") {
  check_same_base("tests/fixtures/model/llama");             // bf16 safetensors
  check_same_base("tests/fixtures/model/qwen3_untied_bias");  // f32, biases, untied lm_head
  check_same_base("tests/fixtures/qlora/model");             // the QLoRA fixture's model
}

TEST_CASE("load_model with NF4 projections: host weights peak at the result plus one tensor, never at f32") {
  const std::string dir = "tests/fixtures/trajectory/model";  // f32 safetensors
  Allocator& host = allocator_for(Device::CPU);
  const size_t w = size_t(MemCategory::Weights);
  const ModelConfig config = ModelConfig::from_file(dir + "/config.json");
  size_t f32_total = 0, largest = 0;
  for (const ParamSpec& s : parameter_specs(config)) {
    f32_total += size_t(s.shape.numel()) * 4;
    largest = std::max(largest, size_t(s.shape.numel()) * 4);
  }

  const size_t before = host.stats().current[w];
  host.reset_peak();
  LoadedModel m = load_model(dir, WeightLoad::qlora(true));
  const MemStats streamed = host.stats();
  const size_t result = streamed.current[w] - before, peak = streamed.peak[w] - before;
  CAPTURE(result);
  CAPTURE(peak);
  CHECK(peak <= result + largest);
  CHECK(result < f32_total / 2);  // NF4 projections: the f32 model never existed

  m = LoadedModel{};
  host.reset_peak();
  const size_t before_dense = host.stats().current[w];
  LoadedModel dense = load_model(dir);
  CHECK(host.stats().peak[w] - before_dense >= f32_total);  // the old way: the whole model in f32
}

TEST_CASE("load_model for a GPU run: embeddings arrive in the compute dtype, as to_device would round them") {
  for (const char* dir : {"tests/fixtures/model/llama", "tests/fixtures/model/qwen3_untied_bias"})
    for (DType compute : {DType::BF16, DType::F16}) {
      CAPTURE(dir);
      CAPTURE(std::string(dtype_name(compute)));
      WeightLoad for_gpu = WeightLoad::qlora(true, Device::CUDA, compute);
      CHECK(for_gpu.place == Device::CUDA);
      for_gpu.place = Device::CPU;  // the dtypes of a GPU run, kept on the host (no GPU needed)
      LoadedModel gpu = load_model(dir, for_gpu);
      LoadedModel cpu = load_model(dir, WeightLoad::qlora(true, Device::CPU));
      REQUIRE(gpu.weights.size() == cpu.weights.size());
      for (const auto& [name, t] : cpu.weights) {
        CAPTURE(name);
        const Tensor& g = gpu.weights.at(name);
        if (is_embedding_weight(name)) {
          CHECK(t.dtype() == DType::F32);
          CHECK(same_tensor_bytes(g, t.to_dtype(compute)));
        } else {
          CHECK(same_tensor_bytes(g, t));
        }
      }
      CHECK_NOTHROW(build_decoder(gpu, {}, true));  // the decoder takes 16-bit embeddings (to_device keeps them)
    }
}

// A GPU run's load uploads each NF4 projection and embedding as it is made: the
// same bytes as the host load's, on the GPU, and the host never holds them together.
NQ_GPU_TEST("gpu train load_model uploads each projection and embedding as it is made", load_uploads_as_it_goes) {
  const char* dir = "tests/fixtures/model/qwen3_untied_bias";
  Allocator& host = allocator_for(Device::CPU);
  const size_t w = size_t(MemCategory::Weights);
  host.reset_peak();
  const size_t before = host.stats().current[w];
  LoadedModel gpu = load_model(dir, WeightLoad::qlora(true, Device::CUDA, DType::F16));
  const size_t host_peak = host.stats().peak[w] - before, host_after = host.stats().current[w] - before;
  LoadedModel cpu = load_model(dir, WeightLoad::qlora(true, Device::CPU));
  size_t cpu_bytes = 0, largest = 0;
  for (const auto& [name, q] : cpu.nf4) {
    CAPTURE(name);
    const Nf4Tensor& g = *gpu.nf4.at(name);
    CHECK(g.packed.device() == Device::CUDA);
    CHECK(g.nested_code.device() == Device::CUDA);
    CHECK(same_tensor_bytes(g.packed.to(Device::CPU), q->packed));
    CHECK(same_tensor_bytes(g.absmax.to(Device::CPU), q->absmax));
    cpu_bytes += q->nbytes();
    largest = std::max(largest, q->nbytes());
  }
  for (const auto& [name, t] : cpu.weights) {
    CAPTURE(name);
    const Tensor& g = gpu.weights.at(name);
    if (is_embedding_weight(name)) {
      CHECK(g.device() == Device::CUDA);
      CHECK(same_tensor_bytes(g.to(Device::CPU), t.to_dtype(DType::F16)));
      cpu_bytes += t.nbytes();
      largest = std::max(largest, t.nbytes());
    } else {
      CHECK(g.device() == Device::CPU);  // norms and biases: f32 on the host until to_device
      CHECK(same_tensor_bytes(g, t));
    }
  }
  CAPTURE(host_peak);
  CAPTURE(host_after);
  CAPTURE(cpu_bytes);
  CHECK(host_peak < cpu_bytes);         // never the whole 4-bit model on the host
  CHECK(host_after + largest >= host_peak);  // at most one uploaded tensor beside what stays
  Decoder model = build_decoder(gpu, {}, true);
  to_device(model, Device::CUDA, DType::F16);  // moves only what is still on the host
  CHECK(model_compute_dtype(model) == DType::F16);
}

// The host plan's load term (training/memory_plan.h plan_host_memory) is the bytes the
// loader hands over, plus at most one tensor's mapped pages in the file's dtype.
TEST_CASE("plan_host_memory: its load term is what load_model hands over plus one tensor being read") {
  for (const char* dir : {"tests/fixtures/model/llama", "tests/fixtures/model/qwen3_untied_bias"}) {
    for (Device device : {Device::CPU, Device::CUDA}) {
      CAPTURE(dir);
      CAPTURE(device_name(device));
      WeightLoad load = WeightLoad::qlora(true, device);
      load.place = Device::CPU;  // the dtypes of a run on `device`, on the host here (no GPU needed)
      const LoadedModel m = load_model(dir, load);
      // What stays on the host: everything on the CPU; on the GPU all but the uploaded
      // NF4 projections and embeddings, of which one at a time is on the host.
      size_t held = 0, largest_uploaded = 0;
      for (const auto& [name, t] : m.weights)
        if (device == Device::CPU || !is_embedding_weight(name)) held += t.nbytes();
        else largest_uploaded = std::max(largest_uploaded, t.nbytes());
      for (const auto& [name, w] : m.nf4)
        if (device == Device::CPU) held += w->nbytes();
        else largest_uploaded = std::max(largest_uploaded, w->nbytes());
      const size_t file_elem = m.config.torch_dtype == "float32" ? 4 : 2;
      size_t largest = 0;
      for (const ParamSpec& s : parameter_specs(m.config)) largest = std::max(largest, size_t(s.shape.numel()) * file_elem);
      largest += largest_uploaded;
      TrainShape shape;
      shape.seq = 32;
      shape.paged_optimizer = true;
      const HostPlan host = plan_host_memory(m.config, QloraShape{}, shape, device);
      CHECK(host.load > held);
      CHECK(host.load <= held + largest);
      const MemoryPlan step = plan_memory(m.config, QloraShape{}, shape, device);
      // CPU: the step's tensors are all on the host; GPU: only paged AdamW's m and v.
      CHECK(host.training == (device == Device::CPU ? step.total() : 2 * step[MemCategory::LoRA]));
      CHECK(host.peak() == std::max(host.load, host.training));
    }
  }
}
