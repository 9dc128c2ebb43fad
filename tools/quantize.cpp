// ./quantize: a Hugging Face model directory -> a bitsandbytes NF4 4-bit checkpoint
// (model/bnb_checkpoint.h) that transformers loads with from_pretrained and that
// load_hf_decoder (./merge) reads without a dense copy. Every decoder projection becomes
// NF4 (double-quantized by default); embeddings, norms and lm_head keep the model's dtype.
#include <cstdio>
#include <string>

#include "model/bnb_checkpoint.h"
#include "tools/cli.h"

namespace {

using namespace nq;

const char* kHelp =
    "usage: ./quantize --model DIR --out DIR [--blocksize 64] [--no-double-quant]\n"
    "  --model DIR          dense HF model folder (config.json + *.safetensors)\n"
    "  --out DIR            where the 4-bit checkpoint goes (created; files in it are replaced)\n"
    "  --blocksize N        weights per NF4 block: a power of two in [32, 4096] (default 64,\n"
    "                       the only size transformers' BitsAndBytesConfig produces)\n"
    "  --no-double-quant    keep the block absmax in f32 (bnb_4bit_use_double_quant = false)\n";

int run(int argc, char** argv) {
  std::string model, out;
  int64_t blocksize = 64;
  bool double_quant = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return std::fputs(kHelp, stdout), 0;
    if (a == "--model") model = cli::value(argc, argv, i);
    else if (a == "--out") out = cli::value(argc, argv, i);
    else if (a == "--blocksize") blocksize = cli::to_int(a, cli::value(argc, argv, i));
    else if (a == "--no-double-quant") double_quant = false;
    else throw Error(str("unknown flag '", a, "' (see --help)"));
  }
  NQ_CHECK(!model.empty() && !out.empty(), "give --model DIR and --out DIR (see --help)");
  NQ_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
           "--blocksize: expected a power of two in [32, 4096], got ", blocksize);

  const QuantizeReport r = quantize_checkpoint(model, out, blocksize, double_quant);
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
