// ./generate: text generation from a Hugging Face model directory or a GGUF
// file with a KV cache (model/generate.h), streaming tokens as they are chosen.
// With --chat the prompt is rendered with the model's chat template (from the
// GGUF / tokenizer_config.json; Qwen3's for qwen3, ChatML otherwise); --chat
// without --prompt is a chat on stdin that keeps the conversation (/reset, /quit).
// The base projections run in NF4 (as QLoRA trains them) unless --no-quant;
// --adapter applies a PEFT LoRA adapter. Prints prefill and decode speed
// (tokens/s) to stderr. Flags: one table (generate_flags, training/flags.h).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <unistd.h>

#include "model/adapters.h"
#include "model/chat_template.h"
#include "model/decoder.h"
#include "model/device.h"
#include "model/generate.h"
#include "model/load_model.h"
#include "model/tokenizer.h"
#include "tools/cli.h"
#include "training/flags.h"

namespace {

using namespace nq;

struct Flags {
  std::string model, preset, prompt, prompt_ids, system, adapter, rope_scaling;
  bool chat = false, print_ids = false, no_quant = false, greedy = false;
  bool has_prompt = false;  // --prompt given (an empty prompt is one)
  std::string device = kDefaultDevice;
  std::string dtype = "auto";  // decoding is f32 on the CPU whatever it says (a note when it asks for 16 bits)
  GenerateOptions gen;      // defaults: model/generate.h's
};

// The flags, each declared once (training/flags.h): parsing, errors and --help.
FlagTable generate_flags(Flags& f) {
  FlagTable t(
      "usage: ./generate --model PATH [--prompt TEXT | --prompt-ids \"1 2 3\"] [--chat] [--system TEXT]\n"
      "                  [--adapter DIR] [--no-quant] [--max-new-tokens N] [--greedy | --temperature T --top-p P --top-k K --seed S] [--print-ids]\n");
  t.add("model", &f.model,
        "HF model folder (config.json, *.safetensors, tokenizer.json for text)\n"
        "or a llama.cpp .gguf file (llama / qwen3 / qwen3moe; e.g. `make model` for SmolLM2)",
        "PATH");
  t.add("preset", &f.preset,
        "instead of --model: random weights of qwen3-0.6b | qwen3-1.7b | qwen3-4b | qwen3-8b\n"
        "(speed measurements; needs --prompt-ids)",
        "NAME");
  t.add("prompt", &f.prompt,
        "the prompt text (BOS first only when the model wants it: llama configs, GGUF add_bos_token)", "TEXT");
  t.add("prompt-ids", &f.prompt_ids, "the prompt as token ids, space separated", "IDS");
  t.add("chat", &f.chat,
        "render the prompt as a user message with the chat template;\n"
        "without --prompt: chat, one user message per stdin line (the conversation is\n"
        "kept; /reset forgets it, /quit or Ctrl-D ends; piped stdin is echoed as a transcript)");
  t.add("system", &f.system, "system message for --chat", "TEXT");
  t.add("adapter", &f.adapter, "apply a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)", "DIR");
  t.add("no-quant", &f.no_quant, "keep the base weights dense fp32 (default: NF4 4-bit, as QLoRA trains them)");
  add_rope_scaling_flag(t, &f.rope_scaling);
  add_device_flag(t, &f.device);
  add_dtype_flag(t, &f.dtype);
  t.add("max-new-tokens", &f.gen.max_new_tokens, "tokens to generate at most; stops early at eos / <|im_end|>");
  t.add("greedy", &f.greedy, "argmax decoding (the default)");
  t.add("temperature", &f.gen.sampling.temperature, "sample from softmax(logits / T) (turns sampling on)", "T");
  t.add("top-k", &f.gen.sampling.top_k, "sample among the K most likely tokens (0 = all)", "K");
  t.add("top-p", &f.gen.sampling.top_p, "then among the smallest set of probability >= P", "P");
  t.add("seed", &f.gen.sampling.seed, "sampling seed", "S");
  t.add("print-ids", &f.print_ids, "print the generated ids on a last line");
  return t;
}

// false: --help was printed.
bool parse(int argc, char** argv, Flags* out) {
  Flags& f = *out;
  FlagTable t = generate_flags(f);
  if (!t.parse(argc, argv)) return false;
  f.has_prompt = t.given("prompt");
  const bool sampling_flag = t.given("temperature") || t.given("top-p") || t.given("top-k");
  NQ_CHECK(f.model.empty() != f.preset.empty(), "give exactly one of --model DIR or --preset NAME (see --help)");
  NQ_CHECK(!(f.greedy && sampling_flag), "--greedy cannot be combined with --temperature / --top-p / --top-k");
  NQ_CHECK(!(f.has_prompt && !f.prompt_ids.empty()), "give --prompt or --prompt-ids, not both");
  NQ_CHECK(f.gen.max_new_tokens > 0, "--max-new-tokens must be > 0");
  NQ_CHECK(f.gen.sampling.temperature > 0, "--temperature must be > 0");
  NQ_CHECK(f.gen.sampling.top_p > 0 && f.gen.sampling.top_p <= 1, "--top-p must be in (0, 1]");
  NQ_CHECK(f.gen.sampling.top_k >= 0, "--top-k must be >= 0");
  f.gen.sampling.greedy = !sampling_flag;
  return true;
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::istringstream in(text);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) ids.push_back(int32_t(parse_int_flag("--prompt-ids", word)));
  NQ_CHECK(!ids.empty(), "--prompt-ids: no ids given");
  return ids;
}

// Generates after `prompt`, streaming text (or ids without a tokenizer); returns the new ids.
std::vector<int32_t> run_generation(const Decoder& model, const Tokenizer* tok, const std::vector<int32_t>& prompt,
                                    const GenerateOptions& gen, KVCache* cache = nullptr) {
  using clock = std::chrono::steady_clock;
  auto start = clock::now(), first = start, last = start;
  size_t n = 0;
  // The prompt tokens already in a kept cache are not run again (generate.h).
  const size_t reused = cache && !prompt.empty() ? size_t(reusable_prefix(*cache, prompt)) : 0;
  std::vector<int32_t> out = generate(model, prompt, gen, [&](int32_t id) {
    last = clock::now();
    if (n++ == 0) first = last;
    if (tok) std::fputs(tok->decode_token(id).c_str(), stdout);
    else std::printf("%d ", id);
    std::fflush(stdout);
  }, cache);
  std::printf("\n");
  std::fflush(stdout);  // the reply's end before the speed line on stderr
  auto seconds = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };
  if (n > 0) {
    const size_t run = prompt.size() - reused;
    std::fprintf(stderr, "[prefill %zu tokens: %.1f tok/s", run, run / seconds(first - start));
    if (reused > 0) std::fprintf(stderr, " (%zu earlier tokens from the KV cache)", reused);
    if (n > 1) std::fprintf(stderr, ", decode %zu tokens: %.2f tok/s", n - 1, (n - 1) / seconds(last - first));
    std::fprintf(stderr, "]\n");
  }
  return out;
}

void print_ids(const std::vector<int32_t>& ids) {
  for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
  std::printf("\n");
}

// The chat loop: one user message per stdin line, the whole conversation re-rendered
// with the chat template each turn; the KV cache is kept across turns, so only the
// new turn's tokens are run (generate.h). A terminal gets a "> " prompt on stderr;
// piped input is echoed to stdout so the output reads as a transcript.
void chat_loop(const Decoder& model, const Tokenizer& tok, const ChatFormat& format, const std::string& system,
               const GenerateOptions& gen) {
  const bool interactive = isatty(STDIN_FILENO);
  std::vector<ChatMessage> history;
  KVCache cache(model.config(), 256);
  auto reset = [&] {
    history.clear();
    cache.truncate(0);
    if (!system.empty()) history.push_back({"system", system});
  };
  reset();
  if (interactive) std::fprintf(stderr, "chat: one message per line; /reset forgets the conversation, /quit ends\n");
  std::string line;
  while (true) {
    if (interactive) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    if (!interactive) std::printf("> %s\n", line.c_str());
    if (line == "/quit") break;
    if (line == "/reset") {
      reset();
      std::printf("[conversation reset]\n");
      continue;
    }
    if (line.empty()) continue;
    history.push_back({"user", line});
    std::vector<int32_t> prompt = format.render(tok, history, true).ids;
    NQ_CHECK(int64_t(prompt.size()) + gen.max_new_tokens <= model.config().max_position_embeddings,
             "the conversation (", prompt.size(), " tokens) + --max-new-tokens exceeds the model's context of ",
             model.config().max_position_embeddings, " tokens; /reset it");
    std::vector<int32_t> reply = run_generation(model, &tok, prompt, gen, &cache);
    history.push_back({"assistant", tok.decode(reply)});
  }
}

int run(int argc, char** argv) {
  Flags f;
  if (!parse(argc, argv, &f)) return 0;  // --help
  // Decoding runs on the CPU (model/generate.h: the KV cache and its attention are
  // host code), so the device the flag names must be one generation can use:
  // auto picks the CPU here even with a GPU visible, and cuda is refused up front.
  const Device device = select_device(f.device, "--device");
  NQ_CHECK(device == Device::CPU || f.device == "auto", "--device cuda: ./generate decodes on the CPU only ",
           "(model/generate.h: the KV cache is host memory); use --device cpu");
  std::fprintf(stderr, "device: %s%s\n", device_summary(Device::CPU).c_str(),
               device == Device::CUDA ? " (--device auto: decoding runs on the CPU only)" : "");
  std::string dtype_note;
  select_compute_dtype(f.dtype, Device::CPU, "--dtype", &dtype_note);  // checks the name; f32 on the CPU
  if (!dtype_note.empty()) std::fprintf(stderr, "note: %s\n", dtype_note.c_str());

  std::unique_ptr<Decoder> model;
  std::optional<LoadedModel> loaded;
  if (!f.preset.empty()) {
    ModelConfig config = ModelConfig::preset(f.preset);
    config.apply_rope_scaling_flag(f.rope_scaling);
    model = std::make_unique<Decoder>(config, random_weights(config, 0));
  } else {
    loaded = load_model(f.model, WeightLoad::qlora(!f.no_quant));
    loaded->config.apply_rope_scaling_flag(f.rope_scaling);
    model = std::make_unique<Decoder>(build_decoder(*loaded, {}, /*nf4_base=*/!f.no_quant));
  }
  const ModelConfig& config = model->config();
  std::fprintf(stderr, "%s\n", config.summary().c_str());
  if (!f.no_quant) {
    for (Linear* linear : model->linears()) linear->quantize_nf4();  // no-op where already NF4
    std::fprintf(stderr, "base projections quantized to NF4 (--no-quant keeps them fp32)\n");
  }
  if (!f.adapter.empty()) {
    AdapterConfig adapter = load_peft_adapter(f.adapter, *model);
    std::fprintf(stderr, "adapter %s: r %lld, alpha %g\n", f.adapter.c_str(), (long long)adapter.lora.r,
                 double(adapter.lora.alpha));
  }

  const Tokenizer* tok = loaded && loaded->tokenizer ? &*loaded->tokenizer : nullptr;
  NQ_CHECK(tok || !f.prompt_ids.empty(), (f.model.empty() ? std::string("--preset") : f.model),
           ": no tokenizer (tokenizer.json / GGUF vocabulary); give the prompt with --prompt-ids");

  // Stop at the config's eos ids and the tokenizer's end-of-turn tokens.
  GenerateOptions gen = f.gen;
  gen.stop_ids = config.eos_token_ids;
  if (tok) {
    for (int32_t id : {tok->eos_id, tok->token_id("<|im_end|>"), tok->token_id("<|endoftext|>")})
      if (id >= 0) gen.stop_ids.push_back(id);
  }

  if (f.chat && !f.has_prompt && f.prompt_ids.empty()) {
    NQ_CHECK(tok, f.model, ": --chat needs a tokenizer");
    chat_loop(*model, *tok, loaded->chat_format(), f.system, gen);
    return 0;
  }

  std::vector<int32_t> prompt;
  if (!f.prompt_ids.empty()) {
    prompt = parse_ids(f.prompt_ids);
  } else if (f.chat) {
    std::vector<ChatMessage> messages;
    if (!f.system.empty()) messages.push_back({"system", f.system});
    messages.push_back({"user", f.prompt});
    prompt = loaded->chat_format().render(*tok, messages, true).ids;
  } else {
    NQ_CHECK(f.has_prompt, "give --prompt TEXT, --prompt-ids IDS or --chat (see --help)");
    if (config.prepends_bos()) prompt.push_back(config.bos_token_id);
    for (int32_t id : tok->encode(f.prompt)) prompt.push_back(id);
  }
  std::vector<int32_t> out = run_generation(*model, tok, prompt, gen);
  if (f.print_ids) print_ids(out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  nq::cli::let_idle_threads_sleep(argv);
  return nq::cli::run_main([&] { return run(argc, argv); });
}
