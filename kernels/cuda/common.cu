// Host helpers of kernels/cuda/common.cuh that are not templates.
#include "kernels/cuda/common.cuh"
#include "runtime/cuda_runtime.h"

namespace nq::kernels::cuda {

void require_bf16_support(const char* op) {
  static const int cc = cuda_compute_capability();  // 0: unknown (then assume a current GPU)
  NQ_CHECK(cc == 0 || cc >= 80, op, ": bf16 needs a GPU of compute capability 8.0 or newer (A100, RTX 30xx, H100); ",
           "this one (", cuda_device_description(), ") is sm_", cc, ": use --dtype float16");
}

}  // namespace nq::kernels::cuda
