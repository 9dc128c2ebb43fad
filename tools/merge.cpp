// ./merge: base model + PEFT LoRA adapter -> one model without adapter, for
// transformers (a HF folder) or llama.cpp / Ollama / LM Studio (a .gguf file), and
// optionally the adapter itself as a llama.cpp LoRA GGUF.
// Each adapted projection becomes W' = W + s * B A (model/merge.h) on the dequantized
// base (a GGUF's blocks or a bitsandbytes checkpoint's NF4 decoded to f32, never
// merged into 4-bit codes); the result is written in the requested type:
//   --out DIR        a HF folder (bf16 or f32 safetensors, config.json, tokenizer files)
//   --out FILE.gguf  a GGUF model (model/gguf_export.h), --type f32|f16|bf16|q8_0|q4_0|q4_1
//   --adapter-gguf FILE.gguf   the adapter in convert_lora_to_gguf.py's layout
// The base is any model ./train takes (model/load_model.h). The merge is host
// arithmetic in f32, so ./merge has no --device. Flags: one table (training/flags.h).
#include <cstdio>
#include <filesystem>
#include <string>

#include "model/adapters.h"
#include "model/gguf_export.h"
#include "model/load_model.h"
#include "model/merge.h"
#include "tools/cli.h"
#include "training/flags.h"

namespace {

using namespace nq;

int run(int argc, char** argv) {
  std::string model_path, adapter_dir, out, adapter_gguf, dtype_flag = "bf16", type = "f16", rope_scaling;
  FlagTable t(
      "usage: ./merge --model BASE --adapter DIR --out DIR [--dtype bfloat16|float16|float32]\n"
      "       ./merge --model BASE --adapter DIR --out FILE.gguf [--type f16] [--adapter-gguf FILE.gguf]\n"
      "       ./merge --model BASE --adapter DIR --adapter-gguf FILE.gguf\n"
      "       ./merge --model BASE --out FILE.gguf [--type f16]   (no adapter: the base itself)\n");
  t.add("model", &model_path,
        "the base: what ./train takes, a HF model folder (dense or bitsandbytes 4-bit)\n"
        "or a .gguf file; quantized weights are dequantized before the merge",
        "PATH");
  t.add("adapter", &adapter_dir,
        "a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors),\n"
        "e.g. the one ./train writes; without it the base is written as it is",
        "DIR");
  t.add("out", &out,
        "the merged model: a folder (created; files in it are replaced) for transformers,\n"
        "or a path ending in .gguf for llama.cpp / Ollama (replaced atomically)",
        "PATH");
  t.add_choice("dtype", &dtype_flag, {"bfloat16", "float16", "float32", "bf16", "f16", "f32"},
               "--out DIR: the dtype of every written tensor (float16 for GPUs without bf16, a T4)", "T");
  t.add_choice("type", &type, gguf_export_types(),
               "--out FILE.gguf: the type of the 2-D weights (norms and biases stay f32;\n"
               "q4_0/q4_1 keep token_embd and output in q8_0)",
               "T");
  t.add("adapter-gguf", &adapter_gguf,
        "also write the adapter as a llama.cpp LoRA GGUF (f32), for\n"
        "`llama-cli -m BASE.gguf --lora FILE.gguf` or Ollama's ADAPTER",
        "FILE");
  add_rope_scaling_flag(t, &rope_scaling).help +=
      "\n(as the run was trained: written into the merged config.json / GGUF metadata)";
  if (!t.parse(argc, argv)) return 0;  // --help
  NQ_CHECK(!model_path.empty() && (!out.empty() || !adapter_gguf.empty()),
           "give --model PATH and --out PATH and/or --adapter-gguf FILE (see --help)");
  NQ_CHECK(!adapter_dir.empty() || adapter_gguf.empty(), "--adapter-gguf needs --adapter DIR");
  const bool gguf_out = is_gguf_path(out);
  NQ_CHECK(out.empty() || gguf_out || !t.given("type"), "--type is for a .gguf --out; a folder takes --dtype bfloat16|float16|float32");
  NQ_CHECK(!gguf_out || !t.given("dtype"), "--dtype is for a folder --out; a .gguf takes --type (",
           "f32|f16|bf16|q8_0|q4_0|q4_1)");
  NQ_CHECK(adapter_gguf.empty() || is_gguf_path(adapter_gguf), "--adapter-gguf ", adapter_gguf,
           ": give a path ending in .gguf");
  for (const std::string& file : {gguf_out ? out : std::string(), adapter_gguf})
    NQ_CHECK(file.empty() || !std::filesystem::is_directory(file), file,
             ": is a folder; give the path of the .gguf file to write");

  LoadedModel loaded = load_model(model_path);
  loaded.config.apply_rope_scaling_flag(rope_scaling);
  const ModelConfig config = loaded.config;
  Decoder model = build_decoder(loaded, {}, /*nf4_base=*/!loaded.nf4.empty());  // NF4 stays as stored
  const AdapterConfig cfg = adapter_dir.empty() ? AdapterConfig{} : load_peft_adapter(adapter_dir, model);
  int merged = 0;
  for (Linear* l : model.linears()) merged += l->has_lora();
  const bool nf4 = model.linears()[0]->is_nf4();
  if (!adapter_gguf.empty()) {
    std::filesystem::path dir = std::filesystem::path(adapter_dir).lexically_normal();
    if (dir.filename().empty()) dir = dir.parent_path();  // "runs/demo/"
    write_adapter_gguf(adapter_gguf, model, cfg, dir.filename().string());
    std::printf("wrote the adapter (%d projections, r %lld, llama.cpp alpha %g) to %s\n", merged,
                (long long)cfg.lora.r, double(gguf_lora_alpha(cfg.lora)), adapter_gguf.c_str());
  }
  if (out.empty()) return 0;
  const char* over = nf4 ? " over the dequantized NF4 base" : is_gguf_path(model_path) ? " over the dequantized GGUF base" : "";
  if (gguf_out) {
    const std::string types =
        write_merged_gguf(out, config, merged_weights(model), gguf_source_metadata(model_path, config), type);
    std::printf("merged %d adapted projections (r %lld, scaling %g)%s into %s (%s: %s tensors)\n", merged,
                (long long)cfg.lora.r, double(cfg.lora.scaling()), over, out.c_str(), type.c_str(), types.c_str());
  } else {
    DType dtype = DType::BF16;
    parse_float_dtype(dtype_flag, &dtype);  // one of the choices above
    save_merged_model(out, model, model_path, dtype);
    std::printf("merged %d adapted projections (r %lld, scaling %g)%s into %s (%s)\n", merged, (long long)cfg.lora.r,
                double(cfg.lora.scaling()), over, out.c_str(), dtype_name(dtype));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return nq::cli::run_main([&] { return run(argc, argv); }); }
