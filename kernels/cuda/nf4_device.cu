// Copies an NF4 weight (quant/nf4.h, built on the CPU by quantize_nf4 or loaded
// from a bitsandbytes checkpoint) to the GPU and fills the Nf4Weight view the
// kernels read (nf4_device_view, quant/nf4_linear.h, the one place that maps an
// Nf4Tensor's fields to the view). The bytes are copied as they are: the layout is the same.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "quant/nf4_linear.h"

namespace nq::kernels::cuda {

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
