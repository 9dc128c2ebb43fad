// ./bench: times one op of the registry (kernels/registry.h), or every op at a
// model's shapes, on the CPU or the GPU, after checking it against the CPU reference.
//
//   ./bench list
//   ./bench OP [--device cpu|cuda] [shape options] [--iters N] [--csv]
//   ./bench all [--shapes small|qwen3-0.6b|qwen3-8b|...] [--device cpu|cuda] [--csv]
//
// The ops, their shape options, inputs, costs and model shapes are the registry's
// (kernels/ops/*.cpp); an op with a backward is also OP_bwd (the backward alone,
// its forward's saved outputs computed untimed). The presets' dims come from
// model/config's presets (ModelConfig::preset), at 4096 tokens.
//
// Method (registry::perf): inputs are random (never zero), made in several copies
// that together exceed the last-level cache, and each run uses the next copy, so
// no run finds its inputs already cached. 3 warm-up runs, then the median of
// --iters timed runs: CUDA events around each call on the GPU, steady_clock on
// the CPU. Before timing (GPU only), the op runs on the CPU too at a clipped
// shape (at most 256 tokens, 4096 vocab, 512 per GEMM dim) in the registry's
// device mode (bf16, each output within its bound, 1e-2 for bf16 activations),
// else the line says FAIL and the exit code is 1.
//
// Each line: time, effective GB/s (bytes the op must move: inputs read once,
// outputs written once), TFLOP/s, and on the GPU the fraction of the copy
// bandwidth (cudaMemcpy device-to-device, measured at start) for memory-bound
// ops, or of cuBLASLt's bf16 GEMM rate on the op's GEMM shape for matmul-like ops.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "kernels/registry.h"
#include "model/config.h"
#include "runtime/device_copy.h"

using namespace nq;
namespace reg = nq::kernels::registry;

namespace {

constexpr int64_t kBenchTokens = 4096;  // one training row of the presets
constexpr int64_t kLoraRank = 16;       // LoRA r on all 7 linears: the optimizer's parameter count

// The dims one training step of `c` runs at: T tokens, LoRA r = 16 on q/k/v/o/gate/up/down.
reg::ModelDims model_dims(const ModelConfig& c, int64_t tokens) {
  const int64_t D = c.hidden_size, F = c.intermediate_size, q = c.num_heads * c.head_dim,
                kv = c.num_kv_heads * c.head_dim;
  const int64_t per_layer = kLoraRank * ((D + q) + 2 * (D + kv) + (q + D) + 2 * (D + F) + (F + D));
  return {D, F, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size, tokens, per_layer * c.num_layers};
}

// "small": tiny enough for the CPU (2 cores) in a few seconds; the rest: ModelConfig's presets.
reg::ModelDims preset_dims(const std::string& name) {
  if (name == "small") {
    ModelConfig c;
    c.hidden_size = 256; c.intermediate_size = 768; c.num_layers = 4; c.num_heads = 4; c.num_kv_heads = 2;
    c.head_dim = 64; c.vocab_size = 4096;
    return model_dims(c, 256);
  }
  return model_dims(ModelConfig::preset(name), kBenchTokens);
}

std::string preset_list() {
  std::string out = "small";
  for (const std::string& name : ModelConfig::preset_names()) out += ", " + name;
  return out;
}

void print_row(const reg::PerfRow& r, bool csv) {
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

std::string flag_list() {
  std::string out;
  for (const auto& [name, member] : reg::dim_fields()) out += str(out.empty() ? "" : " ", "--", name);
  return out;
}

void usage() {
  std::printf(
      "usage: ./bench list\n"
      "       ./bench OP [options]\n"
      "       ./bench all [--shapes %s] [options]\n"
      "options:\n"
      "  --device cpu|cuda   where to run (default: cuda when a GPU is present, else cpu)\n"
      "  --iters N           timed runs, the median is reported (default 20 on cuda, 5 on cpu)\n"
      "  --csv               one CSV line per result: kernel,shape,ms,GB/s,TFLOP/s,frac_copy,frac_gemm,check\n"
      "  shape: %s\n"
      "         (./bench list shows which options each op reads; OP_bwd times an op's backward)\n",
      preset_list().c_str(), flag_list().c_str());
}

void list() {
  int width = 0;  // the longest name, "_bwd" included: the columns line up
  for (const reg::Op& op : reg::ops()) width = std::max(width, int(op.name.size()) + (op.backward ? 4 : 0));
  for (const reg::Op& op : reg::ops()) {
    std::string flags, devices;
    for (const std::string& d : op.dims) flags += str(flags.empty() ? "" : " ", "--", d);
    for (const std::string& d : reg::devices(op)) devices += str(devices.empty() ? "" : ",", d);
    std::printf("%-*s %-44s %s\n", width, op.name.c_str(), flags.c_str(), devices.c_str());
    if (op.backward) std::printf("%-*s %-44s %s\n", width, (op.name + "_bwd").c_str(), flags.c_str(), devices.c_str());
  }
}

// OP or OP_bwd -> the op and the direction; null when the registry has neither.
const reg::Op* lookup(const std::string& name, reg::Direction* dir) {
  *dir = reg::Direction::Forward;
  if (const reg::Op* op = reg::find(name)) return op;
  const std::string suffix = "_bwd";
  if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
    const reg::Op* op = reg::find(name.substr(0, name.size() - suffix.size()));
    if (op && op->backward) {
      *dir = reg::Direction::Backward;
      return op;
    }
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h") { usage(); return args.empty() ? 1 : 0; }
    if (args[0] == "list") { list(); return 0; }
    std::map<std::string, int64_t> shape_flags;  // "--tokens" -> value: what the user set
    std::string preset_name, device_name_arg;
    bool csv = false;
    int iters = 0;
    for (size_t i = 1; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a == "--help" || a == "-h") { usage(); return 0; }
      if (a == "--csv") { csv = true; continue; }
      NQ_CHECK(i + 1 < args.size(), "option ", a, " needs a value (see ./bench --help)");
      const std::string& v = args[++i];
      if (a == "--shapes") { preset_name = v; continue; }
      if (a == "--device") { device_name_arg = v; continue; }
      bool known = a == "--iters";
      for (const auto& [name, member] : reg::dim_fields()) known |= a == str("--", name);
      NQ_CHECK(known, "unknown option ", a, " (see ./bench --help)");
      char* end = nullptr;
      long long x = std::strtoll(v.c_str(), &end, 10);
      NQ_CHECK(end && *end == 0 && x > 0, "option ", a, ": expected a positive integer, got '", v, "'");
      if (a == "--iters") iters = int(x);
      else shape_flags[a] = x;
    }
    Device dev = cuda_available() ? Device::CUDA : Device::CPU;
    if (!device_name_arg.empty()) {
      NQ_CHECK(device_name_arg == "cpu" || device_name_arg == "cuda", "--device: expected cpu or cuda, got '",
               device_name_arg, "'");
      dev = device_name_arg == "cpu" ? Device::CPU : Device::CUDA;
      NQ_CHECK(dev == Device::CPU || cuda_available(), "--device cuda: no CUDA device is available");
    }
    if (!iters) iters = dev == Device::CUDA ? 20 : 5;
    double copy_bw = reg::copy_bandwidth(dev);
    if (dev == Device::CUDA && !csv) std::printf("device copy bandwidth (cudaMemcpy D2D, 1 GiB): %.1f GB/s\n", copy_bw * 1e-9);
    if (csv) std::printf("kernel,shape,ms,GB/s,TFLOP/s,frac_copy,frac_gemm,check\n");

    bool failed = false;
    auto run = [&](const reg::Op& op, reg::Direction dir, const reg::Dims& d) {
      reg::PerfRow r = reg::perf(op, dir, d, dev, iters, copy_bw);
      failed |= r.check.rfind("FAIL", 0) == 0;
      print_row(r, csv);
    };
    if (args[0] == "all") {
      NQ_CHECK(shape_flags.empty(), "./bench all takes its shapes from --shapes, not from shape options");
      if (preset_name.empty()) preset_name = dev == Device::CUDA ? "qwen3-0.6b" : "small";
      reg::ModelDims model = preset_dims(preset_name);
      if (!csv) std::printf("shapes %s on %s, median of %d runs\n", preset_name.c_str(), device_name(dev), iters);
      for (const reg::Op& op : reg::ops()) {
        if (!op.model_shapes || (dev == Device::CPU && !op.has_cpu)) continue;
        for (const reg::Dims& d : op.model_shapes(model)) {
          run(op, reg::Direction::Forward, d);
          if (op.backward) run(op, reg::Direction::Backward, d);
        }
      }
    } else {
      NQ_CHECK(preset_name.empty(), "--shapes applies to `./bench all` only");
      reg::Direction dir;
      const reg::Op* op = lookup(args[0], &dir);
      NQ_CHECK(op, "unknown op '", args[0], "' (./bench list shows them)");
      NQ_CHECK(dev == Device::CUDA || op->has_cpu, args[0], " has no CPU kernel: use --device cuda");
      reg::Dims d = op->bench;
      for (const auto& [name, member] : reg::dim_fields()) {
        auto it = shape_flags.find(str("--", name));
        if (it != shape_flags.end()) d.*member = it->second;
      }
      NQ_CHECK(d.heads % d.kv_heads == 0, "--heads ", d.heads, " must be a multiple of --kv-heads ", d.kv_heads);
      run(*op, dir, d);
    }
    return failed ? 1 : 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
