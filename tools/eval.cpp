// ./eval: mean next-token cross-entropy of a model over a JSONL file, the
// number every fine-tuning run wants before and after training. The line
// formats and the token-weighted mean are described in model/evaluate.h.
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "lora/adapter.h"
#include "model/evaluate.h"
#include "tools/cli.h"

namespace {

using namespace nq;

const char* kHelp =
    "usage: ./eval --model DIR --data FILE.jsonl [--adapter DIR] [--nf4] [--max-length N]\n"
    "  --model DIR       HF model folder: config.json, *.safetensors, tokenizer.json\n"
    "  --adapter DIR     apply a PEFT LoRA adapter (e.g. the one ./train wrote)\n"
    "  --nf4             quantize the base projections to NF4 first (what QLoRA trained against)\n"
    "  --data FILE       JSONL, one {\"text\": ...} or {\"messages\": [{\"role\", \"content\"}, ...]} per line\n"
    "                    (messages: only the assistant answers are counted)\n"
    "  --max-length N    truncate each line to N tokens (default 2048)\n"
    "Prints {\"loss\": mean next-token cross-entropy, \"tokens\": counted tokens} on stdout.\n";

int run(int argc, char** argv) {
  std::string model_dir, data, adapter;
  bool nf4 = false;
  int64_t max_length = 2048;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return std::fputs(kHelp, stdout), 0;
    if (a == "--model") model_dir = cli::value(argc, argv, i);
    else if (a == "--data") data = cli::value(argc, argv, i);
    else if (a == "--adapter") adapter = cli::value(argc, argv, i);
    else if (a == "--nf4") nf4 = true;
    else if (a == "--max-length") max_length = cli::to_int(a, cli::value(argc, argv, i));
    else throw Error(str("unknown flag '", a, "' (see --help)"));
  }
  NQ_CHECK(!model_dir.empty(), "--model DIR is required (see --help)");
  NQ_CHECK(!data.empty(), "--data FILE is required (see --help)");
  NQ_CHECK(max_length >= 2, "--max-length must be >= 2");

  Decoder model = Decoder::load(model_dir);
  if (nf4)
    for (Linear* l : model.linears()) l->quantize_nf4();
  if (!adapter.empty()) load_peft_adapter(adapter, model);
  Tokenizer tok = Tokenizer::from_file(model_dir + "/tokenizer.json");
  auto start = std::chrono::steady_clock::now();
  EvalResult r = evaluate_jsonl(model, tok, data, max_length);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "%lld lines, %lld tokens, %.1f tok/s\n", (long long)r.lines, (long long)r.tokens,
               r.tokens / seconds);
  std::printf("%s\n", nlohmann::json{{"loss", r.loss}, {"tokens", r.tokens}}.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return nq::cli::run_main([&] { return run(argc, argv); }); }
