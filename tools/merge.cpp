// ./merge: base model + PEFT LoRA adapter -> one dense checkpoint without adapter.
// Each adapted projection becomes W' = W + s * B A (model/merge.h); an NF4 base
// (bitsandbytes 4-bit checkpoint) is dequantized first. The result (bf16 by
// default) is a plain Hugging Face directory: transformers, ./generate, ./quantize.
// The merge is host arithmetic in f32 (model/merge.h), so ./merge has no --device.
// Flags: one table (training/flags.h).
#include <cstdio>
#include <string>

#include "model/adapters.h"
#include "model/merge.h"
#include "model/bnb_checkpoint.h"
#include "tools/cli.h"
#include "training/flags.h"

namespace {

using namespace nq;

int run(int argc, char** argv) {
  std::string model_dir, adapter_dir, out, dtype_flag = "bf16";
  FlagTable t("usage: ./merge --model DIR --adapter DIR --out DIR [--dtype bf16|f32]\n");
  t.add("model", &model_dir, "the base: a HF model folder, dense or bitsandbytes 4-bit (NF4 is dequantized)", "DIR");
  t.add("adapter", &adapter_dir,
        "a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors),\n"
        "e.g. the one ./train writes",
        "DIR");
  t.add("out", &out, "where the merged model goes (created; files in it are replaced)", "DIR");
  t.add_choice("dtype", &dtype_flag, {"bf16", "f32"}, "the dtype of every written tensor", "T");
  if (!t.parse(argc, argv)) return 0;  // --help
  NQ_CHECK(!model_dir.empty() && !adapter_dir.empty() && !out.empty(),
           "give --model DIR, --adapter DIR and --out DIR (see --help)");
  const DType dtype = dtype_flag == "bf16" ? DType::BF16 : DType::F32;

  Decoder model = load_hf_decoder(model_dir);
  const AdapterConfig cfg = load_peft_adapter(adapter_dir, model);
  int merged = 0;
  for (Linear* l : model.linears()) merged += l->has_lora();
  const bool nf4 = model.linears()[0]->is_nf4();
  save_merged_model(out, model, model_dir, dtype);
  std::printf("merged %d adapted projections (r %lld, scaling %g)%s into %s (%s)\n", merged,
              (long long)cfg.lora.r, double(cfg.lora.scaling()), nf4 ? " over the dequantized NF4 base" : "",
              out.c_str(), dtype_flag.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return nq::cli::run_main([&] { return run(argc, argv); }); }
