// ./inspect FILE: what a checkpoint holds. For a GGUF file, its metadata (long
// arrays summarised) and a count of tensor types; for safetensors (a file or a
// directory with model.safetensors[.index.json]), every tensor's dtype and shape.
// ./inspect load: the load ./train does, timed, its peak host memory beside the plan.
// ./inspect plan: the training memory plan of a model from its config alone
// (training/memory_plan.h), and the longest context that fits a memory budget.
// Flags: one table per command (training/flags.h).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "model/bnb_checkpoint.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/device.h"
#include "model/load_model.h"
#include "runtime/cuda_runtime.h"
#include "runtime/device_copy.h"
#include "runtime/process_memory.h"
#include "optim/adamw.h"
#include "training/memory_plan.h"
#include "tools/cli.h"
#include "training/flags.h"
#include "training/train_config.h"

using namespace nq;

static std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const std::string& item : items) s += (s.empty() ? "" : ",") + item;
  return s;
}

// The GPUs ./inspect plan --gpu knows: the memory nvidia-smi reports (GiB) and the
// compute capability (bf16 from 80 on; older cards train in f16).
struct GpuCard {
  const char* name;
  const char* model;
  double gib;
  int cc;
};
const GpuCard kGpuCards[] = {
    {"t4", "Tesla T4 (Colab, Kaggle)", 15.0, 75},  {"v100", "Tesla V100 16 GB", 15.8, 70},
    {"a100-40", "A100 40 GB", 39.4, 80},           {"a100-80", "A100 80 GB", 79.3, 80},
    {"rtx4090", "GeForce RTX 4090", 24.0, 89},    {"h100", "H100 80 GB", 79.6, 90},
    {"h200", "H200", 139.8, 90},
};
// What the plan does not count (the CUDA context, cuBLASLt's workspace, the caching
// allocator's rounding): kept free of a card's memory before asking what fits.
constexpr double kCardReserveGib = 1.5;

// --gpu CARD: for each preset (or the one model given), whether seq 2048 fits on the
// card and the longest context (batch 1) that does.
static void print_card_fits(const GpuCard& card, const std::vector<std::pair<std::string, ModelConfig>>& models,
                            const QloraShape& qlora, TrainShape shape) {
  shape.compute = card.cc >= 80 ? DType::BF16 : DType::F16;
  const size_t budget = size_t((card.gib - kCardReserveGib) * double(size_t(1) << 30));
  printf("%s: %.1f GiB, sm_%d, %s activations%s; %.1f GiB kept for the CUDA context and allocator\n", card.model,
         card.gib, card.cc, dtype_name(shape.compute), card.cc >= 80 ? "" : " (no bf16; dynamic loss scaling)",
         kCardReserveGib);
  printf("QLoRA r %lld on %s, batch 1, %s, paged AdamW\n", (long long)qlora.r, join(qlora.targets).c_str(),
         qlora.checkpointing ? "gradient checkpointing" : "no checkpointing");
  printf("  %-12s %16s %6s %18s %26s\n", "model", "plan at 2048", "fits", "longest context",
         "with offload + MLP chunks");
  const QloraShape saving = with_activation_savings(qlora, true, true);  // ./train's auto at its most
  for (const auto& [name, config] : models) {
    TrainShape at = shape;
    at.batch = 1;
    at.seq = 2048;
    const size_t at_2048 = plan_memory(config, qlora, at, Device::CUDA).total();
    const int64_t longest = longest_fitting_seq(config, qlora, shape, Device::CUDA, budget);
    const int64_t longest_saving = longest_fitting_seq(config, saving, shape, Device::CUDA, budget);
    printf("  %-12s %16s %6s %11lld tokens %19lld tokens\n", name.c_str(), format_bytes(at_2048).c_str(),
           at_2048 <= budget ? "yes" : "no", (long long)longest, (long long)longest_saving);
  }
}

// ./inspect plan ...: argv[0] is "plan". The defaults are ./train's (TrainConfig's
// --max-length, --batch-size and --device; the LoRA ones are QloraShape's, which
// are lora/lora_linear.h's as ./train's are), so a bare plan is the table ./train
// prints before step 1 with its defaults.
static int run_plan(int argc, char** argv) {
  const TrainConfig train_defaults;
  std::string preset, model_dir, device_flag = train_defaults.device;
  TrainShape shape;
  shape.seq = train_defaults.max_length;
  shape.batch = train_defaults.batch_size;
  QloraShape qlora;
  bool no_quant = false, no_grad_checkpoint = false, as_json = false;
  double fit_gb = 0;
  std::string gpu_card, dtype_flag = train_defaults.dtype;
  FlagTable t(
      "usage: ./inspect plan (--preset NAME | --model DIR) [options]\n"
      "       ./inspect plan --gpu CARD [--preset NAME | --model DIR] [options]\n"
      "The predicted peak memory of one QLoRA training step (the table ./train prints before\n"
      "step 1), from the model's config alone: nothing is loaded or allocated.\n",
      "./inspect plan --help");
  t.add("preset", &preset, "qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b; the MoE qwen3-30b-a3b, qwen3-235b-a22b", "NAME");
  t.add("model", &model_dir, "a HF model folder (only its config.json is read)", "DIR");
  t.add("seq", &shape.seq, "tokens per row (./train --max-length)", "T");
  t.add("batch", &shape.batch, "rows per micro-batch (./train --batch-size)", "B");
  t.add("r", &qlora.r, "LoRA rank", "R");
  t.add("targets", &qlora.targets, "comma-separated target modules", "LIST");
  add_device_flag(t, &device_flag).help +=
      ";\nthe device the step is planned for: cuda plans bf16 activations and paged AdamW,\n"
      "and needs no GPU here (nothing runs)";
  t.add("no-quant", &no_quant, "dense bases instead of NF4");
  t.add("no-grad-checkpoint", &no_grad_checkpoint, "keep every layer's activations");
  t.add("ce-chunk", &shape.ce_chunk_rows, "rows of logits at once in the loss");
  std::string offload_flag = "off", chunk_flag = "off";
  t.add_choice("offload-activations", &offload_flag, {"on", "off"}, "on | off: plan the layer inputs in host memory (./train's flag)");
  t.add("mlp-chunk-rows", &chunk_flag, "plan the MLP over chunks of N rows: off | auto (the plan's chunk) | N",
        "off|auto|N");
  t.add("fit-gb", &fit_gb,
        "also print the longest sequence (batch 1) whose planned total fits\n"
        "in G GiB (2^30 bytes); 0: not asked",
        "G");
  std::string cards;
  for (const GpuCard& c : kGpuCards) cards += str(cards.empty() ? "" : ", ", c.name);
  t.add("gpu", &gpu_card,
        str("what fits on a card (", cards, "):\nseq 2048 and the longest context for Qwen3-0.6B/1.7B/4B/8B, or the model given"),
        "CARD");
  add_dtype_flag(t, &dtype_flag).help += "\n(the plan's activations; auto: bf16, or f16 for a --gpu card without it)";
  t.add("json", &as_json, "one JSON line instead of the table (scripts)");
  if (!t.parse(argc, argv)) return 0;  // --help
  qlora.nf4_base = !no_quant;
  qlora.checkpointing = !no_grad_checkpoint;
  qlora.offload_activations = offload_flag == "on";
  NQ_CHECK(!qlora.offload_activations || qlora.checkpointing,
           "--offload-activations on needs gradient checkpointing (leave out --no-grad-checkpoint)");
  qlora.mlp_chunk_rows = parse_mlp_chunk_rows(chunk_flag);
  NQ_CHECK(!(!preset.empty() && !model_dir.empty()), "give --preset NAME or --model DIR, not both");
  NQ_CHECK(!gpu_card.empty() || !preset.empty() || !model_dir.empty(),
           "give --preset NAME, --model DIR or --gpu CARD (see ./inspect plan --help)");
  DType asked = DType::BF16;
  NQ_CHECK(dtype_flag == "auto" || (parse_float_dtype(dtype_flag, &asked) && asked != DType::F32),
           "--dtype: the plan's GPU activations are bfloat16 or float16 (or auto), got '", dtype_flag, "'");
  shape.compute = asked;
  NQ_CHECK(fit_gb >= 0, "--fit-gb: expected a positive size in GiB, got ", fit_gb);
  // A plan is arithmetic on a config: --device cuda plans a GPU step on any machine.
  // auto is the device ./train would pick here (select_device, model/device.h).
  const Device device = device_flag == "auto" ? select_device(device_flag, "--device")
                                              : device_flag == "cuda" ? Device::CUDA : Device::CPU;
  device_flag = device == Device::CUDA ? "cuda" : "cpu";
  shape.paged_optimizer = device == Device::CUDA;
  shape.optimizer_pool_bytes = AdamWOptions{}.pool_bytes();

  if (!gpu_card.empty()) {
    const GpuCard* card = nullptr;
    for (const GpuCard& c : kGpuCards)
      if (gpu_card == c.name) card = &c;
    NQ_CHECK(card, "--gpu must be one of ", cards, ", got '", gpu_card, "' (--fit-gb G asks for any size)");
    NQ_CHECK(dtype_flag == "auto" || card->cc >= 80 || asked == DType::F16, "--dtype ", dtype_flag, ": the ",
             card->model, " has no bf16 (sm_", card->cc, "); it trains in float16");
    std::vector<std::pair<std::string, ModelConfig>> models;
    if (!model_dir.empty()) models.emplace_back(model_dir, ModelConfig::from_file(model_dir + "/config.json"));
    else if (!preset.empty()) models.emplace_back(preset, ModelConfig::preset(preset));
    else
      for (const char* name : {"qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"})
        models.emplace_back(name, ModelConfig::preset(name));
    shape.paged_optimizer = true;
    print_card_fits(*card, models, qlora, shape);
    return 0;
  }

  ModelConfig config;
  std::string source = preset;
  if (!preset.empty()) {
    config = ModelConfig::preset(preset);
  } else {
    const std::string path = model_dir + "/config.json";
    config = ModelConfig::from_file(path);
    read_bnb_4bit_config(path);  // a quantization_config we could not train from is an error here too
    source = model_dir;
  }
  const MemoryPlan plan = plan_memory(config, qlora, shape, device);
  const HostPlan host = plan_host_memory(config, qlora, shape, device);
  const size_t budget = size_t(fit_gb * double(size_t(1) << 30));
  const int64_t fit = fit_gb > 0 ? longest_fitting_seq(config, qlora, shape, device, budget) : 0;
  // --fit-gb: the longest context with each saving ./train can switch on (with checkpointing).
  struct Scheme {
    const char* name;
    QloraShape qlora;
  };
  std::vector<Scheme> schemes;
  if (qlora.checkpointing)
    schemes = {{"without offload", with_activation_savings(qlora, false, false)},
               {"with --offload-activations on", with_activation_savings(qlora, true, false)},
               {"with offload and --mlp-chunk-rows auto", with_activation_savings(qlora, true, true)}};
  std::vector<int64_t> scheme_fit;
  if (fit_gb > 0)
    for (const Scheme& sc : schemes) scheme_fit.push_back(longest_fitting_seq(config, sc.qlora, shape, device, budget));
  if (as_json) {
    nlohmann::json j = {{"model", source}, {"device", device_flag}, {"activations", dtype_name(plan.activations)},
                        {"batch", shape.batch}, {"seq", shape.seq},
                        {"r", qlora.r}, {"total_bytes", plan.total()}, {"host_load_bytes", host.load},
                        {"host_training_bytes", host.training}, {"host_peak_bytes", host.peak()}};
    for (size_t c = 0; c < plan.bytes.size(); ++c) j[str(mem_category_name(MemCategory(c)), "_bytes")] = plan.bytes[c];
    if (fit_gb > 0) {
      j["fit_gb"] = fit_gb;
      j["fit_seq"] = fit;
      if (!schemes.empty()) {
        j["fit_seq_without_offload"] = scheme_fit[0];
        j["fit_seq_offload"] = scheme_fit[1];
        j["fit_seq_offload_chunked_mlp"] = scheme_fit[2];
      }
    }
    printf("%s\n", j.dump().c_str());
    return 0;
  }
  printf("%s: %s\n", source.c_str(), config.summary().c_str());
  printf("QLoRA step on %s (%s activations): batch %lld x seq %lld, %s bases, LoRA r %lld on %s, %s, %s\n",
         device_flag.c_str(), dtype_name(plan.activations),
         (long long)shape.batch, (long long)shape.seq, qlora.nf4_base ? "NF4" : "dense", (long long)qlora.r,
         join(qlora.targets).c_str(), qlora.checkpointing ? "gradient checkpointing" : "no checkpointing",
         device == Device::CUDA ? "paged AdamW" : "AdamW");
  printf("%s\n", plan.table().c_str());
  printf("host memory (planned peak %s, beyond the program, tokenizer and data): load %s, training %s\n",
         format_bytes(host.peak()).c_str(), format_bytes(host.load).c_str(), format_bytes(host.training).c_str());
  if (fit_gb > 0) {
    if (fit == 0) {
      printf("not even one token fits in %g GiB\n", fit_gb);
    } else {
      TrainShape at = shape;
      at.batch = 1;
      at.seq = fit;
      printf("longest sequence (batch 1) whose planned total fits in %g GiB: %lld tokens (plan %s)%s\n", fit_gb,
             (long long)fit, format_bytes(plan_memory(config, qlora, at, device).total()).c_str(),
             fit > config.max_position_embeddings
                 ? str("; beyond the model's max_position_embeddings (", config.max_position_embeddings, ")").c_str()
                 : "");
    }
    for (size_t i = 0; i < schemes.size(); ++i) {
      if (scheme_fit[i] == 0) continue;
      TrainShape at = shape;
      at.batch = 1;
      at.seq = scheme_fit[i];
      const MemoryPlan p = plan_memory(config, schemes[i].qlora, at, device);
      const HostPlan h = plan_host_memory(config, schemes[i].qlora, at, device);
      // What limits it: the largest term of the step's peak besides the weights.
      const std::pair<const char*, size_t> terms[] = {{"saved layer inputs", p.saved_layer_inputs},
                                                      {"the recomputed layer", p.recomputed_layer},
                                                      {"its backward", p.layer_backward},
                                                      {"the top (final norm, loss)", p.top}};
      const auto* limit = &terms[0];
      for (const auto& term : terms)
        if (term.second > limit->second) limit = &term;
      printf("  %-40s %9lld tokens; the largest term there: %s %s of %s%s\n", schemes[i].name,
             (long long)scheme_fit[i], limit->first, format_bytes(limit->second).c_str(),
             format_bytes(p.total()).c_str(),
             p.offload ? str("; host ", format_bytes(h.peak()), " (offloaded inputs ", format_bytes(p.host_offload),
                             ")").c_str()
                       : "");
    }
    printf("(the plan counts allocated tensors; the CUDA context, cuBLAS workspace and the caching\n"
           " allocator's rounding come on top: keep ~1-2 GiB spare)\n");
  }
  return 0;
}

// ./inspect load --model DIR: the load ./train does (load_model with
// WeightLoad::qlora: each projection NF4 as it is read), timed, with the process's
// peak RSS beside the host plan's load term. argv[0] is "load".
static int run_load(int argc, char** argv) {
  std::string model_dir, device_flag = "cpu";
  bool no_quant = false, as_json = false;
  FlagTable t(
      "usage: ./inspect load --model DIR [--for cpu|cuda] [--json]\n"
      "Loads a model as ./train does (NF4 projections quantized while reading, the\n"
      "embeddings in the dtype of the device the run is for), then prints the load time,\n"
      "the bytes it holds and the peak resident memory beside the planned one.\n"
      "--for cuda uploads each projection and embedding as it is made, as\n"
      "./train does, when a GPU is visible (else keeps them on the host in a GPU run's dtypes).\n",
      "./inspect load --help");
  t.add("model", &model_dir, "a HF model folder or a .gguf file", "DIR");
  t.add("for", &device_flag, "cpu or cuda: the device whose dtypes the load produces", "DEVICE");
  t.add("no-quant", &no_quant, "dense f32 projections instead of NF4");
  t.add("json", &as_json, "one JSON line instead of text (scripts)");
  if (!t.parse(argc, argv)) return 0;  // --help
  NQ_CHECK(!model_dir.empty(), "give --model DIR (see ./inspect load --help)");
  NQ_CHECK(device_flag == "cpu" || device_flag == "cuda", "--for: expected cpu or cuda, got \"", device_flag, "\"");
  const Device device = device_flag == "cuda" ? Device::CUDA : Device::CPU;
  const size_t rss_before = current_rss_bytes();
  const auto t0 = std::chrono::steady_clock::now();
  // A GPU run uploads each NF4 projection and embedding as it is made; without a GPU here
  // --for cuda makes the same dtypes and keeps them on the host (and plans that).
  WeightLoad load = WeightLoad::qlora(!no_quant, device);
  const bool upload = device == Device::CUDA && cuda_available() && cuda_arch_mismatch().empty();
  if (!upload) load.place = Device::CPU;
  const LoadedModel loaded = load_model(model_dir, load);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  size_t nf4 = 0, dense = 0;
  for (const auto& [name, w] : loaded.nf4) nf4 += w->nbytes();
  for (const auto& [name, w] : loaded.weights) dense += w.nbytes();
  HostPlan host;
  host.load = plan_host_load(loaded.config, load);
  const size_t peak = peak_rss_bytes();
  if (as_json) {
    const nlohmann::json j = {{"model", model_dir}, {"for", device_flag}, {"load_s", load_s}, {"nf4_bytes", nf4},
                              {"dense_bytes", dense}, {"rss_before_bytes", rss_before}, {"peak_rss_bytes", peak},
                              {"planned_load_bytes", host.load}, {"uploaded", upload}};
    printf("%s\n", j.dump().c_str());
    return 0;
  }
  printf("%s: %s\n", model_dir.c_str(), loaded.config.summary().c_str());
  printf("loaded for %s in %.2f s: NF4 projections %s, dense tensors %s%s\n", device_flag.c_str(), load_s,
         format_bytes(nf4).c_str(), format_bytes(dense).c_str(),
         device == Device::CPU ? ""
         : upload              ? " (projections and embeddings uploaded to the GPU as each was made)"
                               : " (no usable GPU here: kept on the host in a GPU run's dtypes)");
  printf("peak RSS %s = %s at start + %s; planned load %s (x%.2f)\n", format_bytes(peak).c_str(),
         format_bytes(rss_before).c_str(), format_bytes(peak - std::min(peak, rss_before)).c_str(),
         format_bytes(host.load).c_str(), host.load ? double(peak - std::min(peak, rss_before)) / double(host.load) : 0.0);
  return 0;
}

// One metadata value on one line; arrays show their length and first items.
static std::string show(const GGUFValue& v) {
  switch (v.type) {
    case GGUFValueType::STRING: {
      std::string s = v.s.size() > 70 ? v.s.substr(0, 70) + "..." : v.s;
      for (char& ch : s) if (ch == '\n') ch = ' ';
      return "\"" + s + "\"";
    }
    case GGUFValueType::BOOL: return v.b ? "true" : "false";
    case GGUFValueType::F32: case GGUFValueType::F64: return str(v.f);
    case GGUFValueType::I8: case GGUFValueType::I16: case GGUFValueType::I32: case GGUFValueType::I64: return str(v.i);
    case GGUFValueType::ARRAY: {
      std::string s = str("[", v.array.size(), " x ", gguf_value_type_name(v.elem_type), "] ");
      for (size_t i = 0; i < v.array.size() && i < 4; ++i) s += (i ? ", " : "") + show(v.array[i]);
      return s + (v.array.size() > 4 ? ", ..." : "");
    }
    default: return str(v.u);
  }
}

static void inspect_gguf(const std::string& path, bool list_tensors) {
  GGUFFile g = GGUFFile::open(path);
  printf("%s: GGUF v%u, %zu metadata keys, %zu tensors, alignment %llu\n", path.c_str(), g.version(),
         g.keys().size(), g.tensors().size(), (unsigned long long)g.alignment());
  for (const std::string& k : g.keys())
    printf("  %-42s %-6s %s\n", k.c_str(), gguf_value_type_name(g.value(k).type), show(g.value(k)).c_str());
  std::map<std::string, int> by_type;
  for (const GGUFTensorInfo& t : g.tensors()) {
    const char* type = ggml_type_info(uint32_t(t.type))->name;
    ++by_type[type];
    if (list_tensors) printf("  %-36s %-5s %s\n", t.name.c_str(), type, t.shape().str().c_str());
  }
  printf("tensor types:");
  for (const auto& [type, n] : by_type) printf(" %s x %d", type.c_str(), n);
  printf("\n");
}

static void inspect_safetensors(const std::string& path) {
  SafetensorsDir d = SafetensorsDir::open(path);
  printf("%s: %zu tensors in %zu file(s)\n", path.c_str(), d.names().size(), d.files().size());
  for (const std::string& n : d.names()) {
    const SafetensorsFile::Entry& e = d.file_of(n).entry(n);
    printf("  %-50s %-4s %s\n", n.c_str(), safetensors_dtype_name(e.dtype), e.shape.str().c_str());
  }
}

static int run_file(int argc, char** argv) {
  bool list_tensors = false;
  std::vector<std::string> paths;
  FlagTable t(
      "usage: ./inspect [--tensors] FILE\n"
      "       ./inspect plan (--preset NAME | --model DIR) [--seq T] [--batch B] [--fit-gb G] ...\n"
      "       ./inspect load --model DIR [--for cpu|cuda] [--json]\n"
      "  plan                        the memory a QLoRA training step will take (./inspect plan --help)\n"
      "  load                        load a model as ./train does: time, bytes, peak RSS (./inspect load --help)\n");
  t.positionals("FILE",  &paths,
                "a .gguf file, a .safetensors file, or a directory holding\n"
                "model.safetensors or model.safetensors.index.json + shards");
  t.add("tensors", &list_tensors, "GGUF: list every tensor (name, type, logical shape), not just counts");
  if (!t.parse(argc, argv)) return 0;  // --help
  NQ_CHECK(!paths.empty(), "give a FILE (see --help)");
  NQ_CHECK(paths.size() == 1, "one FILE only (got ", paths[0], " and ", paths[1], ")");
  const std::string& path = paths[0];
  const bool gguf = path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
  if (gguf) inspect_gguf(path, list_tensors);
  else inspect_safetensors(path);
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "load") return cli::run_main([&] { return run_load(argc - 1, argv + 1); });
  if (argc > 1 && std::string(argv[1]) == "plan") return cli::run_main([&] { return run_plan(argc - 1, argv + 1); });
  return cli::run_main([&] { return run_file(argc, argv); });
}
