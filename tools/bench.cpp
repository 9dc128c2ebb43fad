// ./bench: times one kernel of kernels/kernels.h (or all of them at a model's
// shapes) on the CPU or the GPU, after checking it against the CPU reference.
//
//   ./bench list
//   ./bench KERNEL [--device cpu|cuda] [shape options] [--iters N] [--csv]
//   ./bench all [--shapes small|qwen3-0.6b|qwen3-8b] [--device cpu|cuda] [--csv]
//
// Method: inputs are random (never zero), made in several copies that together
// exceed the last-level cache, and each run uses the next copy, so no run finds
// its inputs already cached. 3 warm-up runs, then the median of --iters timed
// runs: CUDA events around each call on the GPU, steady_clock on the CPU.
// Before timing (GPU only), the kernel runs on the CPU too at a clipped shape
// (at most 256 tokens, 4096 vocab, 512 per GEMM dim) and the relative error by
// norm must be under 1e-2 (bf16), else the line says FAIL and the exit code is 1.
//
// Each line: time, effective GB/s (bytes the op must move: inputs read once,
// outputs written once), TFLOP/s, and on the GPU the fraction of the copy
// bandwidth (cudaMemcpy device-to-device, measured at start) for memory-bound
// ops, or of cuBLASLt's bf16 GEMM rate on the op's GEMM shape for matmul-like ops.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "runtime/cuda_compare.h"
#include "runtime/cuda_runtime.h"
#include "runtime/device_copy.h"

using namespace nq;
namespace k = nq::kernels;

namespace {

// ---------------------------------------------------------------- shapes
struct Shapes {
  int64_t n = 1 << 24;                       // elements (elementwise ops, optimizer)
  int64_t m = 4096, gn = 4096, gk = 4096;    // GEMM: C[m, n] = A[m, k] B[n, k]^T (--m --n --k)
  int64_t batch = 1, seq = 4096;             // attention; tokens = batch * seq unless --tokens
  int64_t tokens = 0;
  int64_t hidden = 1024, vocab = 151936, chunk = 1024;
  int64_t heads = 16, kv_heads = 8, head_dim = 128;
  int64_t rows() const { return tokens ? tokens : batch * seq; }
};

// Model presets for `all`: the shapes one training step of that model runs.
struct Preset {
  const char* name;
  int64_t hidden, ffn, heads, kv_heads, head_dim, vocab, seq, lora_params;
};
const Preset kPresets[] = {
    // tiny enough for the CPU (2 cores) in a few seconds
    {"small", 256, 768, 4, 2, 64, 4096, 256, 1 << 20},
    // Qwen3-0.6B: 28 layers; LoRA r=16 on all 7 linears = about 10M parameters
    {"qwen3-0.6b", 1024, 3072, 16, 8, 128, 151936, 4096, 10092544},
    // Qwen3-8B: 36 layers; LoRA r=16 on all 7 linears = about 43.6M parameters
    {"qwen3-8b", 4096, 12288, 32, 8, 128, 151936, 4096, 43646976},
};

// ---------------------------------------------------------------- kernels
// An input: a host f32/i32 tensor; `activation` ones become bf16 on the GPU,
// the others (RMSNorm weights, ids) keep their dtype.
struct Input {
  Tensor host;
  bool activation = true;
};
struct Cost {
  double bytes = 0, flops = 0;  // activations counted at kAct bytes
  int64_t gemm_m = 0, gemm_n = 0, gemm_k = 0, gemm_batch = 0;  // matmul-like: GEMM to compare with
};
struct Kernel {
  const char* name;
  const char* options;  // the shape options it reads
  bool has_cpu;         // false: GPU-only (no CPU kernel to time or validate against)
  std::function<std::vector<Input>(const Shapes&, uint64_t seed)> inputs;
  std::function<std::vector<Tensor>(const std::vector<Tensor>&, const Shapes&)> run;  // returns outputs
  std::function<Cost(const Shapes&)> cost;
};

double kAct = 2.0;  // bytes per activation element: 2 (bf16) on the GPU, 4 (f32) on the CPU; set in main

std::vector<Kernel> make_kernels() {
  std::vector<Kernel> ks;
  auto vec = [](const Shapes& s, uint64_t seed) { return Input{random_normal({s.n}, seed)}; };
  ks.push_back({"add", "--n", true, [=](const Shapes& s, uint64_t seed) { return std::vector<Input>{vec(s, seed), vec(s, seed + 1)}; },
                [](const std::vector<Tensor>& in, const Shapes&) { return std::vector<Tensor>{k::add(in[0], in[1])}; },
                [](const Shapes& s) { return Cost{3 * kAct * s.n, double(s.n)}; }});
  ks.push_back({"sum", "--n", true, [=](const Shapes& s, uint64_t seed) { return std::vector<Input>{vec(s, seed)}; },
                [](const std::vector<Tensor>& in, const Shapes&) {
                  return std::vector<Tensor>{Tensor::full({1}, k::sum(in[0]))};
                },
                [](const Shapes& s) { return Cost{kAct * s.n, double(s.n)}; }});
  ks.push_back({"dropout", "--n", true, [=](const Shapes& s, uint64_t seed) { return std::vector<Input>{vec(s, seed)}; },
                [](const std::vector<Tensor>& in, const Shapes&) {
                  return std::vector<Tensor>{k::dropout_forward(in[0], 0.1f, 42, 0)};
                },
                [](const Shapes& s) { return Cost{2 * kAct * s.n, 0}; }});
  ks.push_back({"swiglu", "--n", true,
                [=](const Shapes& s, uint64_t seed) { return std::vector<Input>{vec(s, seed), vec(s, seed + 1)}; },
                [](const std::vector<Tensor>& in, const Shapes&) { return std::vector<Tensor>{k::swiglu_forward(in[0], in[1])}; },
                [](const Shapes& s) { return Cost{3 * kAct * s.n, 4.0 * s.n}; }});
  ks.push_back({"swiglu_bwd", "--n", true,
                [=](const Shapes& s, uint64_t seed) { return std::vector<Input>{vec(s, seed), vec(s, seed + 1), vec(s, seed + 2)}; },
                [](const std::vector<Tensor>& in, const Shapes&) {
                  Tensor dg, du;
                  k::swiglu_backward(in[0], in[1], in[2], &dg, &du);
                  return std::vector<Tensor>{dg, du};
                },
                [](const Shapes& s) { return Cost{5 * kAct * s.n, 10.0 * s.n}; }});
  ks.push_back({"matmul", "--m --n --k", true,
                [](const Shapes& s, uint64_t seed) {
                  return std::vector<Input>{{random_normal({s.m, s.gk}, seed)}, {random_normal({s.gn, s.gk}, seed + 1, 0.05f)}};
                },
                [](const std::vector<Tensor>& in, const Shapes&) { return std::vector<Tensor>{k::matmul(in[0], in[1], false, true)}; },
                [](const Shapes& s) {
                  return Cost{kAct * double(s.m * s.gk + s.gn * s.gk + s.m * s.gn), 2.0 * s.m * s.gn * s.gk, s.m, s.gn, s.gk, 1};
                }});
  ks.push_back({"embedding", "--tokens --hidden --vocab", true,
                [](const Shapes& s, uint64_t seed) {
                  return std::vector<Input>{{random_normal({s.vocab, s.hidden}, seed)},
                                            {random_ints({s.rows()}, seed + 1, 0, int32_t(s.vocab)), false}};
                },
                [](const std::vector<Tensor>& in, const Shapes&) { return std::vector<Tensor>{k::embedding_forward(in[0], in[1])}; },
                [](const Shapes& s) { return Cost{2 * kAct * s.rows() * s.hidden + 4.0 * s.rows(), 0}; }});
  ks.push_back({"rmsnorm", "--tokens --hidden", true,
                [](const Shapes& s, uint64_t seed) {
                  return std::vector<Input>{{random_normal({s.rows(), s.hidden}, seed)}, {random_normal({s.hidden}, seed + 1), false}};
                },
                [](const std::vector<Tensor>& in, const Shapes&) {
                  Tensor rstd;
                  Tensor y = k::rmsnorm_forward(in[0], in[1], 1e-6f, &rstd);
                  return std::vector<Tensor>{y, rstd};
                },
                [](const Shapes& s) { return Cost{2 * kAct * s.rows() * s.hidden + 4.0 * s.rows(), 4.0 * s.rows() * s.hidden}; }});
  ks.push_back({"rmsnorm_bwd", "--tokens --hidden", true,
                [](const Shapes& s, uint64_t seed) {
                  Tensor x = random_normal({s.rows(), s.hidden}, seed), w = random_normal({s.hidden}, seed + 1);
                  Tensor rstd;
                  k::rmsnorm_forward(rounded_to(x, DType::BF16), w, 1e-6f, &rstd);
                  return std::vector<Input>{{random_normal({s.rows(), s.hidden}, seed + 2)}, {x}, {w, false}, {rstd, false}};
                },
                [](const std::vector<Tensor>& in, const Shapes&) {
                  Tensor dx, dw;
                  k::rmsnorm_backward(in[0], in[1], in[2], in[3], &dx, &dw);
                  return std::vector<Tensor>{dx, dw};
                },
                [](const Shapes& s) { return Cost{3 * kAct * s.rows() * s.hidden, 8.0 * s.rows() * s.hidden}; }});
  ks.push_back({"rope", "--tokens --heads --head-dim", true,
                [](const Shapes& s, uint64_t seed) {
                  return std::vector<Input>{{random_normal({s.rows(), s.heads, s.head_dim}, seed)},
                                            {random_ints({s.rows()}, seed + 1, 0, 4096), false}};
                },
                [](const std::vector<Tensor>& in, const Shapes&) { return std::vector<Tensor>{k::rope_forward(in[0], in[1], 1e6f)}; },
                [](const Shapes& s) { return Cost{2 * kAct * s.rows() * s.heads * s.head_dim, 3.0 * s.rows() * s.heads * s.head_dim}; }});
  auto attn_inputs = [](const Shapes& s, uint64_t seed) {
    int64_t N = s.batch * s.seq;
    return std::vector<Input>{{random_normal({N, s.heads, s.head_dim}, seed)},
                              {random_normal({N, s.kv_heads, s.head_dim}, seed + 1)},
                              {random_normal({N, s.kv_heads, s.head_dim}, seed + 2)},
                              {random_normal({N, s.heads, s.head_dim}, seed + 3)}};
  };
  // causal: half of the T x T scores; 2 GEMMs forward (QK^T, PV), 5 backward
  auto attn_cost = [](double gemms) {
    return [gemms](const Shapes& s) {
      double N = double(s.batch * s.seq), flops = gemms * 2.0 * s.batch * s.heads * double(s.seq) * s.seq * s.head_dim / 2;
      return Cost{kAct * N * s.head_dim * (2 * s.heads + 2 * s.kv_heads), flops, s.seq, s.seq, s.head_dim, s.batch * s.heads};
    };
  };
  ks.push_back({"attention", "--batch --seq --heads --kv-heads --head-dim", true, attn_inputs,
                [](const std::vector<Tensor>& in, const Shapes& s) {
                  Tensor lse;
                  Tensor o = k::attention_forward(in[0], in[1], in[2], s.batch, s.seq, Tensor(), &lse);
                  return std::vector<Tensor>{o, lse};
                },
                attn_cost(2)});
  ks.push_back({"attention_bwd", "--batch --seq --heads --kv-heads --head-dim", true, attn_inputs,
                [](const std::vector<Tensor>& in, const Shapes& s) {
                  Tensor lse, dq, dk, dv;
                  Tensor o = k::attention_forward(in[0], in[1], in[2], s.batch, s.seq, Tensor(), &lse);
                  k::attention_backward(in[3], in[0], in[1], in[2], o, lse, s.batch, s.seq, Tensor(), &dq, &dk, &dv);
                  return std::vector<Tensor>{dq, dk, dv};
                },
                attn_cost(2 + 5)});
  ks.push_back({"cross_entropy", "--tokens --hidden --vocab --chunk", true,
                [](const Shapes& s, uint64_t seed) {
                  return std::vector<Input>{{random_normal({s.rows(), s.hidden}, seed)},
                                            {random_normal({s.vocab, s.hidden}, seed + 1, 0.05f)},
                                            {random_ints({s.rows()}, seed + 2, 0, int32_t(s.vocab)), false}};
                },
                [](const std::vector<Tensor>& in, const Shapes& s) {
                  Tensor gh, gw;
                  int64_t count = 0;
                  float loss = k::linear_cross_entropy(in[0], in[1], in[2], s.chunk, &gh, &gw, &count);
                  return std::vector<Tensor>{Tensor::full({1}, loss), gh, gw};
                },
                [](const Shapes& s) {  // forward GEMM + two backward GEMMs
                  return Cost{kAct * double(s.rows() * s.hidden * 2 + s.vocab * s.hidden) + 4.0 * s.vocab * s.hidden,
                              3 * 2.0 * s.rows() * s.vocab * s.hidden, s.rows(), s.vocab, s.hidden, 1};
                }});
  // GPU-only: the optimizer kernels (tests/test_cuda.cpp checks them against the CPU optimizer).
  // adamw: the update every AdamW placement runs (kernels::adamw_update), over n parameters.
  ks.push_back({"adamw", "--n", false,
                [=](const Shapes& s, uint64_t seed) {
                  std::vector<Input> in;
                  for (int i = 0; i < 4; ++i) in.push_back({vec(s, seed + i).host, false});
                  float* v = in[3].host.data<float>();  // second moments are >= 0
                  for (int64_t i = 0; i < s.n; ++i) v[i] = v[i] * v[i];
                  return in;
                },
                [](const std::vector<Tensor>& in, const Shapes&) {
                  AdamWScalars scalars = adamw_scalars(AdamWConfig{}, 1e-3, 1);
                  Tensor param = in[0], exp_avg = in[2], exp_avg_sq = in[3];
                  k::adamw_update(param, in[1], exp_avg, exp_avg_sq, scalars, 1.0f);
                  return std::vector<Tensor>{in[0]};
                },
                [](const Shapes& s) { return Cost{4.0 * 4 * s.n + 3.0 * 4 * s.n, 12.0 * s.n}; }});
  ks.push_back({"grad_norm", "--n", false,
                [=](const Shapes& s, uint64_t seed) { return std::vector<Input>{{vec(s, seed).host, false}}; },
                [](const std::vector<Tensor>& in, const Shapes&) {
                  return std::vector<Tensor>{Tensor::full({1}, float(k::global_grad_norm({in[0]})))};
                },
                [](const Shapes& s) { return Cost{4.0 * s.n, 2.0 * s.n}; }});
  // NF4: W [out = --n, in = --k] as random bitsandbytes state (any bytes are valid codes).
  auto nf4_inputs = [](const Shapes& s, uint64_t seed) {
    int64_t numel = s.gn * s.gk, blocks = (numel + 63) / 64;
    auto bytes = [&](int64_t n, uint64_t sd) {
      Tensor ints = random_ints({n}, sd, 0, 256), t = Tensor::empty({n}, DType::U8);
      for (int64_t i = 0; i < n; ++i) t.data<uint8_t>()[i] = uint8_t(ints.data<int32_t>()[i]);
      return t;
    };
    Tensor nested = random_normal({(blocks + 255) / 256}, seed + 3, 0.05f);
    for (int64_t i = 0; i < nested.numel(); ++i) nested.data<float>()[i] = std::fabs(nested.data<float>()[i]);
    return std::vector<Input>{{random_normal({s.m, s.gk}, seed)},        {bytes((numel + 1) / 2, seed + 1), false},
                              {bytes(blocks, seed + 2), false},           {random_normal({256}, seed + 4, 0.5f), false},
                              {nested, false},                            {random_normal({s.m, s.gn}, seed + 5)},
                              {random_normal({16, s.gk}, seed + 6, 0.1f)}, {random_normal({s.gn, 16}, seed + 7, 0.1f)}};
  };
  auto nf4_weight = [](const std::vector<Tensor>& in, const Shapes& s) {
    Nf4Tensor w;  // double quant, blocks of 64, nested blocks of 256
    w.packed = in[1];
    w.absmax = in[2];
    w.nested_code = in[3];
    w.nested_absmax = in[4];
    w.offset = 0.01f;
    w.out = s.gn;
    w.in = s.gk;
    return w;
  };
  auto nf4_cost = [](double passes) {
    return [passes](const Shapes& s) {
      return Cost{kAct * double(s.m * s.gk + s.m * s.gn) + 0.5 * s.gn * s.gk, passes * 2.0 * s.m * s.gn * s.gk, s.m,
                  s.gn, s.gk, 1};
    };
  };
  ks.push_back({"nf4_matmul", "--m --n --k", false, nf4_inputs,
                [=](const std::vector<Tensor>& in, const Shapes& s) {
                  return std::vector<Tensor>{k::nf4_matmul(in[0], nf4_weight(in, s))};
                },
                nf4_cost(1)});
  // The two ways nf4_matmul chooses between by M (kernels/cuda/nf4.h), each forced: which is faster where.
  using Nf4Path = k::Nf4MatmulPath;
  for (auto [name, path] : {std::pair<const char*, Nf4Path>{"nf4_matmul_fused", Nf4Path::Fused},
                            {"nf4_matmul_dequant", Nf4Path::Dequantized}})
    ks.push_back({name, "--m --n --k", false, nf4_inputs,
                  [=, path = path](const std::vector<Tensor>& in, const Shapes& s) {
                    return std::vector<Tensor>{k::nf4_matmul(in[0], nf4_weight(in, s), nullptr, path)};
                  },
                  nf4_cost(1)});
  ks.push_back({"nf4_matmul_dx", "--m --n --k", false, nf4_inputs,
                [=](const std::vector<Tensor>& in, const Shapes& s) {
                  return std::vector<Tensor>{k::nf4_matmul_dx(in[5], nf4_weight(in, s))};
                },
                nf4_cost(1)});
  ks.push_back({"nf4_dequantize", "--n --k", false, nf4_inputs,
                [=](const std::vector<Tensor>& in, const Shapes& s) {
                  return std::vector<Tensor>{k::nf4_dequantize(nf4_weight(in, s), DType::BF16)};
                },
                [](const Shapes& s) { return Cost{2.5 * s.gn * s.gk, 0}; }});
  ks.push_back({"lora_nf4", "--m --n --k", false, nf4_inputs,  // forward + backward, r = 16
                [=](const std::vector<Tensor>& in, const Shapes& s) {
                  k::LoraParams lora{in[6], in[7], 2.0f, 0.0f, 1, 0};
                  Tensor u, dx, da, db;
                  Tensor y = k::lora_nf4_forward(in[0], nf4_weight(in, s), lora, &u);
                  k::lora_nf4_backward(in[5], in[0], u, nf4_weight(in, s), lora, &dx, &da, &db);
                  return std::vector<Tensor>{y, dx, da, db};
                },
                nf4_cost(2)});
  return ks;
}

// ---------------------------------------------------------------- timing
struct Timer {
  Device device;
  double seconds(const std::function<void()>& fn) const {
    if (device == Device::CUDA) return cuda_time_seconds(fn);  // CUDA events around the call
    auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  double median(const std::function<void(int)>& fn, int warmup, int iters) const {
    for (int i = 0; i < warmup; ++i) fn(i);
    std::vector<double> t;
    for (int i = 0; i < iters; ++i) t.push_back(seconds([&] { fn(warmup + i); }));
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

Tensor on_device(const Input& in, Device d) {
  if (d == Device::CPU) return in.activation ? rounded_to(in.host, DType::BF16) : in.host;
  return in.activation ? to_device(in.host, DType::BF16) : in.host.to(Device::CUDA);
}

// Copy bandwidth (read + write bytes per second) of cudaMemcpy device-to-device on 1 GiB.
double copy_bandwidth() {
  size_t bytes = size_t(1) << 30;
  Tensor a = Tensor::zeros({int64_t(bytes)}, DType::U8, Device::CUDA, MemCategory::Workspace);
  Tensor b = Tensor::empty({int64_t(bytes)}, DType::U8, Device::CUDA, MemCategory::Workspace);
  Timer timer{Device::CUDA};
  double t = timer.median([&](int) { device_copy(b.raw(), Device::CUDA, a.raw(), Device::CUDA, bytes); }, 2, 7);
  return 2.0 * double(bytes) / t;
}

// cuBLASLt bf16 GEMM rate (FLOP/s) on C[m, n] = A[m, k] B[n, k]^T, `batch` times.
double gemm_rate(const Cost& c) {
  int64_t batch = std::max<int64_t>(1, c.gemm_batch);
  Tensor a = to_device(random_normal({batch, c.gemm_m, c.gemm_k}, 7), DType::BF16);
  Tensor b = to_device(random_normal({batch, c.gemm_n, c.gemm_k}, 8), DType::BF16);
  Tensor out = Tensor::empty({batch, c.gemm_m, c.gemm_n}, DType::BF16, Device::CUDA);
  double t = Timer{Device::CUDA}.median([&](int) { k::matmul_into(out, a, b, false, true, false); }, 3, 10);
  return 2.0 * batch * c.gemm_m * c.gemm_n * c.gemm_k / t;
}

Shapes clipped(Shapes s) {
  s.n = std::min<int64_t>(s.n, 100003);
  s.m = std::min<int64_t>(s.m, 512); s.gn = std::min<int64_t>(s.gn, 512); s.gk = std::min<int64_t>(s.gk, 512);
  s.batch = std::min<int64_t>(s.batch, 2); s.seq = std::min<int64_t>(s.seq, 128);
  s.tokens = std::min<int64_t>(s.rows(), 256);
  s.vocab = std::min<int64_t>(s.vocab, 4096); s.chunk = std::min<int64_t>(s.chunk, 64);
  return s;
}

// GPU vs CPU at the clipped shape: worst relative error over the outputs.
double validate(const Kernel& kern, const Shapes& full) {
  Shapes s = clipped(full);
  std::vector<Input> in = kern.inputs(s, 1);
  std::vector<Tensor> cpu_in, gpu_in;
  for (const Input& i : in) { cpu_in.push_back(on_device(i, Device::CPU)); gpu_in.push_back(on_device(i, Device::CUDA)); }
  std::vector<Tensor> want = kern.run(cpu_in, s), got = kern.run(gpu_in, s);
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, relative_error(got[i], want[i]));
  return worst;
}

struct Row {
  std::string name, shape, check;
  double seconds, gbps, tflops, frac_copy, frac_gemm;
};

std::string shape_desc(const Kernel& kern, const Shapes& s) {
  std::string o = std::string(" ") + kern.options + " ", d;
  auto reads = [&](const char* opt) { return o.find(str(" ", opt, " ")) != std::string::npos; };
  auto add = [&](const char* opt, int64_t v) { if (reads(opt)) d += str(opt + 2, "=", v, " "); };
  add("--n", reads("--k") ? s.gn : s.n);  // GEMM-like: the output width
  add("--m", s.m); add("--k", s.gk); add("--tokens", s.rows()); add("--batch", s.batch); add("--seq", s.seq);
  add("--hidden", s.hidden); add("--vocab", s.vocab); add("--heads", s.heads); add("--kv-heads", s.kv_heads);
  add("--head-dim", s.head_dim); add("--chunk", s.chunk);
  if (!d.empty()) d.pop_back();
  return d;
}

Row bench_one(const Kernel& kern, const Shapes& s, Device dev, int iters, double copy_bw) {
  Row r{kern.name, shape_desc(kern, s), "ref", 0, 0, 0, 0, 0};
  if (dev == Device::CUDA && kern.has_cpu) {
    double err = validate(kern, s);
    r.check = err <= 1e-2 ? str("ok ", err) : str("FAIL ", err);
  } else if (dev == Device::CUDA) {
    r.check = "tests";
  }
  // Enough input copies that they don't fit in the last-level cache (>= 256 MiB, 2..8 copies):
  // one random set, cloned on the device (distinct buffers are what defeats the cache).
  Cost c = kern.cost(s);
  int copies = int(std::clamp(std::ceil(256.0 * (1 << 20) / std::max(1.0, c.bytes)), 2.0, 8.0));
  std::vector<std::vector<Tensor>> sets(1);
  for (const Input& in : kern.inputs(s, 1000)) sets[0].push_back(on_device(in, dev));
  for (int i = 1; i < copies; ++i) {
    std::vector<Tensor> set;
    for (const Tensor& t : sets[0]) set.push_back(t.clone());
    sets.push_back(set);
  }
  Timer timer{dev};
  r.seconds = timer.median([&](int i) { kern.run(sets[i % copies], s); }, 3, iters);
  r.gbps = c.bytes / r.seconds * 1e-9;
  r.tflops = c.flops / r.seconds * 1e-12;
  if (dev == Device::CUDA) {
    if (c.gemm_m) r.frac_gemm = (c.flops / r.seconds) / gemm_rate(c);
    else if (copy_bw > 0) r.frac_copy = (c.bytes / r.seconds) / copy_bw;
  }
  return r;
}

void print_row(const Row& r, bool csv) {
  auto frac = [](double f) { return f > 0 ? str(std::round(f * 1000) / 10, "%") : std::string("-"); };
  if (csv) {
    std::printf("%s,\"%s\",%.6g,%.4g,%.4g,%.4g,%.4g,%s\n", r.name.c_str(), r.shape.c_str(), r.seconds * 1e3, r.gbps,
                r.tflops, r.frac_copy, r.frac_gemm, r.check.c_str());
  } else {
    std::printf("%-14s %-52s %10.4f ms %9.1f GB/s %8.2f TFLOP/s  copy %-6s gemm %-6s %s\n", r.name.c_str(),
                r.shape.c_str(), r.seconds * 1e3, r.gbps, r.tflops, frac(r.frac_copy).c_str(), frac(r.frac_gemm).c_str(),
                r.check.c_str());
  }
  std::fflush(stdout);
}

// The kernels and shapes of one training step of the preset model.
std::vector<std::pair<std::string, Shapes>> preset_runs(const Preset& p) {
  Shapes base;
  base.batch = 1; base.seq = p.seq; base.hidden = p.hidden; base.vocab = p.vocab;
  base.heads = p.heads; base.kv_heads = p.kv_heads; base.head_dim = p.head_dim;
  int64_t N = p.seq;
  std::vector<std::pair<std::string, Shapes>> runs;
  auto gemm = [&](int64_t n, int64_t kdim) { Shapes s = base; s.m = N; s.gn = n; s.gk = kdim; runs.push_back({"matmul", s}); };
  gemm(p.heads * p.head_dim, p.hidden);   // q_proj
  gemm(p.ffn, p.hidden);                  // gate/up_proj
  gemm(p.hidden, p.ffn);                  // down_proj
  for (const char* name : {"nf4_matmul", "nf4_matmul_fused", "nf4_matmul_dequant", "nf4_matmul_dx", "lora_nf4"}) {
    // gate/up_proj as NF4 (+ LoRA); nf4_matmul picks one of the next two by M
    Shapes s = base; s.m = N; s.gn = p.ffn; s.gk = p.hidden;
    runs.push_back({name, s});
  }
  { Shapes s = base; s.m = 8; s.gn = p.ffn; s.gk = p.hidden; runs.push_back({"nf4_matmul", s}); }  // GEMV path
  { Shapes s = base; s.gn = p.ffn; s.gk = p.hidden; runs.push_back({"nf4_dequantize", s}); }
  for (const char* name : {"embedding", "rmsnorm", "rmsnorm_bwd", "rope", "attention", "attention_bwd", "cross_entropy"})
    runs.push_back({name, base});
  Shapes qk = base; qk.tokens = N * p.heads; qk.hidden = p.head_dim;  // per-head q norm
  runs.push_back({"rmsnorm", qk});
  Shapes ffn = base; ffn.n = N * p.ffn;
  runs.push_back({"swiglu", ffn});
  runs.push_back({"swiglu_bwd", ffn});
  runs.push_back({"dropout", Shapes{ffn}});
  Shapes hid = base; hid.n = N * p.hidden;
  runs.push_back({"add", hid});
  Shapes lora = base; lora.n = p.lora_params;
  runs.push_back({"adamw", lora});
  runs.push_back({"grad_norm", lora});
  return runs;
}

void usage() {
  std::printf(
      "usage: ./bench list\n"
      "       ./bench KERNEL [options]\n"
      "       ./bench all [--shapes small|qwen3-0.6b|qwen3-8b] [options]\n"
      "options:\n"
      "  --device cpu|cuda   where to run (default: cuda when a GPU is present, else cpu)\n"
      "  --iters N           timed runs, the median is reported (default 20 on cuda, 5 on cpu)\n"
      "  --csv               one CSV line per result: kernel,shape,ms,GB/s,TFLOP/s,frac_copy,frac_gemm,check\n"
      "  shape: --n --m --k --tokens --batch --seq --hidden --vocab --chunk --heads --kv-heads --head-dim\n"
      "         (./bench list shows which options each kernel reads)\n");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h") { usage(); return args.empty() ? 1 : 0; }
    std::vector<Kernel> kernels_list = make_kernels();
    if (args[0] == "list") {
      for (const Kernel& kern : kernels_list)
        std::printf("%-14s %s%s\n", kern.name, kern.options, kern.has_cpu ? "" : "   (cuda only)");
      return 0;
    }
    Shapes s;
    std::string preset_name, device_name_arg;
    bool csv = false;
    int iters = 0;
    std::map<std::string, int64_t*> shape_opts = {
        {"--n", &s.n}, {"--m", &s.m}, {"--k", &s.gk}, {"--tokens", &s.tokens}, {"--batch", &s.batch},
        {"--seq", &s.seq}, {"--hidden", &s.hidden}, {"--vocab", &s.vocab}, {"--chunk", &s.chunk},
        {"--heads", &s.heads}, {"--kv-heads", &s.kv_heads}, {"--head-dim", &s.head_dim}};
    bool gemm_n_set = false;
    for (size_t i = 1; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a == "--help" || a == "-h") { usage(); return 0; }
      if (a == "--csv") { csv = true; continue; }
      NQ_CHECK(i + 1 < args.size(), "option ", a, " needs a value (see ./bench --help)");
      const std::string& v = args[++i];
      if (a == "--shapes") { preset_name = v; continue; }
      if (a == "--device") { device_name_arg = v; continue; }
      auto it = shape_opts.find(a);
      NQ_CHECK(it != shape_opts.end() || a == "--iters", "unknown option ", a, " (see ./bench --help)");
      char* end = nullptr;
      long long x = std::strtoll(v.c_str(), &end, 10);
      NQ_CHECK(end && *end == 0 && x > 0, "option ", a, ": expected a positive integer, got '", v, "'");
      if (a == "--iters") iters = int(x);
      else *it->second = x;
      if (a == "--n") gemm_n_set = true;
    }
    if (gemm_n_set) s.gn = s.n;  // --n is the GEMM's n for matmul, the element count otherwise
    NQ_CHECK(s.heads % s.kv_heads == 0, "--heads ", s.heads, " must be a multiple of --kv-heads ", s.kv_heads);
    Device dev = cuda_available() ? Device::CUDA : Device::CPU;
    if (!device_name_arg.empty()) {
      NQ_CHECK(device_name_arg == "cpu" || device_name_arg == "cuda", "--device: expected cpu or cuda, got '",
               device_name_arg, "'");
      dev = device_name_arg == "cpu" ? Device::CPU : Device::CUDA;
      NQ_CHECK(dev == Device::CPU || cuda_available(), "--device cuda: no CUDA device is available");
    }
    if (!iters) iters = dev == Device::CUDA ? 20 : 5;
    kAct = dev == Device::CUDA ? 2.0 : 4.0;
    double copy_bw = dev == Device::CUDA ? copy_bandwidth() : 0;
    if (dev == Device::CUDA && !csv) std::printf("device copy bandwidth (cudaMemcpy D2D, 1 GiB): %.1f GB/s\n", copy_bw * 1e-9);
    if (csv) std::printf("kernel,shape,ms,GB/s,TFLOP/s,frac_copy,frac_gemm,check\n");

    auto lookup = [&](const std::string& name) -> const Kernel* {
      for (const Kernel& kern : kernels_list)
        if (name == kern.name) return &kern;
      return nullptr;
    };
    bool failed = false;
    auto run = [&](const Kernel& kern, const Shapes& shapes) {
      if (dev == Device::CPU && !kern.has_cpu) return;
      Row r = bench_one(kern, shapes, dev, iters, copy_bw);
      failed |= r.check.rfind("FAIL", 0) == 0;
      print_row(r, csv);
    };
    if (args[0] == "all") {
      if (preset_name.empty()) preset_name = dev == Device::CUDA ? "qwen3-0.6b" : "small";
      const Preset* p = nullptr;
      for (const Preset& q : kPresets)
        if (preset_name == q.name) p = &q;
      NQ_CHECK(p, "--shapes: unknown preset '", preset_name, "' (small, qwen3-0.6b, qwen3-8b)");
      if (!csv) std::printf("shapes %s on %s, median of %d runs\n", p->name, device_name(dev), iters);
      for (auto& [name, shapes] : preset_runs(*p)) {
        const Kernel* kern = lookup(name);  // GPU-only kernels are absent from a CPU-only build
        if (kern && (dev == Device::CUDA || kern->has_cpu)) run(*kern, shapes);
      }
    } else {
      NQ_CHECK(preset_name.empty(), "--shapes applies to `./bench all` only");
      const Kernel* kern = lookup(args[0]);
      NQ_CHECK(kern, "unknown kernel '", args[0], "' (./bench list shows them)");
      NQ_CHECK(dev == Device::CUDA || kern->has_cpu, args[0], " has no CPU kernel: use --device cuda");
      run(*kern, s);
    }
    return failed ? 1 : 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
