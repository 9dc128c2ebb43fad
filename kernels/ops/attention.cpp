// Registration: causal GQA attention with optional packed segments.
#include <cmath>
#include <limits>

#include "kernels/cpu/attention.h"
#include "kernels/kernels.h"
#include "kernels/ops/ops.h"

namespace nq::kernels::registry::family {

namespace {
Dims attn(int64_t batch, int64_t seq, int64_t hq, int64_t hkv, int64_t head_dim, int segments, int dtypes = 7) {
  Dims d;
  d.batch = batch; d.seq = seq; d.tokens = batch * seq; d.heads = hq; d.kv_heads = hkv; d.head_dim = head_dim;
  d.segments = segments; d.dtypes = dtypes;
  return d;
}

// Packed samples: 1 = each batch row holds segments of lengths 1, 2, 3, ...;
// 2 = three samples per row (segment = position * 3 / T).
std::vector<int32_t> segment_ids(const Dims& d) {
  std::vector<int32_t> seg(d.batch * d.seq);
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t i = 0, id = 0, left = 1, len = 1; i < d.seq; ++i) {
      if (d.segments == 2) {
        seg[b * d.seq + i] = int32_t(i * 3 / d.seq);
        continue;
      }
      seg[b * d.seq + i] = int32_t(id);
      if (--left == 0) { ++id; left = ++len; }
    }
  return seg;
}

// Explicit [T, T] scores per (batch, head), masked to -inf, softmax, P V.
void attention_reference(const Dims& c, const std::vector<double>& q, const std::vector<double>& k,
                         const std::vector<double>& v, const std::vector<int32_t>& seg, std::vector<double>& o,
                         std::vector<double>& lse) {
  const int64_t B = c.batch, T = c.seq, Hq = c.heads, Hkv = c.kv_heads, Dh = c.head_dim;
  const double scale = 1 / std::sqrt(double(Dh)), inf = std::numeric_limits<double>::infinity();
  o.assign(B * T * Hq * Dh, 0);
  lse.assign(B * T * Hq, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      int64_t g = h * Hkv / Hq;  // kv head of query head h
      std::vector<double> S(T * T);
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j) {
          bool masked = j > i || (!seg.empty() && seg[b * T + i] != seg[b * T + j]);
          double s = 0;
          for (int64_t e = 0; e < Dh; ++e) s += q[((b * T + i) * Hq + h) * Dh + e] * k[((b * T + j) * Hkv + g) * Dh + e];
          S[i * T + j] = masked ? -inf : s * scale;
        }
      for (int64_t i = 0; i < T; ++i) {
        double m = -inf, z = 0;
        for (int64_t j = 0; j < T; ++j) m = std::max(m, S[i * T + j]);
        for (int64_t j = 0; j < T; ++j) z += std::exp(S[i * T + j] - m);
        lse[(b * T + i) * Hq + h] = m + std::log(z);
        for (int64_t j = 0; j < T; ++j) {
          double p = std::exp(S[i * T + j] - m) / z;
          for (int64_t e = 0; e < Dh; ++e) o[((b * T + i) * Hq + h) * Dh + e] += p * v[((b * T + j) * Hkv + g) * Dh + e];
        }
      }
    }
}

Tensor segments_of(const std::vector<Tensor>& in) { return in.size() > 4 ? in[4] : Tensor(); }

// causal: half of the T x T scores; 2 GEMMs forward (QK^T, PV), 5 backward
Cost attention_cost(const Dims& d, double act, double gemms) {
  double N = double(d.batch * d.seq);
  double flops = gemms * 2.0 * d.batch * d.heads * double(d.seq) * d.seq * d.head_dim / 2;
  return Cost{act * N * d.head_dim * (2 * d.heads + 2 * d.kv_heads), flops, d.seq, d.seq, d.head_dim, d.batch * d.heads};
}
}  // namespace

void register_attention(std::vector<Op>& ops) {
  Op op;
  op.name = "attention";
  op.dims = {"batch", "seq", "heads", "kv-heads", "head-dim"};
  op.bench = attn(1, 4096, 16, 8, 128, 0);
  op.shapes = [](Mode mode) {
    std::vector<Dims> device = {
        // bf16 / f16 with Dh 64 or 128 runs the tensor-core kernels; f32 and Dh 32 the CUDA-core ones
        attn(1, 1, 1, 1, 64, 0), attn(2, 19, 4, 2, 64, 0), attn(1, 70, 4, 1, 128, 2), attn(1, 9, 2, 1, 32, 2),
        attn(1, 130, 2, 1, 128, 0), attn(2, 33, 2, 2, 128, 2)};
    // The tiled tensor-core forward and backward (bf16, Dh 64 / 128): T below, at and
    // across the 64-row tiles (padding rows and keys), two sequences, GQA groups of 2
    // and 1, packed segments whose boundaries fall inside tiles; f16 (the same kernels
    // instantiated for it) below one tile and across three.
    for (int64_t Dh : {64, 128})
      for (int64_t T : {1, 17, 64, 100, 200})
        for (int64_t Hq : {4, 2})
          for (int segments : {0, 2}) device.push_back(attn(2, T, Hq, 2, Dh, segments, T == 17 || T == 200 ? 6 : 2));
    return pick(mode,
                {attn(1, 1, 1, 1, 4, 0), attn(2, 17, 4, 2, 8, 1), attn(1, 3, 3, 1, 16, 0), attn(1, 127, 2, 1, 4, 1),
                 attn(3, 5, 2, 2, 3, 0)},
                {attn(2, 5, 4, 2, 3, 1), attn(1, 17, 2, 1, 4, 0), attn(1, 1, 2, 2, 2, 0), attn(1, 6, 3, 3, 2, 1)},
                device);
  };
  op.model_shapes = [](const ModelDims& m) {
    return std::vector<Dims>{attn(1, m.seq, m.heads, m.kv_heads, m.head_dim, 0)};
  };
  op.inputs = [](const Dims& d, uint64_t seed) {  // q, k, v, dO, segment ids (when packed)
    const int64_t N = d.batch * d.seq;
    std::vector<Input> in{{random_normal({N, d.heads, d.head_dim}, seed)},
                          {random_normal({N, d.kv_heads, d.head_dim}, seed + 1)},
                          {random_normal({N, d.kv_heads, d.head_dim}, seed + 2)},
                          {random_normal({N, d.heads, d.head_dim}, seed + 3)}};
    if (d.segments) in.push_back({Tensor::from_ids(segment_ids(d), {N}), false});
    return in;
  };
  // lse, bf16: the softmax sum adds bf16-rounded probabilities (the activation bound)
  op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                  Tensor lse;
                  Tensor o = kernels::attention_forward(in[0], in[1], in[2], d.batch, d.seq, segments_of(in), &lse);
                  return std::vector<Tensor>{o, lse};
                },
                {by_dtype(), by_dtype()},
                [](const Dims& d, double act) { return attention_cost(d, act, 2); }};
  // the backward takes the forward's o and lse from the same device, as in training
  op.backward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>& fwd, const Dims& d) {
                   Tensor dq, dk, dv;
                   kernels::attention_backward(in[3], in[0], in[1], in[2], fwd[0], fwd[1], d.batch, d.seq,
                                               segments_of(in), &dq, &dk, &dv);
                   return std::vector<Tensor>{dq, dk, dv};
                 },
                 {by_dtype(), by_dtype(), by_dtype()},
                 [](const Dims& d, double act) { return attention_cost(d, act, 2 + 5); }};
  // ./bench attention_bwd times forward + backward, as tools/ref/bench_attention.py's "fwd+bwd"
  op.backward.timed_with_forward = true;
  op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
    std::vector<double> o, lse;
    attention_reference(d, doubles(in[0]), doubles(in[1]), doubles(in[2]),
                        d.segments ? segment_ids(d) : std::vector<int32_t>(), o, lse);
    return std::vector<Expected>{{0, o, 1e-5}, {1, lse, 1e-5}};
  };
  op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
    GradProblem p;
    p.names = {"q", "k", "v"};
    p.x = values({doubles(in[0]), doubles(in[1]), doubles(in[2])});
    auto x = p.x;
    auto r = std::make_shared<std::vector<double>>(doubles(in[3]));
    auto seg = std::make_shared<std::vector<int32_t>>(d.segments ? segment_ids(d) : std::vector<int32_t>());
    const int64_t N = d.batch * d.seq;
    auto o = std::make_shared<std::vector<double>>(N * d.heads * d.head_dim);
    auto lse = std::make_shared<std::vector<double>>(N * d.heads);
    p.loss = [x, r, seg, o, lse, d] {
      cpu::attention_forward((*x)[0].data(), (*x)[1].data(), (*x)[2].data(), seg->empty() ? nullptr : seg->data(),
                             o->data(), lse->data(), d.batch, d.seq, d.heads, d.kv_heads, d.head_dim);
      return dot(*o, *r);
    };
    p.grad = [loss = p.loss, x, r, seg, o, lse, d] {
      loss();  // o and lse at *x
      std::vector<std::vector<double>> g{std::vector<double>((*x)[0].size()), std::vector<double>((*x)[1].size()),
                                         std::vector<double>((*x)[2].size())};
      cpu::attention_backward(r->data(), (*x)[0].data(), (*x)[1].data(), (*x)[2].data(), o->data(), lse->data(),
                              seg->empty() ? nullptr : seg->data(), g[0].data(), g[1].data(), g[2].data(), d.batch,
                              d.seq, d.heads, d.kv_heads, d.head_dim);
      return g;
    };
    return p;
  };
  ops.push_back(op);
}

}  // namespace nq::kernels::registry::family
