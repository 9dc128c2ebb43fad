// bitsandbytes 4-bit checkpoints into and out of a model (see bnb_checkpoint.h).
#include "model/bnb_checkpoint.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "formats/hf_files.h"
#include "formats/safetensors.h"
#include "model/decoder.h"
#include "runtime/half.h"

namespace nq {

using json = nlohmann::json;

namespace {

// The NF4 weights of the projections stored 4-bit in `file` (quant_state present).
Nf4Weights read_nf4_weights(const SafetensorsDir& file, const ModelConfig& config) {
  Nf4Weights nf4;
  for (const ParamSpec& spec : parameter_specs(config)) {
    if (!is_projection_weight(spec.name) || !has_nf4_tensor(file, spec.name)) continue;
    Nf4Tensor q = read_nf4_tensor(file, spec.name);
    NQ_CHECK(Shape({q.out, q.in}) == spec.shape, file.file_of(spec.name).path(), ": 4-bit tensor ", spec.name,
             " has shape [", q.out, ", ", q.in, "], expected ", spec.shape.str());
    nf4[spec.name] = std::make_shared<const Nf4Tensor>(std::move(q));
  }
  return nf4;
}

// One f32 value rounded to `dtype` (round to nearest even), as its 16-bit pattern.
uint16_t half_bits(float x, DType dtype) { return dtype == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x); }
float half_value(uint16_t h, DType dtype) { return dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h); }

// t (f32) rounded in place to the nearest value of `dtype` (f32: unchanged).
void round_to_dtype(Tensor& t, DType dtype) {
  if (dtype == DType::F32) return;
  float* x = t.data<float>();
  const int64_t n = t.numel();
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) x[i] = half_value(half_bits(x[i], dtype), dtype);
}

// t (f32) stored as `dtype` (a threaded Tensor::to_dtype: the 8B embeddings are 622M values).
Tensor cast_for_saving(const Tensor& t, DType dtype) {
  if (dtype == DType::F32) return t;
  Tensor out = Tensor::empty(t.shape(), dtype, Device::CPU, MemCategory::Weights);
  const float* x = t.data<float>();
  uint16_t* h = out.data_u16();
  const int64_t n = t.numel();
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) h[i] = half_bits(x[i], dtype);
  return out;
}

}  // namespace

// ---------------------------------------------------------------- loading

HfWeights load_hf_weights(const std::string& dir, const ModelConfig& config, const WeightLoad& load) {
  if (!read_bnb_4bit_config(dir + "/config.json")) return load_dense_weights(dir, config, load);
  HfWeights w;
  SafetensorsDir file = SafetensorsDir::open(dir);
  w.nf4 = read_nf4_weights(file, config);
  std::vector<ParamSpec> dense_specs;
  std::set<std::string> expected;
  for (const ParamSpec& spec : parameter_specs(config)) {
    if (w.nf4.count(spec.name)) {
      for (const std::string& name : nf4_tensor_names(spec.name)) expected.insert(name);
    } else {
      dense_specs.push_back(spec);
      expected.insert(spec.name);
    }
  }
  check_no_unexpected_tensors(file, expected, config, dir);
  read_weights(file, dense_specs, dir, load, w);
  return w;
}

Decoder load_hf_decoder(const std::string& dir, DecoderOptions options) {
  ModelConfig config = ModelConfig::from_file(dir + "/config.json");
  HfWeights w = load_hf_weights(dir, config);
  return Decoder(std::move(config), w.dense, options, w.nf4);
}

// ---------------------------------------------------------------- quantizing and saving

void save_bnb_4bit(const std::string& dir, const std::string& config_json, const ModelConfig& config,
                   const TensorMap& dense, const Nf4Weights& nf4, const Bnb4bitConfig& quant, DType dtype) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamSpec& spec : parameter_specs(config)) {
    auto q = nf4.find(spec.name);
    if (q != nf4.end()) {
      for (auto& [name, t] : nf4_to_state_dict(*q->second, spec.name)) tensors.emplace_back(name, t);
      continue;
    }
    auto it = dense.find(spec.name);
    NQ_CHECK(it != dense.end(), dir, ": no tensor for ", spec.name, " to save");
    tensors.emplace_back(spec.name, it->second.dtype() == dtype ? it->second : it->second.to_dtype(dtype));
  }
  make_dir(dir);
  save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  write_bnb_config_json(dir, config_json, quant);
}

RandomCheckpointReport write_random_bnb_checkpoint(const std::string& dir, const ModelConfig& config, uint64_t seed,
                                                   const std::function<void(const std::string&)>& progress) {
  // A Qwen3-MoE file holds each expert's projections quantized as its own 2-D weight (the hub's
  // per-expert names): nanoqlora reads it; transformers 5 fuses the experts on load, and
  // bitsandbytes cannot quantize those 3-D tensors, so it does not.
  const DType dtype = dtype_of_torch_name(config.torch_dtype, "config torch_dtype");
  const std::vector<ParamSpec> specs = parameter_specs(config);
  // Shard k: 0 = the embeddings, 1..L = layer k-1, L+1 = the final norm (+ lm_head).
  auto shard_of = [&](const std::string& name) -> int64_t {
    if (name.rfind("model.layers.", 0) == 0) return 1 + std::stoll(name.substr(13));
    return name == "model.embed_tokens.weight" ? 0 : config.num_layers + 1;
  };
  const int64_t n_shards = config.num_layers + 2;
  auto shard_name = [&](int64_t k) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05lld-of-%05lld.safetensors", (long long)k + 1, (long long)n_shards);
    return std::string(buf);
  };
  make_dir(dir);
  RandomCheckpointReport report;
  json weight_map = json::object();
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t offset = 0;  // the Philox stream position, as random_weights() advances it
  size_t next = 0;
  for (int64_t k = 0; k < n_shards; ++k) {
    std::vector<std::pair<std::string, Tensor>> tensors;  // this shard's, in the file's order
    for (; next < specs.size() && shard_of(specs[next].name) == k; ++next) {
      const ParamSpec& spec = specs[next];
      Tensor w = random_parameter(spec, seed, offset, config.initializer_range);  // f32 [spec.shape]
      if (is_projection_weight(spec.name)) {
        round_to_dtype(w, dtype);  // the values a model created in `dtype` holds, then NF4
        Nf4Tensor q = quantize_nf4(w.data<float>(), w.size(0), w.size(1), 64, true, spec.name);
        q.dtype = config.torch_dtype;
        report.quantized_params += q.numel();
        for (auto& [name, t] : nf4_to_state_dict(q, spec.name)) tensors.emplace_back(name, t);
      } else {
        report.dense_params += w.numel();
        tensors.emplace_back(spec.name, cast_for_saving(w, dtype));
      }
    }
    for (const auto& [name, t] : tensors) {
      weight_map[name] = shard_name(k);
      report.bytes += t.nbytes();
    }
    save_safetensors(dir + "/" + shard_name(k), tensors, {{"format", "pt"}});
    ++report.shards;
    if (progress) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const std::string what = k == 0 ? "embeddings" : k <= config.num_layers ? str("layer ", k - 1) :
                               config.tie_word_embeddings ? "final norm" : "final norm + lm_head";
      char line[160];
      std::snprintf(line, sizeof line, "[%lld/%lld] %s: %s written, %.2f GB so far, %.1f s", (long long)k + 1,
                    (long long)n_shards, what.c_str(), shard_name(k).c_str(), double(report.bytes) / 1e9, s);
      progress(line);
    }
  }
  json index = {{"metadata", {{"total_size", report.bytes}}}, {"weight_map", weight_map}};
  write_text_file(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
  Bnb4bitConfig quant;
  quant.compute_dtype = config.torch_dtype;  // compute in the model's dtype, as the seed's BitsAndBytesConfig
  write_bnb_config_json(dir, config.to_hf_json(), quant);
  return report;
}

QuantizeReport quantize_checkpoint(const std::string& src, const std::string& dst, int64_t blocksize,
                                   bool double_quant) {
  check_not_same_dir(src, dst);
  const std::string config_path = src + "/config.json";
  NQ_CHECK(!read_bnb_4bit_config(config_path), config_path,
           ": the model is already quantized (quantization_config is set); quantize its dense original");
  const ModelConfig config = ModelConfig::from_file(config_path);
  const DType dtype = dtype_of_torch_name(config.torch_dtype, config_path);
  // Each projection quantized as it is read: host memory peaks at the NF4 model plus
  // the dense tensors, never at an f32 copy of the whole model.
  HfWeights loaded = load_dense_weights(src, config, WeightLoad{true, blocksize, double_quant, config.torch_dtype});
  const TensorMap& weights = loaded.dense;
  const Nf4Weights& nf4 = loaded.nf4;
  QuantizeReport report;
  const SafetensorsDir source = SafetensorsDir::open(src);
  for (const SafetensorsFile& f : source.files()) report.bytes_before += std::filesystem::file_size(f.path());
  for (const auto& [name, q] : nf4) {
    report.quantized_params += q->numel();
    report.nf4_bits += q->bits_per_parameter() * double(q->numel());
  }
  for (const auto& [name, t] : weights) report.dense_params += t.numel();

  Bnb4bitConfig quant;
  quant.double_quant = double_quant;
  save_bnb_4bit(dst, read_text_file(config_path), config, weights, nf4, quant, dtype);
  copy_tokenizer_files(src, dst);
  report.bytes_after = std::filesystem::file_size(dst + "/model.safetensors");
  return report;
}

}  // namespace nq
