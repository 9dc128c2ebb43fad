// Copies an NF4 weight (quant/nf4.h, built on the CPU by quantize_nf4 or loaded
// from a bitsandbytes checkpoint) to the GPU and fills the Nf4Weight view the
// kernels read. The bytes are copied as they are: the layout is the same.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "quant/nf4.h"

namespace nq::kernels::cuda {

Nf4DeviceTensor nf4_to_device(const Nf4Tensor& q) {
  Nf4DeviceTensor d;
  d.packed = q.packed.to(Device::CUDA);
  d.absmax = q.absmax.to(Device::CUDA);
  Nf4Weight& w = d.view;
  w.packed = static_cast<const uint8_t*>(d.packed.raw());
  w.out = q.out;
  w.in = q.in;
  w.blocksize = int32_t(q.blocksize);
  if (q.double_quant) {
    d.nested_absmax = q.nested_absmax.to(Device::CUDA);
    d.nested_code = q.nested_code.to(Device::CUDA);
    w.absmax_q = static_cast<const uint8_t*>(d.absmax.raw());
    w.code8 = ptr<float>(d.nested_code);
    w.nested_absmax = ptr<float>(d.nested_absmax);
    w.offset = q.offset;
    w.nested_blocksize = int32_t(q.nested_blocksize);
  } else {
    w.absmax_f32 = ptr<float>(d.absmax);
  }
  return d;
}

}  // namespace nq::kernels::cuda
