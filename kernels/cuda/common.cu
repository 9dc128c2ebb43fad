// Host helpers of kernels/cuda/common.cuh that are not templates.
#include "kernels/cuda/common.cuh"
#include "runtime/cuda_runtime.h"

namespace nq::kernels::cuda {

void require_bf16_support(const char* op) {
  NQ_CHECK(cuda_has_bf16(), op, ": bf16 needs a GPU of compute capability 8.0 or newer (A100, RTX 30xx, H100); ",
           "this one (", cuda_device_description(), ") is sm_", cuda_compute_capability(), ": use --dtype float16");
}

}  // namespace nq::kernels::cuda
