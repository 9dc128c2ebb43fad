// ./tokenize: text <-> token ids with the tokenizer of any model ./train takes (a
// .gguf's vocabulary, a model folder's tokenizer.json, or a tokenizer.json file),
// one JSON object per line (JSONL), so it composes with data pipelines and checks against HF.
//   ./tokenize --tokenizer PATH [--jsonl]   {"text": "..."} -> {"ids": [...]}
//   ./tokenize --tokenizer PATH --decode    {"ids": [...]}  -> {"text": "..."}
// Flags: one table (training/flags.h).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "model/load_model.h"
#include "model/tokenizer.h"
#include "runtime/error.h"
#include "tools/cli.h"
#include "training/flags.h"

namespace {

using namespace nq;

void append_ids(std::string& out, const std::vector<int32_t>& ids) {
  out += "{\"ids\": [";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(ids[i]);
  }
  out += "]}\n";
}

int run(int argc, char** argv) {
  std::string dir = cli::default_tokenizer_dir();
  bool jsonl = false, decode = false, stats = false;
  FlagTable t("usage: ./tokenize --tokenizer PATH [--jsonl | --decode] [--stats]\n");
  Flag& tokenizer = t.add("tokenizer", &dir,
                          "a model as ./train takes it (.gguf file or folder holding tokenizer.json),\n"
                          "or a tokenizer.json file\n",
                          "PATH");
  tokenizer.default_text = "build/fixtures/qwen3-tokenizer beside this program, unpacked by make";
  t.add("jsonl", &jsonl, "encode: each stdin line {\"text\": \"...\"} -> {\"ids\": [...]} on stdout (the default)");
  t.add("decode", &decode, "decode: each stdin line {\"ids\": [...]} -> {\"text\": \"...\"}");
  t.add("stats", &stats, "print lines, MB of text and MB/s of encode/decode alone to stderr");
  t.set_epilog("Special tokens written in the text (<|im_start|>, ...) are matched; no BOS/EOS is added.\n");
  if (!t.parse(argc, argv)) return 0;  // --help
  NQ_CHECK(!(jsonl && decode), "give --jsonl or --decode, not both");
  nq::Tokenizer tok = nq::load_tokenizer(dir);

  std::ios::sync_with_stdio(false);
  std::string line, out;
  size_t line_no = 0, text_bytes = 0;
  double seconds = 0;
  while (std::getline(std::cin, line)) {
    ++line_no;
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw nq::Error(nq::str("stdin line ", line_no, ": invalid JSON: ", e.what()));
    }
    const char* key = decode ? "ids" : "text";
    NQ_CHECK(row.is_object() && row.contains(key) && (decode ? row[key].is_array() : row[key].is_string()),
             "stdin line ", line_no, ": expected {\"", key, "\": ", decode ? "[ids]" : "\"...\"", "}");
    auto start = std::chrono::steady_clock::now();
    try {
      if (decode) {
        std::string text = tok.decode(row[key].get<std::vector<int32_t>>());
        text_bytes += text.size();
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        out += nlohmann::json{{"text", text}}.dump() + "\n";
      } else {
        const std::string& text = row[key].get_ref<const std::string&>();
        std::vector<int32_t> ids = tok.encode(text);
        text_bytes += text.size();
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        append_ids(out, ids);
      }
    } catch (const nq::Error& e) {
      throw nq::Error(nq::str("stdin line ", line_no, ": ", e.what()));
    } catch (const nlohmann::json::exception& e) {
      throw nq::Error(nq::str("stdin line ", line_no, ": ids must be integers: ", e.what()));
    }
    if (out.size() > (1 << 20)) std::cout << out, out.clear();
  }
  std::cout << out;
  if (stats)
    std::fprintf(stderr, "%zu lines, %.2f MB of text, %s %.2f MB/s (tokenizer only, 1 thread)\n", line_no,
                 text_bytes / 1e6, decode ? "decode" : "encode", text_bytes / 1e6 / std::max(seconds, 1e-9));
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return nq::cli::run_main([&] { return run(argc, argv); }); }
