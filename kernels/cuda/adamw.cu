// Multi-tensor AdamW step (torch.optim.AdamW semantics, decoupled weight decay)
// on f32 parameters with f32 gradients and f32 states m, v.
//   g = grad * grad_scale                 (grad_scale = clipping factor, 1 = none)
//   p = p - lr * wd * p
//   m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
//   p = p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Launch: every tensor is cut into chunks of kChunkElems; a table of chunks
// (pointers already offset) goes to the device and one 512-thread block runs
// each chunk, so one launch updates all LoRA tensors of the model.
//   ./bench adamw --n 16777216
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

struct AdamWChunk {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t n;
};

struct AdamWScalars {
  float lr, beta1, beta2, eps, weight_decay, grad_scale, step_size, rsqrt_bias2;
};

__global__ void adamw_kernel(const AdamWChunk* chunks, AdamWScalars s) {
  AdamWChunk c = chunks[blockIdx.x];
  for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) {
    float g = c.g[i] * s.grad_scale;
    float p = c.p[i] * (1.0f - s.lr * s.weight_decay);
    float m = s.beta1 * c.m[i] + (1.0f - s.beta1) * g;
    float v = s.beta2 * c.v[i] + (1.0f - s.beta2) * g * g;
    c.m[i] = m;
    c.v[i] = v;
    c.p[i] = p - s.step_size * m / (sqrtf(v) * s.rsqrt_bias2 + s.eps);
  }
}

void adamw_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& m,
                const std::vector<Tensor>& v, const AdamWConfig& cfg, float grad_scale) {
  NQ_CHECK(grads.size() == params.size() && m.size() == params.size() && v.size() == params.size(),
           "adamw_step: ", params.size(), " params but ", grads.size(), " grads, ", m.size(), " m, ", v.size(), " v");
  NQ_CHECK(cfg.step >= 1, "adamw_step: step must be >= 1, got ", cfg.step);
  std::vector<AdamWChunk> chunks;
  for (size_t t = 0; t < params.size(); ++t) {
    for (const Tensor* x : {&params[t], &grads[t], &m[t], &v[t]})
      NQ_CHECK(x->dtype() == DType::F32 && x->device() == Device::CUDA && x->numel() == params[t].numel(),
               "adamw_step: tensor ", t, ": expected f32 cuda tensors of ", params[t].numel(), " elements, got ",
               x->desc());
    for (int64_t s = 0; s < params[t].numel(); s += kChunkElems)
      chunks.push_back({ptr<float>(params[t]) + s, ptr<float>(grads[t]) + s, ptr<float>(m[t]) + s,
                        ptr<float>(v[t]) + s, std::min(kChunkElems, params[t].numel() - s)});
  }
  if (chunks.empty()) return;
  double bias1 = 1.0 - std::pow(double(cfg.beta1), double(cfg.step));
  double bias2 = 1.0 - std::pow(double(cfg.beta2), double(cfg.step));
  AdamWScalars s{cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, grad_scale, float(cfg.lr / bias1),
                 float(1.0 / std::sqrt(bias2))};
  Tensor table = upload_table(chunks);
  adamw_kernel<<<unsigned(chunks.size()), 512>>>(static_cast<const AdamWChunk*>(table.raw()), s);
  NQ_LAUNCH_CHECK();
}

}  // namespace nq::kernels::cuda
