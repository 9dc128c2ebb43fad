// W' = W + s B A for every adapted projection of a Decoder (see merge.h).
#include "model/merge.h"
#include "formats/json.h"

#include <nlohmann/json.hpp>

#include "formats/hf_files.h"
#include "formats/safetensors.h"
#include "lora/lora_merge.h"
#include "model/decoder.h"

namespace nq {

TensorMap merged_weights(Decoder& model) {
  TensorMap out;
  // Embeddings, norms, biases, an untied lm_head: as they are. Projection weights
  // (dense ones are among the parameters, NF4 ones are not) come from the loop below.
  for (const Var& p : model.parameters())
    if (!is_projection_weight(p.name())) out[p.name()] = p.value().to(Device::CPU).clone();
  for (Linear* l : model.linears()) {
    Tensor w = l->dense_weight().to(Device::CPU).clone();  // [out, in] f32 (NF4 dequantized)
    if (l->has_lora()) merge_lora_into(w, l->lora());  // W + s B A
    out[l->name() + ".weight"] = w;
  }
  return out;
}

void save_merged_model(const std::string& out_dir, Decoder& model, const std::string& source_dir, DType dtype) {
  check_not_same_dir(source_dir, out_dir);
  const std::string config_path = source_dir + "/config.json";
  nlohmann::json config = parse_json(read_text_file(config_path), config_path);
  config.erase("quantization_config");
  config.erase("torch_dtype");  // transformers < 5 spelling; >= 5 reads and writes "dtype"
  config["dtype"] = torch_name_of_dtype(dtype);

  TensorMap merged = merged_weights(model);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamSpec& spec : parameter_specs(model.config())) {
    Tensor& t = merged.at(spec.name);
    tensors.emplace_back(spec.name, t.dtype() == dtype ? t : t.to_dtype(dtype));
    t = Tensor();  // one converted copy at a time besides the merged set
  }
  make_dir(out_dir);
  save_safetensors(out_dir + "/model.safetensors", tensors, {{"format", "pt"}});
  write_text_file(out_dir + "/config.json", config.dump(2) + "\n");
  copy_tokenizer_files(source_dir, out_dir);
}

}  // namespace nq
