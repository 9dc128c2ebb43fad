// quant/nf4 and the NF4 matmuls (kernels::nf4_matmul on the CPU) against bitsandbytes' own outputs
// (tests/fixtures/nf4, written by tools/ref/make_nf4_fixtures.py running
// bitsandbytes on the CPU): packed bytes, absmax (codes), nested absmax, offset,
// dequantized values and the serialized state dict must be BIT-IDENTICAL.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "autograd/var.h"
#include "kernels/cpu/nf4_matmul.h"
#include "kernels/cuda/ops.h"
#include "kernels/kernels.h"
#include "quant/nf4.h"
#include "runtime/cuda_runtime.h"
#include "runtime/rng.h"
#include "formats/safetensors.h"
#include "tests/gpu_test.h"

using namespace nq;
using nlohmann::json;

namespace {

const std::string kDir = "tests/fixtures/nf4/";

const json& index_json() {
  static json j = [] {
    std::ifstream f(kDir + "index.json");
    REQUIRE_MESSAGE(f.good(), "missing " << kDir << "index.json (run from the repository root)");
    return json::parse(f);
  }();
  return j;
}

// An array written by the fixture script: {"file", "dtype": "f32"|"u8"|"f16"|"bf16", "shape"}.
Tensor load(const json& a) {
  std::vector<int64_t> shape = a.at("shape").get<std::vector<int64_t>>();
  if (shape.empty()) shape = {1};
  const std::string name = a.at("dtype");
  const DType dt = name == "f32" ? DType::F32 : name == "f16" ? DType::F16 : name == "bf16" ? DType::BF16 : DType::U8;
  Tensor t = Tensor::empty(Shape::of(shape), dt);
  std::ifstream f(kDir + a.at("file").get<std::string>(), std::ios::binary);
  REQUIRE(f.good());
  f.read(static_cast<char*>(t.raw()), t.nbytes());
  REQUIRE(size_t(f.gcount()) == t.nbytes());
  return t;
}

// Byte equality (so -0.0 vs 0.0 and NaN payloads count), reporting the first difference.
void check_bytes(const Tensor& ours, const Tensor& ref, const std::string& what) {
  INFO(what << ": ours " << ours.desc() << ", reference " << ref.desc());
  REQUIRE(ours.nbytes() == ref.nbytes());
  const uint8_t* a = static_cast<const uint8_t*>(ours.raw());
  const uint8_t* b = static_cast<const uint8_t*>(ref.raw());
  size_t first = ours.nbytes();
  for (size_t i = 0; i < ours.nbytes(); ++i)
    if (a[i] != b[i]) { first = i; break; }
  if (first != ours.nbytes()) {
    const size_t es = dtype_size(ours.dtype()), k = first / es;
    if (ours.dtype() == DType::F32)
      FAIL_CHECK(what << " differs at element " << k << ": ours " << ours.data<float>()[k] << ", reference "
                      << ref.data<float>()[k]);
    else
      FAIL_CHECK(what << " differs at byte " << k << ": ours " << int(a[k]) << ", reference " << int(b[k]));
  }
}

Tensor randn(Shape s, float scale, uint64_t seed) {
  Tensor t = Tensor::empty(s);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {  // Box-Muller on Philox uniforms
    float u1 = std::max(philox_uniform(seed, 0, 2 * i), 1e-7f), u2 = philox_uniform(seed, 0, 2 * i + 1);
    p[i] = scale * std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853f * u2);
  }
  return t;
}

Tensor copy_tensor(const float* p, int64_t n) {
  Tensor t = Tensor::empty({n});
  std::memcpy(t.raw(), p, n * sizeof(float));
  return t;
}

Nf4Tensor quantize_tensor(const Tensor& w, int64_t blocksize, bool dq) {
  return quantize_nf4(w.data<float>(), w.size(0), w.size(1), blocksize, dq, "w");
}

}  // namespace

TEST_CASE("nf4: dynamic map equals bitsandbytes create_dynamic_map(signed=True)") {
  auto dyn = dynamic_map_signed();
  check_bytes(copy_tensor(dyn.data(), 256), load(index_json().at("dynamic_map")), "dynamic map");
  check_bytes(copy_tensor(kNf4Code.data(), 16), load(index_json().at("nf4_code")), "nf4 code");
}

TEST_CASE("nf4: torch_mean_f32 reproduces torch.mean (the double-quant offset)") {
  for (const json& m : index_json().at("torch_mean")) {
    const int64_t n = m.at("n");
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) x[i] = float(double((i * 7919) % 10007) / 10007.0 + 0.5);
    const uint32_t bits = m.at("mean_bits");
    float ref;
    std::memcpy(&ref, &bits, 4);
    CAPTURE(n);
    CHECK(torch_mean_f32(x.data(), n) == ref);
  }
}

TEST_CASE("nf4: quantize / dequantize are bit-identical to bitsandbytes on every fixture case") {
  for (const json& c : index_json().at("cases")) {
    const std::string name = c.at("name");
    const int64_t bs = c.at("blocksize");
    const Tensor w = load(c.at("input"));
    for (bool dq : {false, true}) {
      const json& r = c.at(dq ? "dq" : "plain");
      const std::string tag = name + (dq ? " (double quant)" : " (plain)");
      const Nf4Tensor q = quantize_tensor(w, bs, dq);
      check_bytes(q.packed, load(r.at("packed")), tag + " packed");
      if (dq) {
        check_bytes(q.absmax, load(r.at("absmax_codes")), tag + " absmax codes");
        check_bytes(q.nested_absmax, load(r.at("nested_absmax")), tag + " nested absmax");
        check_bytes(q.nested_code, load(r.at("nested_code")), tag + " nested code");
        check_bytes(copy_tensor(&q.offset, 1), load(r.at("offset")), tag + " offset");
        CHECK(q.nested_blocksize == r.at("nested_blocksize").get<int64_t>());
      } else {
        check_bytes(q.absmax, load(r.at("absmax")), tag + " absmax");
      }
      check_bytes(dequantize_nf4(q), load(r.at("dequantized")), tag + " dequantized");
      if (dq) {  // bitsandbytes' fp16 / bf16 dequantization = the f32 values rounded once
        check_bytes(dequantize_nf4(q).to_dtype(DType::F16), load(r.at("dequantized_f16")), tag + " dequantized f16");
        check_bytes(dequantize_nf4(q).to_dtype(DType::BF16), load(r.at("dequantized_bf16")), tag + " dequantized bf16");
      }
      // the quant_state JSON blob, byte for byte (Python's float repr of the offset)
      const Tensor blob = nf4_to_state_dict(q, "weight").at("weight.quant_state.bitsandbytes__nf4");
      CHECK(std::string(static_cast<const char*>(blob.raw()), blob.nbytes()) ==
            r.at("quant_state_json").get<std::string>());
    }
  }
}

TEST_CASE("nf4: a value exactly on a midpoint takes the lower code; all-zero blocks have absmax 0") {
  // Independent of the fixtures: block absmax 1, so the scaled value is the input.
  std::vector<float> w(64, 0.0f);
  w[0] = 1.0f;
  const float mid = (kNf4Code[9] + kNf4Code[10]) / 2.0f;
  w[1] = mid;
  w[2] = std::nextafter(mid, 2.0f);
  w[3] = -0.0f;
  Nf4Tensor q = quantize_nf4(w.data(), 1, 64, 64, false);
  const uint8_t* p = q.packed.data<uint8_t>();
  CHECK(p[0] == (15 << 4 | 9));   // 1.0 -> 15, the midpoint -> 9 (lower)
  CHECK(p[1] == (10 << 4 | 7));   // just above -> 10, -0.0 -> 7 (the zero code)
  std::vector<float> zeros(64, 0.0f);
  Nf4Tensor z = quantize_nf4(zeros.data(), 2, 32, 64, true);
  CHECK(z.block_absmax(0) == 0.0f);
  Tensor d = dequantize_nf4(z);
  for (int64_t i = 0; i < 64; ++i) REQUIRE(d.data<float>()[i] == 0.0f);
}

TEST_CASE("nf4: bits per parameter") {
  Tensor w = randn({256, 1024}, 0.02f, 7);
  const Nf4Tensor dq = quantize_tensor(w, 64, true), plain = quantize_tensor(w, 64, false);
  // 4 + 8/64 + 32/(64*256) = 4.1270 (+ the 32-bit offset / numel)
  CHECK(dq.bits_per_parameter() == doctest::Approx(4.0 + 8.0 / 64 + 32.0 / (64 * 256) + 32.0 / (256 * 1024)));
  CHECK(plain.bits_per_parameter() == doctest::Approx(4.5));
  CHECK(plain.bits_per_parameter() - dq.bits_per_parameter() == doctest::Approx(0.373).epsilon(0.001));
}

TEST_CASE("nf4: bad input raises errors naming the tensor") {
  std::vector<float> w(10, 0.5f);
  w[7] = NAN;
  CHECK_THROWS_WITH_AS(quantize_nf4(w.data(), 2, 5, 64, true, "layers.0.q_proj"),
                       "quantize_nf4: tensor 'layers.0.q_proj' [2, 5] has a non-finite value (nan) at row 1, column 2",
                       Error);
  w[7] = INFINITY;
  CHECK_THROWS_WITH_AS(quantize_nf4(w.data(), 2, 5, 64, true, "up"),
                       "quantize_nf4: tensor 'up' [2, 5] has a non-finite value (inf) at row 1, column 2", Error);
  w[7] = 0.0f;
  CHECK_THROWS_WITH_AS(quantize_nf4(w.data(), 2, 5, 48, true, "up"),
                       "quantize_nf4: tensor 'up': blocksize 48 is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096",
                       Error);
}

TEST_CASE("nf4: state dict equals what bitsandbytes saves, and loads back") {
  const json& s = index_json().at("state_dict");
  const Tensor w = load(s.at("input"));
  const Nf4Tensor q = quantize_tensor(w, 64, true);
  auto sd = nf4_to_state_dict(q, "weight");
  std::map<std::string, Tensor> ref;
  for (auto& [key, a] : s.at("tensors").items()) ref[key] = load(a);
  REQUIRE(sd.size() == ref.size());
  for (auto& [key, t] : ref) {
    REQUIRE_MESSAGE(sd.count(key), key);
    CHECK(sd.at(key).shape() == t.shape());
    check_bytes(sd.at(key), t, key);
  }
  // bnb's file -> Nf4Tensor -> same dequantized weight as quantizing here
  const Nf4Tensor back = nf4_from_state_dict(ref, "weight");
  check_bytes(dequantize_nf4(back), dequantize_nf4(q), "dequantized after load");
  CHECK(back.offset == q.offset);

  std::map<std::string, Tensor> broken = ref;
  broken.erase("weight.nested_absmax");
  CHECK_THROWS_WITH_AS(nf4_from_state_dict(broken, "weight"),
                       "nf4 state dict: missing tensor 'weight.nested_absmax'", Error);
  broken = ref;
  std::string bad_json = "{\"quant_type\": \"fp4\"}";
  broken["weight.quant_state.bitsandbytes__nf4"] = Tensor::empty({int64_t(bad_json.size())}, DType::U8);
  std::memcpy(broken["weight.quant_state.bitsandbytes__nf4"].raw(), bad_json.data(), bad_json.size());
  CHECK_THROWS_WITH_AS(nf4_from_state_dict(broken, "weight"),
                       "nf4 state dict: 'weight.quant_state.bitsandbytes__nf4' has quant_type \"fp4\", only \"nf4\" is supported",
                       Error);
  broken = ref;
  broken["weight.absmax"] = ref.at("weight.absmax").slice(0, 3);
  CHECK_THROWS_WITH_AS(nf4_from_state_dict(broken, "weight"),
                       "nf4 state dict: tensor 'weight.absmax' is u8[3] cpu, expected 15 blocks", Error);
  broken = ref;
  broken["weight.quant_state.bitsandbytes__nf4"] = ref.at("weight").view({480}).slice(0, 5);
  CHECK_THROWS_AS(nf4_from_state_dict(broken, "weight"), Error);
}

TEST_CASE("nf4: a bitsandbytes Linear4bit checkpoint (safetensors) loads bit-identically and saves back") {
  const json& ck = index_json().at("linear4bit");
  const SafetensorsFile file = SafetensorsFile::open(kDir + ck.at("file").get<std::string>());
  std::vector<std::pair<std::string, Tensor>> ours_all;
  for (auto& [layer, info] : ck.at("layers").items()) {
    CAPTURE(layer);
    const std::string prefix = layer + ".weight";
    std::map<std::string, Tensor> theirs;
    for (const std::string& name : file.names())
      if (name.rfind(prefix, 0) == 0) theirs[name] = file.get(name);
    // load bnb's tensors -> same weights as quantizing the original here
    const Nf4Tensor loaded = nf4_from_state_dict(theirs, prefix);
    const Tensor w = load(info.at("input"));
    const Nf4Tensor q = quantize_tensor(w, 64, info.at("double_quant").get<bool>());
    CHECK(loaded.double_quant == q.double_quant);
    check_bytes(dequantize_nf4(loaded), dequantize_nf4(q), layer + " dequantized");
    // our state dict == bnb's, tensor by tensor and byte by byte
    const auto ours = nf4_to_state_dict(q, prefix);
    REQUIRE(ours.size() == theirs.size());
    for (auto& [name, t] : theirs) {
      REQUIRE_MESSAGE(ours.count(name), name);
      CHECK(ours.at(name).shape() == t.shape());
      check_bytes(ours.at(name), t, name);
    }
    for (auto& kv : ours) ours_all.push_back(kv);
  }
  // through our safetensors writer and reader: the same bytes again
  const std::string path = "build/test_nf4_roundtrip.safetensors";
  save_safetensors(path, ours_all, {{"format", "pt"}});
  const SafetensorsFile back = SafetensorsFile::open(path);
  CHECK(back.names() == file.names());
  for (const std::string& name : file.names()) check_bytes(back.get(name), file.get(name), name + " (re-read)");
  std::remove(path.c_str());
}

// ---------------------------------------------------------------- nf4_matmul (CPU)

namespace {
double rel_err(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = double(a.data<float>()[i]) - double(b.data<float>()[i]);
    num += d * d;
    den += double(b.data<float>()[i]) * b.data<float>()[i];
  }
  return std::sqrt(num / den);
}
// Naive double-precision reference: c[i, j] = sum_k a[i, k] * (trans_b ? b[j, k] : b[k, j]).
Tensor naive_matmul(const Tensor& a, const Tensor& b, bool trans_b) {
  const int64_t M = a.size(0), K = a.size(1), N = trans_b ? b.size(0) : b.size(1);
  Tensor c = Tensor::empty({M, N});
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += double(a.data<float>()[i * K + k]) * (trans_b ? b.data<float>()[j * K + k] : b.data<float>()[k * N + j]);
      c.data<float>()[i * N + j] = float(s);
    }
  return c;
}
// The CPU kernel's tile loop with `tile` rows per tile (kernels::nf4_matmul uses kNf4CpuTileRows).
Tensor tiled_forward(const Tensor& x, const Nf4Tensor& q, int64_t tile) {
  Tensor y = Tensor::empty({x.size(0), q.out}), buf = Tensor::empty({std::min(tile, q.out), q.in});
  cpu::nf4_matmul(x.data<float>(), q, y.data<float>(), x.size(0), tile, buf.data<float>());
  return y;
}
Tensor tiled_dx(const Tensor& dy, const Nf4Tensor& q, int64_t tile) {
  Tensor dx = Tensor::empty({dy.size(0), q.in}), buf = Tensor::empty({std::min(tile, q.out), q.in});
  cpu::nf4_matmul_dx(dy.data<float>(), q, dx.data<float>(), dy.size(0), tile, buf.data<float>());
  return dx;
}
bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}
}  // namespace

TEST_CASE("nf4_matmul: y = x W^T and dX = dY W with W dequantized tile by tile") {
  const int64_t out = 77, in = 45, N = 9;  // numel not a multiple of 64: blocks straddle rows
  Tensor w = randn({out, in}, 0.05f, 11);
  auto q = std::make_shared<Nf4Tensor>(quantize_tensor(w, 64, true));
  const Tensor wd = dequantize_nf4(*q);
  // Any row range dequantizes to exactly those rows of the whole weight (blocks straddle rows).
  Tensor rows = Tensor::empty({5, in});
  dequantize_nf4_rows(*q, 31, 36, rows.data<float>());
  check_bytes(rows, wd.slice(31, 36), "rows 31..36");
  Tensor x = randn({N, in}, 1.0f, 12), gy = randn({N, out}, 1.0f, 13);
  for (int64_t tile : {1, 16, 77, 500}) {
    CAPTURE(tile);
    CHECK(rel_err(tiled_forward(x, *q, tile), naive_matmul(x, wd, true)) <= 1e-6);
    CHECK(rel_err(tiled_dx(gy, *q, tile), naive_matmul(gy, wd, false)) <= 1e-6);
  }
  // kernels.h's ops are that loop with kNf4CpuTileRows rows per tile, bit for bit.
  const Tensor y_op = kernels::nf4_matmul(x, *q), dx_op = kernels::nf4_matmul_dx(gy, *q);
  CHECK(rel_err(y_op, naive_matmul(x, wd, true)) <= 1e-6);
  CHECK(rel_err(dx_op, naive_matmul(gy, wd, false)) <= 1e-6);
  CHECK(same_bits(y_op, tiled_forward(x, *q, kernels::kNf4CpuTileRows)));
  CHECK(same_bits(dx_op, tiled_dx(gy, *q, kernels::kNf4CpuTileRows)));
  // The Var op: gradient for x only, and it is dY W.
  Var xv(x, true);
  Var y = nf4_linear(xv, q);
  CHECK(same_bits(y.value(), y_op));
  backward(y, gy);
  REQUIRE(xv.grad().defined());
  CHECK(same_bits(xv.grad(), dx_op));
  // leading dims are flattened: [3, 3, in] -> [3, 3, out]
  CHECK(kernels::nf4_matmul(x.view({3, 3, in}), *q).shape() == Shape{3, 3, out});
  CHECK(kernels::nf4_matmul_dx(gy.view({3, 3, out}), *q).shape() == Shape{3, 3, in});
  // The whole weight, as the CPU dequantizes it.
  CHECK(same_bits(kernels::nf4_dequantize(*q, DType::F32), wd));
}

TEST_CASE("nf4_matmul: the low-rank term adds scale * a w^T (forward) and scale * a w (dx)") {
  const int64_t out = 21, in = 30, N = 7, r = 3;
  auto q = std::make_shared<Nf4Tensor>(quantize_tensor(randn({out, in}, 0.05f, 31), 64, true));
  const Tensor wd = dequantize_nf4(*q);
  const Tensor x = randn({N, in}, 1.0f, 32), gy = randn({N, out}, 1.0f, 33);
  const Tensor a = randn({N, r}, 1.0f, 34), B = randn({out, r}, 0.3f, 35), A = randn({r, in}, 0.3f, 36);
  const float s = 0.75f;
  // Naive: y = x W^T + s a B^T, dx = dy W + s a A, in double.
  auto plus = [](Tensor t, const Tensor& u, float k) {
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] += k * u.data<float>()[i];
    return t;
  };
  const kernels::LowRankTerm fwd{a, B, s}, bwd{a, A, s};
  CHECK(rel_err(kernels::nf4_matmul(x, *q, &fwd), plus(naive_matmul(x, wd, true), naive_matmul(a, B, true), s)) <=
        1e-6);
  CHECK(rel_err(kernels::nf4_matmul_dx(gy, *q, &bwd),
                plus(naive_matmul(gy, wd, false), naive_matmul(a, A, false), s)) <= 1e-6);
  const kernels::LowRankTerm bad{a, A, s};  // w must be [out, r] in the forward
  CHECK_THROWS_WITH_AS(kernels::nf4_matmul(x, *q, &bad),
                       "nf4_matmul: low-rank term a [7, 3], w [3, 30] does not fit x [7, 30] (expected a [7, r], w "
                       "[out, r])",
                       Error);
}

TEST_CASE("nf4_matmul: scratch memory stays one tile, never the whole dequantized weight") {
  const int64_t out = 512, in = 256, tile = kernels::kNf4CpuTileRows;
  Tensor w = randn({out, in}, 0.05f, 21);
  const Nf4Tensor q = quantize_tensor(w, 64, true);
  Tensor x = randn({4, in}, 1.0f, 22);
  Allocator& a = allocator_for(Device::CPU);
  a.reset_peak();
  const size_t ws0 = a.stats().current[size_t(MemCategory::Workspace)];
  Tensor y = kernels::nf4_matmul(x, q);
  Tensor gx = kernels::nf4_matmul_dx(y, q);
  const size_t ws_peak = a.stats().peak[size_t(MemCategory::Workspace)] - ws0;
  CHECK(ws_peak == size_t(tile * in * sizeof(float)));
  CHECK(ws_peak * 4 == size_t(out * in * sizeof(float)));  // 1/4 of a full f32 copy
  // What the memory plan counts for it.
  CHECK(kernels::nf4_matmul_workspace_bytes(4, out, in, DType::F32, Device::CPU) == ws_peak);
}

TEST_CASE("nf4_matmul: shape errors name the op and the shapes") {
  std::vector<float> w(6 * 8, 0.1f);
  auto q = std::make_shared<Nf4Tensor>(quantize_nf4(w.data(), 6, 8));
  Tensor x = Tensor::zeros({2, 7});
  CHECK_THROWS_WITH_AS(kernels::nf4_matmul(x, *q),
                       "nf4_matmul: x [2, 7] does not match the NF4 weight [6, 8] (last dim must be 8)", Error);
  CHECK_THROWS_WITH_AS(kernels::nf4_matmul_dx(Tensor::zeros({2, 8}), *q),
                       "nf4_matmul_dx: dy [2, 8] does not match the NF4 weight [6, 8] (last dim must be 6)", Error);
  CHECK_THROWS_WITH_AS(tiled_forward(Tensor::zeros({2, 8}), *q, 0), "nf4_matmul: tile_rows must be positive, got 0",
                       Error);
  CHECK_THROWS_WITH_AS(kernels::nf4_dequantize(*q, DType::BF16),
                       "nf4_dequantize: the cpu gives f32 (the reference dtype), not bf16", Error);
}

// The GPU's NF4 dequantization in f16 and bf16 (kernels/cuda/nf4_dequantize.cu)
// against bitsandbytes' own, byte for byte, on every fixture case.
NQ_GPU_TEST("cuda nf4_dequantize f16 and bf16 are bit-identical to bitsandbytes'", nf4_dequantize_16bit_matches_bitsandbytes) {
  for (const json& c : index_json().at("cases")) {
    const std::string name = c.at("name");
    const json& r = c.at("dq");
    const Nf4Tensor q = quantize_tensor(load(c.at("input")), c.at("blocksize"), true);
    const kernels::cuda::Nf4DeviceTensor d = kernels::cuda::nf4_to_device(q);
    for (auto [dtype, key] : {std::pair<DType, const char*>{DType::F16, "dequantized_f16"}, {DType::BF16, "dequantized_bf16"}}) {
      if (dtype == DType::BF16 && !cuda_has_bf16()) continue;  // no bf16 before sm_80
      check_bytes(kernels::cuda::nf4_dequantize(d.view, dtype).to(Device::CPU), load(r.at(key)),
                  name + " " + dtype_name(dtype) + " on the GPU");
    }
  }
}
