// JSONL lines -> ids and labels, and the token-weighted loss over a file (see evaluate.h).
#include "model/evaluate.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "model/chat_template.h"

namespace nq {

using json = nlohmann::json;

LabeledIds encode_eval_line(const std::string& line, const std::string& where, const Tokenizer& tok,
                            const ModelConfig& config, const ChatFormat* chat) {
  json row;
  try {
    row = json::parse(line);
  } catch (const json::exception&) {
    throw Error(str(where, ": invalid JSON"));
  }
  NQ_CHECK(row.is_object(), where, ": expected a JSON object");
  LabeledIds out;
  if (row.contains("text")) {
    NQ_CHECK(row["text"].is_string(), where, ": \"text\" must be a string");
    if (config.prepends_bos()) out.ids.push_back(config.bos_token_id);
    for (int32_t id : tok.encode(row["text"].get<std::string>())) out.ids.push_back(id);
    out.labels = out.ids;
    return out;
  }
  NQ_CHECK(row.contains("messages"), where, ": expected a \"text\" or \"messages\" field");
  NQ_CHECK(row["messages"].is_array(), where, ": \"messages\" must be a list");
  std::vector<ChatMessage> messages;
  for (const json& m : row["messages"]) {
    NQ_CHECK(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                 m["content"].is_string(),
             where, ": each message must be {\"role\": \"...\", \"content\": \"...\"}");
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  RenderedChat rendered = (chat ? *chat : ChatFormat::for_config(config)).render(tok, messages, false);
  out.ids = rendered.ids;
  for (size_t i = 0; i < rendered.ids.size(); ++i)
    out.labels.push_back(rendered.assistant_mask[i] ? rendered.ids[i] : -100);
  return out;
}

EvalResult evaluate_jsonl(const Decoder& model, const Tokenizer& tok, const std::string& path, int64_t max_length,
                          const ChatFormat* chat) {
  NQ_CHECK(max_length >= 2, "eval: max_length must be >= 2, got ", max_length);
  std::ifstream in(path);
  NQ_CHECK(in.good(), path, ": cannot open");
  NoGrad no_grad;
  double total = 0;  // sum of -log p over counted targets
  EvalResult r;
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    LabeledIds ex = encode_eval_line(line, str(path, ":", line_no), tok, model.config(), chat);
    if (int64_t(ex.ids.size()) > max_length) ex.ids.resize(max_length), ex.labels.resize(max_length);
    const int64_t T = int64_t(ex.ids.size());
    int64_t n = 0;  // targets after the shift: labels[1..T-1]
    for (int64_t t = 1; t < T; ++t) n += ex.labels[t] != -100;
    if (n == 0) continue;
    DecoderBatch batch;
    batch.ids = Tensor::from_ids(ex.ids, {1, T});
    batch.labels = Tensor::from_ids(ex.labels, {1, T});
    total += double(model.forward_loss(batch).value().to_vector()[0]) * n;  // the loss is the mean over n
    r.tokens += n;
    r.lines += 1;
  }
  NQ_CHECK(r.tokens > 0, path, ": no tokens to evaluate");
  r.loss = total / r.tokens;
  return r;
}

}  // namespace nq
