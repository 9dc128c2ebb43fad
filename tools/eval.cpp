// ./eval: mean next-token cross-entropy of a model over a JSONL file, the
// number every fine-tuning run wants before and after training.
//   {"text": "..."}          every token after the first is counted
//   {"messages": [...]}      rendered with the chat template; only the assistant
//                            answers (and their <|im_end|>) are counted
// Prints {"loss": L, "tokens": N} where L = sum of -log p(token) / N over the N
// counted tokens of all lines (not a mean of per-line means).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "autograd/var.h"
#include "model/chat_template.h"
#include "model/decoder.h"
#include "model/tokenizer.h"
#include "tools/cli.h"

namespace {

using namespace nq;
using json = nlohmann::json;

const char* kHelp =
    "usage: ./eval --model DIR --data FILE.jsonl [--max-length N]\n"
    "  --model DIR       HF model folder: config.json, *.safetensors, tokenizer.json\n"
    "  --data FILE       JSONL, one {\"text\": ...} or {\"messages\": [{\"role\", \"content\"}, ...]} per line\n"
    "  --max-length N    truncate each line to N tokens (default 2048)\n"
    "Prints {\"loss\": mean next-token cross-entropy, \"tokens\": counted tokens} on stdout.\n";

struct Example {
  std::vector<int32_t> ids, labels;  // labels: HF convention (the token itself, or -100)
};

// One JSONL line -> ids and labels; errors name FILE:LINE.
Example encode_line(const std::string& line, const std::string& where, const Tokenizer& tok, const ModelConfig& config) {
  json row;
  try {
    row = json::parse(line);
  } catch (const json::exception&) {
    throw Error(str(where, ": invalid JSON"));
  }
  NQ_CHECK(row.is_object(), where, ": expected a JSON object");
  Example ex;
  if (row.contains("text")) {
    NQ_CHECK(row["text"].is_string(), where, ": \"text\" must be a string");
    if (config.prepends_bos()) ex.ids.push_back(config.bos_token_id);
    for (int32_t id : tok.encode(row["text"].get<std::string>())) ex.ids.push_back(id);
    ex.labels = ex.ids;
  } else if (row.contains("messages")) {
    NQ_CHECK(row["messages"].is_array(), where, ": \"messages\" must be a list");
    std::vector<ChatMessage> messages;
    for (const json& m : row["messages"]) {
      NQ_CHECK(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                   m["content"].is_string(),
               where, ": each message must be {\"role\": \"...\", \"content\": \"...\"}");
      messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    const auto kind = config.model_type == "qwen3" ? ChatTemplateKind::Qwen3 : ChatTemplateKind::ChatML;
    RenderedChat chat = render_chat(tok, messages, kind, false);
    ex.ids = chat.ids;
    for (size_t i = 0; i < chat.ids.size(); ++i) ex.labels.push_back(chat.assistant_mask[i] ? chat.ids[i] : -100);
  } else {
    throw Error(str(where, ": expected a \"text\" or \"messages\" field"));
  }
  return ex;
}

int run(int argc, char** argv) {
  std::string model_dir, data;
  int64_t max_length = 2048;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return std::fputs(kHelp, stdout), 0;
    if (a == "--model") model_dir = cli::value(argc, argv, i);
    else if (a == "--data") data = cli::value(argc, argv, i);
    else if (a == "--max-length") max_length = cli::to_int(a, cli::value(argc, argv, i));
    else throw Error(str("unknown flag '", a, "' (see --help)"));
  }
  NQ_CHECK(!model_dir.empty(), "--model DIR is required (see --help)");
  NQ_CHECK(!data.empty(), "--data FILE is required (see --help)");
  NQ_CHECK(max_length >= 2, "--max-length must be >= 2");

  std::ifstream in(data);
  NQ_CHECK(in.good(), data, ": cannot open");
  Decoder model = Decoder::load(model_dir);
  Tokenizer tok = Tokenizer::from_file(model_dir + "/tokenizer.json");

  NoGrad no_grad;
  auto start = std::chrono::steady_clock::now();
  double total = 0;  // sum of -log p over counted tokens
  int64_t counted = 0, lines = 0, line_no = 0;
  std::string line;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Example ex = encode_line(line, str(data, ":", line_no), tok, model.config());
    if (int64_t(ex.ids.size()) > max_length) ex.ids.resize(max_length), ex.labels.resize(max_length);
    const int64_t T = int64_t(ex.ids.size());
    int64_t n = 0;  // targets after the shift: labels[1..T-1]
    for (int64_t t = 1; t < T; ++t) n += ex.labels[t] != -100;
    if (n == 0) continue;
    DecoderBatch batch;
    batch.ids = Tensor::from_ids(ex.ids, {1, T});
    batch.labels = Tensor::from_ids(ex.labels, {1, T});
    total += double(model.forward_loss(batch).value().to_vector()[0]) * n;
    counted += n;
    ++lines;
  }
  NQ_CHECK(counted > 0, data, ": no tokens to evaluate");
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "%lld lines, %lld tokens, %.1f tok/s\n", (long long)lines, (long long)counted, counted / seconds);
  std::printf("%s\n", json{{"loss", total / counted}, {"tokens", counted}}.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return nq::cli::run_main([&] { return run(argc, argv); }); }
