// training/encode: JSONL examples -> token ids + trained mask with the real Qwen3
// tokenizer (unpacked from tests/fixtures/tokenizer/qwen3 by the Makefile), and
// the whole path JSONL -> packed batch -> labels checked by decoding the targets.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <map>

#include "training/batch.h"
#include "training/encode.h"

using namespace nq;

static const Tokenizer& qwen3() {
  static Tokenizer tok = Tokenizer::from_file("build/fixtures/qwen3-tokenizer/tokenizer.json");
  return tok;
}

// The tokens of s with trained[t] == want, in order.
static std::vector<int32_t> pick(const Sample& s, uint8_t want) {
  std::vector<int32_t> out;
  for (size_t t = 0; t < s.ids.size(); ++t)
    if (s.trained[t] == want) out.push_back(s.ids[t]);
  return out;
}

static std::string write_file(const std::string& name, const std::string& text) {
  std::string path = "build/test_encode_" + name;
  std::ofstream(path) << text;
  return path;
}

TEST_CASE("messages: the chat template's assistant tokens are the trained ones") {
  const Tokenizer& tok = qwen3();
  Example ex;
  ex.messages = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "2+2?"}, {"assistant", "4"}};
  EncodeOptions opt;
  opt.chat.kind = ChatTemplateKind::ChatML;
  Sample s = encode_example(tok, ex, DataFormat::Messages, opt);
  CHECK(tok.decode(s.ids) ==
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
        "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n");
  CHECK(tok.decode(pick(s, 1)) == "Hello!<|im_end|>4<|im_end|>");
  opt.train_on_prompt = true;
  CHECK(pick(encode_example(tok, ex, DataFormat::Messages, opt), 0).empty());

  opt = EncodeOptions{};  // Qwen3: the last assistant turn carries the empty think block, trained on too
  Sample q = encode_example(tok, ex, DataFormat::Messages, opt);
  CHECK(tok.decode(pick(q, 1)) == "Hello!<|im_end|><think>\n\n</think>\n\n4<|im_end|>");
}

TEST_CASE("messages: a template's default system message is rendered as the model's chat format renders it, untrained") {
  // SmolLM2-style ChatML: a system turn is added when the conversation has none
  // (ChatFormat::render, checked against transformers' apply_chat_template in
  // test_gguf_model.cpp); training samples get it too, as TRL renders them.
  const Tokenizer& tok = qwen3();
  EncodeOptions opt;
  opt.chat = ChatFormat{ChatTemplateKind::ChatML, "You are a test model."};
  Example ex;
  ex.messages = {{"user", "Hi"}, {"assistant", "Hello!"}};
  Sample s = encode_example(tok, ex, DataFormat::Messages, opt);
  CHECK(s.ids == opt.chat.render(tok, ex.messages, false).ids);
  CHECK(tok.decode(s.ids) == "<|im_start|>system\nYou are a test model.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                             "<|im_start|>assistant\nHello!<|im_end|>\n");
  CHECK(tok.decode(pick(s, 1)) == "Hello!<|im_end|>");
  // A conversation with its own system message keeps it and gets no second one.
  ex.messages.insert(ex.messages.begin(), ChatMessage{"system", "Be brief."});
  CHECK(tok.decode(encode_example(tok, ex, DataFormat::Messages, opt).ids) ==
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
        "<|im_end|>\n");
}

TEST_CASE("prompt-completion, alpaca and text: plain text, EOS appended, loss on the completion") {
  const Tokenizer& tok = qwen3();
  REQUIRE(tok.eos_id == tok.token_id("<|im_end|>"));
  EncodeOptions opt;
  Example pc;
  pc.prompt = "The capital of France is";
  pc.completion = " Paris.";
  Sample s = encode_example(tok, pc, DataFormat::PromptCompletion, opt);
  std::vector<int32_t> want = tok.encode(pc.prompt), completion = tok.encode(pc.completion);
  size_t n_prompt = want.size();
  want.insert(want.end(), completion.begin(), completion.end());
  want.push_back(tok.eos_id);
  CHECK(s.ids == want);
  CHECK(pick(s, 0) == tok.encode(pc.prompt));
  CHECK(tok.decode(pick(s, 1)) == " Paris.<|im_end|>");
  CHECK(pick(s, 0).size() == n_prompt);

  Example terminated = pc;
  terminated.completion = " Paris.<|im_end|>";  // already ends with EOS: no second one
  CHECK(encode_example(tok, terminated, DataFormat::PromptCompletion, opt).ids == want);

  opt.prompt_completion_chat = true;
  opt.chat.kind = ChatTemplateKind::ChatML;
  Sample chat = encode_example(tok, pc, DataFormat::PromptCompletion, opt);
  CHECK(tok.decode(chat.ids) == "<|im_start|>user\nThe capital of France is<|im_end|>\n<|im_start|>assistant\n"
                                " Paris.<|im_end|>\n");
  CHECK(tok.decode(pick(chat, 1)) == " Paris.<|im_end|>");

  Example alpaca;
  alpaca.instruction = "Add the numbers.";
  alpaca.input = "2 and 3";
  alpaca.output = "5";
  Sample a = encode_example(tok, alpaca, DataFormat::Alpaca, EncodeOptions{});
  CHECK(tok.decode(pick(a, 0)) == alpaca_prompt(alpaca.instruction, alpaca.input));
  CHECK(tok.decode(pick(a, 1)) == "5<|im_end|>");

  Example text;
  text.text = "Once upon a time.";
  Sample t = encode_example(tok, text, DataFormat::Text, EncodeOptions{});
  std::vector<int32_t> text_ids = tok.encode(text.text);
  text_ids.push_back(tok.eos_id);
  CHECK(t.ids == text_ids);
  CHECK(pick(t, 0).empty());
}

TEST_CASE("load_dataset truncates from the right, drops untrained samples, counts skipped lines") {
  const Tokenizer& tok = qwen3();
  std::string path = write_file("mixed.jsonl",
      "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello there, how are you today?\"}]}\n"
      "{\"messages\": [{\"role\": \"user\", \"content\": \"only a question\"}]}\n"
      "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n"
      "{\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", \"content\": \"4\"}]}\n");
  EncodeOptions opt;
  opt.chat.kind = ChatTemplateKind::ChatML;
  opt.max_length = 16;  // line 1 renders to 19 tokens, line 4 to 15
  Dataset d = load_dataset(path, tok, opt, BadLinePolicy::Skip);
  CHECK(d.format == DataFormat::Messages);
  CHECK(d.skipped_lines == 1);
  CHECK(d.first_skip_message == path + ":3: messages[0].role is \"robot\" (expected system, user or assistant)");
  CHECK(d.dropped_untrained == 1);  // line 2: nothing to train on
  REQUIRE(d.samples.size() == 2);
  CHECK(d.samples[0].line == 1);
  CHECK(d.samples[1].line == 4);
  CHECK(d.truncated == 1);
  CHECK(d.samples[0].ids.size() == 16);
  // The kept part is the beginning: the first line's ids are a prefix of the untruncated rendering.
  Example first;
  first.messages = {{"user", "Hi"}, {"assistant", "Hello there, how are you today?"}};
  Sample full = encode_example(tok, first, DataFormat::Messages, opt);
  REQUIRE(full.ids.size() == 19);
  CHECK(std::equal(d.samples[0].ids.begin(), d.samples[0].ids.end(), full.ids.begin()));

  CHECK_THROWS_WITH_AS(load_dataset(path, tok, opt, BadLinePolicy::Error),
                       (path + ":3: messages[0].role is \"robot\" (expected system, user or assistant)").c_str(), Error);
  std::string none = write_file("none.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n");
  CHECK_THROWS_WITH_AS(load_dataset(none, tok, opt, BadLinePolicy::Error),
                       (none + ": no samples left to train on or evaluate (1 examples, 1 without a trained token after truncation "
                               "to 16 tokens, 0 bad lines skipped)").c_str(),
                       Error);
}

TEST_CASE("demo dataset end to end: packed batches train exactly on the assistant answers") {
  const Tokenizer& tok = qwen3();
  EncodeOptions opt;
  opt.max_length = 256;
  Dataset d = load_dataset("data/demo_train.jsonl", tok, opt, BadLinePolicy::Error);
  ParsedData raw = parse_jsonl_file("data/demo_train.jsonl", BadLinePolicy::Error);
  REQUIRE(d.samples.size() == raw.examples.size());
  CHECK(d.truncated == 0);
  std::vector<int64_t> all(d.samples.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(i);
  LoaderOptions lo;
  lo.batch_size = 4;
  lo.max_length = 256;
  lo.packing = true;
  lo.seed = 3;
  lo.pad_id = tok.pad_id;
  DataLoader loader(d.samples, all, lo);
  std::map<int64_t, std::string> answer_by_line;
  for (const Example& ex : raw.examples) answer_by_line[ex.line] = ex.messages.back().content;
  // Map each packed segment back to its sample through its first token's position in the batch.
  int64_t checked = 0;
  for (int64_t k = 0, nb = loader.batches_in_epoch(0); k < nb; ++k) {
    Batch b = loader.next();
    const int32_t* labels = b.labels.data<int32_t>();
    const int32_t* seg = b.segment_ids.data<int32_t>();
    const int32_t* ids = b.input_ids.data<int32_t>();
    for (int64_t r = 0; r < b.B; ++r) {
      std::vector<int32_t> targets, tokens;
      int32_t current = 0;
      auto flush = [&]() {
        if (tokens.empty()) return;
        // Identify the sample by its token sequence.
        for (const Sample& s : d.samples) {
          if (s.ids != tokens) continue;
          std::string answer = answer_by_line[s.line];
          std::string decoded = tok.decode(targets);
          CHECK(decoded == "<think>\n\n</think>\n\n" + answer + "<|im_end|>");
          ++checked;
          break;
        }
        targets.clear();
        tokens.clear();
      };
      for (int64_t t = 0; t < b.T; ++t) {
        int64_t i = r * b.T + t;
        if (seg[i] != current) { flush(); current = seg[i]; }
        if (seg[i] < 0) break;
        tokens.push_back(ids[i]);
        if (labels[i] != kernels::kIgnoreIndex) targets.push_back(labels[i]);
      }
      flush();
    }
  }
  CHECK(checked == int64_t(d.samples.size()));
}
