// CUDA kernels against the CPU kernels (the fp32 reference), through
// kernels/kernels.h on both sides: same random inputs (never zeros), several
// shapes including awkward ones, GPU outputs NaN-poisoned at allocation
// (tests/main.cpp turns poisoning on for every device). Every op of the registry
// (kernels/registry.h) runs in its device mode here, at its Mode::Device shapes
// and in both activation dtypes (the QLoRA ops too: NF4 dequantization and
// matmuls, LoRA over NF4, AdamW, the gradient norm); the tests after it are the
// ones no registration expresses (cast rounding specials, bad input, cuBLASLt,
// the NF4 table, shape errors).
//
// Error = ||gpu - cpu|| / ||cpu|| over the whole output. Bounds:
//   f32 on the GPU:  1e-5 (same math, different summation order / libm)
//   bf16 on the GPU: 1e-2 (inputs are rounded to bf16 first and the CPU sees
//                    the same rounded values; outputs carry one bf16 rounding,
//                    relative 2^-9 at worst per element)
//   f16 on the GPU:  3e-3 (the same with f16's 11 bits: 2^-11 per rounding)
//   bit-exact:       NF4 dequantization (f32 and bf16), f32 <-> bf16 casts, the
//                    dropout mask (same Philox stream), the cross-entropy's row count
//   NF4 matmul:      the 16-bit tiles' bound where the fused tensor-core GEMM stages them (16 < M < 256
//                    rows, Auto or Fused), else the activation's bound; LoRA over NF4's y, dx 1e-2
//   AdamW:           1e-6 against the CPU optimizer (same arithmetic; nvcc may
//                    contract a multiply-add the host build keeps separate)
// (each registration names its outputs' bounds: kernels/ops/*.cpp)
// Without a GPU every test prints `skipped: no CUDA device (<name>)` and passes;
// a CPU-only build compiles to the same skip lines.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"
#include "kernels/kernels.h"
#include "kernels/registry.h"
#include "quant/nf4.h"
#include "runtime/cuda_compare.h"
#include "runtime/cuda_runtime.h"
#include "runtime/device_copy.h"

#include "tests/gpu_test.h"

using namespace nq;
namespace k = nq::kernels;

namespace {

#define GPU_TEST(name) NQ_GPU_TEST("cuda " #name, name)

const DType kDtypes[] = {DType::F32, DType::BF16, DType::F16};

// Bit-exact comparison of two CPU tensors: "" when every element's bytes are equal,
// else where the first difference is (so a failure says where, not just that).
std::string bit_difference(const Tensor& got, const Tensor& want) {
  if (got.dtype() != want.dtype() || got.shape() != want.shape()) return str("got ", got.desc(), ", want ", want.desc());
  size_t es = dtype_size(want.dtype());
  const char *g = static_cast<const char*>(got.raw()), *w = static_cast<const char*>(want.raw());
  for (int64_t i = 0; i < want.numel(); ++i)
    if (std::memcmp(g + i * es, w + i * es, es) != 0)
      return str("first difference at element ", i, ": got ", got.to_vector()[i], ", want ", want.to_vector()[i]);
  return "";
}
#define CHECK_BIT_EXACT(got_host, want)                  \
  do {                                                  \
    std::string diff_ = bit_difference(got_host, want); \
    CHECK_MESSAGE(diff_.empty(), diff_);                \
  } while (0)


}  // namespace

GPU_TEST(registry_device_every_op) {
  namespace reg = nq::kernels::registry;
  const bool has_bf16 = cuda_has_bf16();
  for (const reg::Op& op : reg::ops()) {
    if (!op.has_cpu || op.bench_only) continue;  // GPU-only ops have their own tests below
    SUBCASE(op.name.c_str()) {
      std::vector<reg::Dims> shapes = op.shapes(reg::Mode::Device);
      CHECK(shapes.size() >= 3);
      for (const reg::Dims& d : shapes)
        for (DType dt : kDtypes) {
          if (!(d.dtypes & (dt == DType::F32 ? 1 : dt == DType::BF16 ? 2 : 4))) continue;
          if (dt == DType::BF16 && !has_bf16) continue;  // sm_70/75 (NQ_EMU_CC=75): refused, tested below
          CAPTURE(reg::describe_case(op, d));
          CAPTURE(dtype_name(dt));
          std::vector<reg::Check> checks = reg::check_device(op, d, Device::CUDA, dt);
          CHECK(!checks.empty());
          for (const reg::Check& c : checks) {
            INFO(c.what, ": error ", c.error, " (bound ", c.bound, ")");
            CHECK(c.ok);
          }
        }
    }
  }
}

GPU_TEST(cast_rounds_like_half_h) {
  // f32 -> bf16 / f16 must round to nearest even exactly as runtime/half.h (the host's
  // to_dtype): random values, plus ties (1 + 2^-8 rounds down to 1 in bf16, 1 + 3 * 2^-8
  // up to 1 + 2^-6), values that round up to the next binade or to infinity (f16: above
  // 65504), subnormals, zeros of both signs.
  Tensor x = random_normal({1000}, 25, 10.0f);
  std::vector<float> special = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -(1.0f + 0x1p-8f), 1.99999988f, 3.4028235e38f,
                                -3.4028235e38f, 1e-40f, 0.0f, -0.0f, 65520.0f, 65519.0f, 1e-7f, 1.0f + 0x1p-11f};
  std::memcpy(x.data<float>(), special.data(), special.size() * sizeof(float));
  for (DType dtype : {DType::BF16, DType::F16}) {
    if (dtype == DType::BF16 && !cuda_has_bf16()) continue;  // no bf16 before sm_80
    CAPTURE(std::string(dtype_name(dtype)));
    Tensor got = k::cast(x.to(Device::CUDA), dtype);
    REQUIRE(got.dtype() == dtype);
    Tensor want = x.to_dtype(dtype), got_host = got.to(Device::CPU);
    CHECK_BIT_EXACT(got_host, want);
    // 16 bits -> f32 is exact: back to the rounded values, bit for bit.
    Tensor back = k::cast(got, DType::F32).to(Device::CPU), want_back = want.to_dtype(DType::F32);
    CHECK_BIT_EXACT(back, want_back);
  }
}


GPU_TEST(global_grad_norm_of_no_tensors_is_zero) {
  // (the norm of tensors is the registry's grad_norm, in device mode)
  CHECK(kernels::global_grad_norm({}) == 0.0);
}

GPU_TEST(bad_input_raises_errors) {
  // Ids and labels live on the device but are user data: checked, not trusted.
  Tensor table = to_device(random_normal({11, 4}, 90), DType::BF16);
  Tensor ids = Tensor::from_ids({0, 3, 11}, {3}).to(Device::CUDA);
  CHECK_THROWS_WITH_AS(k::embedding_forward(table, ids), doctest::Contains("ids[2] = 11 out of range [0, 11)"), Error);
  Tensor h = to_device(random_normal({2, 4}, 91), DType::BF16);
  Tensor labels = Tensor::from_ids({-100, -1}, {2}).to(Device::CUDA);
  CHECK_THROWS_WITH_AS(k::linear_cross_entropy(h, table, labels, 2, nullptr, nullptr, nullptr),
                       doctest::Contains("labels[1] = -1 out of range [0, 11)"), Error);
  Tensor w_bf16 = to_device(random_normal({4}, 92), DType::BF16);
  CHECK_THROWS_WITH_AS(k::rmsnorm_forward(h, w_bf16, 1e-6f, nullptr), doctest::Contains("weight must be f32"), Error);
  Tensor wide_heads = to_device(random_normal({1, 1, 1026}, 93), DType::BF16);
  CHECK_THROWS_WITH_AS(k::rope_forward(wide_heads, Tensor::from_ids({0}, {1}).to(Device::CUDA), rope_table(1e6f, 1026)),
                       doctest::Contains("head_dim 1026 of x [1, 1, 1026] exceeds the GPU kernel's 512"), Error);
}

// ---- NF4 -------------------------------------------------------------------
namespace {

// A weight quantized on the CPU by quant/nf4.h (bit-exact with bitsandbytes,
// tests/test_nf4.cpp) and copied to the GPU: the CPU dequantize_nf4 is the reference.
struct Nf4Case {
  Nf4Tensor q;
  kernels::cuda::Nf4DeviceTensor d;
  Nf4Case(int64_t out, int64_t in, uint64_t seed, bool double_quant = true, int64_t blocksize = 64)
      : q(quantize_nf4(random_normal({out, in}, seed, 0.02f).data<float>(), out, in, blocksize, double_quant)),
        d(kernels::cuda::nf4_to_device(q)) {}
  const kernels::cuda::Nf4Weight& w() const { return d.view; }
  Tensor dequantized() const { return dequantize_nf4(q); }
};

}  // namespace

#ifdef NQ_CUDA
TEST_CASE("cuda cuBLASLt opens on first use with every function the GEMMs call") {
  // No GPU needed: dlopen + dlsym of each function (kernels/cuda/matmul.cu); on the
  // emulated GPU the table holds cuda_emu's linked functions. Throws, naming the
  // paths tried or the missing function, if the library is absent or too old.
  const std::string library = kernels::cuda::cublaslt_library();
  MESSAGE("cuBLASLt: ", library);
  CHECK(!library.empty());
}
#endif

TEST_CASE("cuda NF4 value table equals quant/nf4.h's") {
  for (int i = 0; i < 16; ++i) CHECK(kernels::cuda::kNf4Values[i] == kNf4Code[i]);
}

GPU_TEST(nf4_matmul_rejects_mismatched_shapes) {
  namespace kc = nq::kernels::cuda;
  Nf4Case c(3, 37, 83);
  Tensor x = to_device(random_normal({2, 38}, 84), DType::BF16);
  CHECK_THROWS_WITH_AS(kc::nf4_matmul(x, c.w()), doctest::Contains("nf4_matmul: x [2, 38] does not end in 37"), Error);
  CHECK_THROWS_WITH_AS(kc::nf4_matmul_dx(x, c.w()), doctest::Contains("nf4_matmul_dx: x [2, 38] does not end in 3"),
                       Error);
  // the low-rank term: B must be [out, r] = [3, r]; here it is [4, 2]
  Tensor x_ok = to_device(random_normal({2, 37}, 85), DType::BF16);
  kc::LowRankTerm bad{to_device(random_normal({2, 2}, 86), DType::BF16), to_device(random_normal({4, 2}, 87), DType::BF16)};
  CHECK_THROWS_WITH_AS(kc::nf4_matmul(x_ok, c.w(), &bad), doctest::Contains("low-rank term a [2, 2], w [4, 2]"), Error);
}

