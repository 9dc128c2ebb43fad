// Moving a Decoder's weights between the CPU and the GPU, in place.
//
// The dtype each weight gets on the GPU (the table of kernels/cuda/ops.h):
//   NF4 bases (packed, absmax, nested statistics)  as they are: u8 / f32
//   embed_tokens, lm_head, dense bases, biases     bf16 (activations are bf16)
//   RMSNorm weights (input, post-attention, q/k, final)  f32
//   LoRA A, B                                      f32 master weights (MemCategory::LoRA);
//                                                  bf16 working copies are made per forward
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

void to_device(Decoder& model, Device device);

// The device the model's weights are on.
Device model_device(const Decoder& model);

// "auto" | "cpu" | "cuda" -> the device to run on. "cuda" in a CPU-only build or
// without a visible device, or any other name, is an Error naming `flag` and why.
Device select_device(const std::string& name, const std::string& flag);

// One line for the log: "cuda (NVIDIA H200, 139.8 GiB)" or "cpu, 16 threads".
std::string device_summary(Device device);

}  // namespace nq
