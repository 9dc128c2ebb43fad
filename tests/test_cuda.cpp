// CUDA kernels against the CPU kernels (the fp32 reference), through
// kernels/kernels.h on both sides: same random inputs (never zeros), several
// shapes including awkward ones, GPU outputs NaN-poisoned at allocation
// (tests/main.cpp turns poisoning on for every device).
//
// Error = ||gpu - cpu|| / ||cpu|| over the whole output. Bounds:
//   f32 on the GPU:  1e-5 (same math, different summation order / libm)
//   bf16 on the GPU: 1e-2 (inputs are rounded to bf16 first and the CPU sees
//                    the same rounded values; outputs carry one bf16 rounding,
//                    relative 2^-9 at worst per element)
//   bit-exact:       NF4 dequantization (f32 and bf16), f32 <-> bf16 casts, the
//                    dropout mask (same Philox stream)
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

#include "kernels/cpu/adamw.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"
#include "kernels/kernels.h"
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

GPU_TEST(elementwise) {
  for (DType dt : kDtypes)
    for (int64_t n : {1, 7, 1000, 65537, 300001}) {  // 300001: sum's grid (capped at 1024 blocks) strides
      CAPTURE(n);
      Tensor a = rounded_to(random_normal({n}, 1), dt), b = rounded_to(random_normal({n}, 2), dt);
      Tensor ga = to_device(a, dt), gb = to_device(b, dt);
      CHECK_CLOSE(k::add(ga, gb), k::add(a, b), dt);
      CHECK_CLOSE(k::mul(ga, gb), k::mul(a, b), dt);
      CHECK_CLOSE(k::scale(ga, -0.37f), k::scale(a, -0.37f), dt);
      Tensor acc = a.clone(), gacc = ga.clone();
      k::add_inplace(acc, b);
      k::add_inplace(gacc, gb);
      CHECK_CLOSE(gacc, acc, dt);
      float s_cpu = k::sum(a), s_gpu = k::sum(ga);
      double norm = std::sqrt(double(n));  // sum's error scales with ||a|| ~ sqrt(n)
      CHECK(std::fabs(double(s_gpu) - double(s_cpu)) <= kTolF32 * norm);
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

GPU_TEST(matmul) {
  struct Case { int64_t batch, m, n, k; };
  for (DType dt : kDtypes)
    for (Case c : {Case{0, 1, 1, 1}, Case{0, 17, 33, 65}, Case{0, 128, 96, 256}, Case{3, 5, 7, 9}})
      for (int trans = 0; trans < 4; ++trans) {
        bool ta = trans & 1, tb = trans & 2;
        CAPTURE(c.m); CAPTURE(c.n); CAPTURE(c.k); CAPTURE(c.batch); CAPTURE(ta); CAPTURE(tb);
        Shape sa = ta ? Shape{c.k, c.m} : Shape{c.m, c.k}, sb = tb ? Shape{c.n, c.k} : Shape{c.k, c.n};
        if (c.batch) { sa = Shape{c.batch, sa[0], sa[1]}; sb = Shape{c.batch, sb[0], sb[1]}; }
        Tensor a = rounded_to(random_normal(sa, 3), dt), b = rounded_to(random_normal(sb, 4), dt);
        Tensor want = k::matmul(a, b, ta, tb);
        CHECK_CLOSE(k::matmul(to_device(a, dt), to_device(b, dt), ta, tb), want, dt);
        // accumulate: C = A B + C0
        Tensor c0 = rounded_to(random_normal(want.shape(), 5), dt), gc = to_device(c0, dt);
        k::matmul_into(c0, a, b, ta, tb, true);
        k::matmul_into(gc, to_device(a, dt), to_device(b, dt), ta, tb, true);
        CHECK_CLOSE(gc, c0, dt);
      }
}

GPU_TEST(embedding) {
  for (DType dt : kDtypes)
    for (auto [N, V, D] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {37, 11, 65}, {300, 1000, 128}}) {
      CAPTURE(N); CAPTURE(V); CAPTURE(D);
      Tensor table = rounded_to(random_normal({V, D}, 6), dt), ids = random_ints({N}, 7, 0, int32_t(V));
      Tensor gids = ids.to(Device::CUDA);
      CHECK_CLOSE(k::embedding_forward(to_device(table, dt), gids), k::embedding_forward(table, ids), dt);
      Tensor dy = rounded_to(random_normal({N, D}, 8), dt);
      // both sides add the same (already rounded) values in f32: the f32 bound applies
      CHECK_CLOSE(k::embedding_backward(to_device(dy, dt), gids, V), k::embedding_backward(dy, ids, V), DType::F32);
    }
}

GPU_TEST(rmsnorm) {
  // [N, D] hidden-state shapes and the per-head q/k norm shape [N*H, Dh].
  for (DType dt : kDtypes)
    for (auto [N, D] : {std::pair<int64_t, int64_t>{1, 1}, {3, 17}, {33, 1000}, {16 * 8, 128}}) {
      CAPTURE(N); CAPTURE(D);
      Tensor x = rounded_to(random_normal({N, D}, 9, 3.0f), dt), w = random_normal({D}, 10);
      Tensor dy = rounded_to(random_normal({N, D}, 11), dt);
      Tensor rstd, grstd;
      Tensor y = k::rmsnorm_forward(x, w, 1e-6f, &rstd);
      Tensor gx = to_device(x, dt), gw = w.to(Device::CUDA);
      Tensor gy = k::rmsnorm_forward(gx, gw, 1e-6f, &grstd);
      CHECK_CLOSE(gy, y, dt);
      CHECK_CLOSE(grstd, rstd, DType::F32);
      Tensor dx, dw, gdx, gdw;
      k::rmsnorm_backward(dy, x, w, rstd, &dx, &dw);
      k::rmsnorm_backward(to_device(dy, dt), gx, gw, grstd, &gdx, &gdw);
      CHECK_CLOSE(gdx, dx, dt);
      CHECK_CLOSE(gdw, dw, DType::F32);  // f32 output from the same (rounded) inputs: the f32 bound
    }
}

GPU_TEST(rope) {
  for (DType dt : kDtypes)
    for (auto [N, H, Dh] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 2}, {7, 3, 64}, {40, 4, 128}}) {
      CAPTURE(N); CAPTURE(H); CAPTURE(Dh);
      // Positions up to Qwen3's context (40960): the kernel takes inv_freq from the CPU's
      // rope_inv_freq, so the f32 angles are the CPU's bit for bit and only sincosf vs
      // glibc (an ulp or two of the result) separates the two. One ulp off in an
      // inv_freq would be an angle error of up to 2.5e-3 here, far over the f32 bound.
      Tensor x = rounded_to(random_normal({N, H, Dh}, 12), dt), pos = random_ints({N}, 13, 0, 40960);
      Tensor gpos = pos.to(Device::CUDA);
      CHECK_CLOSE(k::rope_forward(to_device(x, dt), gpos, 1e6f), k::rope_forward(x, pos, 1e6f), dt);
      CHECK_CLOSE(k::rope_backward(to_device(x, dt), gpos, 1e6f), k::rope_backward(x, pos, 1e6f), dt);
    }
}

GPU_TEST(swiglu) {
  for (DType dt : kDtypes)
    for (int64_t n : {1, 129, 70001}) {
      CAPTURE(n);
      Tensor g = rounded_to(random_normal({n}, 14, 2.0f), dt), u = rounded_to(random_normal({n}, 15), dt);
      Tensor dy = rounded_to(random_normal({n}, 16), dt);
      Tensor gg = to_device(g, dt), gu = to_device(u, dt);
      CHECK_CLOSE(k::swiglu_forward(gg, gu), k::swiglu_forward(g, u), dt);
      Tensor dg, du, gdg, gdu;
      k::swiglu_backward(dy, g, u, &dg, &du);
      k::swiglu_backward(to_device(dy, dt), gg, gu, &gdg, &gdu);
      CHECK_CLOSE(gdg, dg, dt);
      CHECK_CLOSE(gdu, du, dt);
    }
}

GPU_TEST(dropout_same_mask_as_cpu) {
  for (DType dt : kDtypes)
    for (int64_t n : {1, 5, 4099}) {
      CAPTURE(n);
      Tensor x = rounded_to(random_normal({n}, 17), dt);
      Tensor y = k::dropout_forward(x, 0.3f, 1234, 77), gy = k::dropout_forward(to_device(x, dt), 0.3f, 1234, 77);
      std::vector<float> a = y.to_vector(), b = gy.to_vector();
      int64_t mismatched_mask = 0;
      for (int64_t i = 0; i < n; ++i) mismatched_mask += (a[i] == 0.0f) != (b[i] == 0.0f);
      CHECK(mismatched_mask == 0);
      CHECK_CLOSE(gy, y, dt);
      CHECK_CLOSE(k::dropout_backward(to_device(x, dt), 0.3f, 1234, 77), k::dropout_backward(x, 0.3f, 1234, 77), dt);
    }
}

namespace {
struct AttnCase { int64_t B, T, Hq, Hkv, Dh; bool segments; };

// Forward and backward of one case on both devices, inputs rounded to dt first.
// The GPU backward takes the GPU forward's o and lse, as in training.
void check_attention_case(const AttnCase& c, DType dt) {
  CAPTURE(c.B); CAPTURE(c.T); CAPTURE(c.Hq); CAPTURE(c.Hkv); CAPTURE(c.Dh); CAPTURE(c.segments);
  int64_t N = c.B * c.T;
  Tensor q = rounded_to(random_normal({N, c.Hq, c.Dh}, 18), dt);
  Tensor kk = rounded_to(random_normal({N, c.Hkv, c.Dh}, 19), dt);
  Tensor v = rounded_to(random_normal({N, c.Hkv, c.Dh}, 20), dt);
  Tensor dout = rounded_to(random_normal({N, c.Hq, c.Dh}, 21), dt);
  Tensor seg, gseg;
  if (c.segments) {  // three packed samples per row: segment = position * 3 / T
    std::vector<int32_t> s(N);
    for (int64_t i = 0; i < N; ++i) s[i] = int32_t((i % c.T) * 3 / c.T);
    seg = Tensor::from_ids(s, {N});
    gseg = seg.to(Device::CUDA);
  }
  Tensor lse, glse;
  Tensor o = k::attention_forward(q, kk, v, c.B, c.T, seg, &lse);
  Tensor gq = to_device(q, dt), gk = to_device(kk, dt), gv = to_device(v, dt);
  Tensor go = k::attention_forward(gq, gk, gv, c.B, c.T, gseg, &glse);
  CHECK_CLOSE(go, o, dt);
  CHECK_CLOSE(glse, lse, dt);  // bf16: the softmax sum adds bf16-rounded probabilities
  Tensor dq, dk, dv, gdq, gdk, gdv;
  k::attention_backward(dout, q, kk, v, o, lse, c.B, c.T, seg, &dq, &dk, &dv);
  k::attention_backward(to_device(dout, dt), gq, gk, gv, go, glse, c.B, c.T, gseg, &gdq, &gdk, &gdv);
  CHECK_CLOSE(gdq, dq, dt);
  CHECK_CLOSE(gdk, dk, dt);
  CHECK_CLOSE(gdv, dv, dt);
}
}  // namespace

GPU_TEST(attention) {
  for (DType dt : kDtypes)
    // bf16 with Dh 64 or 128 runs the tensor-core kernels; f32 and Dh 32 the CUDA-core ones.
    for (AttnCase c : {AttnCase{1, 1, 1, 1, 64, false}, AttnCase{2, 19, 4, 2, 64, false},
                       AttnCase{1, 70, 4, 1, 128, true}, AttnCase{1, 9, 2, 1, 32, true},
                       AttnCase{1, 130, 2, 1, 128, false}, AttnCase{2, 33, 2, 2, 128, true}})
      check_attention_case(c, dt);
}

// The tiled tensor-core forward and backward (bf16, Dh 64 / 128): T below,
// at and across the 64-row tiles (padding rows and keys), two sequences, GQA
// groups of 2 and 1, packed segments whose boundaries fall inside tiles.
GPU_TEST(attention_tiled) {
  for (int64_t Dh : {64, 128})
    for (int64_t T : {1, 17, 64, 100, 200})
      for (int64_t Hq : {4, 2})
        for (bool segments : {false, true}) check_attention_case(AttnCase{2, T, Hq, 2, Dh, segments}, DType::BF16);
}

GPU_TEST(linear_cross_entropy) {
  struct Case { int64_t N, D, V, chunk; };
  for (DType dt : kDtypes)
    for (Case c : {Case{1, 8, 5, 1}, Case{37, 64, 1000, 16}, Case{64, 128, 4099, 64}}) {
      CAPTURE(c.N); CAPTURE(c.D); CAPTURE(c.V); CAPTURE(c.chunk);
      Tensor h = rounded_to(random_normal({c.N, c.D}, 22), dt), w = rounded_to(random_normal({c.V, c.D}, 23, 0.1f), dt);
      Tensor labels = random_ints({c.N}, 24, 0, int32_t(c.V));
      if (c.N > 2) labels.data<int32_t>()[1] = -100;  // one ignored row
      Tensor gh, gw, ggh, ggw;
      int64_t count = 0, gcount = 0;
      float loss = k::linear_cross_entropy(h, w, labels, c.chunk, &gh, &gw, &count);
      float gloss = k::linear_cross_entropy(to_device(h, dt), to_device(w, dt), labels.to(Device::CUDA), c.chunk,
                                            &ggh, &ggw, &gcount);
      CHECK(gcount == count);
      CHECK(std::fabs(double(gloss) - double(loss)) <= tol(dt) * std::fabs(double(loss)));
      CHECK_CLOSE(ggh, gh, dt);
      CHECK_CLOSE(ggw, gw, dt);
      // A tied embedding: grad_w already holds the embedding's gradient (w's dtype) and is added into.
      Tensor prior = rounded_to(random_normal({c.V, c.D}, 26, 0.01f), dt);
      Tensor acc = prior.clone(), gacc = to_device(prior, dt);
      k::linear_cross_entropy(h, w, labels, c.chunk, nullptr, &acc, nullptr);
      k::linear_cross_entropy(to_device(h, dt), to_device(w, dt), labels.to(Device::CUDA), c.chunk, nullptr, &gacc,
                              nullptr);
      REQUIRE(gacc.dtype() == dt);
      CHECK_CLOSE(gacc, acc, dt);
    }
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
      cpu::adamw_update_span(p.data<float>(), g.data<float>(), m.data<float>(), v.data<float>(), n, sc, grad_scale);
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
