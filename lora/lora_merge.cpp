// W' = W + s B A (see lora_merge.h).
#include "lora/lora_merge.h"

#include "kernels/kernels.h"

namespace nq {

void merge_lora_into(Tensor& w, const LoraLinear& lora) {
  const Tensor a = lora.A.value().to(Device::CPU), b = lora.B.value().to(Device::CPU);  // [r, in], [out, r]
  const Tensor delta = kernels::matmul(b, a);                                        // B A: [out, in]
  float* wp = w.data<float>();
  const float* dp = delta.data<float>();
  for (int64_t i = 0; i < w.numel(); ++i) wp[i] += lora.scaling * dp[i];
}

}  // namespace nq
