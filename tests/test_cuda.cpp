// CUDA kernels against the CPU kernels (the fp32 reference), through
// kernels/kernels.h on both sides: same random inputs (never zeros), several
// shapes including awkward ones, GPU outputs NaN-poisoned at allocation
// (tests/main.cpp turns poisoning on for every device). Every op of the registry
// (kernels/registry.h) runs in its device mode here, at its Mode::Device shapes
// and in both activation dtypes; the tests after it are the ones no registration
// expresses (cast rounding specials, the optimizer, bad input, NF4, LoRA).
//
// Error = ||gpu - cpu|| / ||cpu|| over the whole output. Bounds:
//   f32 on the GPU:  1e-5 (same math, different summation order / libm)
//   bf16 on the GPU: 1e-2 (inputs are rounded to bf16 first and the CPU sees
//                    the same rounded values; outputs carry one bf16 rounding,
//                    relative 2^-9 at worst per element)
//   bit-exact:       NF4 dequantization (f32 and bf16), f32 <-> bf16 casts, the
//                    dropout mask (same Philox stream), the cross-entropy's row count
// (each registration names its outputs' bounds: kernels/ops/*.cpp)
//   AdamW:           1e-6 against the CPU optimizer (same arithmetic; nvcc may
//                    contract a multiply-add the host build keeps separate)
// Without a GPU every test prints `skipped: no CUDA device (<name>)` and passes;
// a CPU-only build compiles to the same skip lines.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/adamw_span.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"
#include "kernels/kernels.h"
#include "kernels/registry.h"
#include "quant/nf4.h"
#include "runtime/cuda_compare.h"
#include "runtime/device_copy.h"

#include "tests/gpu_test.h"

using namespace nq;
namespace k = nq::kernels;

namespace {

#define GPU_TEST(name) NQ_GPU_TEST("cuda " #name, name)

constexpr double kTolF32 = 1e-5, kTolBf16 = 1e-2;
double tol(DType t) { return t == DType::F32 ? kTolF32 : kTolBf16; }
const DType kDtypes[] = {DType::F32, DType::BF16};

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

#define CHECK_CLOSE(got, want, dt)                                                          \
  do {                                                                                      \
    double err_ = relative_error(got, want);                                                \
    INFO("dtype ", dtype_name(dt), ": relative error ", err_, " (bound ", tol(dt), ")");   \
    CHECK(err_ <= tol(dt));                                                                 \
  } while (0)

}  // namespace

GPU_TEST(registry_device_every_op) {
  namespace reg = nq::kernels::registry;
  for (const reg::Op& op : reg::ops()) {
    if (!op.has_cpu || op.bench_only) continue;  // GPU-only ops have their own tests below
    SUBCASE(op.name.c_str()) {
      std::vector<reg::Dims> shapes = op.shapes(reg::Mode::Device);
      CHECK(shapes.size() >= 3);
      for (const reg::Dims& d : shapes)
        for (DType dt : kDtypes) {
          if (!(d.dtypes & (dt == DType::F32 ? 1 : 2))) continue;
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
  // f32 -> bf16 must round to nearest even exactly as runtime/half.h (the host's
  // to_dtype): random values, plus ties (1 + 2^-8 rounds down to 1, 1 + 3 * 2^-8 up
  // to 1 + 2^-6), values that round up to the next binade or to infinity, a subnormal.
  Tensor x = random_normal({1000}, 25, 10.0f);
  std::vector<float> special = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -(1.0f + 0x1p-8f), 1.99999988f, 3.4028235e38f,
                                -3.4028235e38f, 1e-40f, 0.0f, -0.0f};
  std::memcpy(x.data<float>(), special.data(), special.size() * sizeof(float));
  Tensor got = k::cast(x.to(Device::CUDA), DType::BF16);
  REQUIRE(got.dtype() == DType::BF16);
  Tensor want = x.to_dtype(DType::BF16), got_host = got.to(Device::CPU);
  CHECK_BIT_EXACT(got_host, want);
  // bf16 -> f32 is exact: back to the rounded values, bit for bit.
  Tensor back = k::cast(got, DType::F32).to(Device::CPU), want_back = want.to_dtype(DType::F32);
  CHECK_BIT_EXACT(back, want_back);
}


GPU_TEST(adamw_update_span_matches_cpu_optimizer) {
  // The kernel runs optim/adamw_update.h's element update; the reference is the CPU
  // optimizer's span update (optim/adamw.cpp, held to torch.optim.AdamW by test_optim).
  // Three steps from zero states, a clipping factor on the last (both sides scale g in
  // f32 before the update), odd sizes. The bound
  // allows nvcc's FMA contraction (the host build has -ffp-contract=off): an ulp per step.
  AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  for (int64_t n : {1, 3, 1000, 65537}) {
    CAPTURE(n);
    Tensor p = random_normal({n}, 30), m = Tensor::zeros({n}), v = Tensor::zeros({n});
    Tensor gp = p.to(Device::CUDA), gm = m.to(Device::CUDA), gv = v.to(Device::CUDA);
    for (int64_t step = 1; step <= 3; ++step) {
      const float grad_scale = step == 3 ? 0.37f : 1.0f;
      const AdamWScalars sc = adamw_scalars(cfg, 1e-2, step);
      Tensor g = random_normal({n}, 100 + step), gg = g.to(Device::CUDA);
      kernels::cuda::adamw_update_span(gp.data<float>(), gg.data<float>(), gm.data<float>(), gv.data<float>(), n, sc,
                                       grad_scale, nullptr);
      adamw_update_span(p.data<float>(), g.data<float>(), m.data<float>(), v.data<float>(), n, sc, grad_scale);
    }
    CHECK(relative_error(gp, p) <= 1e-6);
    CHECK(relative_error(gm, m) <= 1e-6);
    CHECK(relative_error(gv, v) <= 1e-6);
  }
}

GPU_TEST(global_grad_norm) {
  std::vector<Tensor> grads, ggrads;
  double ss = 0.0;
  for (int64_t n : {1, 17, 65536, 200001}) {
    grads.push_back(random_normal({n}, 60 + n));
    ggrads.push_back(grads.back().to(Device::CUDA));
    for (float x : grads.back().to_vector()) ss += double(x) * x;
  }
  double want = std::sqrt(ss), got = nq::kernels::cuda::global_grad_norm(ggrads);
  CHECK(std::fabs(got - want) <= kTolF32 * want);
  CHECK(nq::kernels::cuda::global_grad_norm({}) == 0.0);
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
  CHECK_THROWS_WITH_AS(k::rope_forward(wide_heads, Tensor::from_ids({0}, {1}).to(Device::CUDA), 1e6f),
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

GPU_TEST(nf4_dequantize_bit_exact) {
  // awkward sizes (numel not a multiple of the blocksize, odd numel), > 256 blocks (2 nested
  // blocks), plain absmax, and the other blocksizes bitsandbytes accepts (blocks spanning rows)
  for (int64_t blocksize : {64, 32, 128})
  for (bool double_quant : {true, false})
    for (auto [out, in] : {std::pair<int64_t, int64_t>{1, 1}, {3, 37}, {17, 127}, {96, 256}, {130, 200}}) {
      CAPTURE(out); CAPTURE(in); CAPTURE(double_quant); CAPTURE(blocksize);
      Nf4Case c(out, in, 70, double_quant, blocksize);
      Tensor want = c.dequantized(), got = kernels::cuda::nf4_dequantize(c.w(), DType::F32).to(Device::CPU);
      CHECK_BIT_EXACT(got, want);
      // bf16: the same f32 value rounded once to nearest even, so bit-exact with the host's rounding
      Tensor got_bf16 = kernels::cuda::nf4_dequantize(c.w(), DType::BF16).to(Device::CPU);
      CHECK_BIT_EXACT(got_bf16, want.to_dtype(DType::BF16));
    }
}

// The way each path multiplies decides the tolerance: the fused tensor-core GEMM
// (16 < M) stages x and W as bf16, the GEMV and the dequantized way multiply in
// the input's dtype (W dequantized to it; bf16 W rounds once, like the fused tiles).
static double nf4_matmul_bound(kernels::cuda::Nf4MatmulPath path, int64_t M, DType dt) {
  using P = kernels::cuda::Nf4MatmulPath;
  if (path == P::Auto) path = M >= kernels::cuda::kNf4DequantMinRows ? P::Dequantized : P::Fused;
  return path == P::Fused && M > kernels::cuda::kNf4GemvMaxRows ? kTolBf16 : tol(dt);
}

GPU_TEST(nf4_matmul) {
  // Auto: the GEMV for M <= 16, the fused tensor-core GEMM above, W dequantized + cuBLASLt
  // from kNf4DequantMinRows (256) rows; Fused and Dequantized force one way at every M.
  using P = kernels::cuda::Nf4MatmulPath;
  for (P path : {P::Auto, P::Fused, P::Dequantized})
    for (auto [out, in] : {std::pair<int64_t, int64_t>{3, 37}, {130, 200}, {256, 512}})
      for (int64_t M : {1, 5, 16, 17, 100, 300})
        for (DType dt : kDtypes) {
          CAPTURE(int(path)); CAPTURE(out); CAPTURE(in); CAPTURE(M);
          Nf4Case c(out, in, 80);
          Tensor w = c.dequantized();
          double bound = nf4_matmul_bound(path, M, dt);
          Tensor x = rounded_to(random_normal({M, in}, 81), dt), dy = rounded_to(random_normal({M, out}, 82), dt);
          Tensor y = kernels::cuda::nf4_matmul(to_device(x, dt), c.w(), nullptr, path);
          Tensor dx = kernels::cuda::nf4_matmul_dx(to_device(dy, dt), c.w(), nullptr, path);
          double ey = relative_error(y, k::matmul(x, w, false, true)), edx = relative_error(dx, k::matmul(dy, w));
          INFO("y error ", ey, ", dx error ", edx, ", bound ", bound);
          CHECK(ey <= bound);
          CHECK(edx <= bound);
        }
}

GPU_TEST(nf4_matmul_low_rank_term) {
  // y = x W^T + s a B^T and dx = dy W + s a A (the LoRA bypass riding on the NF4 product):
  // fused as r more reduction steps, or dequantized as a second cuBLASLt product (beta = 1).
  namespace kc = nq::kernels::cuda;
  using P = kc::Nf4MatmulPath;
  const int64_t r = 8;
  const float s = 2.0f;
  for (P path : {P::Fused, P::Dequantized})
    for (auto [M, out, in] : {std::tuple<int64_t, int64_t, int64_t>{17, 3, 37}, {70, 130, 200}, {300, 64, 96}})
      for (DType dt : kDtypes) {
        CAPTURE(int(path)); CAPTURE(M); CAPTURE(out); CAPTURE(in);
        Nf4Case c(out, in, 88);
        Tensor w = c.dequantized();
        Tensor x = rounded_to(random_normal({M, in}, 89), dt), dy = rounded_to(random_normal({M, out}, 90), dt);
        Tensor a = rounded_to(random_normal({M, r}, 91), dt);
        Tensor B = rounded_to(random_normal({out, r}, 92, 0.1f), dt), A = rounded_to(random_normal({r, in}, 93, 0.1f), dt);
        kc::LowRankTerm fwd{to_device(a, dt), to_device(B, dt), s}, bwd{to_device(a, dt), to_device(A, dt), s};
        Tensor y = kc::nf4_matmul(to_device(x, dt), c.w(), &fwd, path);
        Tensor dx = kc::nf4_matmul_dx(to_device(dy, dt), c.w(), &bwd, path);
        Tensor want_y = k::add(k::matmul(x, w, false, true), k::scale(k::matmul(a, B, false, true), s));
        Tensor want_dx = k::add(k::matmul(dy, w), k::scale(k::matmul(a, A), s));
        double bound = nf4_matmul_bound(path, M, dt), ey = relative_error(y, want_y), edx = relative_error(dx, want_dx);
        INFO("y error ", ey, ", dx error ", edx, ", bound ", bound);
        CHECK(ey <= bound);
        CHECK(edx <= bound);
      }
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

GPU_TEST(lora_nf4_forward_backward) {
  // Reference: the same bypass from CPU kernels (matmul, dropout, scale, add).
  // M = 300 takes the NF4 matmuls' dequantized way (kNf4DequantMinRows), the others the fused one.
  namespace kc = nq::kernels::cuda;
  for (float p : {0.0f, 0.25f})
    for (auto [M, out, in] : {std::tuple<int64_t, int64_t, int64_t>{5, 3, 37}, {70, 130, 200}, {300, 64, 96}})
      for (DType dt : kDtypes) {
        CAPTURE(p); CAPTURE(M); CAPTURE(out); CAPTURE(in);
        const int64_t r = 8;
        const float s = 2.0f;
        Nf4Case c(out, in, 95);
        Tensor w = c.dequantized();
        Tensor x = rounded_to(random_normal({M, in}, 96), dt), dy = rounded_to(random_normal({M, out}, 97), dt);
        Tensor a = rounded_to(random_normal({r, in}, 98, 0.1f), dt), b = rounded_to(random_normal({out, r}, 99, 0.1f), dt);
        Tensor xd = p > 0 ? k::dropout_forward(x, p, 5, 9) : x;
        Tensor u = k::matmul(xd, a, false, true);
        Tensor y = k::add(k::matmul(x, w, false, true), k::scale(k::matmul(u, b, false, true), s));
        Tensor v = k::matmul(dy, b);
        Tensor db = k::scale(k::matmul(dy, u, true, false), s), da = k::scale(k::matmul(v, xd, true, false), s);
        Tensor bypass = k::scale(k::matmul(v, a), s);
        Tensor dx = k::add(k::matmul(dy, w), p > 0 ? k::dropout_backward(bypass, p, 5, 9) : bypass);

        kc::LoraParams lora{to_device(a, dt), to_device(b, dt), s, p, 5, 9};
        Tensor gx = to_device(x, dt), gu, gdx, gda, gdb;
        Tensor gy = kc::lora_nf4_forward(gx, c.w(), lora, &gu);
        kc::lora_nf4_backward(to_device(dy, dt), gx, gu, c.w(), lora, &gdx, &gda, &gdb);
        CHECK_CLOSE(gy, y, DType::BF16);  // the NF4 GEMM stages bf16 tiles whatever the input dtype
        CHECK_CLOSE(gu, u, dt);
        CHECK_CLOSE(gdx, dx, DType::BF16);
        CHECK_CLOSE(gda, da, dt);
        CHECK_CLOSE(gdb, db, dt);
      }
}
