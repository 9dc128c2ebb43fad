// Registration: linear_cross_entropy (lm_head fused with cross-entropy, in row chunks).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cross_entropy.h"
#include "kernels/kernels.h"
#include "kernels/ops/ops.h"

namespace nq::kernels::registry::family {

namespace {
Dims ce(int64_t tokens, int64_t hidden, int64_t vocab, int64_t chunk, bool accumulate = false) {
  Dims d;
  d.tokens = tokens; d.hidden = hidden; d.vocab = vocab; d.chunk = chunk; d.accumulate = accumulate;
  return d;
}
std::vector<Dims> with_and_without_accumulate(std::vector<Dims> shapes) {
  std::vector<Dims> out;
  for (Dims d : shapes)
    for (bool acc : {false, true}) {
      d.accumulate = acc;
      out.push_back(d);
    }
  return out;
}
}  // namespace

void register_cross_entropy(std::vector<Op>& ops) {
  Op op;
  op.name = "cross_entropy";
  op.dims = {"tokens", "hidden", "vocab", "chunk"};
  op.bench = ce(4096, 1024, 151936, 1024);
  op.shapes = [](Mode mode) {
    std::vector<Dims> reference;
    for (int64_t chunk : {1, 3, 7, 100}) reference.push_back(ce(7, 5, 17, chunk));  // every chunk size
    reference.push_back(ce(17, 3, 127, 5));
    return pick(mode, with_and_without_accumulate(reference), {ce(5, 3, 11, 2), ce(17, 3, 127, 5), ce(1, 4, 3, 1)},
                with_and_without_accumulate({ce(1, 8, 5, 1), ce(37, 64, 1000, 16), ce(64, 128, 4099, 64)}));
  };
  op.model_shapes = [](const ModelDims& m) { return std::vector<Dims>{ce(m.seq, m.hidden, m.vocab, 1024)}; };
  // h, w, labels (every third row from the second on ignored: -100), and the prior
  // gradient a tied embedding leaves in grad_w (accumulate)
  op.inputs = [](const Dims& d, uint64_t seed) {
    Tensor labels = random_ints({d.tokens}, seed + 2, 0, int32_t(d.vocab));
    for (int64_t n = 1; n < d.tokens; n += 3) labels.data<int32_t>()[n] = kIgnoreIndex;
    std::vector<Input> in{{random_normal({d.tokens, d.hidden}, seed)},
                          {random_normal({d.vocab, d.hidden}, seed + 1, 0.5f)},
                          {labels, false}};
    if (d.accumulate) in.push_back({random_normal({d.vocab, d.hidden}, seed + 3, 0.01f)});
    return in;
  };
  // Outputs: loss, the counted rows, grad_h, grad_w; accumulate: grad_w added into the
  // prior in the prior's (activation) dtype.
  Tol same_dtype = by_dtype();
  same_dtype.in_act_dtype = true;
  op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                  if (d.accumulate) {
                    Tensor acc = in[3];
                    kernels::linear_cross_entropy(in[0], in[1], in[2], d.chunk, nullptr, &acc, nullptr);
                    return std::vector<Tensor>{acc};
                  }
                  Tensor gh, gw;
                  int64_t count = -1;
                  float loss = kernels::linear_cross_entropy(in[0], in[1], in[2], d.chunk, &gh, &gw, &count);
                  return std::vector<Tensor>{Tensor::full({1}, loss), Tensor::full({1}, float(count)), gh, gw};
                },
                {by_dtype(), bit_exact(), by_dtype(), by_dtype()},
                [](const Dims& d, double act) {  // forward GEMM + two backward GEMMs
                  return Cost{act * double(d.tokens * d.hidden * 2 + d.vocab * d.hidden) + 4.0 * d.vocab * d.hidden,
                              3 * 2.0 * d.tokens * d.vocab * d.hidden, d.tokens, d.vocab, d.hidden, 1};
                }};
  // accumulate has one output, grad_w in the prior's dtype
  op.forward.tols_at = [same_dtype](const Dims& d) {
    return d.accumulate ? std::vector<Tol>{same_dtype} : std::vector<Tol>{by_dtype(), bit_exact(), by_dtype(), by_dtype()};
  };
  op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
    // full [N, V] logits, mean over the counted rows
    const int64_t N = d.tokens, D = d.hidden, V = d.vocab;
    std::vector<double> h = doubles(in[0]), w = doubles(in[1]), gh(N * D, 0), gw(V * D, 0);
    std::vector<int32_t> labels = ints(in[2]);
    double count = 0, loss = 0;
    for (int32_t y : labels) count += y != kIgnoreIndex;
    for (int64_t n = 0; n < N; ++n) {
      if (labels[n] == kIgnoreIndex) continue;
      std::vector<double> z(V, 0.0);
      for (int64_t c = 0; c < V; ++c)
        for (int64_t j = 0; j < D; ++j) z[c] += h[n * D + j] * w[c * D + j];
      double m = *std::max_element(z.begin(), z.end()), s = 0;
      for (double zc : z) s += std::exp(zc - m);
      loss += (m + std::log(s) - z[labels[n]]) / count;
      for (int64_t c = 0; c < V; ++c) {
        double dz = (std::exp(z[c] - m) / s - (c == labels[n])) / count;
        for (int64_t j = 0; j < D; ++j) {
          gh[n * D + j] += dz * w[c * D + j];
          gw[c * D + j] += dz * h[n * D + j];
        }
      }
    }
    if (d.accumulate) {
      std::vector<double> prior = doubles(in[3]);
      for (size_t i = 0; i < gw.size(); ++i) gw[i] += prior[i];
      return std::vector<Expected>{{0, gw, 1e-5}};
    }
    return std::vector<Expected>{{0, {loss}, 1e-5}, {1, {count}, 0}, {2, gh, 1e-5}, {3, gw, 1e-5}};
  };
  op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
    GradProblem p;
    p.names = {"h", "w"};
    p.x = values({doubles(in[0]), doubles(in[1])});
    auto x = p.x;
    auto labels = std::make_shared<std::vector<int32_t>>(ints(in[2]));
    const int64_t N = d.tokens, D = d.hidden, V = d.vocab, chunk = d.chunk;
    auto logits = std::make_shared<std::vector<double>>(std::min(chunk, N) * V);
    auto count = std::make_shared<int64_t>(0);
    p.loss = [=] {
      return cpu::linear_cross_entropy((*x)[0].data(), (*x)[1].data(), labels->data(), N, D, V, chunk, logits->data(),
                                       (double*)nullptr, (double*)nullptr, count.get());
    };
    p.grad = [=] {
      std::vector<std::vector<double>> g{std::vector<double>(N * D), std::vector<double>(V * D, 0.0)};
      cpu::linear_cross_entropy((*x)[0].data(), (*x)[1].data(), labels->data(), N, D, V, chunk, logits->data(),
                                g[0].data(), g[1].data(), count.get());
      return g;
    };
    p.loss();
    p.skip = *count == 0;  // no counted row: the loss is 0 whatever h and w are
    return p;
  };
  ops.push_back(op);
}

}  // namespace nq::kernels::registry::family
