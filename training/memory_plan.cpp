// The memory plan's formula (see memory_plan.h) and its printing.
#include "training/memory_plan.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "kernels/kernels.h"
#include "model/adapters.h"
#include "model/weights.h"

namespace nq {

size_t MemoryPlan::total() const { return std::max(loss_phase, backward_phase); }

std::string MemoryPlan::table() const {
  std::string s = str("memory plan (predicted peak, ", dtype_name(activations), " activations):\n");
  for (size_t i = 0; i < bytes.size(); ++i) s += str("  ", mem_category_name(MemCategory(i)), " ", format_bytes(bytes[i]), "\n");
  s += str("    activations = saved layer inputs ", format_bytes(saved_layer_inputs), " + recomputed layer ",
           format_bytes(recomputed_layer), " + its backward ", format_bytes(layer_backward), " + top ",
           format_bytes(top), " + lora grads ", format_bytes(lora_grads), "\n");
  if (offload) s += str("    layer inputs offloaded to host memory: ", format_bytes(host_offload), "\n");
  if (mlp_chunk_rows > 0) s += str("    MLP over chunks of ", mlp_chunk_rows, " rows\n");
  s += str("  total ", format_bytes(total()), " = max(while the loss runs ", format_bytes(loss_phase),
           ", during a layer's backward ", format_bytes(backward_phase), ")");
  return s;
}

std::string MemoryPlan::compare(const MemStats& measured) const {
  std::string s = "memory: plan vs measured peak:\n";
  auto line = [&](const char* name, size_t plan, size_t got) {
    char ratio[32];
    snprintf(ratio, sizeof ratio, "%.2f", plan ? double(got) / double(plan) : 0.0);
    s += str("  ", name, " ", format_bytes(plan), " vs ", format_bytes(got), " (x", ratio, ")\n");
  };
  for (size_t i = 0; i < bytes.size(); ++i) line(mem_category_name(MemCategory(i)), bytes[i], measured.peak[i]);
  line("total", total(), measured.peak_total);
  s.pop_back();
  return s;
}

namespace {

void check_shape(const TrainShape& shape) {
  NQ_CHECK(shape.batch > 0 && shape.seq > 0 && shape.ce_chunk_rows > 0, "memory plan: batch, seq and ce_chunk_rows ",
           "must be positive, got ", shape.batch, ", ", shape.seq, ", ", shape.ce_chunk_rows);
}

// Every term after the weights and adapters, which the two entry points sum their own way:
// `weights` and `lora` bytes, `adapters` adapted projections of rank `rank`, NF4 projections or not.
// How the layers keep their activations (DecoderOptions / QloraShape).
struct LayerScheme {
  bool checkpointing = true, offload = false;
  int64_t mlp_chunk_rows = 0;  // resolved: 0 or rows
};

// `expert_adapters` of the `adapters` are on a Qwen3-MoE's experts (model.layers.L.mlp.experts.E.*).
MemoryPlan plan_from_sizes(const ModelConfig& c, size_t weights, size_t lora, int64_t rank, int64_t adapters,
                           int64_t expert_adapters, bool nf4_base, const LayerScheme& scheme, const TrainShape& shape,
                           bool gpu) {
  const bool checkpointing = scheme.checkpointing;
  NQ_CHECK(!scheme.offload || checkpointing, "memory plan: activation offload needs gradient checkpointing");
  MemoryPlan plan;
  plan.activations = gpu ? shape.compute : DType::F32;
  NQ_CHECK(!gpu || shape.compute == DType::BF16 || shape.compute == DType::F16,
           "memory plan: GPU activations are bf16 or f16, got ", dtype_name(shape.compute));
  auto& bytes = plan.bytes;
  bytes[size_t(MemCategory::Weights)] = weights;
  bytes[size_t(MemCategory::LoRA)] = lora;
  bytes[size_t(MemCategory::Optimizer)] = gpu && shape.paged_optimizer ? shape.optimizer_pool_bytes : 2 * lora;

  // Activations.
  const size_t a = gpu ? 2 : 4, f32 = 4;
  const size_t N = size_t(shape.batch * shape.seq), L = size_t(c.num_layers), D = size_t(c.hidden_size),
               F = size_t(c.intermediate_size), Hq = size_t(c.num_heads), Hkv = size_t(c.num_kv_heads),
               Dh = size_t(c.head_dim), r = size_t(rank), V = size_t(c.vocab_size);
  // Adapted projections per layer whose LoRA u = x A^T spans every token (7 = all-linear on a
  // dense model; on a MoE model the attention's, with the dense MLP layers' averaged over layers).
  const size_t lora_per_layer = L ? size_t(adapters - expert_adapters) / L : 0;
  // Rows the MLP's temporaries span: all N, or one chunk.
  const size_t C = scheme.mlp_chunk_rows > 0 ? std::min(N, size_t(scheme.mlp_chunk_rows)) : N;
  plan.mlp_chunk_rows = C < N ? int64_t(C) : 0;
  // The recomputed layer's tensors alive at the step's peak, per token. The counts here
  // (4 D, 3 Hq Dh, 3 Hkv Dh, 3 F, the LoRA u's, f32 row statistics) and the backward's
  // below (2 D + 2 F) are fitted to the allocator's measured peaks (tests/test_gpu_train.cpp:
  // 1.01-1.02x with checkpointing); which tensors are alive at that moment depends on the
  // order in which backward() releases nodes, which the formula does not follow tensor by tensor.
  // The F terms span the MLP's rows: one chunk's with chunking.
  const size_t attention_outputs =
      N * (a * (4 * D + 3 * Hq * Dh + 3 * Hkv * Dh + lora_per_layer * r) + f32 * (2 * Hq + Hkv + 2));
  const size_t dense_outputs = attention_outputs + C * a * 3 * F;
  const size_t dense_backward = N * a * 2 * D + C * a * 2 * F;  // gradients in flight in that layer (fitted, above)
  // A sparse (MoE) layer instead: M = N k token copies through the experts (model/moe.h), each
  // copy's D-wide input gathered by expert, its output and that output back in slot order (3 D),
  // the SwiGLU's gate, up and product (3 I), the experts' LoRA u's (their share of the
  // `expert_adapters` pairs, r each); per token the router's f32 logits and softmax (2 E) and the
  // k weights and expert ids. Its backward: the gradients of the copies' inputs and outputs and of
  // the SwiGLU's two inputs in flight. With the MLP chunk the block runs on C rows at a time, except
  // when the load-balancing loss is on (its statistics count the batch's rows: not chunked).
  const size_t Cs = c.moe.output_router_logits ? N : C;
  const size_t E = size_t(c.moe.num_experts), k = size_t(c.moe.experts_per_token),
               I = size_t(c.moe.expert_intermediate_size), M = Cs * k;
  size_t sparse_layers = 0;
  for (int64_t i = 0; i < c.num_layers; ++i) sparse_layers += c.sparse_layer(i);
  const size_t lora_per_expert = sparse_layers ? size_t(expert_adapters) / (sparse_layers * E) : 0;
  const size_t sparse_outputs =
      attention_outputs + M * a * (3 * D + 3 * I + lora_per_expert * r) + Cs * (f32 * 2 * E + 8 * k);
  const size_t sparse_backward = N * a * 2 * D + M * a * (2 * D + 2 * I);
  const size_t dense_layers = L - sparse_layers;
  const size_t layer_outputs = std::max(dense_layers ? dense_outputs : 0, sparse_layers ? sparse_outputs : 0);
  if (checkpointing) {  // saved inputs + one layer recomputed at a time
    plan.offload = scheme.offload;
    plan.saved_layer_inputs = (scheme.offload ? std::min<size_t>(L, 2) : L) * N * D * a;
    if (scheme.offload) plan.host_offload = L * N * D * a;
    if (scheme.offload && !gpu) plan.saved_layer_inputs += plan.host_offload;  // the host is the device
    plan.recomputed_layer = layer_outputs;
  } else {  // every layer keeps its op outputs until its backward
    plan.recomputed_layer = dense_layers * dense_outputs + sparse_layers * sparse_outputs;
  }
  plan.layer_backward = std::max(dense_layers ? dense_backward : 0, sparse_layers ? sparse_backward : 0);
  plan.top = 3 * N * D * a;
  plan.lora_grads = lora;
  bytes[size_t(MemCategory::Activations)] =
      plan.saved_layer_inputs + plan.recomputed_layer + plan.layer_backward + plan.top + plan.lora_grads;

  // Workspace: the loss's chunk of logits (f32), and on the GPU its bf16 gradient and per-row losses.
  // The NF4 products' dequantized weights (never while the loss runs), one product at a
  // time, the largest over the projections (kernels::nf4_matmul_workspace_bytes: on the CPU
  // a tile of rows of W; on the GPU, from 256 tokens on, the whole W [out, in] in bf16).
  const size_t R = std::min(size_t(shape.ce_chunk_rows), N);
  const size_t loss_chunk = R * V * f32 + (gpu ? R * V * a + N * f32 : 0);
  size_t nf4_dequantized = 0;
  const std::pair<size_t, size_t> projections[] = {{Hq * Dh, D}, {Hkv * Dh, D}, {D, Hq * Dh}, {F, D}, {D, F},
                                                   {I, D}, {D, I}};  // (I = 0 on a dense model)
  if (nf4_base)
    for (const auto& [out, in] : projections)
      nf4_dequantized = std::max(nf4_dequantized, kernels::nf4_matmul_workspace_bytes(
                                                      int64_t(N), int64_t(out), int64_t(in), plan.activations,
                                                      gpu ? Device::CUDA : Device::CPU));
  bytes[size_t(MemCategory::Workspace)] = std::max(loss_chunk, nf4_dequantized);

  // The step's peak: the categories peak at different moments, so their sum
  // overstates it. While the loss runs, the forward's kept tensors (saved layer
  // inputs, or every layer's outputs without checkpointing) and the top are alive
  // with the logits chunk; during a layer's backward, all activation terms (and a
  // dequantized NF4 weight or tile) but no logits. Weights, adapters and the optimizer always.
  const size_t persistent = weights + lora + bytes[size_t(MemCategory::Optimizer)];
  const size_t forward_kept = checkpointing ? plan.saved_layer_inputs : plan.recomputed_layer;
  plan.loss_phase = persistent + forward_kept + plan.top + loss_chunk;
  plan.backward_phase = persistent + bytes[size_t(MemCategory::Activations)] + nf4_dequantized;
  return plan;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// model.layers.L.mlp.experts.E.{gate,up,down}_proj: a Qwen3-MoE expert's projection.
bool is_expert_module(const std::string& name) { return name.find(".mlp.experts.") != std::string::npos; }

}  // namespace

MemoryPlan plan_memory(Decoder& model, const TrainShape& shape) {
  check_shape(shape);
  const Device device = model.lm_head().value().device();

  // Weights and adapters: the actual tensors.
  size_t weights = 0, lora = 0;
  int64_t rank = 0, adapters = 0, expert_adapters = 0;
  bool nf4_base = false;
  for (const Var& p : model.parameters()) weights += p.value().nbytes();
  for (Linear* l : model.linears()) {
    if (l->is_nf4()) {
      nf4_base = true;
      weights += l->nf4()->nbytes();
    }
    if (l->has_lora()) {
      lora += l->lora().A.value().nbytes() + l->lora().B.value().nbytes();
      rank = l->lora().A.shape()[0];
      ++adapters;
      expert_adapters += is_expert_module(l->name());
    }
  }
  TrainShape at = shape;
  if (device == Device::CUDA) at.compute = model.lm_head().value().dtype();  // model/device.h: the compute dtype
  const DecoderOptions& o = model.options();
  return plan_from_sizes(model.config(), weights, lora, rank, adapters, expert_adapters, nf4_base,
                         LayerScheme{o.checkpointing, o.offload_activations, o.mlp_chunk_rows}, at,
                         device == Device::CUDA);
}

size_t nf4_bytes(int64_t out, int64_t in, int64_t blocksize, bool double_quant) {
  const size_t numel = size_t(out) * size_t(in), blocks = (numel + size_t(blocksize) - 1) / size_t(blocksize);
  const size_t packed = (numel + 1) / 2;
  if (!double_quant) return packed + 4 * blocks;
  return packed + blocks + 4 * ((blocks + 255) / 256) + 4 * 256;  // u8 codes, nested absmax, nested code
}

MemoryPlan plan_memory(const ModelConfig& config, const QloraShape& qlora, const TrainShape& shape, Device device) {
  check_shape(shape);
  NQ_CHECK(qlora.r > 0, "memory plan: the LoRA rank must be positive, got ", qlora.r);
  const bool gpu = device == Device::CUDA;
  // The dtype model/device.h gives each dense tensor (f32 everywhere on the CPU).
  auto dense_bytes = [&](const ParamSpec& spec) {
    const size_t n = size_t(spec.shape.numel());
    return !gpu || ends_with(spec.name, "norm.weight") ? 4 * n : 2 * n;
  };
  size_t weights = 0, lora = 0;
  std::vector<std::string> modules;
  std::vector<Shape> module_shapes;
  for (const ParamSpec& spec : parameter_specs(config)) {
    const bool projection = is_projection_weight(spec.name);
    if (projection) {
      modules.push_back(spec.name.substr(0, spec.name.size() - 7));  // minus ".weight"
      module_shapes.push_back(spec.shape);
    }
    weights += projection && qlora.nf4_base
                   ? nf4_bytes(spec.shape[0], spec.shape[1], qlora.blocksize, true)
                   : dense_bytes(spec);
  }
  const std::vector<bool> picked = select_target_names(modules, qlora.targets);
  int64_t adapters = 0, expert_adapters = 0;
  for (size_t i = 0; i < modules.size(); ++i) {
    if (!picked[i]) continue;
    lora += 4 * size_t(qlora.r) * size_t(module_shapes[i][0] + module_shapes[i][1]);  // A [r, in] + B [out, r], f32
    ++adapters;
    expert_adapters += is_expert_module(modules[i]);
  }
  const int64_t chunk = qlora.mlp_chunk_rows == kPlanMlpChunk ? plan_mlp_chunk_rows(shape.batch * shape.seq)
                                                              : qlora.mlp_chunk_rows;
  NQ_CHECK(chunk >= 0, "memory plan: mlp_chunk_rows must be >= 0 (or kPlanMlpChunk), got ", qlora.mlp_chunk_rows);
  return plan_from_sizes(config, weights, lora, qlora.r, adapters, expert_adapters, qlora.nf4_base,
                         LayerScheme{qlora.checkpointing, qlora.offload_activations, chunk}, shape, gpu);
}

int64_t plan_mlp_chunk_rows(int64_t tokens) { return tokens > kPlanMlpChunkRows ? kPlanMlpChunkRows : 0; }

QloraShape with_activation_savings(QloraShape qlora, bool offload, bool chunk_mlp) {
  qlora.offload_activations = offload && qlora.checkpointing;
  qlora.mlp_chunk_rows = chunk_mlp ? kPlanMlpChunk : 0;
  return qlora;
}

QloraShape choose_activation_scheme(const ModelConfig& config, QloraShape qlora, const TrainShape& shape,
                                    size_t available, bool offload_auto, bool chunk_auto) {
  auto with = [&](bool offload, bool chunk) {  // the flags left to auto take the saving, the others stay
    const QloraShape saving = with_activation_savings(qlora, offload, chunk);
    QloraShape q = qlora;
    if (offload_auto) q.offload_activations = saving.offload_activations;
    if (chunk_auto) q.mlp_chunk_rows = chunk ? plan_mlp_chunk_rows(shape.batch * shape.seq) : 0;
    return q;
  };
  QloraShape least = qlora;
  size_t least_bytes = SIZE_MAX;
  for (const QloraShape& q : {with(false, false), with(true, false), with(true, true)}) {
    const size_t need = plan_memory(config, q, shape, Device::CUDA).total();
    if (need <= available) return q;
    if (need < least_bytes) {
      least = q;
      least_bytes = need;
    }
  }
  return least;
}

size_t plan_host_load(const ModelConfig& config, const WeightLoad& load) {
  const size_t file_elem_bytes = config.torch_dtype == "float32" ? 4 : 2;
  // The loader reads the tensors in parameter_specs order (model/weights.h read_weights),
  // each one's mapped pages resident until it is converted, then released: the load
  // peaks at max over tensors i of (everything kept on the host before i) + what tensor i
  // becomes + its bytes in the file. With load.place on the GPU the NF4 projections and the
  // embeddings are uploaded as each is made: the host holds one of them at a time.
  size_t peak = 0, held = 0;
  for (const ParamSpec& spec : parameter_specs(config)) {
    const size_t n = size_t(spec.shape.numel());
    const bool nf4 = is_projection_weight(spec.name) && load.nf4_projections;
    const size_t made = nf4 ? nf4_bytes(spec.shape[0], spec.shape[1], load.nf4_blocksize, load.nf4_double_quant)
                            : n * (is_embedding_weight(spec.name) ? dtype_size(load.embedding_dtype) : 4);
    const bool uploaded = load.place != Device::CPU && (nf4 || is_embedding_weight(spec.name));
    peak = std::max(peak, held + made + n * file_elem_bytes);
    if (!uploaded) held += made;
  }
  return peak;
}

HostPlan plan_host_memory(const ModelConfig& config, const QloraShape& qlora, const TrainShape& shape, Device device) {
  const MemoryPlan step = plan_memory(config, qlora, shape, device);
  HostPlan host;
  host.load = plan_host_load(config, WeightLoad::qlora(qlora.nf4_base, device, shape.compute));  // ./train's load
  if (device == Device::CPU) {
    host.training = step.total();
  } else {
    // The plan's lora term is A and B in f32; paged AdamW keeps m and v of each in host memory.
    host.training = (shape.paged_optimizer ? 2 * step[MemCategory::LoRA] : 0) + step.host_offload;
  }
  return host;
}

std::string plan_does_not_fit(const ModelConfig& config, const QloraShape& qlora, const TrainShape& shape,
                              size_t available, int64_t grad_accum) {
  const size_t need = plan_memory(config, qlora, shape, Device::CUDA).total();
  if (need <= available) return "";
  std::string fix;
  TrainShape one = shape;
  one.batch = 1;
  QloraShape checkpointed = qlora;
  checkpointed.checkpointing = true;
  QloraShape offloaded = checkpointed;
  offloaded.offload_activations = true;
  QloraShape chunked = offloaded;
  chunked.mlp_chunk_rows = plan_mlp_chunk_rows(shape.batch * shape.seq);
  const QloraShape most = with_activation_savings(checkpointed, true, true);  // the chunk chosen for each length
  auto fits = [&](const QloraShape& q) { return plan_memory(config, q, shape, Device::CUDA).total() <= available; };
  if (shape.batch > 1 && plan_memory(config, qlora, one, Device::CUDA).total() <= available) {
    fix = str("--batch-size 1 --grad-accum ", shape.batch * grad_accum, " (the same tokens per step)");
  } else if (!qlora.checkpointing && fits(checkpointed)) {
    fix = "gradient checkpointing (leave out --no-grad-checkpoint)";
  } else if (!qlora.offload_activations && fits(offloaded)) {
    fix = str("--offload-activations on", qlora.checkpointing ? "" : " without --no-grad-checkpoint");
  } else if (chunked.mlp_chunk_rows > 0 && qlora.mlp_chunk_rows == 0 && fits(chunked)) {
    fix = str("--offload-activations on --mlp-chunk-rows ", chunked.mlp_chunk_rows,
              qlora.checkpointing ? "" : " without --no-grad-checkpoint");
  } else {
    const int64_t seq = longest_fitting_seq(config, most, one, Device::CUDA, available);
    fix = seq >= 2 ? str("--max-length ", seq, shape.batch > 1 ? " --batch-size 1" : "",
                         qlora.checkpointing ? "" : " without --no-grad-checkpoint",
                         " with --offload-activations and --mlp-chunk-rows auto (the longest the plan fits)")
                   : std::string("a smaller model: not even 2 tokens fit");
  }
  return str("the memory plan needs ", format_bytes(need), " of GPU memory for micro-batches of ", shape.batch, " x ",
             shape.seq, " tokens and ", format_bytes(available), " is available; use ", fix);
}

int64_t longest_fitting_seq(const ModelConfig& config, const QloraShape& qlora, TrainShape shape, Device device,
                            size_t budget) {
  shape.batch = 1;
  auto fits = [&](int64_t seq) {
    shape.seq = seq;
    return plan_memory(config, qlora, shape, device).total() <= budget;
  };
  if (!fits(1)) return 0;
  int64_t lo = 1, hi = 2;  // fits(lo), and hi is doubled until it does not
  while (fits(hi)) {
    lo = hi;
    NQ_CHECK(hi < (int64_t(1) << 40), "memory plan: every sequence length fits in ", format_bytes(budget));
    hi *= 2;
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

}  // namespace nq
