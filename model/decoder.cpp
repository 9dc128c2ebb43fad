// The decoder's forward pass and loss (see decoder.h for the math).
#include "model/decoder.h"

#include "autograd/ops.h"
#include "kernels/kernels.h"

namespace nq {
namespace {

// The weights were checked against parameter_specs() (check_weights), so `name` exists.
Var param(const TensorMap& weights, const std::string& name, bool requires_grad) {
  return Var(weights.at(name), requires_grad, name);
}

// Checks one [B, T] i32 field of a batch (undefined allowed when optional).
void check_batch_field(const Tensor& t, const char* field, const Shape& shape, bool optional) {
  if (!t.defined()) {
    NQ_CHECK(optional, "batch: ", field, " is missing");
    return;
  }
  NQ_CHECK(t.dtype() == DType::I32, "batch: ", field, " must be i32, got ", t.desc());
  NQ_CHECK(t.shape() == shape, "batch: ", field, " must be ", shape.str(), " like ids, got ", t.desc());
}

// Host copy of an i32 tensor (no-op view on the CPU).
Tensor host_i32(const Tensor& t) { return t.device() == Device::CPU ? t : t.to(Device::CPU); }

}  // namespace

std::vector<Linear*> DecoderLayer::linears() {
  std::vector<Linear*> out = {&q_proj, &k_proj, &v_proj, &o_proj};
  if (!sparse()) {
    for (Linear* l : {&gate_proj, &up_proj, &down_proj}) out.push_back(l);
    return out;
  }
  for (size_t e = 0; e < moe.gate_proj.size(); ++e)
    for (Linear* l : {&moe.gate_proj[e], &moe.up_proj[e], &moe.down_proj[e]}) out.push_back(l);
  return out;
}

std::vector<const Linear*> DecoderLayer::linears() const {
  std::vector<const Linear*> out;
  for (Linear* l : const_cast<DecoderLayer*>(this)->linears()) out.push_back(l);
  return out;
}

Decoder::Decoder(ModelConfig config, const TensorMap& weights, DecoderOptions options, const Nf4Weights& nf4)
    : config_(std::move(config)),
      options_(options),
      rope_(rope_table(config_.rope_theta, config_.head_dim, config_.rope_scaling)) {
  const bool rg = options_.train_all;
  check_weights(weights, config_, "decoder", nf4);
  embed_tokens_ = param(weights, "model.embed_tokens.weight", rg);
  norm_ = param(weights, "model.norm.weight", rg);
  lm_head_ = config_.tie_word_embeddings ? embed_tokens_ : param(weights, "lm_head.weight", rg);
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const std::string p = str("model.layers.", i, ".");
    auto linear_named = [&](const std::string& module, bool has_bias) {
      const std::string name = p + module;
      Var bias = has_bias ? param(weights, name + ".bias", rg) : Var();
      auto q = nf4.find(name + ".weight");
      if (q != nf4.end()) return Linear(name, q->second, bias);
      return Linear(name, param(weights, name + ".weight", rg), bias);
    };
    const bool b = config_.attention_bias;
    DecoderLayer layer;
    layer.input_norm = param(weights, p + "input_layernorm.weight", rg);
    layer.post_attention_norm = param(weights, p + "post_attention_layernorm.weight", rg);
    if (config_.qk_norm()) {
      layer.q_norm = param(weights, p + "self_attn.q_norm.weight", rg);
      layer.k_norm = param(weights, p + "self_attn.k_norm.weight", rg);
    }
    layer.q_proj = linear_named("self_attn.q_proj", b);
    layer.k_proj = linear_named("self_attn.k_proj", b);
    layer.v_proj = linear_named("self_attn.v_proj", b);
    layer.o_proj = linear_named("self_attn.o_proj", b);
    if (config_.sparse_layer(i)) {
      layer.moe.router = param(weights, p + "mlp.gate.weight", rg);  // frozen unless train_all
      for (int64_t e = 0; e < config_.moe.num_experts; ++e) {
        const std::string x = str("mlp.experts.", e, ".");
        layer.moe.gate_proj.push_back(linear_named(x + "gate_proj", false));
        layer.moe.up_proj.push_back(linear_named(x + "up_proj", false));
        layer.moe.down_proj.push_back(linear_named(x + "down_proj", false));
      }
    } else {
      layer.gate_proj = linear_named("mlp.gate_proj", false);
      layer.up_proj = linear_named("mlp.up_proj", false);
      layer.down_proj = linear_named("mlp.down_proj", false);
    }
    layers_.push_back(std::move(layer));
  }
}

Decoder Decoder::load(const std::string& dir, DecoderOptions options) {
  ModelConfig config = ModelConfig::from_file(dir + "/config.json");
  TensorMap weights = load_weights(dir, config);
  return Decoder(std::move(config), weights, options);
}

Var Decoder::embed(const Tensor& ids) const { return embedding(embed_tokens_, ids); }

Var Decoder::final_norm(const Var& x) const { return rmsnorm(x, norm_, config_.rms_norm_eps); }

Var Decoder::layer_forward(int64_t i, const Var& x, const Tensor& positions, const AttentionFn& attend,
                           RouterLoss* router_loss) const {
  const DecoderLayer& L = layers_[i];
  const ModelConfig& c = config_;
  const int64_t N = x.shape()[0], Hq = c.num_heads, Hkv = c.num_kv_heads, Dh = c.head_dim;
  const float eps = c.rms_norm_eps;

  // Attention block.
  Var h = rmsnorm(x, L.input_norm, eps);  // [N, D]
  Var q = L.q_proj.forward(h);            // [N, Hq*Dh]
  Var k = L.k_proj.forward(h);            // [N, Hkv*Dh]
  Var v = L.v_proj.forward(h);            // [N, Hkv*Dh]
  if (c.qk_norm()) {  // one RMSNorm over each head's Dh values, weight shared by the heads
    q = rmsnorm(reshape(q, {N * Hq, Dh}), L.q_norm, eps);
    k = rmsnorm(reshape(k, {N * Hkv, Dh}), L.k_norm, eps);
  }
  q = rope(reshape(q, {N, Hq, Dh}), positions, rope_);   // [N, Hq, Dh]
  k = rope(reshape(k, {N, Hkv, Dh}), positions, rope_);  // [N, Hkv, Dh]
  v = reshape(v, {N, Hkv, Dh});
  Var o = attend(q, k, v);                                      // [N, Hq, Dh]
  Var x1 = add(x, L.o_proj.forward(reshape(o, {N, Hq * Dh})));  // [N, D]

  return mlp_block(L, x1, router_loss);
}

Var Decoder::mlp_block(const DecoderLayer& L, const Var& x, RouterLoss* router_loss) const {
  const float eps = config_.rms_norm_eps;
  const MoeConfig& moe = config_.moe;
  auto mlp = [&L, &moe, eps, router_loss](const Var& rows) {  // row-wise: [n, D] -> [n, D]
    Var h = rmsnorm(rows, L.post_attention_norm, eps);
    if (L.sparse()) return L.moe.forward(h, moe, router_loss);
    Var act = swiglu(L.gate_proj.forward(h), L.up_proj.forward(h));  // [n, F]
    return L.down_proj.forward(act);                                 // [n, D]
  };
  // mlp_chunk_rows 0 (or at least N): mlp(x) itself. The load-balancing statistics count
  // the batch's rows by index, so a sparse layer that collects them is not chunked.
  const int64_t chunk_rows = L.sparse() && router_loss ? 0 : options_.mlp_chunk_rows;
  return add(x, checkpoint_rows(mlp, x, chunk_rows));  // [N, D]
}

Var Decoder::hidden(const DecoderBatch& batch, std::shared_ptr<RouterLoss>* router_loss) const {
  NQ_CHECK(batch.ids.defined() && batch.ids.ndim() == 2 && batch.ids.dtype() == DType::I32,
           "batch: ids must be i32 [B, T], got ", batch.ids.defined() ? batch.ids.desc() : "none");
  const Shape bt = batch.ids.shape();
  const int64_t B = bt[0], T = bt[1], N = B * T;
  check_batch_field(batch.positions, "positions", bt, true);
  check_batch_field(batch.segment_ids, "segment_ids", bt, true);

  // Token ids must index the embedding table.
  Tensor ids_host = host_i32(batch.ids);
  const int32_t* id = ids_host.data<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    NQ_CHECK(id[n] >= 0 && id[n] < config_.vocab_size, "batch: token id ", id[n], " at row ", n / T, ", column ",
             n % T, " is outside the vocabulary [0, ", config_.vocab_size, ")");

  Tensor positions = batch.positions;
  if (!positions.defined()) {  // 0..T-1 in every row
    std::vector<int32_t> pos(N);
    for (int64_t n = 0; n < N; ++n) pos[n] = int32_t(n % T);
    positions = Tensor::from_ids(pos, {N}).to(batch.ids.device());
  }
  positions = positions.view({N});
  Tensor segments = batch.segment_ids.defined() ? batch.segment_ids.view({N}) : Tensor();
  std::shared_ptr<RouterLoss> routing;  // Qwen3-MoE's load-balancing loss: every row but padding counts
  if (router_loss && config_.is_moe() && config_.moe.output_router_logits) {
    std::vector<uint8_t> counted(size_t(N), 1);
    if (segments.defined()) {
      const Tensor seg = host_i32(segments);
      for (int64_t n = 0; n < N; ++n) counted[size_t(n)] = seg.data<int32_t>()[n] >= 0;
    }
    routing = std::make_shared<RouterLoss>(config_.moe.num_experts, config_.moe.experts_per_token, std::move(counted));
    *router_loss = routing;
  }

  AttentionFn causal = [B, T, segments](const Var& q, const Var& k, const Var& v) {
    return attention(q, k, v, B, T, segments);
  };
  const Device device = batch.ids.device();
  if (options_.offload_activations && options_.checkpointing && (!offload_ || offload_->device() != device))
    offload_ = std::make_shared<HostOffload>(device);
  const std::shared_ptr<HostOffload> offload = options_.offload_activations ? offload_ : nullptr;
  Var x = embed(batch.ids.view({N}));  // [N, D]
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    if (options_.checkpointing && grad_enabled()) {
      auto run_layer = [this, i, positions, causal, routing](const std::vector<Var>& in) {
        return layer_forward(i, in[0], positions, causal, routing.get());
      };
      x = checkpoint(run_layer, {x}, offload);  // x is handed on: checkpoint may park its value on the host
    } else {
      x = layer_forward(i, x, positions, causal, routing.get());
    }
  }
  return final_norm(x);  // [N, D]
}

Var Decoder::forward_loss(const DecoderBatch& batch) const {
  NQ_CHECK(batch.ids.defined(), "batch: ids is missing");
  check_batch_field(batch.labels, "labels", batch.ids.shape(), false);
  const int64_t N = batch.ids.numel();

  // The labels are already shifted (see DecoderBatch); they must be targets the
  // lm_head can score, and as many counted as the batch says.
  Tensor labels = host_i32(batch.labels);
  const int32_t* label = labels.data<int32_t>();
  int64_t counted = 0;
  for (int64_t n = 0; n < N; ++n) {
    NQ_CHECK(label[n] == kernels::kIgnoreIndex || (label[n] >= 0 && label[n] < config_.vocab_size), "batch: label ",
             label[n], " is neither ", kernels::kIgnoreIndex, " nor a token id in [0, ", config_.vocab_size, ")");
    counted += label[n] != kernels::kIgnoreIndex;
  }
  NQ_CHECK(counted == batch.n_targets, "batch: n_targets is ", batch.n_targets, " but ", counted,
           " labels are counted (make batches with training/batch.h's decoder_batch or hf_decoder_batch)");

  std::shared_ptr<RouterLoss> router_loss;
  Var h = hidden(batch, &router_loss);  // [B*T, D]
  Var loss = linear_cross_entropy(h, lm_head_, batch.labels.view({N}), options_.ce_chunk_rows);
  if (!router_loss) return loss;
  // transformers' Qwen3MoeForCausalLM: loss + router_aux_loss_coef * aux, aux recorded on h so
  // that its backward runs before the layers' (model/moe.h).
  return add(loss, scale(router_loss->loss(h), config_.moe.router_aux_loss_coef));
}

Tensor Decoder::logits(const DecoderBatch& batch) const {
  NoGrad no_grad;
  Var h = hidden(batch);  // [B*T, D]
  Tensor out = kernels::matmul(h.value(), lm_head_.value(), false, true);  // [B*T, V]
  return out.view({batch.ids.size(0), batch.ids.size(1), config_.vocab_size});
}

std::vector<Linear*> Decoder::linears() {
  std::vector<Linear*> out;
  for (DecoderLayer& L : layers_)
    for (Linear* l : L.linears()) out.push_back(l);
  return out;
}

std::vector<Var> Decoder::parameters() const {
  std::vector<Var> out = {embed_tokens_};
  for (const DecoderLayer& L : layers_) {
    out.push_back(L.input_norm);
    const std::vector<const Linear*> linears = L.linears();
    for (size_t j = 0; j < linears.size(); ++j) {
      if (j == 4) {  // after the attention's projections: its norms, then the MLP's
        if (config_.qk_norm()) {
          out.push_back(L.q_norm);
          out.push_back(L.k_norm);
        }
        out.push_back(L.post_attention_norm);
        if (L.sparse()) out.push_back(L.moe.router);
      }
      if (linears[j]->weight().defined()) out.push_back(linears[j]->weight());  // undefined once quantized to NF4
      if (linears[j]->bias().defined()) out.push_back(linears[j]->bias());
    }
  }
  out.push_back(norm_);
  if (!config_.tie_word_embeddings) out.push_back(lm_head_);
  return out;
}

}  // namespace nq
