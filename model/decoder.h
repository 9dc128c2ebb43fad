// The Qwen3 / Llama decoder (transformers' modeling_qwen3 / modeling_llama
// semantics), written with the differentiable ops of autograd/ops.h.
//
//   x = embed_tokens[ids]                                        // [N, D], N = B*T
//   for each layer:
//     h = RMSNorm(x)
//     q, k, v = q_proj(h), k_proj(h), v_proj(h)                  // [N, Hq, Dh], [N, Hkv, Dh] x2
//     (qwen3) q, k = RMSNorm_Dh(q), RMSNorm_Dh(k)                // per head, one [Dh] weight each
//     q, k = RoPE(q, pos), RoPE(k, pos)                          // rotate-half, the config's table
//     x = x + o_proj(causal GQA attention(q, k, v))              // [N, D]
//     x = x + down_proj(silu(gate_proj(RMSNorm(x))) * up_proj(RMSNorm(x)))
//       (a Qwen3-MoE sparse layer: x = x + MoE(RMSNorm(x)), the routed experts of model/moe.h)
//   logits = RMSNorm(x) @ lm_head^T                              // lm_head = embed_tokens when tied
//
// Qwen3 and Llama differ only by their config (model/config.h): q/k norms and
// the default head_dim; Qwen3-MoE by its sparse layers' MLP. Parameters are Vars named as in the HF checkpoint.
// Each layer is recomputed in backward (gradient checkpointing) unless turned off;
// its saved input can wait in host memory and its MLP run over row chunks (DecoderOptions).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/var.h"
#include "model/config.h"
#include "model/linear.h"
#include "model/moe.h"
#include "model/weights.h"

namespace nq {

// A batch of B rows of T tokens (all i32, on the model's device).
// Labels are shifted: labels[b, t] is the target of position t (the token at
// t+1 when it is trained), kernels::kIgnoreIndex where there is none. They are
// made once, with their count, where the batch is made (training/batch.h:
// decoder_batch for the trainer's batches, hf_decoder_batch from labels in the
// Hugging Face convention); the model never shifts.
struct DecoderBatch {
  Tensor ids;             // [B, T] token ids
  Tensor labels;          // [B, T] shifted targets (forward_loss only)
  int64_t n_targets = 0;  // labels != kIgnoreIndex: the loss's denominator (forward_loss checks it)
  Tensor positions;       // [B, T] RoPE positions; undefined = 0..T-1 in every row
  Tensor segment_ids;     // [B, T] packed rows: attention stays within a segment; undefined = one per row
};

struct DecoderOptions {
  bool checkpointing = true;       // recompute each layer during backward
  // With checkpointing: each layer's saved input waits in host memory between the
  // forward and the layer's backward (runtime/offload.h, autograd/var.h checkpoint).
  bool offload_activations = false;
  // The MLP block (post-attention norm, gate/up, SwiGLU, down) over chunks of this many
  // rows, each recomputed alone in backward (autograd/var.h checkpoint_rows): its
  // [N, F] temporaries exist for one chunk at a time. 0 = all rows at once.
  int64_t mlp_chunk_rows = 0;
  bool train_all = false;          // every parameter requires grad (tests); otherwise all are frozen
  int64_t ce_chunk_rows = 1024;    // rows of logits that exist at once in the loss
};

struct DecoderLayer {
  Var input_norm, post_attention_norm;  // [D]
  Var q_norm, k_norm;                   // [Dh] (qwen3 only)
  Linear q_proj, k_proj, v_proj, o_proj;
  Linear gate_proj, up_proj, down_proj;  // the dense MLP (unset in a sparse layer)
  MoeExperts moe;                        // a Qwen3-MoE sparse layer's MLP (empty in a dense one)

  bool sparse() const { return !moe.empty(); }
  // Every projection of the layer in model order: q, k, v, o, then gate, up, down of the
  // dense MLP or of each expert in turn.
  std::vector<Linear*> linears();
  std::vector<const Linear*> linears() const;
};

class Decoder;
void to_device(Decoder& model, Device device, DType compute);  // model/device.h

class Decoder {
 public:
  // The projections named in `nf4` start quantized; `weights` holds everything else
  // (and need not hold a dense copy of those).
  Decoder(ModelConfig config, const TensorMap& weights, DecoderOptions options = {}, const Nf4Weights& nf4 = {});
  // config.json + safetensors from a HF model directory (model/weights.h).
  static Decoder load(const std::string& dir, DecoderOptions options = {});

  // Mean cross-entropy over the counted (shifted) labels -> [1].
  Var forward_loss(const DecoderBatch& batch) const;
  // Full logits [B, T, V], computed under NoGrad (tests, eval).
  Tensor logits(const DecoderBatch& batch) const;

  // The pieces, shared with the KV-cache generator (model/generate.h).
  // attend(q [N, Hq, Dh], k [N, Hkv, Dh], v [N, Hkv, Dh]) -> [N, Hq, Dh].
  using AttentionFn = std::function<Var(const Var& q, const Var& k, const Var& v)>;
  Var embed(const Tensor& ids) const;  // ids [N] -> [N, D]
  // router_loss: a Qwen3-MoE forward's load-balancing statistics (model/moe.h), or null.
  Var layer_forward(int64_t layer, const Var& x, const Tensor& positions, const AttentionFn& attend,
                    RouterLoss* router_loss = nullptr) const;
  Var final_norm(const Var& x) const;  // [N, D]
  const Var& lm_head() const { return lm_head_; }  // [V, D]

  const ModelConfig& config() const { return config_; }
  DecoderOptions& options() { return options_; }
  const std::vector<DecoderLayer>& layers() const { return layers_; }
  std::vector<Linear*> linears();      // every projection, in model order (adapter targets)
  // Every dense parameter once (a tied lm_head is embed_tokens; NF4 bases and LoRA
  // adapters live inside their Linear).
  std::vector<Var> parameters() const;

 private:
  friend void to_device(Decoder& model, Device device, DType compute);  // moves the weights in place
  // Final-normed hidden states [B*T, D]; with router_loss, a Qwen3-MoE config with
  // output_router_logits gets its load-balancing statistics there.
  Var hidden(const DecoderBatch& batch, std::shared_ptr<RouterLoss>* router_loss = nullptr) const;
  Var mlp_block(const DecoderLayer& L, const Var& x, RouterLoss* router_loss) const;  // x + MLP(RMSNorm(x)), [N, D]

  ModelConfig config_;
  DecoderOptions options_;
  RopeTable rope_;  // inv_freq [Dh/2] and attention scaling of the config's RoPE (scaled or not), computed once
  Var embed_tokens_, norm_, lm_head_;
  std::vector<DecoderLayer> layers_;
  mutable std::shared_ptr<HostOffload> offload_;  // made by the first forward that offloads
};

}  // namespace nq
