// Parameter names/shapes of the decoder, checkpoint loading and random init (see weights.h).
#include "model/weights.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "runtime/half.h"
#include "runtime/philox.h"
#include "formats/safetensors.h"

namespace nq {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Checkpoint entries that carry no parameter of ours and are safe to skip.
bool skippable(const std::string& name, const ModelConfig& config) {
  return ends_with(name, "rotary_emb.inv_freq") || (config.tie_word_embeddings && name == "lm_head.weight");
}

// An owned f32 copy counted as Weights (the decoder must not alias the read-only mapping).
Tensor to_f32_weight(const Tensor& stored) {
  Tensor w = Tensor::empty(stored.shape(), DType::F32, Device::CPU, MemCategory::Weights);
  float* dst = w.data<float>();
  const int64_t n = stored.numel();
  if (stored.dtype() == DType::F32) {
    std::memcpy(dst, stored.raw(), stored.nbytes());
  } else {
    const uint16_t* src = stored.data_u16();
    const bool bf16 = stored.dtype() == DType::BF16;
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16 ? bf16_to_f32(src[i]) : f16_to_f32(src[i]);
  }
  return w;
}

// An owned bf16 or f16 copy counted as Weights: the stored bits when the file has that
// dtype, else each value rounded to nearest even (runtime/half.h, as to_device rounds
// it) from f32 (or widened from the other 16-bit type first).
Tensor to_16bit_weight(const Tensor& stored, DType dtype) {
  Tensor w = Tensor::empty(stored.shape(), dtype, Device::CPU, MemCategory::Weights);
  uint16_t* dst = w.data_u16();
  const int64_t n = stored.numel();
  if (stored.dtype() == dtype) {
    std::memcpy(dst, stored.raw(), stored.nbytes());
    return w;
  }
  const bool to_bf16 = dtype == DType::BF16;
  if (stored.dtype() == DType::F32) {
    const float* src = stored.data<float>();
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) dst[i] = to_bf16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
  } else {
    const uint16_t* src = stored.data_u16();  // the other 16-bit type
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) dst[i] = to_bf16 ? f32_to_bf16(f16_to_f32(src[i])) : f32_to_f16(bf16_to_f32(src[i]));
  }
  return w;
}

}  // namespace

std::vector<ParamSpec> parameter_specs(const ModelConfig& c) {
  const int64_t D = c.hidden_size, F = c.intermediate_size, Dh = c.head_dim;
  const int64_t q = c.num_heads * Dh, kv = c.num_kv_heads * Dh;
  std::vector<ParamSpec> specs = {{"model.embed_tokens.weight", {c.vocab_size, D}}};
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = str("model.layers.", i, ".");
    specs.push_back({p + "input_layernorm.weight", {D}});
    const std::vector<std::pair<std::string, Shape>> attn = {
        {"q_proj", {q, D}}, {"k_proj", {kv, D}}, {"v_proj", {kv, D}}, {"o_proj", {D, q}}};
    for (const auto& [name, shape] : attn) {
      specs.push_back({p + "self_attn." + name + ".weight", shape});
      if (c.attention_bias) specs.push_back({p + "self_attn." + name + ".bias", {shape[0]}});
    }
    if (c.qk_norm()) {
      specs.push_back({p + "self_attn.q_norm.weight", {Dh}});
      specs.push_back({p + "self_attn.k_norm.weight", {Dh}});
    }
    specs.push_back({p + "post_attention_layernorm.weight", {D}});
    if (c.sparse_layer(i)) {  // Qwen3-MoE: the router, then each expert's SwiGLU (the hub's per-expert names)
      const int64_t Fe = c.moe.expert_intermediate_size;
      specs.push_back({p + "mlp.gate.weight", {c.moe.num_experts, D}});
      for (int64_t e = 0; e < c.moe.num_experts; ++e) {
        const std::string x = str(p, "mlp.experts.", e, ".");
        specs.push_back({x + "gate_proj.weight", {Fe, D}});
        specs.push_back({x + "up_proj.weight", {Fe, D}});
        specs.push_back({x + "down_proj.weight", {D, Fe}});
      }
      continue;
    }
    specs.push_back({p + "mlp.gate_proj.weight", {F, D}});
    specs.push_back({p + "mlp.up_proj.weight", {F, D}});
    specs.push_back({p + "mlp.down_proj.weight", {D, F}});
  }
  specs.push_back({"model.norm.weight", {D}});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {c.vocab_size, D}});
  return specs;
}

void check_weights(const TensorMap& weights, const ModelConfig& config, const std::string& source,
                   const Nf4Weights& nf4) {
  size_t nf4_used = 0;
  for (const ParamSpec& spec : parameter_specs(config)) {
    auto q = nf4.find(spec.name);
    if (q != nf4.end()) {
      NQ_CHECK(is_projection_weight(spec.name), source, ": ", spec.name, " cannot be NF4 (only projection weights)");
      NQ_CHECK(Shape({q->second->out, q->second->in}) == spec.shape, source, ": NF4 tensor ", spec.name,
               " has shape [", q->second->out, ", ", q->second->in, "], expected ", spec.shape.str());
      ++nf4_used;
      continue;
    }
    auto it = weights.find(spec.name);
    NQ_CHECK(it != weights.end(), source, ": missing tensor ", spec.name, " (expected ", spec.shape.str(), ")");
    NQ_CHECK(it->second.shape() == spec.shape, source, ": tensor ", spec.name, " has shape ",
             it->second.shape().str(), ", expected ", spec.shape.str());
    NQ_CHECK(it->second.dtype() == DType::F32 ||
                 ((it->second.dtype() == DType::BF16 || it->second.dtype() == DType::F16) && is_embedding_weight(spec.name)),
             source, ": tensor ", spec.name, " must be f32, got ",
             it->second.desc());
  }
  if (nf4_used == nf4.size()) return;
  std::set<std::string> names;
  for (const ParamSpec& spec : parameter_specs(config)) names.insert(spec.name);
  for (const auto& [name, q] : nf4)
    NQ_CHECK(names.count(name), source, ": NF4 tensor ", name, " is not a parameter of this ", config.model_type,
             " config");
}

bool is_embedding_weight(const std::string& name) {
  return name == "model.embed_tokens.weight" || name == "lm_head.weight";
}

bool is_projection_weight(const std::string& name) {
  return name.rfind("model.layers.", 0) == 0 && ends_with(name, "_proj.weight");
}

void take_weight(const std::string& name, const Tensor& stored, const WeightLoad& load, HfWeights& out) {
  if (load.nf4_projections && is_projection_weight(name)) {
    Nf4Tensor q = quantize_nf4(stored, load.nf4_blocksize, load.nf4_double_quant, name);
    q.dtype = load.nf4_dtype;
    // Uploaded now (the host copy is freed on return); on the CPU this is q itself.
    out.nf4[name] = std::make_shared<const Nf4Tensor>(q.to(load.place));
  } else if (load.embedding_dtype != DType::F32 && is_embedding_weight(name)) {
    out.dense[name] = to_16bit_weight(stored, load.embedding_dtype).to(load.place);
  } else {
    out.dense[name] = to_f32_weight(stored);
  }
}

namespace {

// transformers 5 keeps a sparse layer's experts fused, and a state_dict saved as is holds
//   <layer>.mlp.experts.gate_up_proj [E, 2I, D]  (expert e's gate rows [0, I), then its up rows)
//   <layer>.mlp.experts.down_proj    [E, D, I]
// instead of the hub's 3E tensors <layer>.mlp.experts.<e>.{gate,up,down}_proj.weight. A file
// may hold either layout, per layer; each expert's rows of a fused tensor are taken as the
// per-expert weight they are (the same values, NF4-quantized alike).
struct FusedExperts {
  std::string gate_up, down;  // tensor names
  int64_t layer;
};
std::vector<FusedExperts> fused_expert_layers(const SafetensorsDir& file, const ModelConfig& config) {
  std::vector<FusedExperts> out;
  for (int64_t i = 0; i < config.num_layers; ++i) {
    if (!config.sparse_layer(i)) continue;
    const std::string p = str("model.layers.", i, ".mlp.experts.");
    if (file.has(p + "gate_up_proj") || file.has(p + "down_proj")) out.push_back({p + "gate_up_proj", p + "down_proj", i});
  }
  return out;
}
void read_fused_experts(const SafetensorsDir& file, const FusedExperts& f, const ModelConfig& config,
                        const std::string& dir, const WeightLoad& load, HfWeights& out) {
  const int64_t E = config.moe.num_experts, I = config.moe.expert_intermediate_size, D = config.hidden_size;
  for (const auto& [name, shape] : {std::pair<std::string, Shape>{f.gate_up, {E, 2 * I, D}}, {f.down, {E, D, I}}}) {
    NQ_CHECK(file.has(name), dir, ": missing tensor ", name, " (expected ", shape.str(),
             "; a fused layer needs both gate_up_proj and down_proj)");
    const SafetensorsFile& shard = file.file_of(name);
    const auto& entry = shard.entry(name);
    NQ_CHECK(entry.shape == shape, shard.path(), ": tensor ", name, " has shape ", entry.shape.str(), ", expected ",
             shape.str(), " (", E, " experts of width ", I, ", hidden ", D, ")");
    NQ_CHECK(entry.dtype == DType::F32 || entry.dtype == DType::BF16 || entry.dtype == DType::F16, shard.path(),
             ": tensor ", name, " has dtype ", dtype_name(entry.dtype), " (expected F32, BF16 or F16)");
    const bool gate_up = name == f.gate_up;
    const Tensor all = shard.get(name).view(gate_up ? Shape{E * 2 * I, D} : Shape{E * D, I});
    for (int64_t e = 0; e < E; ++e) {
      const std::string expert = str("model.layers.", f.layer, ".mlp.experts.", e, ".");
      if (gate_up) {
        take_weight(expert + "gate_proj.weight", all.slice(e * 2 * I, e * 2 * I + I), load, out);
        take_weight(expert + "up_proj.weight", all.slice(e * 2 * I + I, (e + 1) * 2 * I), load, out);
      } else {
        take_weight(expert + "down_proj.weight", all.slice(e * D, (e + 1) * D), load, out);
      }
    }
    shard.release(name);
  }
}

}  // namespace

HfWeights load_dense_weights(const std::string& dir, const ModelConfig& config, const WeightLoad& load) {
  SafetensorsDir file = SafetensorsDir::open(dir);
  const std::vector<FusedExperts> fused = fused_expert_layers(file, config);
  auto per_expert_of_fused = [&](const std::string& name) {  // a hub name a fused tensor stands for
    for (const FusedExperts& f : fused)
      if (name.rfind(str("model.layers.", f.layer, ".mlp.experts."), 0) == 0) return true;
    return false;
  };
  std::vector<ParamSpec> specs;  // read one by one; the fused layers' experts come from their two tensors
  std::set<std::string> expected;
  for (const ParamSpec& s : parameter_specs(config)) {
    if (per_expert_of_fused(s.name)) continue;
    specs.push_back(s);
    expected.insert(s.name);
  }
  for (const FusedExperts& f : fused) expected.insert({f.gate_up, f.down});
  check_no_unexpected_tensors(file, expected, config, dir);
  HfWeights w;
  read_weights(file, specs, dir, load, w);
  for (const FusedExperts& f : fused) read_fused_experts(file, f, config, dir, load, w);
  return w;
}


TensorMap load_weights(const std::string& dir, const ModelConfig& config) {
  return load_dense_weights(dir, config, WeightLoad{}).dense;
}

void check_no_unexpected_tensors(const SafetensorsDir& file, const std::set<std::string>& expected,
                                 const ModelConfig& config, const std::string& dir) {
  for (const std::string& name : file.names()) {
    if (expected.count(name)) continue;
    NQ_CHECK(skippable(name, config), dir, ": unexpected tensor ", name, " in ", file.file_of(name).path(),
             " (not a parameter of this ", config.model_type, " config)");
    std::fprintf(stderr, "note: %s: skipping %s (%s)\n", dir.c_str(), name.c_str(),
                 name == "lm_head.weight" ? "lm_head is tied to embed_tokens" : "recomputed buffer");
  }
}

void read_weights(const SafetensorsDir& file, const std::vector<ParamSpec>& specs, const std::string& dir,
                  const WeightLoad& load, HfWeights& out) {
  for (const ParamSpec& spec : specs) {
    NQ_CHECK(file.has(spec.name), dir, ": missing tensor ", spec.name, " (expected ", spec.shape.str(), ")");
    const SafetensorsFile& shard = file.file_of(spec.name);
    const auto& entry = shard.entry(spec.name);
    NQ_CHECK(entry.shape == spec.shape, shard.path(), ": tensor ", spec.name, " has shape ", entry.shape.str(),
             ", expected ", spec.shape.str());
    NQ_CHECK(entry.dtype == DType::F32 || entry.dtype == DType::BF16 || entry.dtype == DType::F16, shard.path(),
             ": tensor ", spec.name, " has dtype ", dtype_name(entry.dtype), " (expected F32, BF16 or F16)");
    take_weight(spec.name, shard.get(spec.name), load, out);
    shard.release(spec.name);  // read once: its pages need not stay resident
  }
}

Tensor random_parameter(const ParamSpec& spec, uint64_t seed, uint64_t& offset, float init_std) {
  Tensor t = Tensor::empty(spec.shape, DType::F32, Device::CPU, MemCategory::Weights);
  float* w = t.data<float>();
  const int64_t n = t.numel();
  if (ends_with(spec.name, "norm.weight")) {
    for (int64_t i = 0; i < n; ++i) w[i] = 1.0f;
  } else if (ends_with(spec.name, ".bias")) {
    for (int64_t i = 0; i < n; ++i) w[i] = 0.0f;
  } else {
    // Box-Muller: Philox block b (four uniforms u0..u3) -> elements 4b..4b+3, the
    // pairs (u0, u1) and (u2, u3) each giving r cos(theta), r sin(theta).
    const int64_t blocks = (n + 3) / 4;
#pragma omp parallel for
    for (int64_t b = 0; b < blocks; ++b) {
      const Philox4 u = philox4x32_10(offset + uint64_t(b), seed);
      for (int pair = 0; pair < 2; ++pair) {
        const float u1 = u32_to_uniform(u.v[2 * pair]), u2 = u32_to_uniform(u.v[2 * pair + 1]);
        const float r = std::sqrt(-2.0f * std::log(1.0f - u1));  // 1 - u1 in (0, 1]
        const float theta = 6.28318530718f * u2;
        const int64_t i = 4 * b + 2 * pair;
        if (i < n) w[i] = init_std * r * std::cos(theta);
        if (i + 1 < n) w[i + 1] = init_std * r * std::sin(theta);
      }
    }
    offset += uint64_t(blocks);  // Philox blocks used
  }
  return t;
}

TensorMap random_weights(const ModelConfig& config, uint64_t seed, float init_std) {
  TensorMap weights;
  uint64_t offset = 0;  // a private Philox stream: parameter k uses the range after parameter k-1
  for (const ParamSpec& spec : parameter_specs(config)) weights[spec.name] = random_parameter(spec, seed, offset, init_std);
  return weights;
}

}  // namespace nq
