// Tokenizer and chat templates against HF `tokenizers` / transformers fixtures
// (tools/ref/make_tokenizer_fixtures.py): ids on a 2,500-string corpus with the real
// Qwen3 tokenizer and GPT-2 / Llama-3 style ones, round trips, chat renderings and masks,
// and clear errors on bad input.
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "runtime/error.h"

using namespace nq;
using nlohmann::json;

namespace {

const std::string kQwen3Json = "build/fixtures/qwen3-tokenizer/tokenizer.json";  // unpacked by the Makefile
const std::string kGpt2Json = "tests/fixtures/tokenizer/gpt2/tokenizer.json";
const std::string kLlama3Json = "tests/fixtures/tokenizer/llama3/tokenizer.json";
const std::string kCorpus = "build/fixtures/tokenizer/corpus.jsonl";
const std::string kChats = "tests/fixtures/tokenizer/chats.jsonl";
const std::string kScratch = "build/fixtures/tokenizer/";

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  REQUIRE_MESSAGE(f.good(), "missing fixture " << path << " (run make from the repository root)");
  std::vector<json> rows;
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

const Tokenizer& qwen3() {
  static Tokenizer tok = Tokenizer::from_file(kQwen3Json);
  return tok;
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  REQUIRE_MESSAGE(f.good(), "missing fixture " << path);
  return json::parse(f);
}

// What a GGUF file would hold for this tokenizer.json: tokens by id, merges as "a b",
// token types (3 special added, 4 other added, 1 normal).
Tokenizer from_vocab_of(const std::string& tokenizer_json, const std::string& pre_tokenizer) {
  json j = read_json(tokenizer_json);
  int64_t n = 0;
  for (const auto& [token, id] : j["model"]["vocab"].items()) n = std::max(n, id.get<int64_t>() + 1);
  for (const auto& a : j["added_tokens"]) n = std::max(n, a["id"].get<int64_t>() + 1);
  std::vector<std::string> tokens(size_t(n), "");
  std::vector<int32_t> types(tokens.size(), 1);
  for (const auto& [token, id] : j["model"]["vocab"].items()) tokens[id.get<size_t>()] = token;
  for (const auto& a : j["added_tokens"]) {
    tokens[a["id"].get<size_t>()] = a["content"];
    types[a["id"].get<size_t>()] = a["special"].get<bool>() ? 3 : 4;
  }
  std::vector<std::string> merges;
  for (const auto& m : j["model"]["merges"]) merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
  return Tokenizer::from_vocab(tokens, merges, types, pre_tokenizer);
}

std::string write_file(const std::string& name, const std::string& content) {
  std::string path = kScratch + name;
  std::ofstream(path) << content;
  return path;
}

// Encodes every corpus string, reports each mismatch with its string, and checks
// decode(ids) gives back the text (as HF decodes it: after NFC for Qwen3, with the
// prefix space when add_prefix_space is on).
void check_corpus(const Tokenizer& tok, const std::string& key, size_t limit = SIZE_MAX) {
  std::vector<json> corpus = read_jsonl(kCorpus);
  REQUIRE(corpus.size() >= 2000);
  size_t mismatches = 0, round_trip_failures = 0, n = std::min(limit, corpus.size());
  for (size_t i = 0; i < n; ++i) {
    const json& row = corpus[i];
    std::string text = row["text"];
    std::vector<int32_t> expected = row[key], got = tok.encode(text);
    if (got != expected && ++mismatches <= 10) MESSAGE(key << " ids differ on line " << i + 1 << ": " << json(text).dump());
    std::string decoded_key = key + "_decoded";
    std::string want = row.contains(decoded_key) ? row[decoded_key].get<std::string>() : text;
    std::string streamed;
    for (int32_t id : expected) streamed += tok.decode_token(id);
    if ((tok.decode(expected) != want || streamed != want) && ++round_trip_failures <= 10)
      MESSAGE(key << " decode differs on line " << i + 1 << ": " << json(text).dump());
  }
  CHECK(mismatches == 0);
  CHECK(round_trip_failures == 0);
}

}  // namespace

TEST_CASE("Qwen3 tokenizer: ids identical to HF tokenizers on the whole corpus, decode round-trips") {
  check_corpus(qwen3(), "qwen3");
}

TEST_CASE("GPT-2 style ByteLevel(use_regex) tokenizer: ids identical to HF tokenizers on the corpus") {
  check_corpus(Tokenizer::from_file(kGpt2Json), "gpt2");
}

TEST_CASE("Llama-3 style Split(regex) + ByteLevel tokenizer with ignore_merges: ids identical to HF") {
  check_corpus(Tokenizer::from_file(kLlama3Json), "llama3");
}

TEST_CASE("ByteLevel add_prefix_space=true: ids identical to HF") {
  json j = read_json(kGpt2Json);
  j["pre_tokenizer"]["add_prefix_space"] = true;
  check_corpus(Tokenizer::from_file(write_file("gpt2_prefix.json", j.dump())), "gpt2_prefix", 500);
}

TEST_CASE("merges written as \"a b\" strings load the same as [\"a\", \"b\"] pairs") {
  json j = read_json(kGpt2Json);
  REQUIRE(j["model"]["merges"][0].is_array());
  for (auto& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  check_corpus(Tokenizer::from_file(write_file("gpt2_string_merges.json", j.dump())), "gpt2", 500);
}

TEST_CASE("from_vocab (GGUF metadata) matches the tokenizer.json path") {
  Tokenizer qwen = from_vocab_of(kQwen3Json, "qwen2");
  CHECK(qwen.vocab_size() == qwen3().vocab_size());
  check_corpus(qwen, "qwen3", 800);
  check_corpus(from_vocab_of(kLlama3Json, "llama-bpe"), "llama3", 800);
  check_corpus(from_vocab_of(kGpt2Json, "gpt2"), "gpt2", 800);
  CHECK_THROWS_WITH_AS(from_vocab_of(kGpt2Json, "bert"), "GGUF vocabulary: pre-tokenizer 'bert' is not supported",
                       Error);
}

TEST_CASE("special tokens: ids from tokenizer_config.json, matched inside text, decoded as their content") {
  const Tokenizer& tok = qwen3();
  json config = read_json("build/fixtures/qwen3-tokenizer/tokenizer_config.json");
  CHECK(tok.eos_id == tok.token_id(config["eos_token"]));
  CHECK(tok.pad_id == tok.token_id(config["pad_token"]));
  CHECK(tok.eos_id >= 0);
  CHECK(tok.bos_id == -1);  // bos_token is null
  CHECK(tok.token_id("no such token") == -1);
  int32_t im_start = tok.token_id("<|im_start|>");
  std::vector<int32_t> ids = tok.encode("a<|im_start|>b");
  REQUIRE(ids.size() == 3);
  CHECK(ids[1] == im_start);
  CHECK(tok.decode(ids) == "a<|im_start|>b");
  CHECK(tok.decode_token(im_start) == "<|im_start|>");
}

TEST_CASE("decode: token pieces may split UTF-8; decode() replaces what is left invalid by U+FFFD") {
  const Tokenizer& tok = qwen3();
  std::string rare = "\xF0\xA0\x80\x81";  // U+20001, a rare CJK character: several byte-level tokens
  std::vector<int32_t> ids = tok.encode(rare);
  REQUIRE(ids.size() >= 2);
  std::string streamed;
  for (int32_t id : ids) streamed += tok.decode_token(id);
  CHECK(streamed == rare);
  std::vector<int32_t> head(ids.begin(), ids.end() - 1);  // a cut-off sequence: one U+FFFD, as HF's from_utf8_lossy
  CHECK(tok.decode(head) == "\xEF\xBF\xBD");
}

TEST_CASE("chat templates: text, ids and assistant mask identical to transformers' apply_chat_template") {
  const Tokenizer& tok = qwen3();
  std::vector<json> chats = read_jsonl(kChats);
  REQUIRE(chats.size() >= 40);
  size_t masked_tokens = 0;
  for (size_t i = 0; i < chats.size(); ++i) {
    const json& c = chats[i];
    std::vector<ChatMessage> messages;
    for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    ChatTemplateKind kind = c["kind"] == "qwen3" ? ChatTemplateKind::Qwen3 : ChatTemplateKind::ChatML;
    RenderedChat r = render_chat(tok, messages, kind, c["add_generation_prompt"]);
    INFO("chat line " << i + 1 << " (" << c["kind"].get<std::string>() << "): " << c["messages"].dump());
    CHECK(r.text == c["text"].get<std::string>());
    CHECK(r.ids == c["ids"].get<std::vector<int32_t>>());
    CHECK(r.assistant_mask == c["mask"].get<std::vector<uint8_t>>());
    for (uint8_t m : r.assistant_mask) masked_tokens += m;
  }
  CHECK(masked_tokens > 100);  // the fixtures do exercise the mask
}

TEST_CASE("chat template mask: the answer and its <|im_end|> are trained, the header and the newline after are not") {
  const Tokenizer& tok = qwen3();
  RenderedChat r = render_chat(tok, {{"user", "Hi"}, {"assistant", "Hello"}}, ChatTemplateKind::ChatML, false);
  std::string trained;
  for (size_t t = 0; t < r.ids.size(); ++t)
    if (r.assistant_mask[t]) trained += tok.decode_token(r.ids[t]);
  CHECK(trained == "Hello<|im_end|>");
  REQUIRE(r.ids.size() == r.assistant_mask.size());
  CHECK(r.assistant_mask.back() == 0);  // the "\n"
  CHECK_THROWS_WITH_AS(render_chat(tok, {{"tool", "x"}}, ChatTemplateKind::Qwen3, false),
                       "render_chat: message 0 has role 'tool' (expected system, user or assistant)", Error);
  CHECK_THROWS_WITH_AS(render_chat(tok, {}, ChatTemplateKind::Qwen3, true), "render_chat: no messages", Error);
}

TEST_CASE("bad input raises nq::Error naming the file or the problem") {
  CHECK_THROWS_WITH_AS(Tokenizer::from_file("no/such/tokenizer.json"), "tokenizer: cannot open no/such/tokenizer.json",
                       Error);
  std::string bad = write_file("bad.json", "{\"model\": [1, 2");
  CHECK_THROWS_WITH_AS(Tokenizer::from_file(bad), doctest::Contains((bad + ": invalid JSON").c_str()), Error);
  for (const char* type : {"WordPiece", "Unigram"}) {
    std::string path = write_file(std::string(type) + ".json",
                                  json{{"model", {{"type", type}, {"vocab", json::object()}}}}.dump());
    CHECK_THROWS_WITH_AS(Tokenizer::from_file(path),
                         (path + ": model type '" + type + "' is not supported (only byte-level BPE)").c_str(), Error);
  }
  std::string no_model = write_file("no_model.json", "[1, 2]");
  CHECK_THROWS_WITH_AS(Tokenizer::from_file(no_model), (no_model + ": not a tokenizer.json (no \"model\")").c_str(),
                       Error);
  json j = read_json(kGpt2Json);
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  std::string whitespace = write_file("whitespace.json", j.dump());
  CHECK_THROWS_WITH_AS(Tokenizer::from_file(whitespace),
                       (whitespace + ": pre-tokenizer 'Whitespace' is not supported (byte-level BPE only)").c_str(),
                       Error);
  j["pre_tokenizer"] = {{"type", "ByteLevel"}};
  j["model"]["merges"][0] = json::array({"Ġ", "zzz-not-a-token"});
  std::string bad_merge = write_file("bad_merge.json", j.dump());
  CHECK_THROWS_WITH_AS(Tokenizer::from_file(bad_merge), doctest::Contains("uses a token missing from the vocabulary"),
                       Error);
  const Tokenizer& tok = qwen3();
  CHECK_THROWS_WITH_AS(tok.encode("ok \xC3("), "tokenizer: input text is not valid UTF-8 at byte 3", Error);
  CHECK_THROWS_WITH_AS(tok.decode({1, -5}), doctest::Contains("token id -5 out of range"), Error);
  CHECK_THROWS_WITH_AS(tok.decode_token(int32_t(tok.vocab_size())), doctest::Contains("out of range"), Error);
  CHECK_THROWS_WITH_AS(Tokenizer().encode("x"), doctest::Contains("tokenizer: not loaded"), Error);
}
