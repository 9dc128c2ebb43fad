// Byte-level BPE, as Hugging Face `tokenizers` runs it for GPT-2, Llama-3, Qwen2/3:
// added tokens split first, then NFC (utf8proc), a regex pre-tokenizer (PCRE2 with
// Unicode properties, JIT-compiled), the GPT-2 byte-to-unicode map, and BPE merges
// applied lowest rank first with a heap. Each word's ids are cached, since natural
// text repeats words constantly. Walkthrough: docs/tokenizer.md.
#include "model/tokenizer.h"
#include "formats/json.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <array>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_map>

#include "runtime/error.h"

namespace nq {
namespace {

// The pre-tokenizer regexes of the model families (tokenizer.json / llama.cpp names).
// GPT-2: contractions, optional space + letters / digits / other symbols, whitespace.
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Qwen2/Qwen3: case-insensitive contractions, one digit per word, newline runs apart.
const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Llama-3: as Qwen2 but up to three digits per word.
const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// GPT-2's byte -> unicode map: printable bytes (33..126, 161..172, 174..255) stand for
// themselves; the other 68 bytes get code points 256, 257, ... in byte order, so
// every byte has a visible, non-whitespace character in the vocabulary files.
std::array<uint32_t, 256> byte_to_codepoint() {
  std::array<uint32_t, 256> map{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    map[b] = printable ? b : next++;
  }
  return map;
}

std::string codepoint_utf8(uint32_t cp) {
  utf8proc_uint8_t buf[4];
  return std::string(reinterpret_cast<char*>(buf), size_t(utf8proc_encode_char(utf8proc_int32_t(cp), buf)));
}

// Length of the valid UTF-8 sequence at s[0..n), or -k where k >= 1 is the length of
// the maximal invalid subpart there (what U+FFFD replaces, as in Rust's from_utf8_lossy).
int utf8_step(const unsigned char* s, size_t n) {
  unsigned char b = s[0];
  if (b < 0x80) return 1;
  int need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b >= 0xC2 && b <= 0xDF) need = 1;
  else if (b == 0xE0) need = 2, lo = 0xA0;
  else if (b == 0xED) need = 2, hi = 0x9F;  // no surrogates
  else if (b >= 0xE1 && b <= 0xEF) need = 2;
  else if (b == 0xF0) need = 3, lo = 0x90;
  else if (b == 0xF4) need = 3, hi = 0x8F;  // <= U+10FFFF
  else if (b >= 0xF1 && b <= 0xF3) need = 3;
  else return -1;
  if (n < 2 || s[1] < lo || s[1] > hi) return -1;
  for (int k = 2; k <= need; ++k)
    if (size_t(k) >= n || (s[k] & 0xC0) != 0x80) return -k;
  return need + 1;
}

void check_utf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = 0; i < text.size();) {
    int step = utf8_step(s + i, text.size() - i);
    NQ_CHECK(step > 0, "tokenizer: input text is not valid UTF-8 at byte ", i);
    i += size_t(step);
  }
}

// HF tokenizers runs these regexes with Oniguruma, whose \s is the Unicode White_Space
// property. PCRE2's \s also matches U+180E MONGOLIAN VOWEL SEPARATOR (whitespace only
// before Unicode 6.3), so \s and \S, alone or inside [...], are rewritten to leave
// U+180E out. Everything else in the pattern is copied unchanged.
std::string without_u180e_space(const std::string& p) {
  std::string out;
  for (size_t i = 0; i < p.size();) {
    if (p[i] == '\\' && i + 1 < p.size()) {
      if (p[i + 1] == 's') out += R"([^\S\x{180E}])";
      else if (p[i + 1] == 'S') out += R"([\S\x{180E}])";
      else out += p.substr(i, 2);
      i += 2;
    } else if (p[i] == '[') {  // a character class: find its end, see whether it holds \s
      size_t k = i + 1;
      bool negated = k < p.size() && p[k] == '^';
      if (negated) ++k;
      if (k < p.size() && p[k] == ']') ++k;  // a leading ']' is a literal
      bool has_space = false;
      while (k < p.size() && p[k] != ']') {
        if (p[k] == '\\') has_space |= k + 1 < p.size() && p[k + 1] == 's', k += 2;
        else if (p.compare(k, 2, "[:") == 0) k = std::min(p.find(":]", k + 2), p.size() - 1) + 2;
        else ++k;
      }
      std::string cls = p.substr(i, k + 1 - i);
      if (!has_space) out += cls;
      else if (negated) out += "(?:" + cls + R"(|\x{180E}))";  // not (A or space) -> also U+180E
      else out += R"((?:(?!\x{180E}))" + cls + ")";           // A or space -> but not U+180E
      i = k + 1;
    } else {
      out += p[i++];
    }
  }
  return out;
}

struct PcreDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
using Regex = std::shared_ptr<pcre2_code>;

// A literal as a regex matching exactly it: every ASCII punctuation character escaped
// (HF tokenizers turns a Split {"String": s} pattern into regex::escape(s) the same way;
// PCRE2_LITERAL cannot be combined with PCRE2_UCP, which the other patterns need).
std::string escape_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u) && u != ' ') {
      if (u < 0x20 || u == 0x7F) {  // control characters as \x{..}: PCRE2 would take some literally anyway
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x{%02X}", u);
        out += buf;
        continue;
      }
      out += '\\';
    }
    out += c;
  }
  return out;
}

Regex compile_regex(const std::string& written, bool literal) {
  std::string pattern = literal ? escape_literal(written) : without_u180e_space(written);
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  uint32_t options = PCRE2_UTF | PCRE2_UCP;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err,
                                   &err_offset, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw Error(str("tokenizer: cannot compile pre-tokenizer regex at offset ", err_offset, ": ",
                    reinterpret_cast<char*>(msg), " (pattern ", written, ")"));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is unavailable
  return Regex(code, PcreDeleter());
}

// Token ids index id_to_token: an id is at most this (4M, 16x the largest real
// vocabulary, Gemma 3's 262144), so a file cannot make the table 2^31 entries long.
constexpr int32_t kMaxTokenId = (1 << 22) - 1;

struct AddedToken {
  std::string content;
  int32_t id;
};

// Added tokens to find in text: leftmost match first, the longest one at that position
// (HF's Aho-Corasick with LeftmostLongest). Candidates are bucketed by first byte.
struct AddedTokenMatcher {
  std::vector<AddedToken> tokens;
  std::array<std::vector<int>, 256> by_first_byte;

  // An empty token would match everywhere without advancing (split() would never end).
  void add(const std::string& source, const std::string& content, int32_t id) {
    NQ_CHECK(!content.empty(), source, ": added or control token ", id, " is empty");
    tokens.push_back({content, id});
  }
  void build() {
    std::stable_sort(tokens.begin(), tokens.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    for (size_t i = 0; i < tokens.size(); ++i)
      by_first_byte[uint8_t(tokens[i].content[0])].push_back(int(i));
  }
  // Calls on_text(piece) for the text between matches and on_token(token) for each match.
  template <typename OnText, typename OnToken>
  void split(std::string_view s, OnText on_text, OnToken on_token) const {
    size_t start = 0;
    for (size_t i = 0; i < s.size() && !tokens.empty(); ++i) {
      for (int t : by_first_byte[uint8_t(s[i])]) {
        const std::string& c = tokens[size_t(t)].content;
        if (s.compare(i, c.size(), c) != 0) continue;
        if (i > start) on_text(s.substr(start, i - start));
        on_token(tokens[size_t(t)]);
        start = i + c.size();
        i = start - 1;
        break;
      }
    }
    if (start < s.size()) on_text(s.substr(start));
  }
};

struct Merge {
  int32_t rank, merged_id;
};

uint64_t pair_key(int32_t left, int32_t right) { return (uint64_t(uint32_t(left)) << 32) | uint32_t(right); }

// (left id, right id) -> merge, the lookup in BPE's inner loop: one flat array with
// linear probing (a std::unordered_map chases a pointer per lookup). Built once.
class MergeTable {
 public:
  void build(const std::vector<std::pair<uint64_t, Merge>>& merges) {
    size_t capacity = 16;
    while (capacity < 2 * merges.size()) capacity *= 2;
    keys_.assign(capacity, kEmpty);
    values_.assign(capacity, Merge{-1, -1});
    mask_ = capacity - 1;
    for (const auto& [key, merge] : merges) {
      size_t i = slot(key);
      while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
      if (keys_[i] == key) continue;  // a repeated pair keeps its first (lowest) rank
      keys_[i] = key, values_[i] = merge;
    }
  }
  const Merge* find(int32_t left, int32_t right) const {
    uint64_t key = pair_key(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);  // ids are >= 0, so no pair has this key
  size_t slot(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> 32) & mask_; }
  std::vector<uint64_t> keys_;
  std::vector<Merge> values_;
  size_t mask_ = 0;
};

}  // namespace

struct TokenizerImpl {
  std::string source;  // file name or "GGUF vocabulary", for error messages
  std::unordered_map<std::string, int32_t> token_to_id;
  std::vector<std::string> id_to_token;  // vocabulary strings (byte-level characters)
  std::vector<std::string> id_to_bytes;  // what each id decodes to
  std::array<int32_t, 256> byte_token{};        // id of each single-byte token (-1: not in the vocabulary)
  std::array<std::string, 256> byte_chars;       // each byte's byte-level character (UTF-8)
  std::vector<std::pair<uint64_t, Merge>> merge_list;  // (left id, right id) -> rank, merged id, in rank order
  MergeTable merges;                                    // the same, for lookup (built by finish())
  bool ignore_merges = false;                  // Llama-3: a word already in the vocabulary is one token
  bool nfc = false;
  bool add_prefix_space = false;
  std::vector<Regex> splits;  // applied in order, each splitting the pieces of the previous
  AddedTokenMatcher raw_added, normalized_added;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;  // word bytes -> ids
  static constexpr size_t kCacheMaxWords = 1 << 20;

  void set_token(const std::string& token, int32_t id) {
    NQ_CHECK(id >= 0 && id <= kMaxTokenId, source, ": token '", token, "' has id ", id, " outside [0, ", kMaxTokenId,
             "]");
    if (size_t(id) >= id_to_token.size()) id_to_token.resize(size_t(id) + 1);
    id_to_token[size_t(id)] = token;
    token_to_id[token] = id;
  }

  void add_merge(const std::string& left, const std::string& right, int32_t rank) {
    auto l = token_to_id.find(left), r = token_to_id.find(right), m = token_to_id.find(left + right);
    NQ_CHECK(l != token_to_id.end() && r != token_to_id.end() && m != token_to_id.end(), source, ": merge ", rank,
             " ('", left, "' '", right, "') uses a token missing from the vocabulary");
    merge_list.push_back({pair_key(l->second, r->second), Merge{rank, m->second}});
  }

  // After vocabulary and added tokens are in: byte tokens and decode strings.
  void finish() {
    std::array<uint32_t, 256> cp = byte_to_codepoint();
    std::unordered_map<uint32_t, uint8_t> codepoint_to_byte;
    for (int b = 0; b < 256; ++b) {
      codepoint_to_byte[cp[size_t(b)]] = uint8_t(b);
      byte_chars[size_t(b)] = codepoint_utf8(cp[size_t(b)]);
      // Some vocabularies (SmolLM2's) lack a few bytes (rare control characters, bytes
      // that never occur in UTF-8); like HF's BPE without an unk token, they are dropped.
      auto it = token_to_id.find(byte_chars[size_t(b)]);
      byte_token[size_t(b)] = it != token_to_id.end() ? it->second : -1;
    }
    // HF's ByteLevel decoder: a token whose characters all map to bytes becomes those
    // bytes; any other token (e.g. "<|im_end|>" if it held a space) is kept as written.
    id_to_bytes.resize(id_to_token.size());
    for (size_t id = 0; id < id_to_token.size(); ++id) {
      const std::string& t = id_to_token[id];
      std::string bytes;
      bool all_mapped = true;
      for (size_t i = 0; i < t.size() && all_mapped;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(t.data() + i),
                                              utf8proc_ssize_t(t.size() - i), &c);
        auto it = n > 0 ? codepoint_to_byte.find(uint32_t(c)) : codepoint_to_byte.end();
        if (it == codepoint_to_byte.end()) all_mapped = false;
        else bytes.push_back(char(it->second)), i += size_t(n);
      }
      id_to_bytes[id] = all_mapped ? bytes : t;
    }
    merges.build(merge_list);
    merge_list = {};
    raw_added.build();
    normalized_added.build();
  }

  std::string normalize(std::string_view s) const {
    bool ascii = std::all_of(s.begin(), s.end(), [](char c) { return uint8_t(c) < 0x80; });
    if (!nfc || ascii) return std::string(s);  // ASCII is already in NFC
    utf8proc_uint8_t* out = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()),
                                      &out, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    NQ_CHECK(n >= 0, "tokenizer: NFC normalization failed: ", utf8proc_errmsg(n));
    std::string result(reinterpret_cast<char*>(out), size_t(n));
    std::free(out);
    return result;
  }

  // BPE on one word's bytes: start from one symbol per byte, repeatedly merge the
  // adjacent pair with the lowest merge rank (leftmost on ties) until none applies.
  // Symbols live in a linked list over fixed slots; a min-heap holds candidate
  // pairs, stale entries are skipped when popped. Buffers are reused per thread.
  void bpe(std::string_view word, std::vector<int32_t>& out) const {
    if (ignore_merges) {
      std::string chars;
      for (char c : word) chars += byte_chars[uint8_t(c)];
      auto it = token_to_id.find(chars);
      if (it != token_to_id.end()) { out.push_back(it->second); return; }
    }
    struct Candidate {
      int32_t rank, pos;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    thread_local std::vector<int32_t> sym, next, prev;
    thread_local std::vector<Candidate> heap;
    sym.resize(word.size()), next.resize(word.size()), prev.resize(word.size());
    heap.clear();
    auto push_pair = [&](int32_t pos) {
      if (pos < 0 || next[size_t(pos)] < 0) return;
      const Merge* merge = merges.find(sym[size_t(pos)], sym[size_t(next[size_t(pos)])]);
      if (!merge) return;
      heap.push_back({merge->rank, pos});
      std::push_heap(heap.begin(), heap.end(), std::greater<Candidate>());
    };
    size_t n = 0;  // symbols: the word's bytes that have a token
    for (char c : word)
      if (byte_token[uint8_t(c)] >= 0) sym[n++] = byte_token[uint8_t(c)];
    if (n == 0) return;
    for (size_t i = 0; i < n; ++i) {
      prev[i] = int32_t(i) - 1;
      next[i] = i + 1 < n ? int32_t(i + 1) : -1;
    }
    for (size_t i = 0; i + 1 < n; ++i) push_pair(int32_t(i));
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<Candidate>());
      Candidate c = heap.back();
      heap.pop_back();
      size_t pos = size_t(c.pos);
      if (sym[pos] < 0 || next[pos] < 0) continue;  // merged away since it was pushed
      size_t right = size_t(next[pos]);
      const Merge* merge = merges.find(sym[pos], sym[right]);
      if (!merge || merge->rank != c.rank) continue;  // the pair changed (ranks are unique)
      sym[pos] = merge->merged_id;
      sym[right] = -1;
      next[pos] = next[right];
      if (next[pos] >= 0) prev[size_t(next[pos])] = int32_t(pos);
      push_pair(prev[pos]);
      push_pair(int32_t(pos));
    }
    for (int32_t i = 0; i >= 0; i = next[size_t(i)]) out.push_back(sym[size_t(i)]);
  }

  void word_ids(std::string_view word, std::vector<int32_t>& out) const {
    if (word.size() == 1) {
      if (byte_token[uint8_t(word[0])] >= 0) out.push_back(byte_token[uint8_t(word[0])]);
      return;
    }
    thread_local std::string key;
    key.assign(word.data(), word.size());
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      auto it = cache.find(key);
      if (it != cache.end()) { out.insert(out.end(), it->second.begin(), it->second.end()); return; }
    }
    size_t first = out.size();
    bpe(word, out);
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= kCacheMaxWords) cache.clear();  // bounded memory on endless unique input
    cache.emplace(key, std::vector<int32_t>(out.begin() + std::ptrdiff_t(first), out.end()));
  }

  // Pre-tokenizer splits[level] over s with behavior "Isolated": every match is a word
  // and so is every stretch between matches.
  template <typename OnWord>
  void split_words(size_t level, std::string_view s, OnWord& on_word) const {
    if (level == splits.size()) { on_word(s); return; }
    struct MatchDataDeleter {
      void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
    };
    thread_local std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(pcre2_match_data_create(1, nullptr));
    pcre2_code* code = splits[level].get();
    auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t pos = 0, emitted = 0;
    while (pos < s.size()) {
      int rc = pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      NQ_CHECK(rc >= 0, "tokenizer: pre-tokenizer regex failed with PCRE2 error ", rc);
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      size_t begin = ov[0], end = ov[1];
      if (end == begin) {  // an empty match is no word: retry from the next character
        if (begin >= s.size()) break;
        pos = begin + size_t(utf8_step(reinterpret_cast<const unsigned char*>(s.data()) + begin, s.size() - begin));
        continue;
      }
      if (begin > emitted) split_words(level + 1, s.substr(emitted, begin - emitted), on_word);
      split_words(level + 1, s.substr(begin, end - begin), on_word);
      emitted = pos = end;
    }
    if (emitted < s.size()) split_words(level + 1, s.substr(emitted), on_word);
  }

  // Normalized text without added tokens -> ids; token_begin gets offsets from `base`.
  void encode_plain(std::string_view s, size_t base, std::vector<int32_t>& ids, std::vector<size_t>* begins) const {
    std::string prefixed;
    if (add_prefix_space && !s.empty() && s[0] != ' ') prefixed = " " + std::string(s), s = prefixed;
    ptrdiff_t shift = prefixed.empty() ? 0 : 1;  // the inserted space has no source byte
    auto on_word = [&](std::string_view word) {
      size_t first = ids.size();
      word_ids(word, ids);
      if (!begins) return;
      ptrdiff_t at = ptrdiff_t(base) + (word.data() - s.data()) - shift;
      for (size_t i = first; i < ids.size(); ++i) {
        begins->push_back(size_t(std::max(at, ptrdiff_t(base))));
        at += ptrdiff_t(id_to_bytes[size_t(ids[i])].size());
      }
    };
    split_words(0, s, on_word);
  }

  void encode(const std::string& text, std::vector<int32_t>& ids, std::vector<size_t>* begins) const {
    check_utf8(text);
    size_t out_pos = 0;  // position in the normalized text
    auto on_token = [&](const AddedToken& t) {
      ids.push_back(t.id);
      if (begins) begins->push_back(out_pos);
      out_pos += t.content.size();
    };
    auto on_normalized_text = [&](std::string_view piece) {
      encode_plain(piece, out_pos, ids, begins);
      out_pos += piece.size();
    };
    raw_added.split(text, [&](std::string_view piece) {
      std::string normalized = normalize(piece);
      normalized_added.split(normalized, on_normalized_text, on_token);
    }, on_token);
  }
};

namespace {

// "NFC", or a Sequence of them; null means no normalizer.
void parse_normalizer(TokenizerImpl& impl, const JsonIn& n) {
  const std::string type = n.string_or("type", "");
  if (type == "Sequence") {
    n.at("normalizers").for_each_element([&](const JsonIn& sub) { parse_normalizer(impl, sub); });
    return;
  }
  NQ_CHECK(type == "NFC", impl.source, ": normalizer '", type, "' is not supported (only NFC)");
  impl.nfc = true;
}

// Split(regex, Isolated), ByteLevel (with or without the GPT-2 regex), or a Sequence.
void parse_pre_tokenizer(TokenizerImpl& impl, const JsonIn& p, bool& byte_level) {
  const std::string type = p.string_or("type", "");
  if (type == "Sequence") {
    p.at("pretokenizers").for_each_element([&](const JsonIn& sub) { parse_pre_tokenizer(impl, sub, byte_level); });
  } else if (type == "Split") {
    const std::string behavior = p.string_or("behavior", "");
    const bool invert = p.boolean_or("invert", false);
    NQ_CHECK(behavior == "Isolated" && !invert, impl.source, ": Split pre-tokenizer with behavior '", behavior, "'",
             invert ? " and invert" : "", " is not supported (only Isolated)");
    const JsonIn pattern = p.at("pattern");
    // {"String": s} splits on the literal s, {"Regex": r} on the regex r.
    if (pattern.has("String")) impl.splits.push_back(compile_regex(pattern.at("String").string(), true));
    else impl.splits.push_back(compile_regex(pattern.at("Regex").string(), false));
  } else if (type == "ByteLevel") {
    byte_level = true;
    impl.add_prefix_space = p.boolean_or("add_prefix_space", false);
    if (p.boolean_or("use_regex", true)) impl.splits.push_back(compile_regex(kGpt2Pattern, false));
  } else {
    throw Error(str(impl.source, ": pre-tokenizer '", type, "' is not supported (byte-level BPE only)"));
  }
}

// tokenizer_config.json names eos/bos/pad tokens as strings or {"content": ...}.
int32_t config_token(const JsonIn& config, const char* key, const Tokenizer& tok) {
  auto v = config.find(key);
  if (!v) return -1;
  if (v->is_string()) return tok.token_id(v->string());
  if (v->is_object() && v->has("content")) return tok.token_id(v->at("content").string());
  return -1;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  NQ_CHECK(f.good(), "tokenizer: cannot open ", path);
  std::stringstream text;
  text << f.rdbuf();
  return parse_json(text.str(), path);
}

}  // namespace

Tokenizer Tokenizer::from_file(const std::string& path) {
  const nlohmann::json doc = read_json(path);
  const JsonIn j(doc, path);
  auto impl = std::make_shared<TokenizerImpl>();
  impl->source = path;
  NQ_CHECK(j.is_object() && j.has("model"), path, ": not a tokenizer.json (no \"model\")");
  const JsonIn model = j.at("model").expect_object();
  const std::string type = model.string_or("type", "");
  NQ_CHECK(type == "BPE", path, ": model type '", type, "' is not supported (only byte-level BPE)");
  NQ_CHECK(model.string_or("continuing_subword_prefix", "").empty(), path,
           ": BPE continuing_subword_prefix is not supported");
  model.at("vocab").for_each_member(
      [&](const std::string& token, const JsonIn& id) { impl->set_token(token, int32_t(id.integer(0, kMaxTokenId))); });
  impl->ignore_merges = model.boolean_or("ignore_merges", false);
  if (auto n = j.find("normalizer")) parse_normalizer(*impl, *n);
  bool byte_level = false;
  auto pre = j.find("pre_tokenizer");
  NQ_CHECK(pre, path, ": no pre_tokenizer (byte-level BPE needs a ByteLevel pre-tokenizer)");
  parse_pre_tokenizer(*impl, *pre, byte_level);
  NQ_CHECK(byte_level, path, ": no ByteLevel pre-tokenizer (only byte-level BPE is supported)");
  // Merges: "a b" strings (older files) or ["a", "b"] pairs (tokenizers >= 0.20).
  int32_t rank = 0;
  model.at("merges").for_each_element([&](const JsonIn& m) {
    if (m.is_array()) {
      NQ_CHECK(m.size() == 2, m.where(), " is not a pair");
      impl->add_merge(m[0].string(), m[1].string(), rank);
    } else {
      const std::string& s = m.string();
      size_t space = s.find(' ');
      NQ_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos, path, ": merge ", rank,
               " '", s, "' is not two tokens separated by one space");
      impl->add_merge(s.substr(0, space), s.substr(space + 1), rank);
    }
    ++rank;
  });
  if (auto added = j.find("added_tokens")) {
    added->for_each_element([&](const JsonIn& a) {
      const std::string content = a.at("content").string();
      const int32_t id = int32_t(a.at("id").integer(0, kMaxTokenId));
      NQ_CHECK(!content.empty(), path, ": empty added token");
      NQ_CHECK(!a.boolean_or("lstrip", false) && !a.boolean_or("rstrip", false) && !a.boolean_or("single_word", false),
               path, ": added token '", content, "' uses lstrip/rstrip/single_word, which is not supported");
      impl->set_token(content, id);
      (a.boolean_or("normalized", false) ? impl->normalized_added : impl->raw_added).add(path, content, id);
    });
  }
  impl->finish();
  Tokenizer tok;
  tok.impl_ = impl;
  // eos/bos/pad live in tokenizer_config.json next to tokenizer.json, when there is one.
  std::string dir = path.substr(0, path.find_last_of('/') + 1);
  std::ifstream config_file(dir + "tokenizer_config.json");
  if (config_file.good()) {
    const nlohmann::json config_doc = read_json(dir + "tokenizer_config.json");
    const JsonIn config(config_doc, dir + "tokenizer_config.json");
    config.expect_object();
    tok.eos_id = config_token(config, "eos_token", tok);
    tok.bos_id = config_token(config, "bos_token", tok);
    tok.pad_id = config_token(config, "pad_token", tok);
  }
  return tok;
}

const char* Tokenizer::split_regex_of(const std::string& pre) {
  if (pre == "qwen2") return kQwen2Pattern;
  if (pre == "llama-bpe" || pre == "llama3") return kLlama3Pattern;
  if (pre == "gpt-2" || pre == "gpt2" || pre == "smollm" || pre == "default") return kGpt2Pattern;
  return nullptr;
}

Tokenizer Tokenizer::from_vocab(std::vector<std::string> tokens, std::vector<std::string> merges,
                                std::vector<int32_t> token_types, const std::string& pre_tokenizer) {
  auto impl = std::make_shared<TokenizerImpl>();
  impl->source = "GGUF vocabulary";
  NQ_CHECK(token_types.empty() || token_types.size() == tokens.size(), "GGUF vocabulary: ", tokens.size(),
           " tokens but ", token_types.size(), " token types");
  for (size_t i = 0; i < tokens.size(); ++i) impl->set_token(tokens[i], int32_t(i));
  // llama.cpp's names for the pre-tokenizer regexes (tokenizer.ggml.pre).
  if (pre_tokenizer == "qwen2") impl->splits.push_back(compile_regex(kQwen2Pattern, false)), impl->nfc = true;
  else if (pre_tokenizer == "llama-bpe" || pre_tokenizer == "llama3")
    impl->splits.push_back(compile_regex(kLlama3Pattern, false)), impl->ignore_merges = true;
  else if (pre_tokenizer == "gpt-2" || pre_tokenizer == "gpt2" || pre_tokenizer == "smollm" || pre_tokenizer == "default")
    impl->splits.push_back(compile_regex(kGpt2Pattern, false));
  else throw Error(str("GGUF vocabulary: pre-tokenizer '", pre_tokenizer, "' is not supported"));
  for (size_t r = 0; r < merges.size(); ++r) {
    size_t space = merges[r].find(' ');
    NQ_CHECK(space != std::string::npos, "GGUF vocabulary: merge ", r, " '", merges[r], "' has no space");
    impl->add_merge(merges[r].substr(0, space), merges[r].substr(space + 1), int32_t(r));
  }
  for (size_t i = 0; i < token_types.size(); ++i)  // 3 = control (special), 4 = user-defined (added)
    if (token_types[i] == 3 || token_types[i] == 4) impl->raw_added.add(impl->source, tokens[i], int32_t(i));
  impl->finish();
  Tokenizer tok;
  tok.impl_ = impl;
  return tok;
}

const TokenizerImpl& Tokenizer::impl() const {
  NQ_CHECK(impl_, "tokenizer: not loaded (build it with Tokenizer::from_file or Tokenizer::from_vocab)");
  return *impl_;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  impl().encode(text, ids, nullptr);
  return ids;
}

std::vector<int32_t> Tokenizer::encode_with_offsets(const std::string& text, std::vector<size_t>& token_begin) const {
  std::vector<int32_t> ids;
  token_begin.clear();
  impl().encode(text, ids, &token_begin);
  return ids;
}

std::string Tokenizer::normalize(const std::string& text) const {
  check_utf8(text);
  return impl().normalize(text);
}

std::string Tokenizer::decode_token(int32_t id) const {
  NQ_CHECK(id >= 0 && size_t(id) < impl().id_to_bytes.size(), "tokenizer: token id ", id, " out of range [0, ",
           impl().id_to_bytes.size(), ")");
  return impl().id_to_bytes[size_t(id)];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  for (int32_t id : ids) {
    NQ_CHECK(id >= 0 && size_t(id) < impl().id_to_bytes.size(), "tokenizer: token id ", id, " out of range [0, ",
             impl().id_to_bytes.size(), ")");
    bytes += impl().id_to_bytes[size_t(id)];
  }
  // Token boundaries may cut UTF-8 sequences; each maximal invalid subpart -> U+FFFD.
  std::string text;
  text.reserve(bytes.size());
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < bytes.size();) {
    int step = utf8_step(s + i, bytes.size() - i);
    if (step > 0) text.append(bytes, i, size_t(step)), i += size_t(step);
    else text += "\xEF\xBF\xBD", i += size_t(-step);
  }
  return text;
}

int32_t Tokenizer::token_id(const std::string& token) const {
  auto it = impl().token_to_id.find(token);
  return it == impl().token_to_id.end() ? -1 : it->second;
}

int64_t Tokenizer::vocab_size() const { return int64_t(impl().id_to_token.size()); }

}  // namespace nq
