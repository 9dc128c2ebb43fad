// The op registry, in the manner of ggml's tests/test-backend-ops.cpp: every op of
// kernels/kernels.h is declared once (kernels/ops/*.cpp) with its shapes, its
// inputs, its forward (and backward) run, its tolerances and its cost, and three
// modes run from that declaration:
//
//   reference  the f32 CPU kernel against a naive loop in double (Op::naive)
//   grad       every backward against central finite differences in double on
//              the CPU (the kernels/cpu/ templates instantiated for double)
//   device     every device present (the emulated GPU counts) against the CPU, by
//              relative error ||got - want|| / ||want||, outputs NaN-poisoned
//   perf       median time, GB/s or TFLOP/s, fraction of the copy bandwidth or
//              of the cuBLASLt GEMM rate (./bench)
//
// tests/test_kernels.cpp runs reference and grad, tests/test_cuda.cpp runs device,
// tools/bench.cpp runs perf and `./bench list` prints the registry. Adding an op
// is one registration (docs/kernels.md, "The op registry").
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/rope_table.h"
#include "runtime/tensor.h"

namespace nq::kernels::registry {

// The named dimensions an op's shape is made of. An op reads some of them (Op::dims);
// each is also a ./bench flag (--tokens, --kv-heads, ...).
struct Dims {
  int64_t n = 1;                        // elements (elementwise ops), or the GEMM's N
  int64_t m = 1, k = 1, batch = 1;      // GEMM: C [batch?, m, n] = op(A) [m, k] op(B) [k, n]
  int64_t tokens = 1;                   // N = B*T rows
  int64_t seq = 1;                      // T (attention: tokens = batch * seq)
  int64_t hidden = 1, vocab = 1, ffn = 1, chunk = 1;
  int64_t heads = 1, kv_heads = 1, head_dim = 2;
  int64_t experts = 1, top_k = 1;       // MoE routing: E experts per row, the k chosen
  // variants and constants (not flags)
  bool trans_a = false, trans_b = true;  // matmul operands transposed
  bool accumulate = false;               // matmul_into / grad_w accumulated into a prior value
  int segments = 0;                      // attention: 0 none, 1 lengths 1, 2, 3, ..., 2 thirds of each row
  double theta = 1e6;                    // RoPE base
  int32_t max_position = 4096;           // RoPE positions drawn from [0, max_position)
  RopeScaling rope_scaling;              // RoPE: linear / yarn table (default: unscaled)
  double p = 0.1;                        // dropout probability
  int nf4_path = 0;                      // NF4 matmuls: 0 Auto, 1 Fused, 2 Dequantized (Nf4MatmulPath)
  int64_t rank = 0;                      // low-rank (LoRA) term's r; 0: none
  int64_t blocksize = 64;                // NF4 quantization block
  bool double_quant = true;              // NF4 absmax quantized again (bitsandbytes' double quant)
  int steps = 1;                         // optimizer steps
  bool renormalize = false;              // MoE routing: top-k weights divided by their sum (norm_topk_prob)
  int dtypes = 7;                        // device mode: bit 1 f32, bit 2 bf16, bit 4 f16 activations
};

// The flags a Dims field answers to, in ./bench's order: {"n", &Dims::n}, ...
const std::vector<std::pair<const char*, int64_t Dims::*>>& dim_fields();
// "m=17 k=65 n=33" for the dims `names`, in the order given.
std::string describe(const Dims& d, const std::vector<std::string>& names);
struct Op;
// The op's name, its dims and the variants that differ from the defaults ("matmul m=3 n=17 k=5 batch=1 trans_a").
std::string describe_case(const Op& op, const Dims& d);

// One input: a host tensor (f32 or i32). Activations become the run's activation
// dtype (f32, bf16 or f16 on the GPU; the CPU sees the same rounded values, in f32);
// the others (RMSNorm weights, ids, labels, saved statistics) keep their dtype.
struct Input {
  Tensor host;
  bool activation = true;
  bool host_only = false;  // stays on the host on every device (a scalar the run reads, e.g. NF4's offset)
};

// How one output is compared in device mode (and in ./bench's validation).
enum class Metric { Relative, Absolute, BitExact };
struct Tol {
  Metric metric = Metric::Relative;
  // The bound for activation dtype `act` at shape d; empty: dtype_bound(act).
  std::function<double(const Dims& d, DType act)> bound;
  bool same_zeros = false;    // the zero elements must be the same ones (a dropout mask)
  bool in_act_dtype = false;  // the output has the activation dtype (an accumulator kept in its own)
};
Tol by_dtype();                 // dtype_bound of the activation dtype
Tol f32_bound();                // 1e-5 whatever the activations (an f32 output from the same inputs)
Tol tile16_bound();             // a tensor-core kernel's 16-bit tiles: f16's bound for f16 activations,
                                // else bf16's (f32 inputs are staged as bf16)
Tol bit_exact();
// 1e-5 f32; 1e-2 bf16 (8 significant bits: one rounding is 2^-9 relative); 3e-3 f16
// (11 bits: 2^-11 per rounding; the same ~6 roundings' worth of slack as bf16's bound).
double dtype_bound(DType act);

// Bytes the op must move (inputs read once, outputs written once; activations at
// `act_bytes` each) and flops; a matmul-like op names the GEMM to compare with.
struct Cost {
  double bytes = 0, flops = 0;
  int64_t gemm_m = 0, gemm_n = 0, gemm_k = 0, gemm_batch = 0;
};

// A forward or a backward: outputs from the inputs (and, for a backward, the
// forward's outputs on the same device: saved statistics such as rstd or lse).
struct Pass {
  using Run = std::function<std::vector<Tensor>(const std::vector<Tensor>& in, const std::vector<Tensor>& fwd,
                                                const Dims& d)>;
  using CostOf = std::function<Cost(const Dims& d, double act_bytes)>;
  Run run;
  std::vector<Tol> tols;  // one per output
  CostOf cost;
  std::function<std::vector<Tol>(const Dims& d)> tols_at;  // instead of tols, when the outputs depend on the variant
  bool timed_with_forward = false;  // backward: perf times forward + backward (as the reference benchmark does)
  Pass() = default;
  Pass(Run r, std::vector<Tol> t, CostOf c) : run(std::move(r)), tols(std::move(t)), cost(std::move(c)) {}
  explicit operator bool() const { return bool(run); }
};

// A naive loop's value for one output (index into forward outputs, then backward
// outputs): compared with the f32 CPU kernel by relative error < tol; tol 0 means
// bit-exact (the f32 output equals the reference rounded to f32).
struct Expected {
  size_t output;
  std::vector<double> values;
  double tol;
  Metric metric = Metric::Relative;
};

// The gradient check's problem in double: loss() = a scalar of the inputs x (for a
// backward: sum(out * cotangent)), grad() = its analytic gradient (the op's backward
// from kernels/cpu/ in double), both reading *x, which the check perturbs in place.
struct GradProblem {
  std::vector<std::string> names;  // of the differentiated inputs
  std::shared_ptr<std::vector<std::vector<double>>> x;
  std::function<double()> loss;
  std::function<std::vector<std::vector<double>>()> grad;
  // Optional: the double kernel's forward and a naive loop at *x (held to 1e-12).
  std::function<std::pair<std::vector<double>, std::vector<double>>()> double_vs_naive;
  // Optional: skip the check at this draw (e.g. no counted label).
  bool skip = false;
};

// The model dims ./bench all runs an op at (tools/bench.cpp fills them from model/config's presets).
struct ModelDims {
  int64_t hidden, ffn, heads, kv_heads, head_dim, vocab, seq, lora_params;
};

enum class Mode { Reference, Grad, Device };

struct Op {
  std::string name;
  std::vector<std::string> dims;  // the Dims fields it reads (its ./bench flags)
  bool has_cpu = true;            // false: GPU only (nothing to time or hold it to on the CPU)
  bool bench_only = false;        // a ./bench entry whose checks are another op's (a forced variant)
  Dims bench;                     // ./bench OP's default shape
  std::function<std::vector<Dims>(Mode)> shapes;               // test shapes, awkward sizes included
  std::function<std::vector<Dims>(const ModelDims&)> model_shapes;  // ./bench all: one training step's
  std::function<std::vector<Input>(const Dims& d, uint64_t seed)> inputs;  // never zeros
  Pass forward, backward;  // backward optional (./bench OP_bwd times it)
  std::function<std::vector<Expected>(const std::vector<Tensor>& in, const Dims& d)> naive;  // optional
  std::function<GradProblem(const std::vector<Tensor>& in, const Dims& d)> grad;           // optional
};

const std::vector<Op>& ops();              // every op, in registration order
const Op* find(const std::string& name);   // null when there is none
std::vector<std::string> devices(const Op& op);  // "cpu", "cuda" (the ones it runs on in this build)

// One comparison of a mode: what was compared, its error and its bound.
struct Check {
  std::string what;  // "forward[1]", "grad w", ...
  double error, bound;
  bool ok;
};

// Reference mode: the f32 CPU kernels (forward, then backward) against op.naive.
std::vector<Check> check_reference(const Op& op, const Dims& d);
// Grad mode: central differences (loss(x + h e_i) - loss(x - h e_i)) / 2h with h = 1e-6
// against grad(), by relative error (bound 1e-6); plus double_vs_naive (1e-12).
std::vector<Check> check_grad(const Op& op, const Dims& d);
// Device mode: the op's forward and backward on `device` with activations of dtype
// `act` against the CPU on the same rounded inputs, NaN-poisoned outputs.
std::vector<Check> check_device(const Op& op, const Dims& d, Device device, DType act);

// Perf mode. Inputs in copies that together exceed the last-level cache (>= 256 MiB,
// 2..8 copies), 3 warm-up runs, the median of `iters`; on the GPU CUDA events and,
// before timing, device mode at a clipped shape (in the activations' dtype, its bound).
struct PerfRow {
  std::string name, shape, check;
  double seconds = 0, gbps = 0, tflops = 0, frac_copy = 0, frac_gemm = 0;
};
enum class Direction { Forward, Backward };
// `act`: the activations' dtype on the GPU (bf16 or f16; the CPU's is f32).
PerfRow perf(const Op& op, Direction dir, const Dims& d, Device device, int iters, double copy_bw,
             DType act = DType::BF16);
Dims clipped(Dims d);  // the validation shape: at most 256 tokens, 4096 vocab, 512 per GEMM dim
double copy_bandwidth(Device device);  // bytes/s (read + write) of a device-to-device copy of 1 GiB; 0 on the CPU

}  // namespace nq::kernels::registry
