// Merging one LoRA adapter into its base weight.
//
// An adapted projection computes y = x W^T + s * (x A^T) B^T = x (W + s B A)^T, so
//   W' = W + s * B A          W, W' [out, in], B [out, r], A [r, in], s = alpha / r
// gives the same outputs without the adapter (dropout is off at inference).
// model/merge.h merges every adapter of a Decoder (./merge).
#pragma once
#include "lora/lora_linear.h"

namespace nq {

// w += s * B A: `w` [out, in] a dense f32 CPU tensor (the base weight, an NF4 one
// dequantized), `lora` its adapter (A, B copied to the host when on the GPU).
void merge_lora_into(Tensor& w, const LoraLinear& lora);

}  // namespace nq
