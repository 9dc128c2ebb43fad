// The decoder's hyper-parameters, read from a Hugging Face config.json (model_type
// "qwen3", "llama" or "qwen3_moe") or taken from a built-in preset of the official Qwen3 sizes.
//
// Qwen3 and Llama share one decoder (model/decoder.h); the config is the only
// difference: Qwen3 normalises q and k per head (qk_norm), Llama does not, and
// Llama's head_dim defaults to hidden_size / num_attention_heads. Anything the
// decoder does not implement (sliding windows, RoPE scaling, MLP biases, other
// activations) is refused with an error naming the field and the file, rather
// than silently computing a different model.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/rope_table.h"

namespace nq {

// Qwen3-MoE (model_type "qwen3_moe", transformers' Qwen3MoeConfig): the MLP of a sparse
// layer is a router [E, D] over E SwiGLU experts of width moe_intermediate_size, each token
// sent to its top k. Read from and written to config.json here; model/gguf_model.cpp fills
// it from a GGUF's qwen3moe.* keys (norm_topk_prob true, every layer sparse: llama.cpp's
// graph). The decoder computes it in model/moe.* (docs/model.md, "Qwen3-MoE").
struct MoeConfig {
  int64_t num_experts = 0;             // E (num_experts on the hub, num_local_experts in memory); 0: dense
  int64_t experts_per_token = 0;       // k, num_experts_per_tok
  int64_t expert_intermediate_size = 0;  // moe_intermediate_size
  bool norm_topk_prob = false;         // renormalise the top-k routing weights to sum to 1
  int64_t decoder_sparse_step = 1;     // layer i is sparse when (i + 1) % step == 0 ...
  std::vector<int64_t> mlp_only_layers;  // ... and i is not listed here (those keep the dense MLP)
  float router_aux_loss_coef = 0.001f;   // the load-balancing loss's weight, when output_router_logits
  bool output_router_logits = false;
};

struct ModelConfig {
  std::string model_type;          // "qwen3" | "llama" | "qwen3_moe"
  int64_t hidden_size = 0;         // D
  int64_t intermediate_size = 0;   // F, the MLP width
  int64_t num_layers = 0;          // num_hidden_layers
  int64_t num_heads = 0;           // Hq, query heads
  int64_t num_kv_heads = 0;        // Hkv, key/value heads (GQA: Hq % Hkv == 0)
  int64_t head_dim = 0;            // Dh
  int64_t vocab_size = 0;          // V
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;        // linear / yarn context extension; type "default" = none
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;  // lm_head.weight is embed_tokens.weight
  bool attention_bias = false;       // q/k/v/o projections carry a bias
  int64_t max_position_embeddings = 0;
  std::string torch_dtype = "float32";  // dtype of the stored weights ("bfloat16", ...)
  float initializer_range = 0.02f;      // std of the normal init (transformers' _init_weights)
  int32_t bos_token_id = -1;            // -1: none
  std::vector<int32_t> eos_token_ids;   // may be several (generation stops on any)
  std::optional<bool> add_bos_token;    // from a GGUF vocabulary; unset: decided by model_type
  MoeConfig moe;                        // qwen3_moe only

  bool qk_norm() const { return model_type == "qwen3" || model_type == "qwen3_moe"; }  // RMSNorm over head_dim on q and k
  bool is_moe() const { return moe.num_experts > 0; }
  // Whether layer i's MLP is the experts (transformers' Qwen3MoeDecoderLayer rule).
  bool sparse_layer(int64_t i) const;
  // Llama tokenizers put BOS before a text (Qwen's do not, although its config names one).
  bool prepends_bos() const { return bos_token_id >= 0 && add_bos_token.value_or(model_type == "llama"); }

  // Parses HF config.json text; `source` names the file in error messages.
  static ModelConfig from_json(const std::string& text, const std::string& source);
  static ModelConfig from_file(const std::string& path);
  // The config.json transformers writes for this model (Qwen3ForCausalLM / LlamaForCausalLM):
  // from_json(to_hf_json()) gives back this config.
  std::string to_hf_json() const;
  // "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", and the MoE "qwen3-30b-a3b",
  // "qwen3-235b-a22b" (the official config.json values). preset_names() lists the dense ones
  // (./bench's model shapes), moe_preset_names() the others.
  static ModelConfig preset(const std::string& name);
  static std::vector<std::string> preset_names();
  static std::vector<std::string> moe_preset_names();

  // Switches on the RoPE scaling of a --rope-scaling value (parse_rope_scaling_spec); the
  // config's own scaling when it agrees, an error naming both when it has another. "": no-op.
  void apply_rope_scaling_flag(const std::string& spec);

  int64_t num_parameters() const;  // counting a tied lm_head once
  std::string summary() const;     // one line: "qwen3 28 layers, D 1024, ..."
};

// --rope-scaling's value: "yarn:F" (YaRN, factor F, over an original window of
// max_position_embeddings), "yarn:F:W" (window W), "linear:F". Errors are one line
// naming the flag and the value.
RopeScaling parse_rope_scaling_spec(const std::string& spec, int64_t max_position_embeddings);

}  // namespace nq
