// The trainer loop (see trainer.h and docs/training.md).
#include "training/trainer.h"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <utility>

#include "autograd/var.h"
#include "formats/gguf.h"
#include "model/adapters.h"
#include "model/device.h"
#include "model/load_model.h"
#include "runtime/cuda_runtime.h"
#include "runtime/process_memory.h"
#include "training/memory_plan.h"
#include "model/tokenizer.h"
#include "optim/accumulation.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/schedule.h"
#include "runtime/rng.h"
#include "training/checkpoint.h"
#include "training/encode.h"
#include "training/evaluate.h"
#include "training/report.h"

namespace nq {

namespace {

std::atomic<bool> g_stop_requested{false};

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Where AdamW keeps m and v (optim/adamw.h): in host memory on the cpu; on cuda in
// GPU memory (--optim adamw) or paged through a GPU pool (--optim paged_adamw,
// --optim-pages, --optim-page-mb).
AdamWOptions optimizer_options(const TrainConfig& cfg, Device device) {
  AdamWOptions o;
  o.placement = device == Device::CPU           ? AdamWPlacement::Host
                : cfg.optim == "paged_adamw" ? AdamWPlacement::Paged
                                             : AdamWPlacement::Device;
  o.n_pages = int(cfg.optim_pages);
  o.page_bytes = cfg.optim_page_mb << 20;
  return o;
}

std::unique_ptr<Optimizer> make_optimizer(const std::vector<Var>& params, const TrainConfig& cfg, Device device) {
  const AdamWConfig adamw{0.9, 0.999, 1e-8, cfg.weight_decay};
  return std::make_unique<AdamW>(params, adamw, optimizer_options(cfg, device));
}

}  // namespace

void request_stop() { g_stop_requested.store(true); }

StepResult train_step(const Decoder& model, Optimizer& optimizer, const std::vector<DecoderBatch>& micro, double lr,
                      double max_grad_norm, int64_t step, LossScaler* scaler) {
  StepResult r;
  for (const DecoderBatch& b : micro) r.targets += b.n_targets;
  NQ_CHECK(r.targets > 0, "step ", step, ": no counted targets in the ", micro.size(), " micro-batches");
  TrainingMode training;  // LoRA dropout on, for the forwards and the backwards (checkpoint re-runs)
  const bool scaling = scaler && scaler->enabled();
  r.loss_scale = scaling ? scaler->scale() : 1.0f;
  const float inv_scale = scaling ? scaler->inv_scale() : 1.0f;  // this step's 1/S (update() may change S)

  // L = sum over the window's targets of CE / N. Micro-batch i contributes its
  // mean l_i times n_i / N; backward of that scaled loss adds its share of dL
  // (times the fp16 loss scale S: a power of two, so the product is exact).
  for (size_t i = 0; i < micro.size(); ++i) try {
    if (micro[i].n_targets == 0) continue;  // all padding: contributes nothing
    const double scale =
        micro_batch_loss_scale(AccumulationNorm::Tokens, micro[i].n_targets, r.targets, int64_t(micro.size()));
    Var loss = model.forward_loss(micro[i]);  // [1] f32 on the model's device, mean over its targets
    const double li = loss.value().to_vector()[0];  // read on the host
    NQ_CHECK(std::isfinite(li), "step ", step, ": loss is ", li, " (micro-batch ", i + 1, " of ", micro.size(),
             "); training diverged or the data is broken; lower --lr or check the data",
             scaling ? " (the fp16 forward may overflow: --dtype bfloat16 where the GPU has it)" : "");
    r.loss += scale * li;
    backward(loss, Tensor::full({1}, float(scale) * r.loss_scale, loss.value().device()));
  } catch (const AnomalyError& e) {  // --detect-anomaly: before any update, so the last checkpoint is good
    optimizer.zero_grad();
    throw Error(str("step ", step, " (micro-batch ", i + 1, " of ", micro.size(), "): ", e.what()));
  }

  optimizer.fill_missing_grads();  // experts that saw no token step like PEFT's fused tensor
  // Clipping: the factor min(max_norm / (norm + 1e-6), 1) is applied inside the update,
  // with the unscaling 1/S folded in (exact: S is a power of two).
  const double norm = optimizer.grad_global_norm();
  if (scaling) {
    if (!scaler->update(/*found_inf=*/!std::isfinite(norm))) {
      optimizer.zero_grad();
      r.skipped = true;
      r.grad_norm = norm;
      return r;
    }
    r.grad_norm = norm * double(inv_scale);
  } else {
    r.grad_norm = norm;
    if (!std::isfinite(r.grad_norm)) {
      optimizer.zero_grad();
      throw Error(str("step ", step, ": gradient norm is ", r.grad_norm, " (loss ", r.loss,
                      "); training diverged; lower --lr"));
    }
  }
  const float clip = max_grad_norm > 0 ? clip_scale(r.grad_norm, max_grad_norm) : 1.0f;
  optimizer.step(lr, clip * inv_scale);
  optimizer.zero_grad();
  return r;
}

namespace {

// The training samples and the eval set: --eval-split holds out part of --data
// (deterministic, seeded), --eval-data reads another file.
struct TrainData {
  Dataset train, eval_file;
  std::vector<int64_t> train_subset, eval_subset;  // indices into train.samples / eval_samples()
  const std::vector<Sample>& eval_samples() const { return eval_file.samples.empty() ? train.samples : eval_file.samples; }
};

TrainData load_train_data(const TrainConfig& cfg, const Tokenizer& tok, const EncodeOptions& enc) {
  const BadLinePolicy policy = parse_bad_line_policy(cfg.on_bad_line);
  TrainData d;
  d.train = load_dataset(cfg.data, tok, enc, policy);
  const int64_t n = int64_t(d.train.samples.size());
  if (cfg.eval_split > 0) {
    const bool is_count = cfg.eval_split >= 1;
    Split split = split_eval(n, is_count ? 0.0 : cfg.eval_split, is_count ? int64_t(cfg.eval_split) : 0, cfg.seed);
    d.train_subset = split.train;
    d.eval_subset = split.eval;
  } else {
    for (int64_t i = 0; i < n; ++i) d.train_subset.push_back(i);
  }
  if (!cfg.eval_data.empty()) {
    d.eval_file = load_dataset(cfg.eval_data, tok, enc, policy);
    for (int64_t i = 0; i < int64_t(d.eval_file.samples.size()); ++i) d.eval_subset.push_back(i);
  }
  return d;
}

// Reads and checks --data and --eval-data (JSON, UTF-8, fields, roles; training/data.h)
// before the model loads, so a bad line costs a second rather than the load. What needs
// the tokenizer (encoding, the chat template) is checked when the data is tokenized.
void validate_data_files(const TrainConfig& cfg) {
  const BadLinePolicy policy = parse_bad_line_policy(cfg.on_bad_line);
  parse_jsonl_file(cfg.data, policy);
  if (!cfg.eval_data.empty()) parse_jsonl_file(cfg.eval_data, policy);
}

// adapter_config.json's base_model_name_or_path: what transformers can load the base
// from. A HF folder: its absolute path. A GGUF: the Hugging Face repository it records
// (general.source.huggingface.repository, or a huggingface.co general.source.url), else
// the absolute path of the .gguf file (transformers: from_pretrained(folder, gguf_file=name)).
std::string base_model_reference(const std::string& model_path) {
  const std::string absolute = std::filesystem::absolute(model_path).lexically_normal().string();
  if (!is_gguf_path(model_path)) return absolute;
  const GGUFFile file = GGUFFile::open(model_path);
  if (file.has("general.source.huggingface.repository"))
    return file.get_string("general.source.huggingface.repository");
  if (file.has("general.source.url")) {
    const std::string url = file.get_string("general.source.url"), hub = "https://huggingface.co/";
    if (url.compare(0, hub.size(), hub) == 0 && std::count(url.begin() + long(hub.size()), url.end(), '/') == 1)
      return url.substr(hub.size());
  }
  return absolute;
}

std::string plural(int64_t n, const std::string& one, const std::string& many) {
  return str(n, " ", n == 1 ? one : many);
}

// What the run will do, in words: "45 optimizer steps, each 4 sequences of up to 128
// tokens (packed); lr 0.001, cosine after 3 warmup steps; --max-steps 45 is about 1.5
// epochs of 120 samples".
std::string run_description(const TrainConfig& cfg, int64_t total_steps, int64_t steps_done, const LrSchedule& schedule,
                            const DataLoader& loader, int64_t n_samples) {
  const int64_t rows = cfg.batch_size * cfg.grad_accum;
  std::string s = plural(total_steps, "optimizer step", "optimizer steps");
  if (steps_done > 0) s += str(" (", steps_done, " done, continuing at step ", steps_done + 1, ")");
  s += str(", each ", plural(rows, "sequence", "sequences"));
  if (cfg.grad_accum > 1) s += str(" (", cfg.grad_accum, " micro-batches of ", cfg.batch_size, ")");
  s += str(" of up to ", cfg.max_length, " tokens", cfg.packing ? " (packed)" : " (one sample each, padded)");
  s += str("; lr ", cfg.lr, ", ", cfg.schedule, " after ", plural(schedule.warmup_steps, "warmup step", "warmup steps"));
  const int64_t per_epoch = loader.batches_in_epoch(0);  // micro-batches
  if (cfg.max_steps == 0) {
    s += str("; ", plural(cfg.epochs, "epoch", "epochs"), " of ", n_samples, " samples");
  } else if (per_epoch > 0) {
    char epochs[32];
    std::snprintf(epochs, sizeof epochs, "%.3g", double(total_steps * cfg.grad_accum) / double(per_epoch));
    s += str("; --max-steps ", total_steps, " is about ", epochs, " epochs of ", n_samples, " samples");
  }
  return s;
}

// The memory plan after step 1 in one line: planned peak, measured peak, ratio; a ratio
// well under 1 comes with its reason when step 1's micro-batches were smaller than the
// plan's B x T (padding to the longest sample, or a short last row).
std::string memory_line(const MemoryPlan& plan, const MemStats& measured, const TrainShape& planned, int64_t step,
                        int64_t rows, int64_t cols) {
  const double ratio = plan.total() ? double(measured.peak_total) / double(plan.total()) : 0.0;
  char r[32];
  std::snprintf(r, sizeof r, "%.2f", ratio);
  std::string s = str("memory: peak ", format_bytes(measured.peak_total), " after step ", step, ", ",
                      format_bytes(plan.total()), " planned (x", r, ")");
  const size_t act_plan = plan[MemCategory::Activations], act = measured.peak[size_t(MemCategory::Activations)];
  if (rows * cols < planned.batch * planned.seq && (ratio < 0.9 || double(act) < 0.75 * double(act_plan))) {
    char a[32];
    std::snprintf(a, sizeof a, "%.2f", act_plan ? double(act) / double(act_plan) : 0.0);
    s += str("; activations x", a, " of the plan: the plan is for full micro-batches of ", planned.batch, " x ",
             planned.seq, " tokens, step ", step, "'s largest was ", rows, " x ", cols,
             " (rows are padded to their longest sample; --packing fills them)");
  }
  return s;
}

// Host memory after step 1: the process's peak resident set (the load included) beside
// the host plan.
std::string host_memory_line(size_t planned, size_t peak_rss, int64_t step) {
  char r[32];
  std::snprintf(r, sizeof r, "%.2f", planned ? double(peak_rss) / double(planned) : 0.0);
  return str("host memory: peak RSS ", format_bytes(peak_rss), " after step ", step, ", ", format_bytes(planned),
             " planned (x", r, ")");
}

// The end of a run: the losses and where everything went, each under its own name.
std::string run_summary(const TrainConfig& cfg, const TrainResult& r, double elapsed_s, int64_t run_tokens,
                        const std::string& metrics_path, const std::string& curves_path) {
  char loss[64] = "";
  if (!r.steps.empty())
    std::snprintf(loss, sizeof loss, "%.4f (step %lld) -> %.4f (step %lld)", r.steps.front().loss,
                  (long long)r.steps.front().step, r.steps.back().loss, (long long)r.steps.back().step);
  std::string s = str(r.interrupted ? "stopped: " : "done: ", plural(int64_t(r.steps.size()), "step", "steps"), " in ",
                      format_duration(elapsed_s), ", ", int64_t(double(run_tokens) / std::max(elapsed_s, 1e-9)),
                      " tokens/s\n");
  s += str("  train loss   ", loss, "\n");
  if (!r.steps.empty() && r.steps.back().loss_scale > 0) {  // fp16: the loss scaler's account
    int64_t skipped = 0;
    for (const StepMetrics& m : r.steps) skipped += m.skipped;
    s += str("  loss scale   ", r.steps.back().loss_scale, " at the last step; ",
             plural(skipped, "step", "steps"), " skipped for an f16 overflow\n");
  }
  if (!r.evals.empty()) {
    char e[64];
    std::snprintf(e, sizeof e, "%.4f (step %lld)", r.evals.back().second, (long long)r.evals.back().first);
    s += str("  eval loss    ", e, "\n");
  }
  s += str("  adapter      ", cfg.out, "/ (adapter_config.json, adapter_model.safetensors: PEFT format)\n");
  s += str("  checkpoints  ", r.last_checkpoint, r.interrupted ? str(" (continue: ./train --resume ", cfg.out, ")") : "",
           "\n");
  s += str("  metrics      ", metrics_path, " (one line per step)\n");
  s += str("  curves       ", curves_path, " (train/eval loss, learning rate, grad norm; ./plot ", cfg.out, " redraws it)");
  return s;
}

}  // namespace

TrainResult train(const TrainConfig& config, std::ostream& log, const TrainerHooks& hooks) {
  TrainConfig adopted = config;
  // --adapter: the run's LoRA settings are the file's (parse_train_args did it too);
  // a resumed run has them in its checkpoint's config already.
  if (adopted.resume.empty()) adopted.adopt_adapter_config();
  const TrainConfig& cfg = adopted;
  cfg.validate();
  const Device device = select_device(cfg.device, "--device");
  const DetectAnomaly anomaly(cfg.detect_anomaly);  // --detect-anomaly: every op output checked (autograd/var.h)
  if (cfg.threads > 0) {
    omp_set_num_threads(int(cfg.threads));
    openblas_set_num_threads(int(cfg.threads));
  }
  // Everything that can fail cheaply fails before the model is loaded.
  ensure_writable_dir(cfg.out, "--out");
  for (auto [flag, path] : {std::pair<const char*, std::string>{"--data", cfg.data}, {"--eval-data", cfg.eval_data}})
    NQ_CHECK(path.empty() || std::ifstream(path).good(), flag, " ", path, ": cannot read the file");
  const std::string metrics_path = cfg.metrics.empty() ? cfg.out + "/metrics.jsonl" : cfg.metrics;
  // --resume OUT/checkpoint-N, OUT or last (training/checkpoint.h); a new run claims --out.
  const std::string resume_dir = cfg.resume.empty() ? "" : resolve_resume_checkpoint(cfg.resume, cfg.out);
  if (resume_dir.empty()) claim_output_folder(cfg.out, cfg.overwrite, metrics_path);
  TrainConfig resumed_from;
  if (!resume_dir.empty()) {
    resumed_from = read_checkpoint_config(resume_dir);
    const std::string diff = cfg.trajectory_difference(resumed_from);
    NQ_CHECK(diff.empty(), "--resume ", resume_dir, ": option \"", diff,
             "\" differs from the checkpoint's train_config.json; resuming needs the same settings");
  }
  NQ_CHECK(std::ofstream(metrics_path, std::ios::app).good(), "--metrics ", metrics_path, ": cannot write the file");
  validate_data_files(cfg);
  log << "device: " << device_summary(device)
      << (device == Device::CPU && cfg.optim == "paged_adamw" ? "; paged_adamw = adamw on the cpu" : "") << "\n";

  // ---- model: load, quantize, adapters (on the CPU), then to the device
  rng_seed(cfg.seed);
  DecoderOptions dopt;
  dopt.checkpointing = !cfg.no_grad_checkpoint;
  dopt.ce_chunk_rows = cfg.ce_chunk;
  auto t_load = Clock::now();
  std::string dtype_note;
  const DType compute = select_compute_dtype(cfg.dtype, device, "--dtype", &dtype_note);
  if (!dtype_note.empty()) log << "note: " << dtype_note << "\n";
  // HF folder (dense or 4-bit) or .gguf: config, weights, tokenizer, chat; each projection NF4 as it
  // is read and, on the GPU, uploaded at once with the embeddings (in the compute dtype).
  LoadedModel loaded = load_model(cfg.model, WeightLoad::qlora(!cfg.no_quant, device, compute));
  loaded.config.apply_rope_scaling_flag(cfg.rope_scaling);
  NQ_CHECK(loaded.tokenizer.has_value(), "--model ", cfg.model, ": no tokenizer (tokenizer.json) to encode --data with");
  const Tokenizer& tok = *loaded.tokenizer;
  // Tokenized (the chat template rendered) before the base is quantized, the slow part of
  // a dense model's start: an encoding error costs seconds. Stateless: no RNG is drawn.
  std::ostringstream encode_notes;
  TrainData data = load_train_data(cfg, tok, encode_options(cfg, loaded, encode_notes));
  // The process besides its tensors: the program, its libraries, the tokenizer and the
  // tokenized data (resident memory minus the host allocator's bytes, runtime/process_memory.h).
  const size_t rss = current_rss_bytes(), host_tensors = allocator_for(Device::CPU).stats().current_total;
  const size_t process_bytes = rss - std::min(rss, host_tensors);
  Decoder model = build_decoder(loaded, dopt, /*nf4_base=*/!cfg.no_quant);  // a 4-bit checkpoint's NF4 as stored
  AdapterConfig adapter;
  adapter.lora = {cfg.r, float(cfg.alpha), float(cfg.dropout), cfg.rslora};
  adapter.target_modules = cfg.targets;
  adapter.base_model_name_or_path = base_model_reference(cfg.model);
  if (!resume_dir.empty()) {
    load_peft_adapter(resume_dir, model);
  } else if (!cfg.adapter.empty()) {
    load_peft_adapter(cfg.adapter, model);  // its A, B are the initial weights
    // Every module its target_modules selects must have come with weights (PEFT
    // would start a missing one afresh: not the adapter the user gave).
    for (Linear* l : select_targets(model, cfg.targets))
      NQ_CHECK(l->has_lora(), "--adapter ", cfg.adapter, ": adapter_model.safetensors has no tensor base_model.model.",
               l->name(), ".lora_A.weight, which its target_modules select (an adapter for another model?)");
  } else {
    attach_adapters(model, adapter);
  }
  to_device(model, device, compute);  // NF4 codes as they are, embeddings in the compute dtype, f32 norms and LoRA masters
  // fp16's dynamic loss scaling (optim/loss_scaler.h: torch.amp.GradScaler's defaults); bf16 and f32 need none.
  LossScaler scaler = compute == DType::F16 ? LossScaler(LossScalerConfig{}) : LossScaler();
  log << "precision: "
      << (device == Device::CPU ? std::string("f32 throughout (the reference path)")
                                : str(dtype_name(compute), " activations and tensor-core matmuls with f32 accumulation",
                                      scaler.enabled() ? str(", dynamic loss scaling from ", scaler.scale()) : "",
                                      "; LoRA masters, gradients and AdamW f32"))
      << "\n";
  std::vector<Var> params = adapter_parameters(model);
  std::unique_ptr<Optimizer> optimizer = make_optimizer(params, cfg, device);
  int64_t n_trainable = 0;
  for (const Var& p : params) n_trainable += p.value().numel();
  log << "model: " << model.config().summary() << (cfg.no_quant ? ", dense f32 base" : ", NF4 base") << ", "
      << params.size() / 2 << " LoRA modules (r " << cfg.r << "), " << n_trainable << " trainable parameters; loaded in "
      << format_duration(seconds_since(t_load)) << "\n";

  // ---- data (tokenized above)
  log << encode_notes.str();
  log << "data: " << cfg.data << " (" << data_format_name(data.train.format) << "): " << data.train_subset.size()
      << " training samples, " << data.eval_subset.size() << " eval; " << data.train.truncated << " truncated to "
      << cfg.max_length << " tokens, " << data.train.dropped_untrained << " without a trained token dropped, "
      << data.train.skipped_lines << " bad lines skipped\n";
  if (data.train.skipped_lines > 0) log << "  first skipped: " << data.train.first_skip_message << "\n";

  const LoaderOptions lopt = loader_options(cfg, tok);
  DataLoader loader(data.train.samples, data.train_subset, lopt);

  // ---- schedule
  int64_t total_steps = cfg.max_steps;
  if (total_steps == 0) {
    int64_t micro = 0;
    for (int64_t e = 0; e < cfg.epochs; ++e) micro += loader.batches_in_epoch(e);
    total_steps = (micro + cfg.grad_accum - 1) / cfg.grad_accum;
  }
  LrSchedule schedule;
  schedule.kind = parse_schedule_kind(cfg.schedule);
  schedule.base_lr = cfg.lr;
  schedule.warmup_steps = cfg.warmup_steps > 0 ? cfg.warmup_steps : int64_t(std::ceil(cfg.warmup_ratio * double(total_steps)));
  schedule.total_steps = total_steps;
  schedule.validate();

  // ---- resume
  TrainerState state;
  if (!resume_dir.empty()) {
    state = load_checkpoint_state(resume_dir, *optimizer);
    NQ_CHECK(state.step < total_steps, "--resume ", resume_dir, ": the checkpoint is at step ", state.step,
             " and the run has ", total_steps, " steps; nothing left to do (--max-steps extends it)");
    rng_state() = state.rng;
    loader.set_position(state.data);
    if (scaler.enabled() && state.compute_dtype == dtype_name(compute))
      scaler.load_state(state.loss_scaler, (resume_dir + "/trainer_state.json").c_str());
    log << "resumed from " << resume_dir << " at step " << state.step
        << (scaler.enabled() ? str(", loss scale ", scaler.scale()) : std::string()) << "\n";
  }
  // A resumed run's metrics: the steps up to the checkpoint stay, later ones (logged before a kill) go.
  RunReport report(cfg, resume_dir.empty() ? -1 : state.step);  // metrics.jsonl (+ TensorBoard with --report-to)
  if (!report.tensorboard_file().empty()) log << "tensorboard: " << report.tensorboard_file() << "\n";

  // ---- memory plan (training/memory_plan.h; the formulas: docs/gpu_training.md)
  TrainShape shape;
  shape.batch = cfg.batch_size;
  shape.seq = cfg.max_length;
  shape.ce_chunk_rows = dopt.ce_chunk_rows;
  const AdamWOptions paging = optimizer_options(cfg, device);
  shape.paged_optimizer = paging.placement == AdamWPlacement::Paged;  // the plan reads these two on cuda only
  shape.optimizer_pool_bytes = paging.pool_bytes();
  shape.compute = compute == DType::F32 ? DType::BF16 : compute;  // read on cuda only
  QloraShape qlora_shape;
  qlora_shape.r = cfg.r;
  qlora_shape.targets = cfg.targets;
  qlora_shape.nf4_base = !cfg.no_quant;
  qlora_shape.checkpointing = dopt.checkpointing;
  // Long context: the offload and the MLP chunk as asked, or (auto, on the GPU) what the plan needs to fit.
  qlora_shape.offload_activations = cfg.offload_activations == "on";
  qlora_shape.mlp_chunk_rows = cfg.mlp_chunk_rows == "auto" ? 0 : parse_mlp_chunk_rows(cfg.mlp_chunk_rows);
  size_t gpu_available = 0;
  if (device == Device::CUDA) {
    gpu_available = cuda_mem_info().free + cuda_memory_stats().reserved.current_total;
    qlora_shape = choose_activation_scheme(model.config(), qlora_shape, shape, gpu_available,
                                           cfg.offload_activations == "auto" && dopt.checkpointing,
                                           cfg.mlp_chunk_rows == "auto");
  }
  model.options().offload_activations = qlora_shape.offload_activations;
  model.options().mlp_chunk_rows = qlora_shape.mlp_chunk_rows;
  const MemoryPlan plan = plan_memory(model, shape);
  log << "optimizer: " << (device == Device::CPU ? "AdamW, m and v in host memory"
                           : shape.paged_optimizer ? str("paged AdamW, m and v in pinned host memory through a GPU pool of ",
                                                paging.n_pages, " x ", format_bytes(size_t(paging.page_bytes)))
                                          : std::string("AdamW, m and v in GPU memory"))
      << "; gradient checkpointing " << (dopt.checkpointing ? "on" : "off")
      << (plan.offload ? str(", layer inputs offloaded to host memory (", format_bytes(plan.host_offload), ")") : "")
      << (plan.mlp_chunk_rows > 0 ? str(", MLP over chunks of ", plan.mlp_chunk_rows, " rows") : "")
      << "; planned peak memory "
      << format_bytes(plan.total()) << " for micro-batches of " << shape.batch << " x " << shape.seq << " tokens"
      << (cfg.verbose ? "" : " (--verbose: the plan's table)") << "\n";
  if (cfg.verbose) log << plan.table() << "\n";
  if (device == Device::CUDA) {  // a run the plan says cannot fit stops here, naming the flag that fits
    const std::string no_fit = plan_does_not_fit(model.config(), qlora_shape, shape, gpu_available, cfg.grad_accum);
    NQ_CHECK(no_fit.empty(), no_fit);
  }
  const HostPlan host = plan_host_memory(model.config(), qlora_shape, shape, device);
  const size_t host_planned = process_bytes + host.peak();
  log << "host memory: planned peak " << format_bytes(host_planned) << " = the program, tokenizer and data "
      << format_bytes(process_bytes) << " + max(load " << format_bytes(host.load) << ", training "
      << format_bytes(host.training) << ")" << (device == Device::CUDA ? " + the CUDA driver's own" : "") << "\n";
  log << run_description(cfg, total_steps, state.step, schedule, loader, int64_t(data.train_subset.size())) << "\n";

  // ---- loop
  TrainResult result;
  ProgressBar bar(log, total_steps, !cfg.no_progress && &log == &std::cout && isatty(STDOUT_FILENO), cfg.log_every);
  Allocator& device_alloc = allocator_for(device);  // allocated bytes per category (CUDA: the cache's requests)
  device_alloc.reset_peak();  // from here on the peaks are the training steps'
  const auto t_start = Clock::now();
  const int64_t first_step = state.step + 1;
  auto run_eval = [&](int64_t step) {
    if (data.eval_subset.empty()) return;
    EvalLoss e = evaluate_samples(model, data.eval_samples(), data.eval_subset, lopt);
    result.evals.emplace_back(step, e.loss);
    if (!cfg.no_progress) bar.finish();
    report.eval(step, e.loss, e.targets);
    log << "eval at step " << step << ": loss " << e.loss << " over " << e.targets << " tokens\n";
  };
  auto checkpoint = [&]() {
    result.last_checkpoint = save_checkpoint(cfg.out, model, adapter, *optimizer, state, cfg);  // host copies
    for (const std::string& old : prune_checkpoints(cfg.out, cfg.save_total_limit))  // --save-total-limit
      if (cfg.verbose) log << "deleted " << old << " (--save-total-limit " << cfg.save_total_limit << ")\n";
    return result.last_checkpoint;
  };
  int64_t first_rows = 0, first_cols = 0;  // step 1's largest micro-batch, for the memory line
  for (int64_t step = first_step; step <= total_steps; ++step) {
    const auto t_step = Clock::now();
    std::vector<Batch> batches;
    std::vector<DecoderBatch> micro;
    int64_t tokens = 0;
    for (int64_t k = 0; k < cfg.grad_accum; ++k) {
      batches.push_back(loader.next());
      tokens += batches.back().n_tokens;
    }
    for (const Batch& b : batches) {
      micro.push_back(decoder_batch(b, device));
      if (step == first_step && b.B * b.T > first_rows * first_cols) first_rows = b.B, first_cols = b.T;
    }
    // The schedule advances with the updates: a step the fp16 scaler skipped does not
    // count (HF Trainer + accelerate do not step the scheduler after a skipped update).
    const double lr = schedule.lr(step - 1 - state.skipped_steps);
    StepResult r = train_step(model, *optimizer, micro, lr, cfg.max_grad_norm, step, &scaler);

    state.step = step;
    state.compute_dtype = dtype_name(compute);
    state.loss_scaler = scaler.state();
    state.skipped_steps += r.skipped;
    state.rng = rng_state();
    state.data = loader.position();
    state.tokens_seen += tokens;
    const MemStats mem = device_alloc.stats();
    StepMetrics m;
    m.step = step;
    m.loss = r.loss;
    m.lr = lr;
    m.grad_norm = r.grad_norm;
    m.tokens = tokens;
    m.step_time_s = seconds_since(t_step);
    m.tokens_per_s = double(tokens) / m.step_time_s;
    m.mem_bytes = int64_t(mem.peak_total);
    m.loss_scale = scaler.enabled() ? r.loss_scale : 0.0;
    m.skipped = r.skipped;
    report.step(m, mem);
    result.steps.push_back(m);
    result.final_step = step;
    if (step == first_step) {
      if (cfg.verbose) log << plan.compare(mem) << "\n";
      log << memory_line(plan, mem, shape, step, first_rows, first_cols) << "\n";
      log << host_memory_line(host_planned, peak_rss_bytes(), step) << "\n";
    }
    if (!cfg.no_progress) {
      const double elapsed = seconds_since(t_start);
      bar.update(m, elapsed * double(step) / double(step - first_step + 1));  // ETA over this run's pace
    }
    if (hooks.on_step) hooks.on_step(m);

    if (step < total_steps && g_stop_requested.exchange(false)) {
      if (!cfg.no_progress) bar.finish();
      // As at the end: a checkpoint to resume from and the top-level PEFT adapter so far.
      const std::string dir = checkpoint();
      save_peft_adapter(cfg.out, model, adapter);
      result.adapter_dir = cfg.out;
      const std::string curves = report.write_curves();
      result.interrupted = true;
      log << "stopped at step " << step << " of " << total_steps << " as asked: checkpoint " << dir
          << ", adapter so far in " << cfg.out << "/\n";
      int64_t run_tokens = 0;
      for (const StepMetrics& m : result.steps) run_tokens += m.tokens;
      log << run_summary(cfg, result, seconds_since(t_start), run_tokens, metrics_path, curves) << "\n";
      return result;
    }
    if (step < total_steps && cfg.eval_every > 0 && step % cfg.eval_every == 0) run_eval(step);
    if (step < total_steps && cfg.save_every > 0 && step % cfg.save_every == 0) {
      const std::string dir = checkpoint();
      if (!cfg.no_progress) bar.finish();
      log << "saved " << dir << "\n";
    }
  }
  if (!cfg.no_progress) bar.finish();
  g_stop_requested.store(false);  // a Ctrl-C during the last step: the run completes anyway

  run_eval(state.step);
  checkpoint();
  save_peft_adapter(cfg.out, model, adapter);  // copies the adapters to the host
  result.adapter_dir = cfg.out;
  const double elapsed = seconds_since(t_start);
  int64_t run_tokens = 0;
  for (const StepMetrics& m : result.steps) run_tokens += m.tokens;
  const std::string curves = report.write_curves();
  log << run_summary(cfg, result, elapsed, run_tokens, metrics_path, curves) << "\n";
  return result;
}

}  // namespace nq
