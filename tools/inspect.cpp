// ./inspect FILE: what a checkpoint holds. For a GGUF file, its metadata (long
// arrays summarised) and a count of tensor types; for safetensors (a file or a
// directory with model.safetensors[.index.json]), every tensor's dtype and shape.
// ./inspect plan: the training memory plan of a model from its config alone
// (model/memory_plan.h), and the longest context that fits a memory budget.
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "model/bnb_checkpoint.h"
#include "model/gguf.h"
#include "model/memory_plan.h"
#include "optim/adamw.h"
#include "runtime/safetensors.h"
#include "tools/cli.h"

using namespace nq;

static const char* kUsage =
    "usage: ./inspect [--tensors] FILE\n"
    "       ./inspect plan (--preset NAME | --model DIR) [--seq 2048] [--batch 1] [--fit-gb G] ...\n"
    "  FILE       a .gguf file, a .safetensors file, or a directory holding\n"
    "             model.safetensors or model.safetensors.index.json + shards\n"
    "  --tensors  GGUF: list every tensor (name, type, logical shape), not just counts\n"
    "  plan       the memory a QLoRA training step will take (./inspect plan --help)\n";

static const char* kPlanUsage =
    "usage: ./inspect plan (--preset NAME | --model DIR) [options]\n"
    "The predicted peak memory of one QLoRA training step (the table ./train prints before\n"
    "step 1), from the model's config alone: nothing is loaded or allocated.\n"
    "  --preset NAME         qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b\n"
    "  --model DIR           a HF model folder (only its config.json is read)\n"
    "  --seq T               tokens per row (default 2048)\n"
    "  --batch B             rows per micro-batch (default 1)\n"
    "  --r R                 LoRA rank (default 16)\n"
    "  --targets LIST        comma-separated target modules (default all-linear)\n"
    "  --device cuda|cpu     where the step runs (default cuda: bf16 activations, paged AdamW)\n"
    "  --no-quant            dense bases instead of NF4\n"
    "  --no-grad-checkpoint  keep every layer's activations\n"
    "  --ce-chunk N          rows of logits at once in the loss (default 1024)\n"
    "  --fit-gb G            also print the longest sequence (batch 1) whose planned total fits\n"
    "                        in G GiB (2^30 bytes)\n"
    "  --json                one JSON line instead of the table (scripts)\n";

// ./inspect plan ...: argv[0] is "plan".
static int run_plan(int argc, char** argv) {
  std::string preset, model_dir, device_flag = "cuda", targets = "all-linear";
  TrainShape shape;
  shape.seq = 2048;
  QloraShape qlora;
  double fit_gb = 0;
  bool as_json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return fputs(kPlanUsage, stdout), 0;
    if (a == "--preset") preset = cli::value(argc, argv, i);
    else if (a == "--model") model_dir = cli::value(argc, argv, i);
    else if (a == "--seq") shape.seq = cli::to_int(a, cli::value(argc, argv, i));
    else if (a == "--batch") shape.batch = cli::to_int(a, cli::value(argc, argv, i));
    else if (a == "--r") qlora.r = cli::to_int(a, cli::value(argc, argv, i));
    else if (a == "--targets") targets = cli::value(argc, argv, i);
    else if (a == "--device") device_flag = cli::value(argc, argv, i);
    else if (a == "--no-quant") qlora.nf4_base = false;
    else if (a == "--no-grad-checkpoint") qlora.checkpointing = false;
    else if (a == "--ce-chunk") shape.ce_chunk_rows = cli::to_int(a, cli::value(argc, argv, i));
    else if (a == "--fit-gb") fit_gb = cli::to_float(a, cli::value(argc, argv, i));
    else if (a == "--json") as_json = true;
    else throw Error(str("unknown flag '", a, "' (see ./inspect plan --help)"));
  }
  NQ_CHECK(preset.empty() != model_dir.empty(), "give --preset NAME or --model DIR (see ./inspect plan --help)");
  NQ_CHECK(device_flag == "cuda" || device_flag == "cpu", "--device: expected cuda or cpu, got '", device_flag, "'");
  NQ_CHECK(fit_gb >= 0, "--fit-gb: expected a positive size in GiB, got ", fit_gb);
  qlora.targets.clear();
  std::stringstream list(targets);
  for (std::string t; std::getline(list, t, ',');)
    if (!t.empty()) qlora.targets.push_back(t);
  const Device device = device_flag == "cuda" ? Device::CUDA : Device::CPU;
  shape.paged_optimizer = device == Device::CUDA;
  shape.optimizer_pool_bytes = AdamWOptions{}.pool_bytes();

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
  const size_t budget = size_t(fit_gb * double(size_t(1) << 30));
  const int64_t fit = fit_gb > 0 ? longest_fitting_seq(config, qlora, shape, device, budget) : 0;
  if (as_json) {
    nlohmann::json j = {{"model", source}, {"device", device_flag}, {"batch", shape.batch}, {"seq", shape.seq},
                        {"r", qlora.r}, {"total_bytes", plan.total()}};
    for (size_t c = 0; c < plan.bytes.size(); ++c) j[str(mem_category_name(MemCategory(c)), "_bytes")] = plan.bytes[c];
    if (fit_gb > 0) {
      j["fit_gb"] = fit_gb;
      j["fit_seq"] = fit;
    }
    printf("%s\n", j.dump().c_str());
    return 0;
  }
  printf("%s: %s\n", source.c_str(), config.summary().c_str());
  printf("QLoRA step on %s: batch %lld x seq %lld, %s bases, LoRA r %lld on %s, %s, %s\n", device_flag.c_str(),
         (long long)shape.batch, (long long)shape.seq, qlora.nf4_base ? "NF4" : "dense", (long long)qlora.r,
         targets.c_str(), qlora.checkpointing ? "gradient checkpointing" : "no checkpointing",
         device == Device::CUDA ? "paged AdamW" : "AdamW");
  printf("%s\n", plan.table().c_str());
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
    printf("(the plan counts allocated tensors; the CUDA context, cuBLAS workspace and the caching\n"
           " allocator's rounding come on top: keep ~1-2 GiB spare)\n");
  }
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

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "plan") return cli::run_main([&] { return run_plan(argc - 1, argv + 1); });
  bool list_tensors = false;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") { fputs(kUsage, stdout); return 0; }
    if (a == "--tensors") { list_tensors = true; continue; }
    if (!a.empty() && a[0] == '-') { fprintf(stderr, "error: unknown flag %s\n%s", a.c_str(), kUsage); return 1; }
    if (!path.empty()) { fprintf(stderr, "error: one FILE only (got %s and %s)\n", path.c_str(), a.c_str()); return 1; }
    path = a;
  }
  if (path.empty()) { fputs(kUsage, stderr); return 1; }
  try {
    bool gguf = path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
    if (gguf) inspect_gguf(path, list_tensors);
    else inspect_safetensors(path);
  } catch (const Error& e) {
    fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
