#include "autograd/var.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include "kernels/kernels.h"
#include "runtime/rng.h"

namespace nq {

static thread_local bool g_grad_enabled = true;
bool grad_enabled() { return g_grad_enabled; }
NoGrad::NoGrad() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGrad::~NoGrad() { g_grad_enabled = prev_; }

static thread_local bool g_training = false;
bool is_training() { return g_training; }
TrainingMode::TrainingMode(bool training) : prev_(g_training) { g_training = training; }
TrainingMode::~TrainingMode() { g_training = prev_; }

static thread_local bool g_detect_anomaly = false;
bool anomaly_detection_enabled() { return g_detect_anomaly; }
DetectAnomaly::DetectAnomaly(bool on) : prev_(g_detect_anomaly) { g_detect_anomaly = on; }
DetectAnomaly::~DetectAnomaly() { g_detect_anomaly = prev_; }

// Throws AnomalyError when the float tensor t holds NaN or Inf; `what` says whose
// value it is ("the output of op rmsnorm"), `inputs` the op's inputs.
static void check_finite(const Tensor& t, const std::string& what, const std::vector<Var>& inputs) {
  if (!t.defined() || !(t.dtype() == DType::F32 || t.dtype() == DType::BF16 || t.dtype() == DType::F16)) return;
  const std::vector<float> x = t.to(Device::CPU).to_vector();
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i]) && bad++ == 0) first = int64_t(i);
  if (bad == 0) return;
  std::string named;
  for (const Var& v : inputs)
    if (v.defined() && !v.name().empty()) named += (named.empty() ? "" : ", ") + v.name();
  throw AnomalyError(str("anomaly: ", what, " ", t.desc(), " holds ", bad, " non-finite values (the first, ",
                         x[size_t(first)], ", at element ", first, ")",
                         named.empty() ? std::string() : "; the op's parameters: " + named));
}

Var::Var(Tensor value, bool requires_grad, std::string name) : impl_(std::make_shared<VarImpl>()) {
  impl_->value = std::move(value);
  impl_->requires_grad = requires_grad;
  impl_->name = std::move(name);
}

Var Var::detach() const { return Var(impl_->value, false, impl_->name); }

// Set when an op ran under NoGrad with an input that requires grad: checkpoint()
// uses it to learn whether its function reaches trainable parameters.
static thread_local bool g_saw_requires_grad = false;
static thread_local bool g_force_record = false;

Var record(const char* op, Tensor output, std::vector<Var> inputs, BackwardFn backward_fn) {
  if (g_detect_anomaly) check_finite(output, str("the output of op ", op), inputs);
  Var out(std::move(output));
  bool any = g_force_record;
  for (const Var& v : inputs) any = any || (v.defined() && v.requires_grad());
  if (!g_grad_enabled) {
    g_saw_requires_grad = g_saw_requires_grad || any;
    return out;
  }
  if (!any) return out;
  out.impl_->requires_grad = true;
  out.impl_->node = std::make_shared<Node>(Node{op, std::move(inputs), std::move(backward_fn)});
  return out;
}

// dst += g, or dst = g when dst is empty (first contribution: no copy).
static void accumulate(Tensor& dst, const Tensor& g, const char* what) {
  if (!dst.defined()) { dst = g; return; }
  NQ_CHECK(dst.shape() == g.shape(), "backward: gradient of ", what, " has shape ", g.shape().str(),
           " but earlier contributions have ", dst.shape().str());
  if (dst.shares_storage(g)) dst = dst.clone();  // never add into a tensor someone else owns
  kernels::add_inplace(dst, g);
}

void backward(const Var& root, Tensor grad_root) {
  NQ_CHECK(root.defined(), "backward: undefined root");
  if (!grad_root.defined()) {
    NQ_CHECK(root.value().numel() == 1, "backward: root ", root.value().desc(),
             " is not a scalar; pass its gradient explicitly");
    grad_root = Tensor::full(root.shape(), 1.0f, root.value().device());
    if (root.value().dtype() != DType::F32) grad_root = grad_root.to(Device::CPU).to_dtype(root.value().dtype()).to(root.value().device());
  }
  NQ_CHECK(grad_root.shape() == root.shape(), "backward: gradient ", grad_root.desc(), " for root ", root.value().desc());

  // Topological order of the nodes' outputs (iterative DFS: graphs can be deep).
  // `order` owns its VarImpls: running a node frees it, and with it the last
  // reference to its inputs, which are visited later in the loop below.
  std::vector<std::shared_ptr<VarImpl>> order;
  std::unordered_set<VarImpl*> seen;
  std::vector<std::pair<std::shared_ptr<VarImpl>, size_t>> stack{{root.impl_, 0}};
  seen.insert(root.impl());
  while (!stack.empty()) {
    auto& [v, next] = stack.back();
    if (v->node && next < v->node->inputs.size()) {
      const std::shared_ptr<VarImpl>& in = v->node->inputs[next++].impl_;
      if (in && in->requires_grad && !seen.count(in.get())) {
        seen.insert(in.get());
        stack.push_back({in, 0});
      }
      continue;
    }
    order.push_back(std::move(v));
    stack.pop_back();
  }

  // Non-leaf gradients live only here; leaves accumulate into VarImpl::grad.
  std::unordered_map<VarImpl*, Tensor> grads;
  grads[root.impl()] = grad_root;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    std::shared_ptr<VarImpl> owner = std::move(*it);  // released after this step
    VarImpl* v = owner.get();
    auto g = grads.find(v);
    if (g == grads.end()) continue;  // nothing flowed here
    Tensor gout = std::move(g->second);
    grads.erase(g);
    if (!v->node) {  // leaf
      accumulate(v->grad, gout, v->name.empty() ? "a leaf" : v->name.c_str());
      continue;
    }
    std::shared_ptr<Node> node = std::move(v->node);  // frees the graph as we go
    NQ_CHECK(node->backward, "backward: node ", node->op, " was already run (graphs are freed after backward)");
    std::vector<Tensor> gin = node->backward(gout);
    NQ_CHECK(gin.size() == node->inputs.size(), "backward: op ", node->op, " returned ", gin.size(),
             " gradients for ", node->inputs.size(), " inputs");
    for (size_t i = 0; i < gin.size(); ++i) {
      VarImpl* in = node->inputs[i].impl();
      if (!in || !in->requires_grad || !gin[i].defined()) continue;
      if (g_detect_anomaly)
        check_finite(gin[i], str("the gradient that op ", node->op, "'s backward gives its input ", i), node->inputs);
      NQ_CHECK(gin[i].shape() == in->value.shape(), "backward: op ", node->op, " gave input ", i, " a gradient ",
               gin[i].desc(), " for a value ", in->value.desc());
      accumulate(grads[in], gin[i], node->op.c_str());
    }
    node->backward = nullptr;
  }
}

Var checkpoint(const std::function<Var(const std::vector<Var>&)>& fn, const std::vector<Var>& inputs,
               const std::shared_ptr<HostOffload>& offload) {
  if (!g_grad_enabled) return fn(inputs);
  RngState rng_at_start = rng_state();
  const bool training_at_start = g_training;
  Tensor out;
  bool saw_outer = g_saw_requires_grad;
  g_saw_requires_grad = false;
  {
    NoGrad ng;
    out = fn(inputs).value();
  }
  // Record even when no input requires grad if fn uses trainable parameters
  // (the first decoder layer: its input comes from the frozen embedding).
  bool needs_node = g_saw_requires_grad;
  g_saw_requires_grad = saw_outer;
  // The inputs' values wait in host memory (the Var keeps its place in the graph).
  std::vector<HostOffload::Handle> parked;
  if (offload)
    for (const Var& v : inputs) {
      parked.push_back(offload->store(v.value()));
      v.impl()->value = Tensor();
    }
  g_force_record = needs_node;
  auto finish = [&](Var v) { g_force_record = false; return v; };
  return finish(record("checkpoint", out, inputs,
                       [fn, inputs, rng_at_start, training_at_start, offload, parked](const Tensor& gout) {
    // Bring the inputs back (the Vars hold them again: backward() checks shapes against them).
    for (size_t i = 0; i < parked.size(); ++i) inputs[i].impl()->value = offload->load(parked[i]);
    // Re-run with fresh leaves standing in for the inputs, then backprop through it,
    // from the forward's RNG position and in its mode (the same dropout masks).
    std::vector<Var> fresh;
    for (const Var& v : inputs) fresh.emplace_back(v.value(), v.requires_grad());
    RngState rng_now = rng_state();
    rng_state() = rng_at_start;
    Var y;
    {
      TrainingMode forward_mode(training_at_start);
      y = fn(fresh);
    }
    rng_state() = rng_now;
    std::vector<Tensor> gin(inputs.size());
    if (y.requires_grad()) {
      backward(y, gout);
      for (size_t i = 0; i < fresh.size(); ++i) gin[i] = fresh[i].grad();
    }
    return gin;
  }));
}

Var checkpoint_rows(const std::function<Var(const Var&)>& fn, const Var& x, int64_t chunk_rows) {
  NQ_CHECK(x.defined() && x.value().ndim() >= 1, "checkpoint_rows: x must have rows");
  const int64_t N = x.shape()[0];
  if (chunk_rows <= 0 || chunk_rows >= N) return fn(x);  // one chunk: fn itself
  const bool training_at_start = g_training;
  std::vector<RngState> rng_at;  // each chunk's RNG position
  bool saw_outer = g_saw_requires_grad;
  g_saw_requires_grad = false;
  Tensor out;  // [N, ...]: the chunks' outputs, written in place
  {
    NoGrad ng;
    for (int64_t begin = 0; begin < N; begin += chunk_rows) {
      const int64_t end = std::min(N, begin + chunk_rows);
      rng_at.push_back(rng_state());
      const Tensor y = fn(Var(x.value().slice(begin, end))).value();
      NQ_CHECK(y.defined() && y.ndim() >= 1 && y.size(0) == end - begin, "checkpoint_rows: fn gave ",
               y.defined() ? y.desc() : "nothing", " for ", end - begin, " rows (it must keep the rows)");
      if (!out.defined()) {
        Shape shape = y.shape();
        shape.dims[0] = N;
        out = Tensor::empty(shape, y.dtype(), y.device());
      }
      out.slice(begin, end).copy_from(y);
    }
  }
  // As in checkpoint(): a node when fn reaches trainable parameters; the flag stays set
  // for an enclosing checkpoint's forward (this may run inside one, under NoGrad).
  const bool needs_node = g_saw_requires_grad;
  g_saw_requires_grad = saw_outer || needs_node;
  g_force_record = needs_node && g_grad_enabled;
  auto finish = [&](Var v) { g_force_record = false; return v; };
  return finish(record("checkpoint_rows", out, {x}, [fn, x, chunk_rows, rng_at, training_at_start](const Tensor& gout) {
    const Tensor xv = x.value();
    const int64_t rows = xv.size(0);
    Tensor gx;  // [N, ...], filled chunk by chunk
    const RngState rng_now = rng_state();
    for (int64_t begin = 0, c = 0; begin < rows; begin += chunk_rows, ++c) {
      const int64_t end = std::min(rows, begin + chunk_rows);
      Var fresh(xv.slice(begin, end), x.requires_grad());
      rng_state() = rng_at[size_t(c)];
      Var y;
      {
        TrainingMode forward_mode(training_at_start);
        y = fn(fresh);
      }
      if (!y.requires_grad()) continue;
      backward(y, gout.slice(begin, end));
      if (!fresh.grad().defined()) continue;
      if (!gx.defined()) gx = Tensor::zeros(xv.shape(), fresh.grad().dtype(), xv.device());
      gx.slice(begin, end).copy_from(fresh.grad());
    }
    rng_state() = rng_now;
    return std::vector<Tensor>{gx};
  }));
}

Var row_segments(const Var& x, const std::vector<int64_t>& offsets,
                 const std::function<Var(size_t segment, const Var& rows)>& fn) {
  NQ_CHECK(x.defined() && x.value().ndim() >= 1, "row_segments: x must have rows");
  const int64_t N = x.shape()[0];
  NQ_CHECK(offsets.size() >= 2 && offsets.front() == 0 && offsets.back() == N, "row_segments: offsets must run from 0 to ",
           N, " (", offsets.size(), " given)");
  const size_t S = offsets.size() - 1;
  std::vector<Var> rows(S), outs(S);  // each segment's leaf and output, kept for backward when it records
  Tensor out;                          // [N, ...]
  bool any_graph = false;
  for (size_t s = 0; s < S; ++s) {
    const int64_t begin = offsets[s], end = offsets[s + 1];
    NQ_CHECK(begin <= end, "row_segments: offsets must not decrease (segment ", s, ": ", begin, " > ", end, ")");
    if (begin == end) continue;
    Var leaf(x.value().slice(begin, end), x.requires_grad());
    Var y = fn(s, leaf);
    NQ_CHECK(y.defined() && y.value().ndim() >= 1 && y.shape()[0] == end - begin, "row_segments: fn gave ",
             y.defined() ? y.value().desc() : "nothing", " for ", end - begin, " rows (it must keep the rows)");
    if (!out.defined()) {
      Shape shape = y.shape();
      shape.dims[0] = N;
      out = Tensor::empty(shape, y.value().dtype(), y.value().device());
    }
    out.slice(begin, end).copy_from(y.value());
    if (g_grad_enabled && y.requires_grad()) {
      rows[s] = leaf;
      outs[s] = y;
      any_graph = true;
    }
  }
  NQ_CHECK(out.defined(), "row_segments: no rows");
  // A node when a segment reached trainable parameters, even if x needs no gradient (as in
  // checkpoint(): the experts' LoRA weights behind a frozen input). Under NoGrad the ops
  // inside fn have already noted what they saw.
  g_force_record = any_graph;
  auto finish = [&](Var v) { g_force_record = false; return v; };
  const Shape x_shape = x.shape();
  return finish(record("row_segments", out, {x}, [rows, outs, offsets, x_shape](const Tensor& gout) {
    Tensor gx;  // [N, ...], written segment by segment
    for (size_t s = 0; s < outs.size(); ++s) {
      if (!outs[s].defined()) continue;
      backward(outs[s], gout.slice(offsets[s], offsets[s + 1]));
      const Tensor& g = rows[s].grad();
      if (!g.defined()) continue;
      if (!gx.defined()) gx = Tensor::zeros(x_shape, g.dtype(), g.device());
      gx.slice(offsets[s], offsets[s + 1]).copy_from(g);
    }
    return std::vector<Tensor>{gx};
  }));
}

}  // namespace nq
