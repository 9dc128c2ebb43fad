// JSONL parsing for the SFT formats (see data.h): format detection from the
// first valid line, field and role validation with FILE:LINE messages.
#include "training/data.h"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace nq {

using json = nlohmann::json;

const char* data_format_name(DataFormat f) {
  switch (f) {
    case DataFormat::Messages: return "messages";
    case DataFormat::PromptCompletion: return "prompt-completion";
    case DataFormat::Alpaca: return "alpaca";
    case DataFormat::Text: return "text";
  }
  return "?";
}

BadLinePolicy parse_bad_line_policy(const std::string& name) {
  if (name == "error") return BadLinePolicy::Error;
  if (name == "skip") return BadLinePolicy::Skip;
  throw Error(str("unknown bad-line policy '", name, "' (expected error or skip)"));
}

std::string alpaca_prompt(const std::string& instruction, const std::string& input) {
  if (input.empty())
    return "Below is an instruction that describes a task. Write a response that appropriately completes the "
           "request.\n\n### Instruction:\n" + instruction + "\n\n### Response:";
  return "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
         "response that appropriately completes the request.\n\n### Instruction:\n" + instruction +
         "\n\n### Input:\n" + input + "\n\n### Response:";
}

namespace {

// A line-level problem; becomes "FILE:LINE: <message>".
struct BadLine {
  std::string message;
};

// The format a JSON object is written in, judged by its keys; throws BadLine
// when it matches none.
DataFormat detect_format(const json& obj) {
  if (obj.contains("messages")) return DataFormat::Messages;
  if (obj.contains("prompt") || obj.contains("completion")) return DataFormat::PromptCompletion;
  if (obj.contains("instruction") || obj.contains("output")) return DataFormat::Alpaca;
  if (obj.contains("text")) return DataFormat::Text;
  throw BadLine{"no known fields (expected \"messages\", \"prompt\"/\"completion\", \"instruction\"/\"output\" or "
                "\"text\")"};
}

std::string string_field(const json& obj, const char* key, bool required = true) {
  auto it = obj.find(key);
  if (it == obj.end()) {
    if (!required) return "";
    throw BadLine{str("missing field \"", key, "\"")};
  }
  if (!it->is_string()) throw BadLine{str("field \"", key, "\" must be a string, got ", it->type_name())};
  return it->get<std::string>();
}

std::vector<ChatMessage> parse_messages(const json& obj) {
  const json& msgs = obj.at("messages");
  if (!msgs.is_array()) throw BadLine{str("field \"messages\" must be an array, got ", msgs.type_name())};
  if (msgs.empty()) throw BadLine{"field \"messages\" is empty"};
  std::vector<ChatMessage> turns;
  for (size_t i = 0; i < msgs.size(); ++i) {
    const json& m = msgs[i];
    if (!m.is_object()) throw BadLine{str("messages[", i, "] must be an object, got ", m.type_name())};
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) throw BadLine{str("messages[", i, "].role is missing or not a string")};
    std::string r = role->get<std::string>();
    if (r != "system" && r != "user" && r != "assistant")
      throw BadLine{str("messages[", i, "].role is \"", r, "\" (expected system, user or assistant)")};
    auto content = m.find("content");
    if (content == m.end() || !content->is_string())
      throw BadLine{str("messages[", i, "].content is missing or not a string")};
    // Qwen3's template reads reasoning_content before the content; it is not read
    // here, so it must not be dropped silently (docs/data.md, "Thinking").
    if (auto rc = m.find("reasoning_content"); rc != m.end() && !rc->is_null())
      throw BadLine{str("messages[", i, "].reasoning_content is not read: write the reasoning as "
                        "\"<think>\\n...\\n</think>\\n\\n\" at the start of the content (Qwen3's template renders both alike)")};
    turns.push_back({r, content->get<std::string>()});
  }
  return turns;
}

// Reads the fields of `format` from obj into ex.
void fill_fields(const json& obj, DataFormat format, Example& ex) {
  switch (format) {
    case DataFormat::Messages:
      if (!obj.contains("messages")) throw BadLine{"missing field \"messages\""};
      ex.messages = parse_messages(obj);
      break;
    case DataFormat::PromptCompletion:
      ex.prompt = string_field(obj, "prompt");
      ex.completion = string_field(obj, "completion");
      break;
    case DataFormat::Alpaca:
      ex.instruction = string_field(obj, "instruction");
      ex.input = string_field(obj, "input", /*required=*/false);
      ex.output = string_field(obj, "output");
      break;
    case DataFormat::Text:
      ex.text = string_field(obj, "text");
      break;
  }
}

Example parse_example(const json& obj, DataFormat format) {
  Example ex;
  try {
    fill_fields(obj, format, ex);
  } catch (BadLine& bad) {
    // A missing field on a later line usually means a line of another format.
    if (bad.message.rfind("missing field", 0) == 0) bad.message += str(" (the file is ", data_format_name(format), ")");
    throw;
  }
  return ex;
}

// The line must be UTF-8 (JSON text is): the first bad byte is named by its offset,
// which a JSON parser would only call "invalid JSON".
void check_utf8(const std::string& line) {
  const size_t bad = first_invalid_utf8(line);
  if (bad == std::string::npos) return;
  char byte[8];
  std::snprintf(byte, sizeof byte, "0x%02x", unsigned(static_cast<unsigned char>(line[bad])));
  throw BadLine{str("invalid UTF-8 at byte offset ", bad, " of the line (byte ", byte,
                    "); save the file as UTF-8")};
}

}  // namespace

size_t first_invalid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = p[i];
    size_t len;
    unsigned min;  // the smallest code point of that length (shorter encodings are overlong)
    if (c < 0x80) { ++i; continue; }
    else if ((c & 0xE0) == 0xC0) len = 2, min = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, min = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, min = 0x10000;
    else return i;  // a continuation byte without a lead, or 0xF8..0xFF
    if (i + len > n) return i;
    unsigned cp = c & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;  // overlong, too big, surrogate
    i += len;
  }
  return std::string::npos;
}

ParsedData parse_jsonl(std::istream& in, const std::string& name, BadLinePolicy policy) {
  ParsedData out;
  bool have_format = false;
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    try {
      check_utf8(line);
      json obj = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (obj.is_discarded()) throw BadLine{"invalid JSON"};
      if (!obj.is_object()) throw BadLine{str("expected a JSON object, got ", obj.type_name())};
      DataFormat format = have_format ? out.format : detect_format(obj);
      Example ex = parse_example(obj, format);
      ex.line = lineno;
      if (!have_format) { out.format = format; have_format = true; }
      out.examples.push_back(std::move(ex));
    } catch (const BadLine& bad) {
      std::string message = str(name, ":", lineno, ": ", bad.message);
      if (policy == BadLinePolicy::Error) throw Error(message);
      if (out.skipped_lines++ == 0) out.first_skip_message = message;
    }
  }
  NQ_CHECK(!out.examples.empty(), name, ": no valid examples",
           out.skipped_lines ? str(" (", out.skipped_lines, " bad lines skipped; first: ", out.first_skip_message, ")")
                             : std::string());
  return out;
}

ParsedData parse_jsonl_file(const std::string& path, BadLinePolicy policy) {
  std::ifstream f(path, std::ios::binary);
  NQ_CHECK(f.good(), path, ": cannot open dataset file");
  return parse_jsonl(f, path, policy);
}

}  // namespace nq
