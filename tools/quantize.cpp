// ./quantize: a Hugging Face model directory or a .gguf file -> a bitsandbytes NF4 4-bit checkpoint
// (model/bnb_checkpoint.h) that transformers loads with from_pretrained and that
// load_hf_decoder (./merge, ./train) reads without a dense copy. Every decoder projection
// becomes NF4 (double-quantized by default); embeddings, norms and lm_head keep the model's dtype.
// With --random PRESET, the checkpoint of a random-init model of that size, written
// tensor by tensor straight from the config (Qwen3-8B-scale runs without a download).
// Flags: one table (training/flags.h).
#include <cstdio>
#include <filesystem>
#include <string>

#include "model/bnb_checkpoint.h"
#include "model/load_model.h"
#include "model/merge.h"
#include "tools/cli.h"
#include "training/flags.h"

namespace {

using namespace nq;

int run_random(const std::string& source, const std::string& out, uint64_t seed, int64_t layers,
               const std::string& tokenizer, bool tokenizer_given) {
  ModelConfig config = source.size() > 5 && source.compare(source.size() - 5, 5, ".json") == 0
                           ? ModelConfig::from_file(source)
                           : ModelConfig::preset(source);
  if (layers > 0) config.num_layers = layers;
  if (tokenizer != "none")  // before minutes of writing
    NQ_CHECK(std::filesystem::is_regular_file(tokenizer + "/tokenizer.json"), "--tokenizer ", tokenizer,
             ": no tokenizer.json there", tokenizer_given ? "" : " (run `make` to unpack the Qwen3 tokenizer from "
             "tests/fixtures, give --tokenizer DIR, or --tokenizer none)");
  std::printf("writing a random %s (%s, seed %llu) to %s\n", source.c_str(), config.summary().c_str(),
              (unsigned long long)seed, out.c_str());
  const RandomCheckpointReport r = write_random_bnb_checkpoint(out, config, seed, [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  });
  std::printf("wrote %lld NF4 parameters and %lld dense (%s) in %d shards, %.2f GB, + config.json, "
              "model.safetensors.index.json\n",
              (long long)r.quantized_params, (long long)r.dense_params, config.torch_dtype.c_str(), r.shards,
              double(r.bytes) / 1e9);
  if (tokenizer != "none") {
    const std::vector<std::string> copied = copy_tokenizer_files(tokenizer, out);
    std::string names;
    for (const std::string& n : copied) names += " " + n;
    std::printf("tokenizer from %s:%s\n", tokenizer.c_str(), names.c_str());
  }
  return 0;
}

// A GGUF (its blocks decoded to f32, as ./train reads it): projections NF4, the rest
// bf16, config.json from the GGUF's metadata, tokenizer files from its vocabulary.
QuantizeReport quantize_gguf(const std::string& src, const std::string& dst, int64_t blocksize, bool double_quant) {
  LoadedModel m = load_model(src, WeightLoad{true, blocksize, double_quant, "bfloat16"});  // NF4 as decoded
  m.config.torch_dtype = "bfloat16";
  QuantizeReport report;
  report.bytes_before = std::filesystem::file_size(src);
  const Nf4Weights& nf4 = m.nf4;
  for (const auto& [name, q] : nf4) {
    report.quantized_params += q->numel();
    report.nf4_bits += q->bits_per_parameter() * double(q->numel());
  }
  for (const auto& [name, t] : m.weights) report.dense_params += t.numel();
  Bnb4bitConfig quant;
  quant.double_quant = double_quant;
  save_bnb_4bit(dst, m.config.to_hf_json(), m.config, m.weights, nf4, quant, DType::BF16);
  write_hf_tokenizer_from_gguf(src, dst);
  report.bytes_after = std::filesystem::file_size(dst + "/model.safetensors");
  return report;
}

int run(int argc, char** argv) {
  std::string model, out, random, tokenizer = cli::default_tokenizer_dir();
  int64_t blocksize = 64, layers = 0;  // blocksize: transformers' BitsAndBytesConfig's (quantize_checkpoint's default)
  uint64_t seed = 0;
  bool no_double_quant = false;
  FlagTable t(
      "usage: ./quantize --model DIR --out DIR [--blocksize 64] [--no-double-quant]\n"
      "       ./quantize --random PRESET|CONFIG.json --out DIR [--seed 0] [--layers N] [--tokenizer DIR]\n");
  t.add("model", &model, "dense HF model folder (config.json + *.safetensors) or a .gguf file", "PATH");
  t.add("out", &out, "where the 4-bit checkpoint goes (created; files in it are replaced)", "DIR");
  t.add("blocksize", &blocksize,
        "weights per NF4 block: a power of two in [32, 4096]\n"
        "(64 is the only size transformers' BitsAndBytesConfig produces)");
  t.add("no-double-quant", &no_double_quant, "keep the block absmax in f32 (bnb_4bit_use_double_quant = false)");
  t.add("random", &random,
        "random-init checkpoint (no download; NF4 double quant, blocksize 64) of a preset\n"
        "(qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, qwen3-30b-a3b, qwen3-235b-a22b) or a\n"
        "config.json: every tensor ~ normal(0, initializer_range), norms 1, rounded to the\n"
        "config's dtype, projections quantized, written one by one (qwen3-8b: 6.1 GB of\n"
        "files, under 4 GB of host memory)",
        "P");
  t.add("seed", &seed, "--random: Philox seed of the weights (same seed, same files)", "S");
  t.add("layers", &layers, "--random: override num_hidden_layers (small test models of a preset's shapes; 0: the config's)");
  Flag& tok = t.add("tokenizer", &tokenizer,
                    "--random: tokenizer files copied beside the weights ('none': no tokenizer)\n", "DIR");
  tok.default_text = "the Qwen3 tokenizer build/fixtures/qwen3-tokenizer next to this program,\n"
                     "which `make` unpacks from tests/fixtures/tokenizer/qwen3";
  if (!t.parse(argc, argv)) return 0;  // --help
  const bool double_quant = !no_double_quant;
  if (!random.empty()) {
    NQ_CHECK(model.empty(), "give --model DIR or --random PRESET, not both (see --help)");
    NQ_CHECK(!out.empty(), "give --out DIR (see --help)");
    NQ_CHECK(layers >= 0, "--layers: expected a positive integer, got ", layers);
    NQ_CHECK(blocksize == 64 && double_quant, "--random writes blocksize 64 with double quant (as transformers); ",
             "drop --blocksize / --no-double-quant");
    return run_random(random, out, seed, layers, tokenizer, t.given("tokenizer"));
  }
  NQ_CHECK(!model.empty() && !out.empty(), "give --model DIR and --out DIR, or --random PRESET and --out DIR (see --help)");
  NQ_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
           "--blocksize: expected a power of two in [32, 4096], got ", blocksize);

  const QuantizeReport r = is_gguf_path(model) ? quantize_gguf(model, out, blocksize, double_quant)
                                               : quantize_checkpoint(model, out, blocksize, double_quant);
  const double file_bits = 8.0 * double(r.bytes_after);  // everything, header included
  std::printf("quantized %lld projection weights to NF4 (blocksize %lld, %s): %.4f bits per parameter\n",
              (long long)r.quantized_params, (long long)blocksize, double_quant ? "double quant" : "f32 absmax",
              r.bits_per_quantized_param());
  std::printf("kept %lld parameters dense (embeddings, norms, lm_head)\n", (long long)r.dense_params);
  std::printf("size: %.2f MB -> %.2f MB (%.2fx smaller, %.3f bits per parameter overall)\n",
              double(r.bytes_before) / 1e6, double(r.bytes_after) / 1e6, double(r.bytes_before) / double(r.bytes_after),
              file_bits / double(r.quantized_params + r.dense_params));
  std::printf("wrote %s/model.safetensors and config.json\n", out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return nq::cli::run_main([&] { return run(argc, argv); }); }
