// ./eval: mean next-token cross-entropy of a model over a JSONL file, the
// number every fine-tuning run wants before and after training. The line
// formats and the token-weighted mean are described in model/evaluate.h. The
// model is a HF directory or a .gguf file (model/load_model.h), its projections
// NF4 by default (the base QLoRA trains on), optionally with a PEFT adapter.
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "lora/adapter.h"
#include "model/evaluate.h"
#include "model/load_model.h"
#include "tools/cli.h"

namespace {

using namespace nq;

const char* kHelp =
    "usage: ./eval --model PATH --data FILE.jsonl [--max-length N] [--adapter DIR] [--no-quant]\n"
    "  --model PATH      HF model folder (config.json, *.safetensors, tokenizer.json) or a .gguf file\n"
    "  --data FILE       JSONL, one {\"text\": ...} or {\"messages\": [{\"role\", \"content\"}, ...]} per line\n"
    "                    (messages: only the assistant answers are counted)\n"
    "  --max-length N    truncate each line to N tokens (default 2048)\n"
    "  --adapter DIR     apply a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)\n"
    "  --no-quant        keep the base weights dense fp32 (default: NF4 4-bit, as QLoRA trains them)\n"
    "Prints {\"loss\": mean next-token cross-entropy, \"tokens\": counted tokens} on stdout.\n";

int run(int argc, char** argv) {
  std::string model_path, data, adapter;
  bool no_quant = false;
  int64_t max_length = 2048;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return std::fputs(kHelp, stdout), 0;
    if (a == "--model") model_path = cli::value(argc, argv, i);
    else if (a == "--adapter") adapter = cli::value(argc, argv, i);
    else if (a == "--no-quant") no_quant = true;
    else if (a == "--data") data = cli::value(argc, argv, i);
    else if (a == "--max-length") max_length = cli::to_int(a, cli::value(argc, argv, i));
    else throw Error(str("unknown flag '", a, "' (see --help)"));
  }
  NQ_CHECK(!model_path.empty(), "--model PATH is required (see --help)");
  NQ_CHECK(!data.empty(), "--data FILE is required (see --help)");
  NQ_CHECK(max_length >= 2, "--max-length must be >= 2");

  LoadedModel loaded = load_model(model_path);
  NQ_CHECK(loaded.tokenizer.has_value(), model_path, ": no tokenizer (tokenizer.json / GGUF vocabulary)");
  Decoder model = build_decoder(loaded, {}, /*nf4_base=*/!no_quant);  // a 4-bit checkpoint's NF4 as stored
  if (!adapter.empty()) load_peft_adapter(adapter, model);
  const Tokenizer& tok = *loaded.tokenizer;
  auto start = std::chrono::steady_clock::now();
  const ChatFormat* chat = loaded.chat ? &*loaded.chat : nullptr;  // messages lines need a recognised template
  EvalResult r = evaluate_jsonl(model, tok, data, max_length, chat);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "%lld lines, %lld tokens, %.1f tok/s\n", (long long)r.lines, (long long)r.tokens,
               r.tokens / seconds);
  std::printf("%s\n", nlohmann::json{{"loss", r.loss}, {"tokens", r.tokens}}.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  nq::cli::prefer_passive_omp_wait(argv);
  return nq::cli::run_main([&] { return run(argc, argv); });
}
