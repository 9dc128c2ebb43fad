// Registrations: the GPU-only ops (kernels/cuda/ops.h; tests/test_cuda.cpp holds them
// to the CPU with their own tests): the optimizer kernels, the NF4 matmuls, NF4
// dequantization and LoRA over NF4. No CPU kernel: ./bench times them on the GPU only.
#include <cmath>

#include "kernels/ops/ops.h"

#ifdef NQ_CUDA
#include "kernels/cuda/adamw_span.h"
#include "kernels/cuda/ops.h"
#endif

namespace nq::kernels::registry::family {

#ifdef NQ_CUDA
namespace {

Dims elements(int64_t n) {
  Dims d;
  d.n = n;
  return d;
}
Dims weight(int64_t m, int64_t out, int64_t in) {
  Dims d;
  d.m = m; d.n = out; d.k = in;
  return d;
}

// NF4: W [out = n, in = k] as random bitsandbytes state (any bytes are valid codes):
// x [m, k], packed, absmax codes, code8, nested absmax, dy [m, n], LoRA A [16, k], B [n, 16].
std::vector<Input> nf4_inputs(const Dims& d, uint64_t seed) {
  int64_t numel = d.n * d.k, blocks = (numel + 63) / 64;
  auto bytes = [&](int64_t n, uint64_t sd) {
    Tensor ints = random_ints({n}, sd, 0, 256), t = Tensor::empty({n}, DType::U8);
    for (int64_t i = 0; i < n; ++i) t.data<uint8_t>()[i] = uint8_t(ints.data<int32_t>()[i]);
    return t;
  };
  Tensor nested = random_normal({(blocks + 255) / 256}, seed + 3, 0.05f);
  for (int64_t i = 0; i < nested.numel(); ++i) nested.data<float>()[i] = std::fabs(nested.data<float>()[i]);
  return {{random_normal({d.m, d.k}, seed)},        {bytes((numel + 1) / 2, seed + 1), false},
          {bytes(blocks, seed + 2), false},          {random_normal({256}, seed + 4, 0.5f), false},
          {nested, false},                           {random_normal({d.m, d.n}, seed + 5)},
          {random_normal({16, d.k}, seed + 6, 0.1f)}, {random_normal({d.n, 16}, seed + 7, 0.1f)}};
}
cuda::Nf4Weight nf4_weight(const std::vector<Tensor>& in, const Dims& d) {
  cuda::Nf4Weight w;
  w.packed = static_cast<const uint8_t*>(in[1].raw());
  w.absmax_q = static_cast<const uint8_t*>(in[2].raw());
  w.code8 = static_cast<const float*>(in[3].raw());
  w.nested_absmax = static_cast<const float*>(in[4].raw());
  w.offset = 0.01f;
  w.out = d.n;
  w.in = d.k;
  return w;
}
Pass::CostOf nf4_cost(double passes) {
  return [passes](const Dims& d, double act) {
    return Cost{act * double(d.m * d.k + d.m * d.n) + 0.5 * d.n * d.k, passes * 2.0 * d.m * d.n * d.k, d.m, d.n, d.k, 1};
  };
}
Op gpu_op(const char* name, std::vector<std::string> dims, Dims bench) {
  Op op;
  op.name = name;
  op.dims = std::move(dims);
  op.has_cpu = false;
  op.bench = bench;
  op.shapes = [](Mode) { return std::vector<Dims>{}; };
  return op;
}

}  // namespace
#endif

void register_gpu_only(std::vector<Op>& ops) {
#ifdef NQ_CUDA
  {  // adamw: the update the paged optimizer runs (kernels/cuda/adamw_span.h), over n parameters
    Op op = gpu_op("adamw", {"n"}, elements(1 << 24));
    op.model_shapes = [](const ModelDims& m) { return std::vector<Dims>{elements(m.lora_params)}; };
    op.inputs = [](const Dims& d, uint64_t seed) {  // param, grad, exp_avg, exp_avg_sq (>= 0)
      std::vector<Input> in;
      for (uint64_t i = 0; i < 4; ++i) in.push_back({random_normal({d.n}, seed + i), false});
      float* v = in[3].host.data<float>();
      for (int64_t i = 0; i < d.n; ++i) v[i] = v[i] * v[i];
      return in;
    };
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims&) {
                    AdamWScalars scalars = adamw_scalars(AdamWConfig{}, 1e-3, 1);
                    cuda::adamw_update_span(in[0].data<float>(), in[1].data<float>(), in[2].data<float>(),
                                            in[3].data<float>(), in[0].numel(), scalars, 1.0f, nullptr);
                    return std::vector<Tensor>{in[0]};
                  },
                  {f32_bound()},
                  [](const Dims& d, double) { return Cost{4.0 * 4 * d.n + 3.0 * 4 * d.n, 12.0 * d.n}; }};
    ops.push_back(op);
  }
  {
    Op op = gpu_op("grad_norm", {"n"}, elements(1 << 24));
    op.model_shapes = [](const ModelDims& m) { return std::vector<Dims>{elements(m.lora_params)}; };
    op.inputs = [](const Dims& d, uint64_t seed) { return std::vector<Input>{{random_normal({d.n}, seed), false}}; };
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims&) {
                    return std::vector<Tensor>{Tensor::full({1}, float(cuda::global_grad_norm({in[0]})))};
                  },
                  {f32_bound()},
                  [](const Dims& d, double) { return Cost{4.0 * d.n, 2.0 * d.n}; }};
    ops.push_back(op);
  }
  // gate/up_proj as NF4 (+ LoRA) at the step's tokens; nf4_matmul also at 8 rows (the GEMV)
  auto proj = [](const ModelDims& m) { return weight(m.seq, m.ffn, m.hidden); };
  {
    Op op = gpu_op("nf4_matmul", {"m", "n", "k"}, weight(4096, 4096, 4096));
    op.model_shapes = [proj](const ModelDims& m) { return std::vector<Dims>{proj(m), weight(8, m.ffn, m.hidden)}; };
    op.inputs = nf4_inputs;
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                    return std::vector<Tensor>{cuda::nf4_matmul(in[0], nf4_weight(in, d))};
                  },
                  {by_dtype()},
                  nf4_cost(1)};
    ops.push_back(op);
  }
  // The two ways nf4_matmul chooses between by M (kernels/cuda/nf4.h), each forced: which is faster where.
  using Path = cuda::Nf4MatmulPath;
  for (auto [name, path] : {std::pair<const char*, Path>{"nf4_matmul_fused", Path::Fused},
                            {"nf4_matmul_dequant", Path::Dequantized}}) {
    Op op = gpu_op(name, {"m", "n", "k"}, weight(4096, 4096, 4096));
    op.model_shapes = [proj](const ModelDims& m) { return std::vector<Dims>{proj(m)}; };
    op.inputs = nf4_inputs;
    op.forward = {[path = path](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                    return std::vector<Tensor>{cuda::nf4_matmul(in[0], nf4_weight(in, d), nullptr, path)};
                  },
                  {by_dtype()},
                  nf4_cost(1)};
    ops.push_back(op);
  }
  {
    Op op = gpu_op("nf4_matmul_dx", {"m", "n", "k"}, weight(4096, 4096, 4096));
    op.model_shapes = [proj](const ModelDims& m) { return std::vector<Dims>{proj(m)}; };
    op.inputs = nf4_inputs;
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                    return std::vector<Tensor>{cuda::nf4_matmul_dx(in[5], nf4_weight(in, d))};
                  },
                  {by_dtype()},
                  nf4_cost(1)};
    ops.push_back(op);
  }
  {
    Op op = gpu_op("nf4_dequantize", {"n", "k"}, weight(1, 4096, 4096));
    op.model_shapes = [](const ModelDims& m) { return std::vector<Dims>{weight(1, m.ffn, m.hidden)}; };
    op.inputs = nf4_inputs;
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                    return std::vector<Tensor>{cuda::nf4_dequantize(nf4_weight(in, d), DType::BF16)};
                  },
                  {bit_exact()},
                  [](const Dims& d, double) { return Cost{2.5 * d.n * d.k, 0}; }};
    ops.push_back(op);
  }
  {  // forward + backward, r = 16
    Op op = gpu_op("lora_nf4", {"m", "n", "k"}, weight(4096, 4096, 4096));
    op.model_shapes = [proj](const ModelDims& m) { return std::vector<Dims>{proj(m)}; };
    op.inputs = nf4_inputs;
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                    cuda::LoraParams lora{in[6], in[7], 2.0f, 0.0f, 1, 0};
                    Tensor u, dx, da, db;
                    Tensor y = cuda::lora_nf4_forward(in[0], nf4_weight(in, d), lora, &u);
                    cuda::lora_nf4_backward(in[5], in[0], u, nf4_weight(in, d), lora, &dx, &da, &db);
                    return std::vector<Tensor>{y, dx, da, db};
                  },
                  {by_dtype(), by_dtype(), by_dtype(), by_dtype()},
                  nf4_cost(2)};
    ops.push_back(op);
  }
#endif
}

}  // namespace nq::kernels::registry::family
