// Loss masks against TRL itself: tests/fixtures/trl_masks/cases.json
// (tools/ref/make_trl_mask_fixtures.py) holds what TRL 1.16's SFTTrainer trains on
// (its prepared input_ids and labels) for each data format, chat template and loss
// setting, and for the tiny model the token-weighted loss over all the samples.
//
//   - --loss-on trl (EncodeOptions::trl_targets) reproduces TRL's defaults exactly:
//     the same ids, the same targets, the same loss (within 1e-5);
//     with --train-on-prompt, TRL's completion_only_loss=False.
//   - the statements of docs/data.md about what TRL does otherwise
//     (assistant_only_loss), each checked on TRL's own output here.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/chat_format.h"
#include "model/decoder.h"
#include "model/load_model.h"
#include "model/tokenizer.h"
#include "tests/temp_dir.h"
#include "training/data.h"
#include "training/encode.h"
#include "training/evaluate.h"
#include "training/train_config.h"

using namespace nq;

namespace {

const std::string kDir = "tests/fixtures/trl_masks/";

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  REQUIRE(f.good());
  return nlohmann::json::parse(f);
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  REQUIRE(f.good());
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

const nlohmann::json& cases() {
  static const nlohmann::json c = read_json(kDir + "cases.json");
  return c["cases"];
}

const nlohmann::json& find_case(const std::string& name) {
  for (const nlohmann::json& c : cases())
    if (c["name"] == name) return c;
  FAIL("no case ", name, " in cases.json");
  static nlohmann::json none;
  return none;
}

struct Setup {
  Tokenizer tok;
  ChatFormat chat;
};

// The tokenizer and chat format a case names.
const Tokenizer& qwen3_tokenizer() {  // loaded once: the tests read it for many cases
  static const Tokenizer tok = Tokenizer::from_file("build/fixtures/qwen3-tokenizer/tokenizer.json");
  return tok;
}

Setup setup_for(const nlohmann::json& c) {
  if (c["tokenizer"] == "tiny") {
    static const LoadedModel m = load_model("tests/fixtures/trajectory/model");
    return {*m.tokenizer, *m.chat};
  }
  Setup s{qwen3_tokenizer(), {}};
  const std::string jinja =
      c["template"] == "trl-qwen3"
          ? read_text(kDir + "templates/qwen3_trl.jinja")
          : read_json("build/fixtures/qwen3-tokenizer/tokenizer_config.json")["chat_template"].get<std::string>();
  s.chat = ChatFormat::from_template(jinja, c["template"].get<std::string>());
  return s;
}

std::string joined(const std::vector<int32_t>& v) {
  std::string s;
  for (int32_t x : v) s += std::to_string(x) + " ";
  return s;
}

// TRL's targets of a sample: labels[t] != -100 for t >= 1 (token 0 is never predicted).
int64_t trl_targets(const nlohmann::json& sample) {
  int64_t n = 0;
  for (size_t t = 1; t < sample["labels"].size(); ++t) n += sample["labels"][t] != -100;
  return n;
}

Dataset encode_case(const nlohmann::json& c, const Setup& s, bool trl, bool train_on_prompt) {
  EncodeOptions enc;
  enc.max_length = 1024;
  enc.chat = s.chat;
  enc.trl_targets = trl;
  enc.train_on_prompt = train_on_prompt;
  enc.prompt_completion_chat = c["conversational"].get<bool>();
  return load_dataset(kDir + "data/" + c["data"].get<std::string>(), s.tok, enc, BadLinePolicy::Error);
}

}  // namespace

TEST_CASE("trl masks: --loss-on trl gives TRL's ids and targets for every format and template (its defaults)") {
  int compared = 0;
  for (const nlohmann::json& c : cases()) {
    const std::string setting = c["setting"];
    if (setting == "assistant_only_loss") continue;  // not reproduced: see the statements below
    INFO(c["name"].get<std::string>());
    REQUIRE_FALSE(c.contains("error"));
    const Setup s = setup_for(c);
    const Dataset d = encode_case(c, s, /*trl=*/true, /*train_on_prompt=*/setting == "completion_only_loss=False");
    REQUIRE(d.samples.size() == c["samples"].size());
    int64_t ours = 0, theirs = 0;
    for (size_t i = 0; i < d.samples.size(); ++i) {
      const nlohmann::json& want = c["samples"][i];
      INFO("sample ", i, ": ", s.tok.decode(d.samples[i].ids));
      INFO("ours:   ", joined(d.samples[i].ids));
      INFO("TRL's:  ", joined(want["input_ids"].get<std::vector<int32_t>>()));
      CHECK(d.samples[i].ids == want["input_ids"].get<std::vector<int32_t>>());
      std::vector<int> got_mask, want_mask;  // from token 1 on
      for (size_t t = 1; t < d.samples[i].ids.size(); ++t) got_mask.push_back(d.samples[i].trained[t]);
      for (size_t t = 1; t < want["labels"].size(); ++t) want_mask.push_back(want["labels"][t] != -100);
      CHECK(got_mask == want_mask);
      for (int m : got_mask) ours += m;
      theirs += trl_targets(want);
    }
    CHECK(ours == theirs);
    ++compared;
  }
  CHECK(compared == 18);  // 3 templates x (messages, 2 prompt-completion kinds x 2 settings, text)
}

TEST_CASE("trl masks: --loss-on trl's token-weighted loss is TRL's (tiny model, dense fp32, within 1e-5)") {
  LoadedModel loaded = load_model("tests/fixtures/trajectory/model");
  Decoder model = build_decoder(loaded, DecoderOptions{}, /*nf4_base=*/false);
  int compared = 0;
  for (const nlohmann::json& c : cases()) {
    if (c["tokenizer"] != "tiny" || !c.contains("loss")) continue;
    INFO(c["name"].get<std::string>());
    const Setup s = setup_for(c);
    const Dataset d = encode_case(c, s, true, c["setting"] == "completion_only_loss=False");
    std::vector<int64_t> all(d.samples.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(i);
    LoaderOptions lopt;
    lopt.batch_size = 3;  // any: the loss is token-weighted over the whole set
    lopt.max_length = 1024;
    lopt.pad_id = s.tok.pad_id;
    const EvalLoss e = evaluate_samples(model, d.samples, all, lopt);
    INFO("loss ", e.loss, " vs TRL's ", c["loss"].get<double>());
    CHECK(e.targets == c["targets"].get<int64_t>());
    CHECK(std::fabs(e.loss - c["loss"].get<double>()) <= 1e-5 * std::fabs(c["loss"].get<double>()));
    ++compared;
  }
  CHECK(compared == 6);  // messages, prompt-completion (plain, chat) x (default, completion_only_loss=False), text
}

// ---- what TRL does otherwise: the statements of docs/data.md, on TRL's own output

TEST_CASE("trl masks: TRL 1.16 refuses assistant_only_loss with the repository's Qwen3 template and SmolLM2's") {
  for (const char* name : {"qwen3/tokenizer/messages/assistant_only_loss", "tiny/tokenizer/messages/assistant_only_loss",
                           "qwen3/tokenizer/prompt-completion (conversational)/assistant_only_loss"}) {
    INFO(name);
    const nlohmann::json& c = find_case(name);
    REQUIRE(c.contains("error"));
    CHECK(c["error"].get<std::string>().find("not training-compatible") != std::string::npos);
  }
  // and on non-conversational data
  CHECK(find_case("qwen3/tokenizer/prompt-completion/assistant_only_loss")["error"].get<std::string>().find(
            "the dataset is not conversational") != std::string::npos);
}

TEST_CASE("trl masks: TRL's assistant_only_loss on its own Qwen3 template vs ./train's answers") {
  // With trl/chat_templates/qwen3.jinja TRL swaps in its training template: every
  // assistant turn carries a think block (the empty one, or its reasoning, earlier
  // turns' reasoning kept), all of it trained, and the "\n" after each <|im_end|>
  // is trained too. ./train's answers on the same conversations: the template's
  // rendering (earlier reasoning dropped, only the last turn's empty block) and
  // the answer through <|im_end|>.
  const nlohmann::json& c = find_case("qwen3/trl-qwen3/messages/assistant_only_loss");
  REQUIRE_FALSE(c.contains("error"));
  const Setup s = setup_for(c);
  const int32_t think = s.tok.token_id("<think>"), im_end = s.tok.token_id("<|im_end|>");
  const std::vector<int32_t> newline = s.tok.encode("\n");
  REQUIRE(newline.size() == 1);
  const Dataset ours = encode_case(c, s, /*trl=*/false, /*train_on_prompt=*/false);
  std::ifstream data(kDir + "data/messages.jsonl");
  int64_t trl_total = 0, ours_total = 0;
  for (size_t i = 0; i < c["samples"].size(); ++i) {
    const nlohmann::json& sample = c["samples"][i];
    std::string line;
    std::getline(data, line);
    int64_t assistant_turns = 0;
    const nlohmann::json conversation = nlohmann::json::parse(line);
    for (const nlohmann::json& m : conversation["messages"]) assistant_turns += m["role"] == "assistant";
    const std::vector<int32_t> ids = sample["input_ids"];
    const std::vector<int32_t> labels = sample["labels"];
    int64_t trained_think = 0, trained_end = 0, trained_end_newline = 0;
    for (size_t t = 0; t < ids.size(); ++t) {
      if (labels[t] == -100) continue;
      trained_think += ids[t] == think;
      if (ids[t] == im_end) {
        ++trained_end;
        trained_end_newline += t + 1 < ids.size() && ids[t + 1] == newline[0] && labels[t + 1] != -100;
      }
    }
    INFO("sample ", i);
    CHECK(trained_think == assistant_turns);        // a think block on every assistant turn, trained
    CHECK(trained_end == assistant_turns);
    CHECK(trained_end_newline == assistant_turns);  // and the "\n" after each <|im_end|>
    trl_total += trl_targets(sample);
    for (size_t t = 1; t < ours.samples[i].trained.size(); ++t) ours_total += ours.samples[i].trained[t];
  }
  // The numbers docs/data.md quotes for this file.
  CHECK(trl_total == 65);
  CHECK(ours_total == 48);
}

TEST_CASE("trl masks: TRL's defaults train every token of a chat; the Qwen3 answer's empty think block and the \\n") {
  // messages: labels = input_ids (assistant_only_loss=False), the seed's setting.
  for (const char* name : {"qwen3/tokenizer/messages/default", "tiny/tokenizer/messages/default"}) {
    INFO(name);
    for (const nlohmann::json& sample : find_case(name)["samples"])
      CHECK(sample["labels"].get<std::vector<int32_t>>() == sample["input_ids"].get<std::vector<int32_t>>());
  }
  // conversational prompt-completion: the completion after the generation prompt
  // "<|im_start|>assistant\n", so the empty think block and the final "\n" are trained.
  const nlohmann::json& c = find_case("qwen3/tokenizer/prompt-completion (conversational)/default");
  const Setup s = setup_for(c);
  const nlohmann::json& first = c["samples"][0];
  std::vector<int32_t> trained;
  for (size_t t = 0; t < first["labels"].size(); ++t)
    if (first["labels"][t] != -100) trained.push_back(first["input_ids"][t]);
  CHECK(s.tok.decode(trained) == "<think>\n\n</think>\n\n Hi!<|im_end|>\n");
  // plain prompt-completion: the split where the joint tokens diverge ("Hello wor" + "ld")
  const nlohmann::json& plain = find_case("qwen3/tokenizer/prompt-completion/default")["samples"][2];
  trained.clear();
  for (size_t t = 0; t < plain["labels"].size(); ++t)
    if (plain["labels"][t] != -100) trained.push_back(plain["input_ids"][t]);
  const std::string completion = s.tok.decode(trained);
  CHECK(completion != "ld, friend.<|im_end|>");  // not the completion as written: it starts inside "world"
  CHECK(completion.find(", friend.<|im_end|>") != std::string::npos);
}

// ---- Qwen3's thinking mode against apply_chat_template (tests/fixtures/thinking,
// tools/ref/make_thinking_fixtures.py)

TEST_CASE("thinking: Qwen3 chats render as apply_chat_template renders them, enable_thinking true and false") {
  const nlohmann::json fixture = read_json("tests/fixtures/thinking/renders.json");
  const Tokenizer& tok = qwen3_tokenizer();
  const ChatFormat chat = ChatFormat::from_template(
      read_json("build/fixtures/qwen3-tokenizer/tokenizer_config.json")["chat_template"].get<std::string>(), "qwen3");
  REQUIRE(chat.kind == ChatTemplateKind::Qwen3);
  const std::string empty_think = "<think>\n\n</think>\n\n";
  int compared = 0;
  for (const nlohmann::json& r : fixture["renders"]) {
    std::vector<ChatMessage> messages;
    for (const nlohmann::json& m : r["messages"]) messages.push_back({m["role"], m["content"]});
    const bool generation = r["add_generation_prompt"], thinking = r["enable_thinking"];
    const std::string want = r["text"];
    INFO("add_generation_prompt ", generation, ", enable_thinking ", thinking, "\n", want);
    const std::string ours = chat.render(tok, messages, generation).text;
    // A conversation renders the same either way (enable_thinking only changes the
    // generation prompt): earlier turns' reasoning dropped, the last answer with its
    // reasoning or the empty block. The generation prompt is the non-thinking one
    // (enable_thinking=False: the empty block pre-filled); with thinking on the
    // template stops after "<|im_start|>assistant\n".
    if (generation && thinking) CHECK(ours == want + empty_think);
    else CHECK(ours == want);
    ++compared;
  }
  CHECK(compared == 16);
  // A reasoning_content field renders as the same reasoning written into the content.
  for (const nlohmann::json& p : fixture["reasoning_content"])
    CHECK(p["text_with_field"] == p["text_in_content"]);
}

TEST_CASE("thinking: a reasoning_content field is refused with the way to write it (null is absent, as in the template)") {
  TempDir tmp;
  write_bytes(tmp / "r.jsonl",
              R"({"messages": [{"role": "user", "content": "5-3?"}, {"role": "assistant", "content": "2.", "reasoning_content": "Five minus three."}]})"
              "\n");
  CHECK(thrown_message([&] { parse_jsonl_file(tmp / "r.jsonl", BadLinePolicy::Error); }) ==
        tmp / "r.jsonl" + ":1: messages[1].reasoning_content is not read: write the reasoning as "
                          "\"<think>\\n...\\n</think>\\n\\n\" at the start of the content (Qwen3's template renders both alike)");
  write_bytes(tmp / "n.jsonl",
              R"({"messages": [{"role": "user", "content": "5-3?"}, {"role": "assistant", "content": "2.", "reasoning_content": null}]})"
              "\n");
  CHECK(parse_jsonl_file(tmp / "n.jsonl", BadLinePolicy::Error).examples.size() == 1);
}
