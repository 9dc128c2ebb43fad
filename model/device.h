// Moving a Decoder's weights between the CPU and the GPU, in place.
//
// The dtype each weight gets on the GPU (the table of kernels/cuda/ops.h):
//   NF4 bases (packed, absmax, nested statistics)  as they are: u8 / f32
//   embed_tokens, lm_head, dense bases, biases     the compute dtype, bf16 or f16 (the
//                                                  activations follow the embeddings' dtype)
//   RMSNorm weights (input, post-attention, q/k, final)  f32
//   LoRA A, B                                      f32 master weights (MemCategory::LoRA);
//                                                  working copies in the compute dtype per forward
// Back on the CPU everything is f32 (the reference dtype). The Vars keep their
// identity (same impl, new value), so an optimizer or a parameter list built
// before the move still refers to the moved tensors; gradients are dropped.
// After to_device(model, Device::CUDA), forward_loss() and backward() run the
// same Decoder code, the kernels:: calls dispatching to kernels/cuda/.
//
// Choosing the device (./train --device): "auto" is cuda when this build has
// CUDA and a device is visible, else cpu.
#pragma once
#include <string>

#include "model/decoder.h"

namespace nq {

// --dtype auto's choice on the current GPU: bf16 where it has bf16 tensor cores
// (compute capability >= 8.0, or unknown), else f16.
DType gpu_default_compute_dtype();

// `compute` (bf16 or f16) is the GPU's dtype of the embeddings and dense weights
// (default: the GPU's, as --dtype auto); on the CPU everything is f32 whatever it says.
void to_device(Decoder& model, Device device, DType compute = gpu_default_compute_dtype());

// The device the model's weights are on.
Device model_device(const Decoder& model);
// The dtype its activations are computed in: the embeddings' (f32 on the CPU; bf16 or f16 on the GPU).
DType model_compute_dtype(const Decoder& model);

// "auto" | "cpu" | "cuda" -> the device to run on. "cuda" in a CPU-only build or
// without a visible device, or any other name, is an Error naming `flag` and why.
Device select_device(const std::string& name, const std::string& flag);

// --dtype (training/flags.h's add_dtype_flag) -> the compute dtype of a run on `device`.
// CPU: f32 whatever the name (the reference dtype; *note says so when the name asked
// for another). CUDA: auto is bf16 on GPUs with bf16 tensor cores (compute capability
// >= 8.0), else f16; bfloat16 on an older GPU, or float32, is an Error naming `flag`,
// the GPU and the dtype to use.
DType select_compute_dtype(const std::string& name, Device device, const std::string& flag,
                           std::string* note = nullptr);

// One line for the log: "cuda (NVIDIA H200, 139.8 GiB)" or "cpu, 16 threads".
std::string device_summary(Device device);

}  // namespace nq
