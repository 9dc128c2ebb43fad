// Hugging Face model directory plumbing (see hf_files.h).
#include "formats/hf_files.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "formats/atomic_file.h"
#include "runtime/error.h"

namespace nq {

std::string read_text_file(const std::string& path) {
  std::ifstream f(path);
  NQ_CHECK(f.good(), path, ": cannot read");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

DType dtype_of_torch_name(const std::string& name, const std::string& what) {
  if (name == "float32") return DType::F32;
  if (name == "bfloat16") return DType::BF16;
  if (name == "float16") return DType::F16;
  throw Error(str(what, ": dtype \"", name, "\" is not supported (float32, bfloat16, float16)"));
}

const char* torch_name_of_dtype(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: throw Error(str("no torch float dtype for ", dtype_name(dtype)));
  }
}

std::vector<std::string> copy_tokenizer_files(const std::string& src, const std::string& dst) {
  std::vector<std::string> copied;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                           "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json"}) {
    const std::filesystem::path from = std::filesystem::path(src) / name;
    if (!std::filesystem::is_regular_file(from)) continue;
    std::error_code ec;
    std::filesystem::copy_file(from, std::filesystem::path(dst) / name,
                               std::filesystem::copy_options::overwrite_existing, ec);
    NQ_CHECK(!ec, from.string(), ": cannot copy to ", dst, ": ", ec.message());
    copied.push_back(name);
  }
  return copied;
}

void check_not_same_dir(const std::string& src, const std::string& dst) {
  std::error_code ec;
  NQ_CHECK(!std::filesystem::equivalent(src, dst, ec), dst, ": the output directory is the input model ", src,
           "; give another --out");
}

void make_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  NQ_CHECK(!ec && std::filesystem::is_directory(dir), dir, ": cannot create the directory",
           ec ? ": " + ec.message() : "");
}

void write_text_file(const std::string& path, const std::string& text) { write_file_atomically(path, text); }

}  // namespace nq
