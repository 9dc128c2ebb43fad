// ./generate: text generation from a Hugging Face model directory with a KV
// cache (model/generate.h), streaming tokens as they are chosen. With --chat the
// prompt is rendered with the model's chat template (Qwen3's for qwen3, ChatML
// otherwise); --chat without --prompt is an interactive chat on stdin.
// Prints prefill and decode speed (tokens/s) to stderr.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "model/chat_template.h"
#include "model/decoder.h"
#include "model/generate.h"
#include "model/tokenizer.h"
#include "lora/adapter.h"
#include "tools/cli.h"

namespace {

using namespace nq;

const char* kHelp =
    "usage: ./generate --model DIR [--prompt TEXT | --prompt-ids \"1 2 3\"] [--chat] [--system TEXT]\n"
    "                  [--max-new-tokens N] [--greedy | --temperature T --top-p P --top-k K --seed S] [--print-ids]\n"
    "  --model DIR          HF model folder: config.json, *.safetensors, tokenizer.json (needed for text)\n"
    "  --preset NAME        instead of --model: random weights of qwen3-0.6b | qwen3-1.7b | qwen3-4b | qwen3-8b\n"
    "                       (speed measurements; needs --prompt-ids)\n"
    "  --adapter DIR        apply a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)\n"
    "  --nf4                quantize the base projections to NF4 (QLoRA's 4-bit base) before generating\n"
    "  --prompt TEXT        the prompt text (no BOS is added for Qwen; Llama gets its BOS)\n"
    "  --prompt-ids IDS     the prompt as token ids, space separated\n"
    "  --chat               render the prompt as a user message with the chat template;\n"
    "                       without --prompt: interactive chat, one user message per stdin line\n"
    "  --system TEXT        system message for --chat\n"
    "  --max-new-tokens N   tokens to generate at most (default 256); stops early at eos / <|im_end|>\n"
    "  --greedy             argmax decoding (the default)\n"
    "  --temperature T      sample from softmax(logits / T) (turns sampling on; default 1)\n"
    "  --top-k K            sample among the K most likely tokens (default 0 = all)\n"
    "  --top-p P            then among the smallest set of probability >= P (default 1)\n"
    "  --seed S             sampling seed (default 0)\n"
    "  --print-ids          print the generated ids on a last line\n";

struct Flags {
  std::string model, preset, adapter, prompt, prompt_ids, system;
  bool has_prompt = false, chat = false, print_ids = false, nf4 = false;
  GenerateOptions gen;
};

Flags parse(int argc, char** argv) {
  Flags f;
  f.gen.max_new_tokens = 256;
  bool greedy_flag = false, sampling_flag = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--model") f.model = cli::value(argc, argv, i);
    else if (a == "--preset") f.preset = cli::value(argc, argv, i);
    else if (a == "--adapter") f.adapter = cli::value(argc, argv, i);
    else if (a == "--nf4") f.nf4 = true;
    else if (a == "--prompt") f.prompt = cli::value(argc, argv, i), f.has_prompt = true;
    else if (a == "--prompt-ids") f.prompt_ids = cli::value(argc, argv, i);
    else if (a == "--system") f.system = cli::value(argc, argv, i);
    else if (a == "--chat") f.chat = true;
    else if (a == "--print-ids") f.print_ids = true;
    else if (a == "--max-new-tokens") f.gen.max_new_tokens = cli::to_int(a, cli::value(argc, argv, i));
    else if (a == "--greedy") greedy_flag = true;
    else if (a == "--temperature") f.gen.sampling.temperature = float(cli::to_float(a, cli::value(argc, argv, i))), sampling_flag = true;
    else if (a == "--top-p") f.gen.sampling.top_p = float(cli::to_float(a, cli::value(argc, argv, i))), sampling_flag = true;
    else if (a == "--top-k") f.gen.sampling.top_k = cli::to_int(a, cli::value(argc, argv, i)), sampling_flag = true;
    else if (a == "--seed") f.gen.sampling.seed = uint64_t(cli::to_int(a, cli::value(argc, argv, i)));
    else throw Error(str("unknown flag '", a, "' (see --help)"));
  }
  NQ_CHECK(f.model.empty() != f.preset.empty(), "give exactly one of --model DIR or --preset NAME (see --help)");
  NQ_CHECK(!(greedy_flag && sampling_flag), "--greedy cannot be combined with --temperature / --top-p / --top-k");
  NQ_CHECK(!(f.has_prompt && !f.prompt_ids.empty()), "give --prompt or --prompt-ids, not both");
  NQ_CHECK(f.gen.max_new_tokens > 0, "--max-new-tokens must be > 0");
  NQ_CHECK(f.gen.sampling.temperature > 0, "--temperature must be > 0");
  NQ_CHECK(f.gen.sampling.top_p > 0 && f.gen.sampling.top_p <= 1, "--top-p must be in (0, 1]");
  NQ_CHECK(f.gen.sampling.top_k >= 0, "--top-k must be >= 0");
  f.gen.sampling.greedy = !sampling_flag;
  return f;
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::istringstream in(text);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) ids.push_back(int32_t(cli::to_int("--prompt-ids", word)));
  NQ_CHECK(!ids.empty(), "--prompt-ids: no ids given");
  return ids;
}

// Generates after `prompt`, streaming text (or ids without a tokenizer); returns the new ids.
std::vector<int32_t> run_generation(const Decoder& model, const Tokenizer* tok, const std::vector<int32_t>& prompt,
                                    const GenerateOptions& gen) {
  using clock = std::chrono::steady_clock;
  auto start = clock::now(), first = start, last = start;
  size_t n = 0;
  std::vector<int32_t> out = generate(model, prompt, gen, [&](int32_t id) {
    last = clock::now();
    if (n++ == 0) first = last;
    if (tok) std::fputs(tok->decode_token(id).c_str(), stdout);
    else std::printf("%d ", id);
    std::fflush(stdout);
  });
  std::printf("\n");
  auto seconds = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };
  if (n > 0) {
    std::fprintf(stderr, "[prefill %zu tokens: %.1f tok/s", prompt.size(), prompt.size() / seconds(first - start));
    if (n > 1) std::fprintf(stderr, ", decode %zu tokens: %.2f tok/s", n - 1, (n - 1) / seconds(last - first));
    std::fprintf(stderr, "]\n");
  }
  return out;
}

void print_ids(const std::vector<int32_t>& ids) {
  for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
  std::printf("\n");
}

int run(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") return std::fputs(kHelp, stdout), 0;
  Flags f = parse(argc, argv);

  std::unique_ptr<Decoder> model;
  if (!f.preset.empty()) {
    ModelConfig config = ModelConfig::preset(f.preset);
    model = std::make_unique<Decoder>(config, random_weights(config, 0));
  } else {
    model = std::make_unique<Decoder>(Decoder::load(f.model));
  }
  if (f.nf4)
    for (Linear* l : model->linears()) l->quantize_nf4();
  if (!f.adapter.empty()) load_peft_adapter(f.adapter, *model);
  const ModelConfig& config = model->config();
  std::fprintf(stderr, "%s\n", config.summary().c_str());

  std::unique_ptr<Tokenizer> tok;
  const std::string tok_path = f.model + "/tokenizer.json";
  if (!f.model.empty() && std::filesystem::exists(tok_path)) tok = std::make_unique<Tokenizer>(Tokenizer::from_file(tok_path));
  NQ_CHECK(tok || !f.prompt_ids.empty(), (f.model.empty() ? std::string("--preset") : tok_path),
           ": no tokenizer; give the prompt with --prompt-ids");

  // Stop at the config's eos ids and the tokenizer's end-of-turn tokens.
  GenerateOptions gen = f.gen;
  gen.stop_ids = config.eos_token_ids;
  if (tok) {
    for (int32_t id : {tok->eos_id, tok->token_id("<|im_end|>"), tok->token_id("<|endoftext|>")})
      if (id >= 0) gen.stop_ids.push_back(id);
  }
  const ChatTemplateKind kind = config.model_type == "qwen3" ? ChatTemplateKind::Qwen3 : ChatTemplateKind::ChatML;
  std::vector<ChatMessage> history;
  if (!f.system.empty()) history.push_back({"system", f.system});

  if (f.chat && !f.has_prompt && f.prompt_ids.empty()) {  // interactive chat
    NQ_CHECK(tok, "--chat needs a tokenizer.json in the model folder");
    std::string line;
    std::fprintf(stderr, "chat: one message per line, Ctrl-D to quit\n> ");
    while (std::getline(std::cin, line)) {
      history.push_back({"user", line});
      RenderedChat chat = render_chat(*tok, history, kind, true);
      std::vector<int32_t> reply = run_generation(*model, tok.get(), chat.ids, gen);
      history.push_back({"assistant", tok->decode(reply)});
      std::fprintf(stderr, "> ");
    }
    return 0;
  }

  std::vector<int32_t> prompt;
  if (!f.prompt_ids.empty()) {
    prompt = parse_ids(f.prompt_ids);
  } else if (f.chat) {
    history.push_back({"user", f.prompt});
    prompt = render_chat(*tok, history, kind, true).ids;
  } else {
    NQ_CHECK(f.has_prompt, "give --prompt TEXT, --prompt-ids IDS or --chat (see --help)");
    if (config.prepends_bos()) prompt.push_back(config.bos_token_id);
    for (int32_t id : tok->encode(f.prompt)) prompt.push_back(id);
  }
  std::vector<int32_t> out = run_generation(*model, tok.get(), prompt, gen);
  if (f.print_ids) print_ids(out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return nq::cli::run_main([&] { return run(argc, argv); }); }
