// Byte-level BPE tokenizer (GPT-2 / Llama-3 / Qwen2 / Qwen3 family), loaded from a
// Hugging Face tokenizer.json or from GGUF vocabulary metadata. Text -> ids runs:
//   1. split out added/special tokens written in the text (longest match first)
//   2. normalize the rest (NFC for Qwen; none for GPT-2 style)
//   3. pre-tokenize: regex split (PCRE2, Unicode classes) into words
//   4. map each word's bytes to printable "byte-level" characters and apply BPE
//      merges lowest rank first.
// Ids -> text maps each token back to its bytes. See docs/tokenizer.md.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace nq {

struct TokenizerImpl;  // vocabulary, merges, compiled regexes, BPE cache (model/tokenizer.cpp)

class Tokenizer {
 public:
  static Tokenizer from_file(const std::string& tokenizer_json_path);  // HF tokenizer.json (byte-level BPE)
  // Built from GGUF metadata (tokenizer.ggml.model = "gpt2"): tokens, merges ("a b"),
  // token types (1 normal, 3 control = special, 4 user-defined = added), and the
  // pre-tokenizer name (tokenizer.ggml.pre: "qwen2", "llama-bpe", "gpt-2", "smollm", "default").
  // eos_id/bos_id/pad_id stay -1 here: the GGUF loader sets them from tokenizer.ggml.*_token_id.
  // (from_file reads them from tokenizer_config.json next to tokenizer.json, when present.)
  static Tokenizer from_vocab(std::vector<std::string> tokens, std::vector<std::string> merges,
                              std::vector<int32_t> token_types, const std::string& pre_tokenizer);

  // The split regex from_vocab uses for a tokenizer.ggml.pre name, or nullptr when
  // unsupported (the HF folder ./merge writes from a GGUF states it in tokenizer.json).
  static const char* split_regex_of(const std::string& pre_tokenizer);

  std::vector<int32_t> encode(const std::string& text) const;  // special/added tokens written in text are matched; no BOS/EOS added
  // Same ids; token_begin[i] = byte offset where token i starts in normalize(text)
  // (token i ends where token i+1 starts). Throws nq::Error on invalid UTF-8.
  std::vector<int32_t> encode_with_offsets(const std::string& text, std::vector<size_t>& token_begin) const;
  std::string normalize(const std::string& text) const;        // the normalizer alone (identity when there is none)
  std::string decode(const std::vector<int32_t>& ids) const;   // invalid UTF-8 becomes U+FFFD, like HF
  std::string decode_token(int32_t id) const;                  // may be a partial UTF-8 sequence (streaming)
  int32_t token_id(const std::string& token) const;            // -1 if absent
  int64_t vocab_size() const;
  int32_t eos_id = -1, bos_id = -1, pad_id = -1;               // when known

 private:
  const TokenizerImpl& impl() const;  // throws nq::Error on a default-constructed Tokenizer
  std::shared_ptr<const TokenizerImpl> impl_;
};

}  // namespace nq
