// The registry's list and its modes (kernels/registry.h). The ops themselves are
// registered in kernels/ops/*.cpp, one function per family, called here in order.
#include "kernels/registry.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/ops/ops.h"
#include "runtime/cuda_compare.h"
#include "runtime/cuda_runtime.h"
#include "runtime/device_copy.h"

#ifdef NQ_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/gemm.h"
#include "runtime/cuda_check.h"
#endif

namespace nq::kernels::registry {

// ---------------------------------------------------------------- dims and tolerances
const std::vector<std::pair<const char*, int64_t Dims::*>>& dim_fields() {
  static const std::vector<std::pair<const char*, int64_t Dims::*>> fields = {
      {"n", &Dims::n},         {"m", &Dims::m},           {"k", &Dims::k},
      {"tokens", &Dims::tokens}, {"batch", &Dims::batch}, {"seq", &Dims::seq},
      {"hidden", &Dims::hidden}, {"vocab", &Dims::vocab}, {"ffn", &Dims::ffn},
      {"chunk", &Dims::chunk}, {"heads", &Dims::heads},   {"kv-heads", &Dims::kv_heads},
      {"head-dim", &Dims::head_dim}, {"experts", &Dims::experts}, {"top-k", &Dims::top_k}};
  return fields;
}

std::string describe(const Dims& d, const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names)
    for (const auto& [field, member] : dim_fields())
      if (name == field) out += str(out.empty() ? "" : " ", field, "=", d.*member);
  return out;
}

std::string describe_case(const Op& op, const Dims& d) {
  Dims defaults;
  std::string out = op.name + " " + describe(d, op.dims);
  if (d.trans_a) out += " trans_a";
  if (!d.trans_b) out += " !trans_b";
  if (d.accumulate) out += " accumulate";
  if (d.segments) out += str(" segments=", d.segments);
  if (d.theta != defaults.theta) out += str(" theta=", d.theta);
  if (d.max_position != defaults.max_position) out += str(" max_position=", d.max_position);
  if (d.rope_scaling.scaled()) out += " rope=" + d.rope_scaling.describe();
  if (d.p != defaults.p) out += str(" p=", d.p);
  if (d.nf4_path) out += d.nf4_path == 1 ? " fused" : " dequantized";
  if (d.rank) out += str(" rank=", d.rank);
  if (d.blocksize != defaults.blocksize) out += str(" blocksize=", d.blocksize);
  if (!d.double_quant) out += " plain-absmax";
  if (d.steps != defaults.steps) out += str(" steps=", d.steps);
  if (d.renormalize) out += " renormalize";
  return out;
}

double dtype_bound(DType act) { return act == DType::F32 ? 1e-5 : act == DType::F16 ? 3e-3 : 1e-2; }
Tol by_dtype() { return Tol{}; }
Tol f32_bound() { return Tol{Metric::Relative, [](const Dims&, DType) { return 1e-5; }}; }
Tol tile16_bound() {
  return Tol{Metric::Relative, [](const Dims&, DType act) { return dtype_bound(act == DType::F16 ? act : DType::BF16); }};
}
Tol bit_exact() { return Tol{Metric::BitExact, nullptr}; }

// ---------------------------------------------------------------- the list
const std::vector<Op>& ops() {
  static const std::vector<Op> all = [] {
    std::vector<Op> list;
    family::register_elementwise(list);
    family::register_matmul(list);
    family::register_embedding(list);
    family::register_rmsnorm(list);
    family::register_rope(list);
    family::register_attention(list);
    family::register_cross_entropy(list);
    family::register_qlora(list);
    family::register_moe(list);
    return list;
  }();
  return all;
}

const Op* find(const std::string& name) {
  for (const Op& op : ops())
    if (op.name == name) return &op;
  return nullptr;
}

std::vector<std::string> devices(const Op& op) {
  std::vector<std::string> out;
  if (op.has_cpu) out.push_back("cpu");
#ifdef NQ_CUDA
  out.push_back("cuda");
#endif
  return out;
}

// ---------------------------------------------------------------- comparisons
namespace {

using family::doubles;

double rel_err(const std::vector<double>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, ref = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i])) return std::numeric_limits<double>::infinity();
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    ref += want[i] * want[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(ref), 1e-300);
}

// Elements whose bytes differ once `want` is rounded to got's dtype (both brought to the host).
double bit_differences(const Tensor& got, const Tensor& want) {
  Tensor g = got.to(Device::CPU), w = want.to(Device::CPU);
  if (w.dtype() != g.dtype()) w = w.to_dtype(g.dtype());
  if (g.shape() != w.shape()) return std::numeric_limits<double>::infinity();
  size_t es = dtype_size(g.dtype());
  const char *pg = static_cast<const char*>(g.raw()), *pw = static_cast<const char*>(w.raw());
  double differ = 0;
  for (int64_t i = 0; i < g.numel(); ++i) differ += std::memcmp(pg + i * es, pw + i * es, es) != 0;
  return differ;
}

double zero_pattern_differences(const Tensor& got, const Tensor& want) {
  std::vector<float> g = got.to_vector(), w = want.to_vector();
  if (g.size() != w.size()) return std::numeric_limits<double>::infinity();
  double differ = 0;
  for (size_t i = 0; i < g.size(); ++i) differ += (g[i] == 0.0f) != (w[i] == 0.0f);
  return differ;
}

void compare(std::vector<Check>& checks, const std::string& what, const Tol& tol, const Tensor& got,
             const Tensor& want, const Dims& d, DType act) {
  double bound = tol.metric == Metric::BitExact ? 0.0 : tol.bound ? tol.bound(d, act) : dtype_bound(act);
  double err = 0;
  switch (tol.metric) {
    case Metric::Relative: err = relative_error(got, want); break;
    case Metric::Absolute: {
      std::vector<double> g = doubles(got), w = doubles(want);
      double ss = 0;
      for (size_t i = 0; i < g.size(); ++i) ss += (g[i] - w[i]) * (g[i] - w[i]);
      err = g.size() == w.size() && !std::isnan(ss) ? std::sqrt(ss) : std::numeric_limits<double>::infinity();
      break;
    }
    case Metric::BitExact: err = bit_differences(got, want); break;
  }
  checks.push_back({what, err, bound, err <= bound});
  if (tol.same_zeros) {
    double z = zero_pattern_differences(got, want);
    checks.push_back({what + " zeros", z, 0, z == 0});
  }
}

std::vector<Tensor> concat(std::vector<Tensor> a, const std::vector<Tensor>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Where an input goes for a run with activations of dtype `act` on `device`.
Tensor placed(const Input& in, Device device, DType act) {
  if (in.host_only) return in.host;
  if (device == Device::CPU) return in.activation ? rounded_to(in.host, act) : in.host.clone();
  return in.activation ? to_device(in.host, act) : in.host.to(device);
}

}  // namespace

// ---------------------------------------------------------------- reference mode
std::vector<Check> check_reference(const Op& op, const Dims& d) {
  std::vector<Check> checks;
  if (!op.naive || !op.has_cpu) return checks;
  std::vector<Tensor> in;
  for (const Input& i : op.inputs(d, 1)) in.push_back(placed(i, Device::CPU, DType::F32));
  std::vector<Expected> expected = op.naive(in, d);  // before the runs: a run may write into an input
  std::vector<Tensor> fwd = op.forward.run(in, {}, d);
  std::vector<Tensor> outs = op.backward ? concat(fwd, op.backward.run(in, fwd, d)) : fwd;
  for (const Expected& e : expected) {
    std::string what = str("output ", e.output);
    if (e.output >= outs.size()) {
      checks.push_back({what + " (missing)", 1, 0, false});
      continue;
    }
    std::vector<double> got = doubles(outs[e.output]);
    if (e.tol == 0) {  // bit-exact: the f32 output is the reference rounded to f32
      double differ = got.size() == e.values.size() ? 0 : std::numeric_limits<double>::infinity();
      for (size_t i = 0; i < got.size() && i < e.values.size(); ++i) differ += got[i] != double(float(e.values[i]));
      checks.push_back({what + " bit-exact", differ, 0, differ == 0});
    } else if (e.metric == Metric::Absolute) {
      double err = 0;
      for (size_t i = 0; i < got.size(); ++i) err = std::max(err, std::fabs(got[i] - e.values[i]));
      checks.push_back({what + " absolute", err, e.tol, err <= e.tol});
    } else {
      double err = rel_err(got, e.values);
      checks.push_back({what, err, e.tol, err < e.tol});
    }
  }
  return checks;
}

// ---------------------------------------------------------------- grad mode
namespace {
constexpr double kFdStep = 1e-6;  // truncation ~1e-12, rounding ~1e-10 relative
constexpr double kFdTol = 1e-6;
}  // namespace

std::vector<Check> check_grad(const Op& op, const Dims& d) {
  std::vector<Check> checks;
  if (!op.grad) return checks;
  std::vector<Tensor> in;
  for (const Input& i : op.inputs(d, 1)) in.push_back(i.host);
  GradProblem g = op.grad(in, d);
  if (g.skip) return checks;
  std::vector<std::vector<double>>& x = *g.x;
  std::vector<std::vector<double>> analytic = g.grad();
  for (size_t t = 0; t < x.size(); ++t) {
    std::vector<double> numeric(x[t].size());
    for (size_t i = 0; i < x[t].size(); ++i) {
      double saved = x[t][i];
      x[t][i] = saved + kFdStep;
      double up = g.loss();
      x[t][i] = saved - kFdStep;
      double down = g.loss();
      x[t][i] = saved;
      numeric[i] = (up - down) / (2 * kFdStep);
    }
    double err = rel_err(analytic[t], numeric);
    checks.push_back({"grad " + g.names[t], err, kFdTol, err < kFdTol});
  }
  if (g.double_vs_naive) {
    auto [kernel, naive] = g.double_vs_naive();
    double err = rel_err(kernel, naive);
    checks.push_back({"double kernel vs naive", err, 1e-12, err < 1e-12});
  }
  return checks;
}

// ---------------------------------------------------------------- device mode
std::vector<Check> check_device(const Op& op, const Dims& d, Device device, DType act) {
  std::vector<Check> checks;
  if (!op.has_cpu) return checks;  // nothing to hold it to on the CPU
  std::vector<Input> inputs = op.inputs(d, 1);
  std::vector<Tensor> cpu_in, dev_in;
  for (const Input& i : inputs) {
    cpu_in.push_back(placed(i, Device::CPU, act));
    dev_in.push_back(placed(i, device, act));
  }
  std::vector<Tensor> want = op.forward.run(cpu_in, {}, d), got = op.forward.run(dev_in, {}, d);
  auto compare_all = [&](const char* pass, const Pass& p, const std::vector<Tensor>& g, const std::vector<Tensor>& w) {
    const std::vector<Tol> tols = p.tols_at ? p.tols_at(d) : p.tols;
    NQ_CHECK(g.size() == w.size() && w.size() == tols.size(), op.name, " ", pass, ": ", g.size(), " outputs on ",
             device_name(device), ", ", w.size(), " on the cpu, ", tols.size(), " tolerances");
    for (size_t i = 0; i < w.size(); ++i) {
      std::string what = str(pass, "[", i, "]");
      compare(checks, what, tols[i], g[i], w[i], d, act);
      if (tols[i].in_act_dtype)
        checks.push_back({what + " dtype " + dtype_name(g[i].dtype()), 0, 0, g[i].dtype() == act});
    }
  };
  compare_all("forward", op.forward, got, want);
  if (op.backward) {
    std::vector<Tensor> want_b = op.backward.run(cpu_in, want, d), got_b = op.backward.run(dev_in, got, d);
    compare_all("backward", op.backward, got_b, want_b);
  }
  return checks;
}

// ---------------------------------------------------------------- perf mode
namespace {

struct Timer {
  Device device;
  // GPU: CUDA events around the call (runtime/cuda_runtime.h); CPU: the wall clock.
  double seconds(const std::function<void()>& fn) const {
    if (device == Device::CUDA) return cuda_time_seconds(fn);
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

// cuBLASLt bf16 GEMM rate (FLOP/s) on C[m, n] = A[m, k] B[n, k]^T, `batch` times.
double gemm_rate(const Cost& c) {
#ifdef NQ_CUDA
  int64_t batch = std::max<int64_t>(1, c.gemm_batch);
  Tensor a = to_device(random_normal({batch * c.gemm_m, c.gemm_k}, 7), DType::BF16);
  Tensor b = to_device(random_normal({batch * c.gemm_n, c.gemm_k}, 8), DType::BF16);
  Tensor out = Tensor::empty({batch * c.gemm_m, c.gemm_n}, DType::BF16, Device::CUDA);
  cuda::GemmArgs g{a.raw(), DType::BF16, false, b.raw(), DType::BF16, true, out.raw(), DType::BF16,
                   c.gemm_m, c.gemm_n, c.gemm_k};
  g.batch = batch;
  g.stride_a = c.gemm_m * c.gemm_k;
  g.stride_b = c.gemm_n * c.gemm_k;
  g.stride_c = c.gemm_m * c.gemm_n;
  double t = Timer{Device::CUDA}.median([&](int) { cuda::gemm(g); }, 3, 10);
  return 2.0 * batch * c.gemm_m * c.gemm_n * c.gemm_k / t;
#else
  return 0;
#endif
}

}  // namespace

double copy_bandwidth(Device device) {
#ifdef NQ_CUDA
  if (device != Device::CUDA) return 0;
  size_t bytes = size_t(1) << 30;
  Tensor a = Tensor::zeros({int64_t(bytes)}, DType::U8, Device::CUDA, MemCategory::Workspace);
  Tensor b = Tensor::empty({int64_t(bytes)}, DType::U8, Device::CUDA, MemCategory::Workspace);
  Timer timer{Device::CUDA};
  double t = timer.median([&](int) { CUDA_CHECK(cudaMemcpy(b.raw(), a.raw(), bytes, cudaMemcpyDeviceToDevice)); }, 2, 7);
  return 2.0 * double(bytes) / t;
#else
  return 0;
#endif
}

Dims clipped(Dims s) {
  s.n = std::min<int64_t>(s.n, 100003);
  s.m = std::min<int64_t>(s.m, 512);
  s.k = std::min<int64_t>(s.k, 512);
  s.ffn = std::min<int64_t>(s.ffn, 512);
  s.batch = std::min<int64_t>(s.batch, 2);
  s.seq = std::min<int64_t>(s.seq, 128);
  s.tokens = std::min<int64_t>(s.tokens, 256);
  s.vocab = std::min<int64_t>(s.vocab, 4096);
  s.chunk = std::min<int64_t>(s.chunk, 64);
  return s;
}

PerfRow perf(const Op& op, Direction dir, const Dims& d, Device dev, int iters, double copy_bw, DType act16) {
  const bool backward = dir == Direction::Backward;
  const Pass& pass = backward ? op.backward : op.forward;
  NQ_CHECK(pass, op.name, " has no backward to time");
  PerfRow r{backward ? op.name + "_bwd" : op.name, describe(d, op.dims), "ref"};
  if (dev == Device::CUDA && op.has_cpu) {
    // GPU against the CPU at the clipped shape, in the run's activation dtype (outputs NaN-poisoned).
    set_poison_on_alloc(true);
    double worst = 0;
    bool ok = true;
    for (const Check& c : check_device(op, clipped(d), dev, act16)) {
      if (c.what.find("zeros") == std::string::npos && c.what.find("dtype") == std::string::npos)
        worst = std::max(worst, c.error);
      ok &= c.ok;
    }
    set_poison_on_alloc(false);
    r.check = str(ok ? "ok " : "FAIL ", worst);
  } else if (dev == Device::CUDA) {
    r.check = "tests";
  }
  const double act_bytes = dev == Device::CUDA ? 2.0 : 4.0;
  Cost c = pass.cost(d, act_bytes);
  // Enough input copies that they don't fit in the last-level cache (>= 256 MiB, 2..8 copies):
  // one random set, cloned on the device (distinct buffers are what defeats the cache).
  int copies = int(std::clamp(std::ceil(256.0 * (1 << 20) / std::max(1.0, c.bytes)), 2.0, 8.0));
  const DType act = dev == Device::CUDA ? act16 : DType::F32;
  std::vector<std::vector<Tensor>> sets(1);
  for (const Input& in : op.inputs(d, 1000)) sets[0].push_back(placed(in, dev, act));
  for (int i = 1; i < copies; ++i) {
    std::vector<Tensor> set;
    for (const Tensor& t : sets[0]) set.push_back(t.clone());
    sets.push_back(set);
  }
  // A backward reads its forward's outputs (saved statistics): computed once per copy, untimed.
  // (or timed with it: timed_with_forward).
  std::vector<std::vector<Tensor>> saved(copies);
  const bool with_forward = backward && pass.timed_with_forward;
  if (backward && !with_forward)
    for (int i = 0; i < copies; ++i) saved[i] = op.forward.run(sets[i], {}, d);
  Timer timer{dev};
  r.seconds = timer.median(
      [&](int i) {
        const std::vector<Tensor>& set = sets[i % copies];
        pass.run(set, with_forward ? op.forward.run(set, {}, d) : saved[i % copies], d);
      },
      3, iters);
  r.gbps = c.bytes / r.seconds * 1e-9;
  r.tflops = c.flops / r.seconds * 1e-12;
  if (dev == Device::CUDA) {
    if (c.gemm_m) r.frac_gemm = (c.flops / r.seconds) / gemm_rate(c);
    else if (copy_bw > 0) r.frac_copy = (c.bytes / r.seconds) / copy_bw;
  }
  return r;
}

}  // namespace nq::kernels::registry
