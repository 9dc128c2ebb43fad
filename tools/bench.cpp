// ./bench: times one op of the registry (kernels/registry.h), or every op at a
// model's shapes, on the CPU or the GPU, after checking it against the CPU reference.
//
//   ./bench list
//   ./bench OP [--device auto|cpu|cuda] [shape options] [--iters N] [--csv]
//   ./bench all [--shapes small|qwen3-0.6b|qwen3-8b|...] [--device auto|cpu|cuda] [--csv]
//   (flags: one table, training/flags.h; the shape flags are the registry's dims)
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
#include <string>
#include <vector>

#include "kernels/registry.h"
#include "model/config.h"
#include "model/device.h"
#include "runtime/device_copy.h"
#include "tools/cli.h"
#include "training/flags.h"

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

// The flags of ./bench, one table (training/flags.h): the shape flags are the registry's
// dims (kernels/registry.h), so a new dim is a new flag without an edit here.
struct BenchFlags {
  std::vector<std::string> what;        // OP | OP_bwd | list | all
  std::string device = kDefaultDevice;  // auto | cpu | cuda
  std::string dtype = "auto";           // the GPU's activations: auto (bf16, else f16) | bfloat16 | float16
  std::string shapes;                   // ./bench all: small or a ModelConfig preset
  int64_t iters = 0;                    // 0: 20 on cuda, 5 on cpu
  bool csv = false;
  std::vector<int64_t> dims = std::vector<int64_t>(reg::dim_fields().size(), 0);  // 0: the op's bench shape
};

FlagTable bench_flags(BenchFlags& f) {
  FlagTable t(str("usage: ./bench list\n"
                  "       ./bench OP [options]       (OP_bwd: the op's backward)\n"
                  "       ./bench all [--shapes ", preset_list(), "] [options]\n"
                  "Times each op of the registry alone, after checking it against the CPU reference.\n"));
  t.positionals("OP", &f.what, "list, all, or an op of ./bench list");
  add_device_flag(t, &f.device);
  add_dtype_flag(t, &f.dtype);
  t.add("shapes", &f.shapes, str("./bench all: the model whose training-step shapes are timed (", preset_list(),
                                 "; default qwen3-0.6b on cuda, small on cpu)"), "NAME");
  t.add("iters", &f.iters, "timed runs; the median is reported (default 20 on cuda, 5 on cpu)").default_text = "";
  t.add("csv", &f.csv, "one CSV line per result: kernel,shape,ms,GB/s,TFLOP/s,frac_copy,frac_gemm,check");
  for (size_t i = 0; i < reg::dim_fields().size(); ++i)
    t.add(reg::dim_fields()[i].first, &f.dims[i], "shape dim (default: the op's own; ./bench list shows which it reads)")
        .default_text = "";
  return t;
}

int run(int argc, char** argv) {
  BenchFlags f;
  FlagTable table = bench_flags(f);
  if (argc < 2) {  // no arguments: the help, as a usage error
    std::fputs(table.help().c_str(), stderr);
    return 1;
  }
  if (!table.parse(argc, argv)) return 0;
  NQ_CHECK(f.what.size() == 1, f.what.empty() ? std::string("give an OP, list or all (see --help)")
                                              : str("one OP only (got ", f.what[0], " and ", f.what[1], ")"));
  const std::string& what = f.what[0];
  if (what == "list") {
    list();
    return 0;
  }
  NQ_CHECK(f.iters >= 0, "--iters: expected a positive integer, got ", f.iters);
  bool shape_given = false;
  for (size_t i = 0; i < f.dims.size(); ++i) {
    const char* name = reg::dim_fields()[i].first;
    if (!table.given(name)) continue;
    NQ_CHECK(f.dims[i] > 0, "--", name, ": expected a positive integer, got ", f.dims[i]);
    shape_given = true;
  }
  const Device dev = select_device(f.device, "--device");
  const DType act = select_compute_dtype(f.dtype, dev, "--dtype");  // f32 on the CPU
  const int iters = int(f.iters ? f.iters : dev == Device::CUDA ? 20 : 5);
  double copy_bw = reg::copy_bandwidth(dev);
  if (dev == Device::CUDA && !f.csv)
    std::printf("device copy bandwidth (cudaMemcpy D2D, 1 GiB): %.1f GB/s\n", copy_bw * 1e-9);
  if (f.csv) std::printf("kernel,shape,ms,GB/s,TFLOP/s,frac_copy,frac_gemm,check\n");

  bool failed = false;
  auto run_one = [&](const reg::Op& op, reg::Direction dir, const reg::Dims& d) {
    reg::PerfRow r = reg::perf(op, dir, d, dev, iters, copy_bw, act);
    failed |= r.check.rfind("FAIL", 0) == 0;
    print_row(r, f.csv);
  };
  if (what == "all") {
    NQ_CHECK(!shape_given, "./bench all takes its shapes from --shapes, not from shape options");
    const std::string preset = !f.shapes.empty() ? f.shapes : dev == Device::CUDA ? "qwen3-0.6b" : "small";
    reg::ModelDims model = preset_dims(preset);
    if (!f.csv) std::printf("shapes %s on %s, median of %d runs\n", preset.c_str(), device_name(dev), iters);
    for (const reg::Op& op : reg::ops()) {
      if (!op.model_shapes || (dev == Device::CPU && !op.has_cpu)) continue;
      for (const reg::Dims& d : op.model_shapes(model)) {
        run_one(op, reg::Direction::Forward, d);
        if (op.backward) run_one(op, reg::Direction::Backward, d);
      }
    }
  } else {
    NQ_CHECK(f.shapes.empty(), "--shapes applies to `./bench all` only");
    reg::Direction dir;
    const reg::Op* op = lookup(what, &dir);
    NQ_CHECK(op, "unknown op '", what, "' (./bench list shows them)");
    NQ_CHECK(dev == Device::CUDA || op->has_cpu, what, " has no CPU kernel: use --device cuda");
    reg::Dims d = op->bench;
    for (size_t i = 0; i < f.dims.size(); ++i)
      if (table.given(reg::dim_fields()[i].first)) d.*(reg::dim_fields()[i].second) = f.dims[i];
    NQ_CHECK(d.heads % d.kv_heads == 0, "--heads ", d.heads, " must be a multiple of --kv-heads ", d.kv_heads);
    run_one(*op, dir, d);
  }
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) { return nq::cli::run_main([&] { return run(argc, argv); }); }
