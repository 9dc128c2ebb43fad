// to_device: every weight of a Decoder moved to a device in the dtype of the
// table in model/device.h; and choosing the device to run on.
#include "model/device.h"

#include <omp.h>

#include "runtime/cuda_runtime.h"
#include "runtime/device_copy.h"

namespace nq {
namespace {

// t on `device` as `dtype` (f32 on the CPU), counted under `cat`.
Tensor moved(const Tensor& t, Device device, DType dtype, MemCategory cat) {
  if (!t.defined()) return t;
  const DType want = device == Device::CPU ? DType::F32 : dtype;
  if (t.device() == device && t.dtype() == want) return t;
  Tensor host = t.to(Device::CPU);  // convert on the host: the CPU knows every dtype
  if (host.dtype() != want) host = host.to_dtype(want);
  Tensor out = Tensor::empty(t.shape(), want, device, cat);
  out.copy_from(host);
  return out;
}

void move_var(const Var& v, Device device, DType dtype, MemCategory cat) {
  if (!v.defined()) return;
  Var handle = v;  // shares the impl: the model's Var sees the new value
  handle.set_value(moved(v.value(), device, dtype, cat));
  handle.zero_grad();
}

void move_linear(Linear& l, Device device, DType compute) {
  move_var(l.bias(), device, compute, MemCategory::Weights);
  if (l.is_nf4()) {
    l.set_nf4(std::make_shared<Nf4Tensor>(l.nf4()->to(device)));  // the codes as they are
  } else {
    move_var(l.weight(), device, compute, MemCategory::Weights);
  }
  if (l.has_lora()) {
    move_var(l.lora().A, device, DType::F32, MemCategory::LoRA);
    move_var(l.lora().B, device, DType::F32, MemCategory::LoRA);
  }
}

}  // namespace

void to_device(Decoder& model, Device device, DType compute) {
  NQ_CHECK(device == Device::CPU || compute == DType::BF16 || compute == DType::F16,
           "to_device: the GPU computes in bf16 or f16, got ",
           dtype_name(compute));
  move_var(model.embed_tokens_, device, compute, MemCategory::Weights);
  if (!model.config_.tie_word_embeddings) move_var(model.lm_head_, device, compute, MemCategory::Weights);
  move_var(model.norm_, device, DType::F32, MemCategory::Weights);
  for (DecoderLayer& L : model.layers_) {
    for (const Var* norm : {&L.input_norm, &L.post_attention_norm, &L.q_norm, &L.k_norm})
      move_var(*norm, device, DType::F32, MemCategory::Weights);
    if (L.sparse()) move_var(L.moe.router, device, compute, MemCategory::Weights);  // 16-bit on the GPU, as h
    for (Linear* l : L.linears()) move_linear(*l, device, compute);
  }
}

Device model_device(const Decoder& model) { return model.lm_head().value().device(); }
DType model_compute_dtype(const Decoder& model) { return model.lm_head().value().dtype(); }

Device select_device(const std::string& name, const std::string& flag) {
  const bool built_with_cuda = cuda_built();
  if (name == "cpu") return Device::CPU;
  if (name == "auto") return built_with_cuda && cuda_available() ? Device::CUDA : Device::CPU;
  NQ_CHECK(name == "cuda", flag, " must be auto, cpu or cuda, got '", name, "'");
  NQ_CHECK(built_with_cuda, flag, " cuda: this build has no CUDA (nvcc was not found when it was compiled; ",
           "rebuild with nvcc on the PATH, or use ", flag, " cpu)");
  NQ_CHECK(cuda_available(), flag, " cuda: no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES, ",
           "or use ", flag, " cpu)");
  const std::string mismatch = cuda_arch_mismatch();
  NQ_CHECK(mismatch.empty(), flag, " cuda: ", mismatch);
  return Device::CUDA;
}

DType gpu_default_compute_dtype() { return cuda_has_bf16() ? DType::BF16 : DType::F16; }

DType select_compute_dtype(const std::string& name, Device device, const std::string& flag, std::string* note) {
  DType asked = DType::F32;
  const bool is_auto = name == "auto";
  NQ_CHECK(is_auto || parse_float_dtype(name, &asked), flag,
           " must be auto, bfloat16, float16 or float32 (bf16, f16, f32), got '", name, "'");
  if (device == Device::CPU) {
    if (note && !is_auto && asked != DType::F32)
      *note = str(flag, " ", name, ": the cpu computes in float32 (the reference path); the flag applies on cuda");
    return DType::F32;
  }
  if (is_auto) return gpu_default_compute_dtype();
  const int cc = cuda_compute_capability();
  const std::string gpu = cuda_device_description();
  NQ_CHECK(asked != DType::F32, flag, " float32: the GPU path computes in bf16 or f16 with fp32 accumulation (",
           "LoRA masters, gradients and AdamW are fp32 already); use ", flag, " auto, bfloat16 or float16");
  NQ_CHECK(asked != DType::BF16 || cuda_has_bf16(), flag, " ", name, ": the GPU (", gpu.empty() ? "?" : gpu, ", sm_", cc,
           ") has no bf16 tensor cores (compute capability 8.0 or newer); use ", flag, " float16");
  return asked;
}

std::string device_summary(Device device) {
  if (device == Device::CPU) return str("cpu, ", omp_get_max_threads(), " threads");
  const std::string gpu = cuda_device_description();
  return gpu.empty() ? "cuda" : str("cuda (", gpu, ")");
}

}  // namespace nq
