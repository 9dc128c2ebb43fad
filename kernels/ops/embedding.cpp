// Registration: embedding, y [N, D] = table [V, D] rows by ids [N]; backward scatter-adds dy.
#include "kernels/cpu/embedding.h"
#include "kernels/kernels.h"
#include "kernels/ops/ops.h"

namespace nq::kernels::registry::family {

namespace {
Dims emb(int64_t tokens, int64_t vocab, int64_t hidden) {
  Dims d;
  d.tokens = tokens; d.vocab = vocab; d.hidden = hidden;
  return d;
}
}  // namespace

void register_embedding(std::vector<Op>& ops) {
  Op op;
  op.name = "embedding";
  op.dims = {"tokens", "hidden", "vocab"};
  op.bench = emb(4096, 151936, 1024);
  // 9 ids into 7 rows: repeats, which the backward must add up
  op.shapes = [](Mode mode) {
    return pick(mode, {emb(9, 7, 5), emb(1, 1, 1), emb(17, 3, 127)}, {emb(9, 7, 5), emb(1, 1, 1), emb(17, 3, 13)},
                {emb(1, 1, 1), emb(37, 11, 65), emb(300, 1000, 128)});
  };
  op.model_shapes = [](const ModelDims& m) { return std::vector<Dims>{emb(m.seq, m.vocab, m.hidden)}; };
  op.inputs = [](const Dims& d, uint64_t seed) {  // table, ids, dy
    return std::vector<Input>{{random_normal({d.vocab, d.hidden}, seed)},
                              {random_ints({d.tokens}, seed + 1, 0, int32_t(d.vocab)), false},
                              {random_normal({d.tokens, d.hidden}, seed + 2)}};
  };
  op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims&) {
                  return std::vector<Tensor>{kernels::embedding_forward(in[0], in[1])};
                },
                {by_dtype()},
                [](const Dims& d, double act) { return Cost{2 * act * d.tokens * d.hidden + 4.0 * d.tokens, 0}; }};
  // both devices add the same (already rounded) values in f32: the f32 bound applies
  op.backward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                   return std::vector<Tensor>{kernels::embedding_backward(in[2], in[1], d.vocab)};
                 },
                 {f32_bound()},
                 [](const Dims& d, double act) {
                   return Cost{act * d.tokens * d.hidden + 4.0 * d.vocab * d.hidden + 4.0 * d.tokens,
                               double(d.tokens * d.hidden)};
                 }};
  op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
    std::vector<double> table = doubles(in[0]), dy = doubles(in[2]), y(d.tokens * d.hidden), dt(table.size(), 0.0);
    std::vector<int32_t> ids = ints(in[1]);
    for (int64_t n = 0; n < d.tokens; ++n)
      for (int64_t j = 0; j < d.hidden; ++j) {
        y[n * d.hidden + j] = table[ids[n] * d.hidden + j];
        dt[ids[n] * d.hidden + j] += dy[n * d.hidden + j];
      }
    return std::vector<Expected>{{0, y, 0}, {1, dt, 2e-6}};
  };
  op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
    GradProblem p;
    p.names = {"table"};
    p.x = values({doubles(in[0])});
    auto x = p.x;
    auto ids = std::make_shared<std::vector<int32_t>>(ints(in[1]));
    auto r = std::make_shared<std::vector<double>>(doubles(in[2]));
    p.loss = [x, ids, r, d] {
      std::vector<double> y(d.tokens * d.hidden);
      cpu::embedding_forward((*x)[0].data(), ids->data(), y.data(), d.tokens, d.hidden);
      return dot(y, *r);
    };
    p.grad = [ids, r, d] {
      std::vector<std::vector<double>> g(1, std::vector<double>(d.vocab * d.hidden));
      cpu::embedding_backward(r->data(), ids->data(), g[0].data(), d.tokens, d.vocab, d.hidden);
      return g;
    };
    return p;
  };
  ops.push_back(op);
}

}  // namespace nq::kernels::registry::family
