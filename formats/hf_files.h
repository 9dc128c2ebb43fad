// The plumbing of a Hugging Face model directory that ./quantize, ./merge and the PEFT
// adapter writer share: text files in and out (atomically), directories, the tokenizer
// files carried over to a new model directory, and torch dtype names.
#pragma once
#include <string>
#include <vector>

#include "runtime/dtype.h"

namespace nq {

// The text of `path` (a JSON file); an error naming it when unreadable.
std::string read_text_file(const std::string& path);

// The DType of a torch dtype name: "float32" | "bfloat16" | "float16"; else an error naming `what`.
DType dtype_of_torch_name(const std::string& name, const std::string& what);
const char* torch_name_of_dtype(DType dtype);  // the inverse

// Copies the tokenizer and generation files of `src` (tokenizer.json,
// tokenizer_config.json, special_tokens_map.json, vocab.json, merges.txt,
// added_tokens.json, chat_template.jinja, generation_config.json) that exist into
// `dst`; returns the names copied.
std::vector<std::string> copy_tokenizer_files(const std::string& src, const std::string& dst);

// An error when `dst` is the directory `src` (writing there would destroy the input).
void check_not_same_dir(const std::string& src, const std::string& dst);

// Creates `dir` (and its parents) when missing; an error when it cannot.
void make_dir(const std::string& dir);

// Writes `text` to `path` atomically (PATH.tmp, then rename).
void write_text_file(const std::string& path, const std::string& text);

}  // namespace nq
