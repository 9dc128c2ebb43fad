// Argument checks and CPU/CUDA dispatch for kernels/kernels.h.
#include "kernels/cpu/elementwise.h"
#include "kernels/kernels.h"

namespace nq::kernels {

// Shared argument checks: errors name the op and the tensors.
static void check_same(const char* op, const Tensor& a, const Tensor& b) {
  NQ_CHECK(a.defined() && b.defined(), op, ": undefined tensor argument");
  NQ_CHECK(a.shape() == b.shape(), op, ": shape mismatch ", a.shape().str(), " vs ", b.shape().str());
  NQ_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch ", dtype_name(a.dtype()), " vs ", dtype_name(b.dtype()));
  NQ_CHECK(a.device() == b.device(), op, ": device mismatch ", a.desc(), " vs ", b.desc());
}
static void check_cpu_f32(const char* op, const Tensor& a) {
  NQ_CHECK(a.device() != Device::CPU || a.dtype() == DType::F32, op, ": CPU kernels take f32, got ", a.desc());
}
[[noreturn]] static void no_cuda_kernel(const char* op) {
  throw Error(str(op, ": no CUDA kernel in this build"));
}

void add_inplace(Tensor& dst, const Tensor& src) {
  check_same("add_inplace", dst, src);
  check_cpu_f32("add_inplace", dst);
  if (dst.device() == Device::CPU) cpu::add_inplace(dst.data<float>(), src.data<float>(), dst.numel());
  else no_cuda_kernel("add_inplace");
}

}  // namespace nq::kernels
