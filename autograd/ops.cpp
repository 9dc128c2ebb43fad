// The differentiable ops of autograd/ops.h. Each one runs its forward kernel
// (kernels/kernels.h), then record()s a backward lambda that captures exactly
// what the derivative needs (inputs, saved statistics such as RMSNorm's rstd or
// attention's log-sum-exp). Gradients are only computed for inputs that
// require them.
#include "autograd/ops.h"

#include "kernels/kernels.h"
#include "runtime/rng.h"

namespace nq {

static bool needs_grad(const Var& v) { return v.defined() && v.requires_grad(); }

// A tensor shaped, typed and placed like `like`, every element `value`.
static Tensor filled_like(const Shape& shape, const Tensor& like, float value) {
  Tensor t = Tensor::full(shape, value);
  if (like.dtype() != DType::F32) t = t.to_dtype(like.dtype());
  return t.to(like.device());
}
// The value of a one-element gradient (the incoming dL/d(scalar output)).
static float scalar_value(const Tensor& g) { return g.to_vector()[0]; }

Var add(const Var& a, const Var& b) {
  return record("add", kernels::add(a.value(), b.value()), {a, b},
                [](const Tensor& g) { return std::vector<Tensor>{g, g}; });
}

Var mul(const Var& a, const Var& b) {
  Tensor av = a.value(), bv = b.value();
  bool need_a = needs_grad(a), need_b = needs_grad(b);
  return record("mul", kernels::mul(av, bv), {a, b}, [av, bv, need_a, need_b](const Tensor& g) {
    return std::vector<Tensor>{need_a ? kernels::mul(g, bv) : Tensor(), need_b ? kernels::mul(g, av) : Tensor()};
  });
}

Var scale(const Var& a, float s) {
  return record("scale", kernels::scale(a.value(), s), {a},
                [s](const Tensor& g) { return std::vector<Tensor>{kernels::scale(g, s)}; });
}

Var sum(const Var& a) {
  Tensor av = a.value();
  Tensor out = filled_like({1}, av, kernels::sum(av));
  return record("sum", out, {a}, [av](const Tensor& g) {
    return std::vector<Tensor>{filled_like(av.shape(), av, scalar_value(g))};  // d(sum)/da_i = 1
  });
}

Var mean(const Var& a) {
  int64_t n = a.value().numel();
  NQ_CHECK(n > 0, "mean: empty tensor ", a.value().desc());
  return scale(sum(a), 1.0f / float(n));
}

Var reshape(const Var& a, Shape shape) {
  Shape from = a.shape();
  NQ_CHECK(shape.numel() == from.numel(), "reshape: cannot view ", from.str(), " as ", shape.str());
  return record("reshape", a.value().view(shape), {a},
                [from](const Tensor& g) { return std::vector<Tensor>{g.view(from)}; });
}

// C = op(A) op(B). With dC given, for each transpose combination:
//   C = A B      : dA = dC B^T,    dB = A^T dC
//   C = A^T B    : dA = B dC^T,    dB = A dC
//   C = A B^T    : dA = dC B,      dB = dC^T A
//   C = A^T B^T  : dA = B^T dC^T,  dB = dC^T A^T
Var matmul(const Var& a, const Var& b, bool trans_a, bool trans_b) {
  Tensor av = a.value(), bv = b.value();
  bool need_a = needs_grad(a), need_b = needs_grad(b);
  return record("matmul", kernels::matmul(av, bv, trans_a, trans_b), {a, b},
                [av, bv, trans_a, trans_b, need_a, need_b](const Tensor& g) {
                  Tensor ga, gb;
                  if (need_a) ga = trans_a ? kernels::matmul(bv, g, trans_b, true) : kernels::matmul(g, bv, false, !trans_b);
                  if (need_b) gb = trans_b ? kernels::matmul(g, av, true, trans_a) : kernels::matmul(av, g, !trans_a, false);
                  return std::vector<Tensor>{ga, gb};
                });
}

// y = x w^T + b over the last dim of x: x [..., in], w [out, in], b [out] -> y [..., out].
// The bias is added as ones[N, 1] @ b[1, out], and db = ones^T dy (column sums).
Var linear(const Var& x, const Var& w, const Var& bias) {
  const Tensor &xv = x.value(), &wv = w.value();
  NQ_CHECK(wv.ndim() == 2, "linear: w must be [out, in], got ", wv.shape().str());
  NQ_CHECK(xv.ndim() >= 1 && xv.size(-1) == wv.size(1), "linear: x ", xv.shape().str(), " and w ", wv.shape().str(),
           " disagree on in");
  NQ_CHECK(wv.size(1) > 0, "linear: in must be positive, w is ", wv.shape().str());
  int64_t in = wv.size(1), out_dim = wv.size(0), N = xv.numel() / in;
  Tensor x2 = xv.view({N, in});
  Tensor y = kernels::matmul(x2, wv, false, true);  // [N, out]
  Tensor ones;
  if (bias.defined()) {
    NQ_CHECK(bias.shape() == Shape{out_dim}, "linear: bias ", bias.shape().str(), " does not match w ",
             wv.shape().str());
    ones = filled_like({N, 1}, xv, 1.0f);
    kernels::matmul_into(y, ones, bias.value().view({1, out_dim}), false, false, true);
  }
  Shape y_shape = xv.shape();
  y_shape.dims[y_shape.ndim - 1] = out_dim;
  bool need_x = needs_grad(x), need_w = needs_grad(w), need_b = needs_grad(bias);
  Shape x_shape = xv.shape(), b_shape = bias.defined() ? bias.shape() : Shape{};
  return record("linear", y.view(y_shape), {x, w, bias},
                [x2, wv, ones, x_shape, b_shape, N, out_dim, need_x, need_w, need_b](const Tensor& g) {
                  Tensor g2 = g.view({N, out_dim}), gx, gw, gb;
                  if (need_x) gx = kernels::matmul(g2, wv).view(x_shape);   // dx = dy w
                  if (need_w) gw = kernels::matmul(g2, x2, true, false);   // dw = dy^T x
                  if (need_b) gb = kernels::matmul(ones, g2, true, false).view(b_shape);
                  return std::vector<Tensor>{gx, gw, gb};
                });
}

// y + ones[N, 1] @ b[1, out]; db = column sums of dy.
Var add_bias(const Var& y, const Var& bias) {
  const Tensor& yv = y.value();
  const int64_t out_dim = yv.ndim() >= 1 ? yv.size(-1) : 0;
  NQ_CHECK(bias.shape() == Shape{out_dim}, "add_bias: bias ", bias.shape().str(), " does not match y ",
           yv.shape().str());
  const int64_t N = yv.numel() / std::max<int64_t>(out_dim, 1);
  Tensor out = yv.clone(), ones = filled_like({N, 1}, yv, 1.0f);
  Tensor out2 = out.view({N, out_dim});
  kernels::matmul_into(out2, ones, bias.value().view({1, out_dim}), false, false, true);
  bool need_b = needs_grad(bias);
  Shape b_shape = bias.shape();
  return record("add_bias", out, {y, bias}, [ones, N, out_dim, need_b, b_shape](const Tensor& g) {
    Tensor gb;
    if (need_b) gb = kernels::matmul(ones, g.view({N, out_dim}), true, false).view(b_shape);
    return std::vector<Tensor>{g, gb};
  });
}

Var nf4_linear(const Var& x, std::shared_ptr<const Nf4Tensor> w) {
  NQ_CHECK(w != nullptr, "nf4_linear: null NF4 weight");
  Tensor y = kernels::nf4_matmul(x.value(), *w);
  return record("nf4_linear", std::move(y), {x}, [w](const Tensor& gy) -> std::vector<Tensor> {
    return {kernels::nf4_matmul_dx(gy, *w)};
  });
}

Var nf4_grouped_linear(const Var& x, std::vector<std::shared_ptr<const Nf4Tensor>> w, std::vector<int64_t> offsets) {
  auto raw = [](const std::vector<std::shared_ptr<const Nf4Tensor>>& ws) {
    std::vector<const Nf4Tensor*> p;
    for (const auto& e : ws) {
      NQ_CHECK(e != nullptr, "nf4_grouped_linear: null NF4 weight");
      p.push_back(e.get());
    }
    return p;
  };
  Tensor y = kernels::nf4_grouped_matmul(x.value(), raw(w), offsets);
  return record("nf4_grouped_linear", std::move(y), {x},
                [w = std::move(w), offsets = std::move(offsets), raw](const Tensor& gy) -> std::vector<Tensor> {
                  return {kernels::nf4_grouped_matmul_dx(gy, raw(w), offsets)};
                });
}

Var embedding(const Var& table, const Tensor& ids) {
  int64_t V = table.value().size(0);
  return record("embedding", kernels::embedding_forward(table.value(), ids), {table}, [ids, V](const Tensor& g) {
    return std::vector<Tensor>{kernels::embedding_backward(g, ids, V)};
  });
}

Var gather_rows(const Var& x, const Tensor& index) {
  const Tensor& xv = x.value();
  NQ_CHECK(xv.ndim() == 2, "gather_rows: x must be [N, D], got ", xv.shape().str());
  const int64_t N = xv.size(0);
  const DType dtype = xv.dtype();
  return record("gather_rows", kernels::embedding_forward(xv, index), {x}, [index, N, dtype](const Tensor& g) {
    // The GPU's scatter-add accumulates in f32; the gradient has x's dtype.
    return std::vector<Tensor>{kernels::cast(kernels::embedding_backward(g, index, N), dtype)};
  });
}

Var moe_route(const Var& logits, int64_t k, bool renormalize, Tensor* experts) {
  NQ_CHECK(experts != nullptr, "moe_route: no output for the experts");
  const Tensor lv = logits.value();
  Tensor weights = kernels::moe_route_forward(lv, k, renormalize, experts);
  const Tensor chosen = *experts;
  return record("moe_route", weights, {logits}, [lv, chosen, weights, renormalize](const Tensor& g) {
    return std::vector<Tensor>{kernels::moe_route_backward(g, lv, chosen, weights, renormalize)};
  });
}

Var rmsnorm(const Var& x, const Var& w, float eps) {
  Tensor xv = x.value(), wv = w.value(), rstd;
  Tensor y = kernels::rmsnorm_forward(xv, wv, eps, &rstd);
  bool need_x = needs_grad(x), need_w = needs_grad(w);
  return record("rmsnorm", y, {x, w}, [xv, wv, rstd, need_x, need_w](const Tensor& g) {
    Tensor gx, gw;
    kernels::rmsnorm_backward(g, xv, wv, rstd, need_x ? &gx : nullptr, need_w ? &gw : nullptr);
    return std::vector<Tensor>{gx, gw};
  });
}

Var rope(const Var& x, const Tensor& positions, const RopeTable& table) {
  return record("rope", kernels::rope_forward(x.value(), positions, table), {x}, [positions, table](const Tensor& g) {
    return std::vector<Tensor>{kernels::rope_backward(g, positions, table)};
  });
}

Var swiglu(const Var& gate, const Var& up) {
  Tensor gv = gate.value(), uv = up.value();
  bool need_gate = needs_grad(gate), need_up = needs_grad(up);
  return record("swiglu", kernels::swiglu_forward(gv, uv), {gate, up}, [gv, uv, need_gate, need_up](const Tensor& g) {
    Tensor gg, gu;
    kernels::swiglu_backward(g, gv, uv, need_gate ? &gg : nullptr, need_up ? &gu : nullptr);
    return std::vector<Tensor>{gg, gu};
  });
}

Var attention(const Var& q, const Var& k, const Var& v, int64_t B, int64_t T, const Tensor& segment_ids) {
  Tensor qv = q.value(), kv = k.value(), vv = v.value(), lse;
  Tensor o = kernels::attention_forward(qv, kv, vv, B, T, segment_ids, &lse);
  return record("attention", o, {q, k, v}, [qv, kv, vv, o, lse, B, T, segment_ids](const Tensor& g) {
    Tensor gq, gk, gv;
    kernels::attention_backward(g, qv, kv, vv, o, lse, B, T, segment_ids, &gq, &gk, &gv);
    return std::vector<Tensor>{gq, gk, gv};
  });
}

Var dropout(const Var& x, float p) {
  if (p == 0.0f) return x;
  NQ_CHECK(p > 0.0f && p < 1.0f, "dropout: p must be in [0, 1), got ", p);
  // Reserve this mask's slice of the random stream: checkpoint() restores the
  // stream position before re-running, so the re-run gets the same offset.
  uint64_t offset = rng_reserve(uint64_t(x.value().numel()));
  uint64_t seed = rng_state().seed;
  return record("dropout", kernels::dropout_forward(x.value(), p, seed, offset), {x},
                [p, seed, offset](const Tensor& g) {
                  return std::vector<Tensor>{kernels::dropout_backward(g, p, seed, offset)};
                });
}

// The gradients are computed in the same pass as the loss (the logits are
// gone afterwards); backward only scales them by the incoming dL/dloss.
Var linear_cross_entropy(const Var& h, const Var& w, const Tensor& labels, int64_t chunk_rows) {
  const Tensor &hv = h.value(), &wv = w.value();
  NQ_CHECK(hv.ndim() >= 1 && wv.ndim() == 2 && hv.size(-1) == wv.size(1), "linear_cross_entropy: h ",
           hv.shape().str(), " and w ", wv.shape().str(), " disagree on D");
  NQ_CHECK(wv.size(1) > 0, "linear_cross_entropy: D must be positive, w is ", wv.shape().str());
  int64_t D = wv.size(1);
  bool need_h = grad_enabled() && needs_grad(h), need_w = grad_enabled() && needs_grad(w);
  Tensor grad_h, grad_w;
  int64_t count = 0;
  float loss = kernels::linear_cross_entropy(hv.view({hv.numel() / D, D}), wv, labels, chunk_rows,
                                             need_h ? &grad_h : nullptr, need_w ? &grad_w : nullptr, &count);
  Shape h_shape = hv.shape();
  return record("linear_cross_entropy", Tensor::full({1}, loss, hv.device()), {h, w},  // f32 loss
                [grad_h, grad_w, h_shape](const Tensor& g) {
                  float s = scalar_value(g);
                  return std::vector<Tensor>{grad_h.defined() ? kernels::scale(grad_h, s).view(h_shape) : Tensor(),
                                             grad_w.defined() ? kernels::scale(grad_w, s) : Tensor()};
                });
}

}  // namespace nq
