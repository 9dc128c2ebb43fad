// Registrations: the QLoRA ops, NF4 matmuls (nf4_dequantize, nf4_matmul and its
// transpose product nf4_matmul_dx, nf4_grouped_matmul over a MoE layer's experts),
// LoRA over NF4 (lora_nf4), and the optimizer's (adamw, grad_norm).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/dropout.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/nf4.h"  // which way Auto takes at M rows: the bound depends on it
#include "kernels/kernels.h"
#include "kernels/ops/ops.h"
#include "quant/nf4.h"
#include "runtime/philox.h"

namespace nq::kernels::registry::family {

namespace {

constexpr float kLowRankScale = 2.0f;
constexpr uint64_t kDropoutSeed = 5, kDropoutOffset = 9;

// W [out = n, in = k] NF4; x [m, k]; a low-rank term of rank d.rank.
Dims nf4(int64_t m, int64_t out, int64_t in, int path = 0, int64_t rank = 0) {
  Dims d;
  d.m = m; d.n = out; d.k = in; d.nf4_path = path; d.rank = rank;
  return d;
}
Nf4MatmulPath path_of(const Dims& d) { return Nf4MatmulPath(d.nf4_path); }

// Inputs: [0] x [m, k], [1] dy [m, n], [2..5] W's packed nibbles, absmax, nested absmax
// and code (quant/nf4.h's quantize_nf4 of N(0, 0.02^2) weights, or random state above
// kQuantizeMaxWeights; without double quant the
// nested two are unused one-element tensors), [6] the offset (host), then with a
// low-rank term [7] a [m, r], [8] B [n, r], [9] A [r, k].
// Above 4M weights (./bench's shapes, where quantizing on the CPU would take seconds)
// W is random bitsandbytes state instead: any bytes are valid codes.
constexpr int64_t kQuantizeMaxWeights = int64_t(1) << 22;
Nf4Tensor random_nf4_state(const Dims& d, uint64_t seed) {
  auto bytes = [](int64_t n, uint64_t sd) {
    Tensor ints = random_ints({n}, sd, 0, 256), t = Tensor::empty({n}, DType::U8);
    for (int64_t i = 0; i < n; ++i) t.data<uint8_t>()[i] = uint8_t(ints.data<int32_t>()[i]);
    return t;
  };
  Nf4Tensor q;
  q.out = d.n;
  q.in = d.k;
  q.blocksize = d.blocksize;
  q.double_quant = true;
  q.packed = bytes((q.numel() + 1) / 2, seed + 10);
  q.absmax = bytes(q.n_blocks(), seed + 11);
  q.nested_code = random_normal({256}, seed + 12, 0.5f);
  q.nested_absmax = random_normal({(q.n_blocks() + q.nested_blocksize - 1) / q.nested_blocksize}, seed + 13, 0.05f);
  for (int64_t i = 0; i < q.nested_absmax.numel(); ++i)
    q.nested_absmax.data<float>()[i] = std::fabs(q.nested_absmax.data<float>()[i]);
  q.offset = 0.01f;
  return q;
}

std::vector<Input> nf4_inputs(const Dims& d, uint64_t seed) {
  Nf4Tensor q = d.n * d.k > kQuantizeMaxWeights
                    ? random_nf4_state(d, seed)
                    : quantize_nf4(random_normal({d.n, d.k}, seed, 0.02f).data<float>(), d.n, d.k, d.blocksize,
                                   d.double_quant);
  Tensor unused = Tensor::full({1}, 1.0f);
  std::vector<Input> in{{random_normal({d.m, d.k}, seed + 1)},
                        {random_normal({d.m, d.n}, seed + 2)},
                        {q.packed, false},
                        {q.absmax, false},
                        {q.double_quant ? q.nested_absmax : unused, false},
                        {q.double_quant ? q.nested_code : unused, false},
                        {Tensor::full({1}, q.offset), false, true}};
  if (d.rank) {
    in.push_back({random_normal({d.m, d.rank}, seed + 3)});
    in.push_back({random_normal({d.n, d.rank}, seed + 4, 0.1f)});
    in.push_back({random_normal({d.rank, d.k}, seed + 5, 0.1f)});
  }
  return in;
}
// The NF4 tensor whose parts are inputs 2..6 (on the run's device).
Nf4Tensor nf4_weight(const std::vector<Tensor>& in, const Dims& d) {
  Nf4Tensor w;
  w.out = d.n;
  w.in = d.k;
  w.blocksize = d.blocksize;
  w.double_quant = d.double_quant;
  w.packed = in[2];
  w.absmax = in[3];
  if (d.double_quant) {
    w.nested_absmax = in[4];
    w.nested_code = in[5];
  }
  w.offset = in[6].data<float>()[0];
  return w;
}
// W dequantized on the host, in double (exact: f32 values).
std::vector<double> dequantized(const std::vector<Tensor>& in, const Dims& d) {
  std::vector<Tensor> host;
  for (const Tensor& t : in) host.push_back(t.to(Device::CPU));
  return doubles(dequantize_nf4(nf4_weight(host, d)));
}
std::vector<double> mm(const std::vector<double>& a, const std::vector<double>& b, int64_t M, int64_t N, int64_t K,
                       bool ta, bool tb) {
  std::vector<double> c(M * N);
  cpu::matmul(a.data(), b.data(), c.data(), 1, M, N, K, ta, tb, false);
  return c;
}
void axpy(std::vector<double>& y, double s, const std::vector<double>& x) {
  for (size_t i = 0; i < y.size(); ++i) y[i] += s * x[i];
}

// The way each path multiplies decides the bound: the fused tensor-core GEMM (16 < M)
// stages x and W as 16-bit tiles (x's dtype; bf16 for f32 x); the GEMV and the
// dequantized way multiply in the input's dtype (W dequantized to it; a 16-bit W rounds
// once, like the fused tiles).
Tol nf4_bound() {
  return Tol{Metric::Relative, [](const Dims& d, DType act) {
               Nf4MatmulPath path = path_of(d);
               if (path == Nf4MatmulPath::Auto)
                 path = d.m >= cuda::kNf4DequantMinRows ? Nf4MatmulPath::Dequantized : Nf4MatmulPath::Fused;
               const bool tiles = path == Nf4MatmulPath::Fused && d.m > cuda::kNf4GemvMaxRows;
               return dtype_bound(tiles && act == DType::F32 ? DType::BF16 : act);
             }};
}
Pass::CostOf nf4_cost(double passes) {
  return [passes](const Dims& d, double act) {
    return Cost{act * double(d.m * d.k + d.m * d.n) + 0.5 * d.n * d.k, passes * 2.0 * d.m * d.n * d.k, d.m, d.n, d.k, 1};
  };
}

Op nf4_matmul_op(const char* name, int forced_path) {
  Op op;
  op.name = name;
  op.dims = {"m", "n", "k"};
  op.bench = nf4(4096, 4096, 4096, forced_path);
  // gate/up_proj [ffn, hidden] at the step's tokens
  op.model_shapes = [forced_path](const ModelDims& m) {
    std::vector<Dims> out{nf4(m.seq, m.ffn, m.hidden, forced_path)};
    if (!forced_path) out.push_back(nf4(8, m.ffn, m.hidden));  // the GEMV
    return out;
  };
  op.inputs = nf4_inputs;
  op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                  LowRankTerm extra{d.rank ? in[7] : Tensor(), d.rank ? in[8] : Tensor(), kLowRankScale};
                  return std::vector<Tensor>{kernels::nf4_matmul(in[0], nf4_weight(in, d), d.rank ? &extra : nullptr,
                                                                 path_of(d))};
                },
                {nf4_bound()},
                nf4_cost(1)};
  // the transpose product (the input gradient): dx = dy W (+ s a A)
  op.backward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                   LowRankTerm extra{d.rank ? in[7] : Tensor(), d.rank ? in[9] : Tensor(), kLowRankScale};
                   return std::vector<Tensor>{
                       kernels::nf4_matmul_dx(in[1], nf4_weight(in, d), d.rank ? &extra : nullptr, path_of(d))};
                 },
                 {nf4_bound()},
                 nf4_cost(1)};
  return op;
}

// The grouped matmul over the experts of a MoE layer: d.tokens routed rows x [tokens, k],
// d.experts weights W_e [n, k], expert e owning rows [bounds[e], bounds[e+1]).
// Inputs: [0] x, [1] dy [tokens, n], [2] the bounds (i32 [E + 1], host), then expert e's
// NF4 parts at 3 + 5e.. (packed, absmax, nested absmax, nested code, offset), each expert
// quantized on its own as bitsandbytes does (random state above kQuantizeMaxWeights in all);
// with a low-rank term (d.rank) then a [tokens, r], the E B_e [n, r], the E A_e [r, k].
// Expert e's bypass scale is kLowRankScale + e / 4 (a different one per expert); the bounds
// are expert_row_bounds' (ops.h).
Dims grouped(int64_t tokens, int64_t experts, int64_t out, int64_t in) {
  Dims d = nf4(1, out, in);
  d.tokens = tokens;
  d.experts = experts;
  return d;
}
constexpr int kGroupedFirstExpert = 3, kNf4Parts = 5;
std::vector<Input> grouped_inputs(const Dims& d, uint64_t seed) {
  std::vector<Input> in{{random_normal({d.tokens, d.k}, seed + 1)}, {random_normal({d.tokens, d.n}, seed + 2)}};
  in.push_back(expert_row_bounds(d.tokens, d.experts, seed + 3));
  const bool random_state = d.experts * d.n * d.k > kQuantizeMaxWeights;
  for (int64_t e = 0; e < d.experts; ++e) {
    const uint64_t s = seed + 100 * uint64_t(e + 1);
    Nf4Tensor q = random_state ? random_nf4_state(d, s)
                               : quantize_nf4(random_normal({d.n, d.k}, s, 0.02f).data<float>(), d.n, d.k, d.blocksize,
                                              d.double_quant);
    in.push_back({q.packed, false});
    in.push_back({q.absmax, false});
    in.push_back({q.nested_absmax, false});
    in.push_back({q.nested_code, false});
    in.push_back({Tensor::full({1}, q.offset), false, true});
  }
  if (d.rank) {
    in.push_back({random_normal({d.tokens, d.rank}, seed + 4)});
    for (int64_t e = 0; e < d.experts; ++e) in.push_back({random_normal({d.n, d.rank}, seed + 5 + 2 * e, 0.1f)});
    for (int64_t e = 0; e < d.experts; ++e) in.push_back({random_normal({d.rank, d.k}, seed + 6 + 2 * e, 0.1f)});
  }
  return in;
}
float grouped_scale(int64_t e) { return kLowRankScale + float(e) / 4; }
// The low-rank term of the forward (B_e) or of dx (A_e), from the inputs.
kernels::GroupedLowRankTerm grouped_low_rank(const std::vector<Tensor>& in, const Dims& d, bool transposed) {
  const size_t first = size_t(kGroupedFirstExpert + kNf4Parts * d.experts);
  kernels::GroupedLowRankTerm t{in[first], {}, {}};
  for (int64_t e = 0; e < d.experts; ++e) {
    t.w.push_back(in[first + 1 + size_t(transposed ? d.experts : 0) + size_t(e)]);
    t.scale.push_back(grouped_scale(e));
  }
  return t;
}
// The experts' NF4 tensors, whose parts are the inputs (on the run's device).
std::vector<Nf4Tensor> grouped_weights(const std::vector<Tensor>& in, const Dims& d) {
  std::vector<Nf4Tensor> w;
  for (int64_t e = 0; e < d.experts; ++e) {
    const std::vector<Tensor> parts(in.begin() + kGroupedFirstExpert + kNf4Parts * e - 2,
                                    in.begin() + kGroupedFirstExpert + kNf4Parts * (e + 1));
    w.push_back(nf4_weight(parts, d));  // nf4_weight reads parts [2..6]
  }
  return w;
}
std::vector<const Nf4Tensor*> pointers(const std::vector<Nf4Tensor>& w) {
  std::vector<const Nf4Tensor*> p;
  for (const Nf4Tensor& e : w) p.push_back(&e);
  return p;
}
// The forward (y from x) or the transposed product (dx from dy), with the bypass when d.rank.
Pass grouped_pass(bool transposed) {
  return {[transposed](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
            const std::vector<Nf4Tensor> w = grouped_weights(in, d);
            const kernels::GroupedLowRankTerm extra =
                d.rank ? grouped_low_rank(in, d, transposed) : kernels::GroupedLowRankTerm{};
            const kernels::GroupedLowRankTerm* bypass = d.rank ? &extra : nullptr;
            return std::vector<Tensor>{
                transposed ? kernels::nf4_grouped_matmul_dx(in[1], pointers(w), row_bounds(in[2]), bypass)
                           : kernels::nf4_grouped_matmul(in[0], pointers(w), row_bounds(in[2]), bypass)};
          },
          {tile16_bound()},
          [transposed](const Dims& d, double act) {  // x and y (dy and dx) once, the experts' NF4 bytes
            return Cost{act * double(d.tokens * d.k + d.tokens * d.n) + 0.5 * d.experts * d.n * d.k,
                        2.0 * d.tokens * d.n * d.k, d.tokens, transposed ? d.k : d.n, transposed ? d.n : d.k, 1};
          }};
}
// nf4_grouped_matmul's inputs in double, read once: the bounds, the experts' weights
// dequantized exactly (E x [n, k], one after the other), and with d.rank the low-rank a
// [tokens, r], the B_e [n, r] and A_e [r, k] and their scales.
struct GroupedNf4Inputs {
  std::vector<int64_t> bounds;
  std::vector<double> w, a, b, a_factors, ones, scales;
};
GroupedNf4Inputs grouped_nf4_inputs(const std::vector<Tensor>& in, const Dims& d) {
  std::vector<Tensor> host;
  for (const Tensor& t : in) host.push_back(t.to(Device::CPU));
  GroupedNf4Inputs g;
  g.bounds = row_bounds(host[2]);
  for (const Nf4Tensor& e : grouped_weights(host, d)) {
    const std::vector<double> we = doubles(dequantize_nf4(e));
    g.w.insert(g.w.end(), we.begin(), we.end());
  }
  g.ones.assign(size_t(d.experts), 1.0);
  if (!d.rank) return g;
  const kernels::GroupedLowRankTerm fwd = grouped_low_rank(host, d, false), bwd = grouped_low_rank(host, d, true);
  g.a = doubles(fwd.a);
  for (int64_t e = 0; e < d.experts; ++e) {
    const std::vector<double> be = doubles(fwd.w[size_t(e)]), ae = doubles(bwd.w[size_t(e)]);
    g.b.insert(g.b.end(), be.begin(), be.end());
    g.a_factors.insert(g.a_factors.end(), ae.begin(), ae.end());
    g.scales.push_back(fwd.scale[size_t(e)]);
  }
  return g;
}
// y and dx in double at x and dy: each expert's rows against its dequantized weight, and
// the bypass s_e a_e B_e^T (y) and s_e a_e A_e (dx) as grouped products of their own.
std::pair<std::vector<double>, std::vector<double>> grouped_naive(const std::vector<double>& x,
                                                                  const std::vector<double>& dy,
                                                                  const GroupedNf4Inputs& g, const Dims& d) {
  GroupedReference base = grouped_reference(x, g.w, dy, g.bounds, g.ones, d.n, d.k);
  if (d.rank) {
    axpy(base.y, 1.0, grouped_reference(g.a, g.b, dy, g.bounds, g.scales, d.n, d.rank).y);             // a_e B_e^T
    axpy(base.dx, 1.0, grouped_reference(x, g.a_factors, g.a, g.bounds, g.scales, d.rank, d.k).dx);  // a_e A_e
  }
  return {base.y, base.dx};
}

}  // namespace

void register_qlora(std::vector<Op>& ops) {
  {
    Op op = nf4_matmul_op("nf4_matmul", 0);
    op.shapes = [](Mode mode) {
      std::vector<Dims> device;
      // Auto: the GEMV for M <= 16, the fused tensor-core GEMM above, W dequantized +
      // cuBLASLt from kNf4DequantMinRows (256) rows; Fused and Dequantized force one way.
      for (int path : {0, 1, 2})
        for (auto [out, in] : {std::pair<int64_t, int64_t>{3, 37}, {130, 200}, {256, 512}})
          for (int64_t M : {1, 5, 16, 17, 100, 300}) device.push_back(nf4(M, out, in, path));
      // y = x W^T + s a B^T and dx = dy W + s a A: the LoRA bypass riding on the NF4 product
      for (int path : {1, 2})
        for (auto [M, out, in] : {std::tuple<int64_t, int64_t, int64_t>{17, 3, 37}, {70, 130, 200}, {300, 64, 96}})
          device.push_back(nf4(M, out, in, path, 8));
      // 130 rows of W: across the CPU's 128-row tiles
      std::vector<Dims> cpu{nf4(1, 1, 1), nf4(3, 3, 37), nf4(5, 130, 200), nf4(17, 3, 37, 0, 8), nf4(4, 130, 17, 0, 8)};
      return pick(mode, cpu, {nf4(1, 1, 1), nf4(3, 3, 37), nf4(2, 130, 17)}, device);
    };
    op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
      std::vector<double> w = dequantized(in, d);
      std::vector<double> y = mm(doubles(in[0]), w, d.m, d.n, d.k, false, true), dx = mm(doubles(in[1]), w, d.m, d.k, d.n, false, false);
      if (d.rank) {
        std::vector<double> a = doubles(in[7]);
        axpy(y, kLowRankScale, mm(a, doubles(in[8]), d.m, d.n, d.rank, false, true));
        axpy(dx, kLowRankScale, mm(a, doubles(in[9]), d.m, d.k, d.rank, false, false));
      }
      return std::vector<Expected>{{0, y, 1e-5}, {1, dx, 1e-5}};
    };
    // nf4_matmul_dx without a low-rank term is the input gradient of nf4_matmul:
    // L = sum((x W^T) * dy) has dL/dx = dy W (W frozen, dequantized exactly in double).
    op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
      GradProblem p;
      p.names = {"x"};
      p.x = values({doubles(in[0])});
      auto x = p.x;
      auto w = std::make_shared<std::vector<double>>(dequantized(in, d));
      auto r = std::make_shared<std::vector<double>>(doubles(in[1]));
      p.loss = [x, w, r, d] { return dot(mm((*x)[0], *w, d.m, d.n, d.k, false, true), *r); };
      p.grad = [w, r, d] { return std::vector<std::vector<double>>{mm(*r, *w, d.m, d.k, d.n, false, false)}; };
      return p;
    };
    ops.push_back(op);
  }
  // The two ways nf4_matmul chooses between by M, each forced, for ./bench (which is
  // faster where); their checks are nf4_matmul's Fused and Dequantized shapes.
  for (auto [name, path] : {std::pair<const char*, int>{"nf4_matmul_fused", 1}, {"nf4_matmul_dequant", 2}}) {
    Op op = nf4_matmul_op(name, path);
    op.bench_only = true;
    op.shapes = [](Mode) { return std::vector<Dims>{}; };
    ops.push_back(op);
  }

  {  // the experts of a MoE layer in one grouped product: y[rows_e] = x[rows_e] W_e^T (+ s_e a[rows_e] B_e^T),
     // dx[rows_e] = dy[rows_e] W_e (+ s_e a[rows_e] A_e)
    Op op;
    op.name = "nf4_grouped_matmul";
    op.dims = {"tokens", "experts", "n", "k"};
    op.bench = grouped(16384, 128, 768, 2048);  // Qwen3-30B-A3B at 2048 tokens x top-8: gate/up_proj [768, 2048]
    op.shapes = [](Mode mode) {
      // one expert; tiles of 64 rows split within an expert; an expert without rows (always:
      // grouped_inputs); out and in not multiples of the 64 x 32 tile; more experts than rows
      std::vector<Dims> device{grouped(1, 1, 3, 37),     grouped(17, 3, 33, 40), grouped(200, 5, 130, 200),
                               grouped(300, 4, 64, 96),  grouped(5, 8, 70, 64)};
      // each expert's LoRA bypass riding in the product (rank 8; rank 3: not a multiple of 16)
      for (Dims d : {grouped(17, 3, 33, 40), grouped(200, 5, 130, 200), grouped(70, 4, 64, 96)}) {
        d.rank = d.tokens == 70 ? 3 : 8;
        device.push_back(d);
      }
      Dims low_rank = grouped(40, 4, 130, 20);
      low_rank.rank = 5;
      return pick(mode, {grouped(1, 1, 1, 1), grouped(9, 3, 5, 37), grouped(40, 4, 130, 20), low_rank},
                  {grouped(4, 3, 3, 37), grouped(7, 2, 5, 9)}, device);
    };
    op.inputs = grouped_inputs;
    op.forward = grouped_pass(false);
    op.backward = grouped_pass(true);
    op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
      auto [y, dx] = grouped_naive(doubles(in[0]), doubles(in[1]), grouped_nf4_inputs(in, d), d);
      return std::vector<Expected>{{0, y, 1e-5}, {1, dx, 1e-5}};
    };
    // nf4_grouped_matmul_dx without a low-rank term is the input gradient of nf4_grouped_matmul:
    // L = sum(y * dy) (the grad shapes have none).
    op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
      GradProblem p;
      p.names = {"x"};
      p.x = values({doubles(in[0])});
      auto x = p.x;
      auto dy = std::make_shared<std::vector<double>>(doubles(in[1]));
      auto g = std::make_shared<GroupedNf4Inputs>(grouped_nf4_inputs(in, d));  // dequantized once
      p.loss = [x, dy, g, d] { return dot(grouped_naive((*x)[0], *dy, *g, d).first, *dy); };
      p.grad = [x, dy, g, d] { return std::vector<std::vector<double>>{grouped_naive((*x)[0], *dy, *g, d).second}; };
      return p;
    };
    ops.push_back(op);
  }

  {  // W [out, in] dequantized: f32 bit-identical to bitsandbytes (the CPU's dequantize_nf4);
     // the GPU's bf16 is that value rounded once to nearest even (bit-exact with the host's rounding)
    Op op;
    op.name = "nf4_dequantize";
    op.dims = {"n", "k"};
    op.bench = nf4(1, 4096, 4096);
    op.model_shapes = [](const ModelDims& m) { return std::vector<Dims>{nf4(1, m.ffn, m.hidden)}; };
    op.shapes = [](Mode mode) {
      // awkward sizes (numel not a multiple of the blocksize, odd numel), > 256 blocks (2 nested
      // blocks), plain absmax, and the other blocksizes bitsandbytes accepts (blocks spanning rows)
      std::vector<Dims> out;
      for (int64_t blocksize : {64, 32, 128})
        for (bool double_quant : {true, false})
          for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 37}, {17, 127}, {96, 256}, {130, 200}}) {
            Dims d = nf4(1, rows, cols);
            d.blocksize = blocksize;
            d.double_quant = double_quant;
            out.push_back(d);
          }
      return mode == Mode::Grad ? std::vector<Dims>{} : out;
    };
    op.inputs = nf4_inputs;
    // The CPU gives f32 only; on the GPU the output has the activation dtype (x's).
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                    DType dt = in[0].device() == Device::CPU ? DType::F32 : in[0].dtype();
                    return std::vector<Tensor>{kernels::nf4_dequantize(nf4_weight(in, d), dt)};
                  },
                  {bit_exact()},
                  [](const Dims& d, double act) { return Cost{(0.5 + act) * d.n * d.k, 0}; }};
    op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
      return std::vector<Expected>{{0, doubles(dequantize_nf4(nf4_weight(in, d))), 0}};
    };
    ops.push_back(op);
  }

  {  // LoRA over NF4: y = x W^T + s (dropout(x) A^T) B^T, u = dropout(x) A^T saved
    auto lora_dims = [](int64_t m, int64_t out, int64_t in, double p) {
      Dims d = nf4(m, out, in, 0, 8);
      d.p = p;
      return d;
    };
    Op op;
    op.name = "lora_nf4";
    op.dims = {"m", "n", "k"};
    op.bench = lora_dims(4096, 4096, 4096, 0.0);
    op.bench.rank = 16;
    op.model_shapes = [lora_dims](const ModelDims& m) {
      Dims d = lora_dims(m.seq, m.ffn, m.hidden, 0.0);
      d.rank = 16;
      return std::vector<Dims>{d};
    };
    // M = 300 takes the NF4 matmuls' dequantized way (kNf4DequantMinRows), the others the fused one
    op.shapes = [lora_dims](Mode mode) {
      std::vector<Dims> device;
      for (double p : {0.0, 0.25})
        for (auto [M, out, in] : {std::tuple<int64_t, int64_t, int64_t>{5, 3, 37}, {70, 130, 200}, {300, 64, 96}})
          device.push_back(lora_dims(M, out, in, p));
      return pick(mode, {lora_dims(1, 1, 1, 0.0), lora_dims(5, 3, 37, 0.0), lora_dims(7, 130, 20, 0.25)},
                  {lora_dims(3, 3, 7, 0.0), lora_dims(4, 5, 6, 0.25)}, device);
    };
    // x, dy, W, then [7] (unused by lora_nf4) [8] B [out, r], [9] A [r, in]
    op.inputs = nf4_inputs;
    auto params = [](const std::vector<Tensor>& in, const Dims& d) {
      return LoraParams{in[9], in[8], kLowRankScale, float(d.p), kDropoutSeed, kDropoutOffset};
    };
    Tol tiles = tile16_bound();  // the NF4 GEMM stages 16-bit tiles whatever the input dtype
    op.forward = {[params](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                    Tensor u;
                    Tensor y = kernels::lora_nf4_forward(in[0], nf4_weight(in, d), params(in, d), &u);
                    return std::vector<Tensor>{y, u};
                  },
                  {tiles, by_dtype()},
                  nf4_cost(1)};
    op.backward = {[params](const std::vector<Tensor>& in, const std::vector<Tensor>& fwd, const Dims& d) {
                     Tensor dx, da, db;
                     kernels::lora_nf4_backward(in[1], in[0], fwd[1], nf4_weight(in, d), params(in, d), &dx, &da, &db);
                     return std::vector<Tensor>{dx, da, db};
                   },
                   {tiles, by_dtype(), by_dtype()},
                   nf4_cost(1)};
    // The bypass in double: xd = dropout(x), u = xd A^T, y = x W^T + s u B^T; given dy:
    // v = dy B, dB = s dy^T u, dA = s v^T xd, dx = dy W + dropout_backward(s v A).
    struct Lora {
      static std::vector<double> drop(const std::vector<double>& x, const Dims& d) {
        std::vector<double> out(x.size());
        cpu::dropout_apply(x.data(), out.data(), int64_t(x.size()), float(d.p), kDropoutSeed, kDropoutOffset);
        return out;
      }
      // y, u, dx, dA, dB at x, A, B
      static std::vector<std::vector<double>> all(const std::vector<double>& x, const std::vector<double>& A,
                                                  const std::vector<double>& B, const std::vector<double>& w,
                                                  const std::vector<double>& dy, const Dims& d) {
        const double s = kLowRankScale;
        const int64_t M = d.m, out = d.n, in = d.k, r = d.rank;
        std::vector<double> xd = drop(x, d), u = mm(xd, A, M, r, in, false, true);
        std::vector<double> y = mm(x, w, M, out, in, false, true);
        axpy(y, s, mm(u, B, M, out, r, false, true));
        std::vector<double> v = mm(dy, B, M, r, out, false, false);
        std::vector<double> dB = mm(dy, u, out, r, M, true, false), dA = mm(v, xd, r, in, M, true, false);
        for (double& e : dB) e *= s;
        for (double& e : dA) e *= s;
        std::vector<double> dx = mm(dy, w, M, in, out, false, false), bypass = mm(v, A, M, in, r, false, false);
        for (double& e : bypass) e *= s;
        axpy(dx, 1.0, drop(bypass, d));
        return {y, u, dx, dA, dB};
      }
    };
    op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
      auto o = Lora::all(doubles(in[0]), doubles(in[9]), doubles(in[8]), dequantized(in, d), doubles(in[1]), d);
      return std::vector<Expected>{{0, o[0], 1e-5}, {1, o[1], 1e-5}, {2, o[2], 1e-5}, {3, o[3], 1e-5}, {4, o[4], 1e-5}};
    };
    op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
      GradProblem p;
      p.names = {"x", "A", "B"};
      p.x = values({doubles(in[0]), doubles(in[9]), doubles(in[8])});
      auto x = p.x;
      auto w = std::make_shared<std::vector<double>>(dequantized(in, d));
      auto r = std::make_shared<std::vector<double>>(doubles(in[1]));
      p.loss = [x, w, r, d] { return dot(Lora::all((*x)[0], (*x)[1], (*x)[2], *w, *r, d)[0], *r); };
      p.grad = [x, w, r, d] {
        auto o = Lora::all((*x)[0], (*x)[1], (*x)[2], *w, *r, d);
        return std::vector<std::vector<double>>{o[2], o[3], o[4]};
      };
      return p;
    };
    ops.push_back(op);
  }

  {  // AdamW: `steps` updates from zero moments, weight decay 0.1, lr 1e-2, the last
     // step's gradient scaled by 0.37 (a clipping factor). The CPU twin is the reference
     // (kernels/adamw_math.h's element update, held to torch.optim.AdamW by test_optim);
     // the bound allows nvcc's FMA contraction (the host build has -ffp-contract=off).
    auto steps = [](int64_t n, int s) {
      Dims d;
      d.n = n;
      d.steps = s;
      d.dtypes = 1;  // f32 state whatever the activations
      return d;
    };
    Op op;
    op.name = "adamw";
    op.dims = {"n"};
    op.bench = steps(1 << 24, 1);
    op.model_shapes = [steps](const ModelDims& m) { return std::vector<Dims>{steps(m.lora_params, 1)}; };
    op.shapes = [steps](Mode mode) {
      return mode == Mode::Device ? std::vector<Dims>{steps(1, 3), steps(3, 3), steps(1000, 3), steps(65537, 3)}
                                  : std::vector<Dims>{};
    };
    op.inputs = [](const Dims& d, uint64_t seed) {  // param, then one gradient per step
      std::vector<Input> in{{random_normal({d.n}, seed), false}};
      for (int s = 1; s <= d.steps; ++s) in.push_back({random_normal({d.n}, seed + 100 + s), false});
      return in;
    };
    Tol tol{Metric::Relative, [](const Dims&, DType) { return 1e-6; }};
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                    AdamWConfig cfg;
                    cfg.weight_decay = 0.1;
                    Tensor p = in[0], m = Tensor::zeros(p.shape(), DType::F32, p.device()),
                           v = Tensor::zeros(p.shape(), DType::F32, p.device());
                    for (int s = 1; s <= d.steps; ++s)
                      kernels::adamw_update(p, in[s], m, v, adamw_scalars(cfg, 1e-2, s), s == 3 ? 0.37f : 1.0f);
                    return std::vector<Tensor>{p, m, v};
                  },
                  {tol, tol, tol},
                  [](const Dims& d, double) { return Cost{d.steps * (4.0 * 4 * d.n + 3.0 * 4 * d.n), d.steps * 12.0 * d.n}; }};
    ops.push_back(op);
  }

  {  // sqrt of the sum of squares over a list of tensors: [1], [17], [65536] and [n]
    auto elements = [](int64_t n) {
      Dims d;
      d.n = n;
      d.dtypes = 1;  // f32 gradients whatever the activations
      return d;
    };
    Op op;
    op.name = "grad_norm";
    op.dims = {"n"};
    op.bench = elements(1 << 24);
    op.model_shapes = [elements](const ModelDims& m) { return std::vector<Dims>{elements(m.lora_params)}; };
    op.shapes = [elements](Mode mode) {
      return pick(mode, {elements(1), elements(3), elements(1000)}, {},
                  {elements(1), elements(1000), elements(200001)});
    };
    op.inputs = [](const Dims& d, uint64_t seed) {
      std::vector<Input> in;
      for (int64_t n : {int64_t(1), int64_t(17), int64_t(65536), d.n}) in.push_back({random_normal({n}, seed + n), false});
      return in;
    };
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims&) {
                    return std::vector<Tensor>{Tensor::full({1}, float(kernels::global_grad_norm(in)))};
                  },
                  {f32_bound()},
                  [](const Dims& d, double) { return Cost{4.0 * (d.n + 65554), 2.0 * (d.n + 65554)}; }};
    op.naive = [](const std::vector<Tensor>& in, const Dims&) {
      double ss = 0;
      for (const Tensor& t : in)
        for (double v : doubles(t)) ss += v * v;
      return std::vector<Expected>{{0, {std::sqrt(ss)}, 1e-6}};
    };
    ops.push_back(op);
  }
}

}  // namespace nq::kernels::registry::family
