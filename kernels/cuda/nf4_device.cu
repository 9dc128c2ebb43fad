// The GPU view of an NF4 weight (quant/nf4.h): nf4_device_view maps an
// Nf4Tensor whose tensors are on the GPU to the Nf4Weight the kernels read (the
// one place that does), and nf4_to_device copies a CPU one there first. The bytes
// are as they are: bitsandbytes' layout is the kernels' layout.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

Nf4Weight nf4_device_view(const Nf4Tensor& w) {
  auto on_gpu = [](const Tensor& t, const char* name) {
    NQ_CHECK(t.defined() && t.device() == Device::CUDA, "nf4 weight: ", name, " is ",
             t.defined() ? t.desc() : std::string("undefined"), ", expected a cuda tensor (move the model with to_device)");
    return t.raw();
  };
  Nf4Weight v;
  v.packed = static_cast<const uint8_t*>(on_gpu(w.packed, "packed"));
  v.out = w.out;
  v.in = w.in;
  v.blocksize = int32_t(w.blocksize);
  v.nested_blocksize = int32_t(w.nested_blocksize);
  if (w.double_quant) {
    NQ_CHECK(w.absmax.dtype() == DType::U8, "nf4 weight: double-quant absmax must be u8, got ", w.absmax.desc());
    v.absmax_q = static_cast<const uint8_t*>(on_gpu(w.absmax, "absmax"));
    v.code8 = static_cast<const float*>(on_gpu(w.nested_code, "nested_code"));
    v.nested_absmax = static_cast<const float*>(on_gpu(w.nested_absmax, "nested_absmax"));
    v.offset = w.offset;
  } else {
    NQ_CHECK(w.absmax.dtype() == DType::F32, "nf4 weight: absmax must be f32, got ", w.absmax.desc());
    v.absmax_f32 = static_cast<const float*>(on_gpu(w.absmax, "absmax"));
  }
  return v;
}

Nf4DeviceTensor nf4_to_device(const Nf4Tensor& q) {
  Nf4Tensor on_gpu = q;  // shape and statistics scalars as they are; tensors replaced by GPU copies
  for (Tensor* t : {&on_gpu.packed, &on_gpu.absmax, &on_gpu.nested_absmax, &on_gpu.nested_code})
    if (t->defined()) *t = t->to(Device::CUDA);
  Nf4DeviceTensor d;
  d.packed = on_gpu.packed;
  d.absmax = on_gpu.absmax;
  d.nested_absmax = on_gpu.nested_absmax;
  d.nested_code = on_gpu.nested_code;
  d.view = nf4_device_view(on_gpu);
  return d;
}

}  // namespace nq::kernels::cuda
