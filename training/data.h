// SFT datasets: JSONL files -> examples -> token ids with a training mask.
//
// One JSON object per line, in one of the formats people use (detected per file
// from the first valid line):
//   messages           {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
//   prompt-completion  {"prompt": "...", "completion": "..."}
//   alpaca             {"instruction": "...", "input": "..." (optional), "output": "..."}
//   text               {"text": "..."}
// Other keys are ignored. Blank lines are skipped. A malformed line is reported
// as "FILE:LINE: <what is wrong>"; the policy decides whether it stops the load
// (error) or is counted and skipped (skip).
//
// Parsing (this file) needs no tokenizer; training/encode.h turns examples into
// token ids and the mask of tokens the loss trains on.
#pragma once
#include <cstdint>
#include <istream>
#include <string>
#include <vector>

#include "model/chat_template.h"  // ChatMessage

namespace nq {

enum class DataFormat { Messages, PromptCompletion, Alpaca, Text };
const char* data_format_name(DataFormat f);  // "messages", "prompt-completion", "alpaca", "text"

enum class BadLinePolicy { Error, Skip };
BadLinePolicy parse_bad_line_policy(const std::string& name);  // "error" | "skip"

// One parsed line. Only the fields of its format are filled.
struct Example {
  int64_t line = 0;               // 1-based line in the file, for messages about it
  std::vector<ChatMessage> messages;  // messages (roles validated: system | user | assistant)
  std::string prompt, completion; // prompt-completion
  std::string instruction, input, output;  // alpaca ("input" may be empty)
  std::string text;               // text
};

// A tokenized example. trained[t] = 1 when token t is a target of the loss,
// i.e. the model is trained to predict ids[t] from ids[0..t-1]. The batcher
// turns this into next-token labels (training/batch.h).
struct Sample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> trained;  // same length as ids
  int64_t line = 0;              // source line, for messages
};

struct ParsedData {
  DataFormat format = DataFormat::Messages;
  std::vector<Example> examples;
  int64_t skipped_lines = 0;          // bad lines dropped under BadLinePolicy::Skip
  std::string first_skip_message;     // the first of them, for the caller to show
};

// Reads a JSONL stream; `name` is the file name used in messages. Throws when
// no line is valid ("FILE: no valid examples").
ParsedData parse_jsonl(std::istream& in, const std::string& name, BadLinePolicy policy);
ParsedData parse_jsonl_file(const std::string& path, BadLinePolicy policy);

// The byte offset of the first byte of `s` that is not valid UTF-8 (truncated or
// overlong sequences, surrogates, code points above U+10FFFF), or npos. parse_jsonl
// reports it as "FILE:LINE: invalid UTF-8 at byte offset N of the line (byte 0xff)".
size_t first_invalid_utf8(const std::string& s);

// The standard Alpaca prompt (tatsu-lab/stanford_alpaca PROMPT_DICT), with or
// without input. It ends with "### Response:" and, as in Alpaca's train.py, the
// output follows directly; the model is trained on the output.
std::string alpaca_prompt(const std::string& instruction, const std::string& input);

}  // namespace nq
