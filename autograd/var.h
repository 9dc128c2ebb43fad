// Reverse-mode autograd, micrograd-style, over Tensors.
//
// A Var holds a value, a gradient and, when it was produced by an op while
// grad mode was on, the Node that made it. A Node remembers its input Vars and
// a backward function: given dL/d(output) it returns dL/d(input) for each
// input. backward(loss) walks the graph from the loss in reverse topological
// order, sums the gradients flowing into each Var, and adds the result into
// the .grad of every leaf that requires grad (so two backward calls
// accumulate). That is the whole engine; every op (autograd/ops.h) is a forward
// function plus a backward lambda passed to record().
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/offload.h"
#include "runtime/tensor.h"

namespace nq {

struct Node;

struct VarImpl {
  Tensor value;
  Tensor grad;                 // leaves: accumulated across backward() calls
  bool requires_grad = false;
  std::shared_ptr<Node> node;  // null for leaves and for values made under no_grad
  std::string name;            // parameters carry their checkpoint name
};

class Var {
 public:
  Var() = default;
  explicit Var(Tensor value, bool requires_grad = false, std::string name = "");

  bool defined() const { return impl_ != nullptr; }
  const Tensor& value() const { return impl_->value; }
  const Tensor& grad() const { return impl_->grad; }
  bool requires_grad() const { return impl_->requires_grad; }
  const std::string& name() const { return impl_->name; }
  const Shape& shape() const { return impl_->value.shape(); }
  bool is_leaf() const { return impl_->node == nullptr; }

  Var detach() const;  // same value, no history, no grad
  void zero_grad() { impl_->grad = Tensor(); }
  void set_value(Tensor t) { impl_->value = std::move(t); }  // optimizer updates
  VarImpl* impl() const { return impl_.get(); }

 private:
  friend Var record(const char*, Tensor, std::vector<Var>, std::function<std::vector<Tensor>(const Tensor&)>);
  friend void backward(const Var&, Tensor);
  std::shared_ptr<VarImpl> impl_;
};

// Given dL/d(output), returns one tensor per input (undefined = no gradient).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

struct Node {
  std::string op;            // op name, for error messages
  std::vector<Var> inputs;
  BackwardFn backward;
};

// Wraps an op's output. Records a Node when grad mode is on and any input
// requires grad; otherwise the backward function (and what it saved) is dropped.
Var record(const char* op, Tensor output, std::vector<Var> inputs, BackwardFn backward);

// Anomaly detection (train --detect-anomaly, like torch.autograd.detect_anomaly):
// while a DetectAnomaly is alive, every op's output (in record(), grad mode or not)
// and every gradient a backward function returns is checked for NaN and Inf, and
// the first non-finite one throws AnomalyError naming the op, what was non-finite
// and the op's named inputs: a layer's parameters (model.layers.3.input_layernorm.weight,
// ...lora_A.weight), so the message says where in the model it appeared. It costs a
// host copy of every op output (off by default).
struct AnomalyError : Error {
  using Error::Error;
};
class DetectAnomaly {
 public:
  explicit DetectAnomaly(bool on = true);
  ~DetectAnomaly();
  DetectAnomaly(const DetectAnomaly&) = delete;
  DetectAnomaly& operator=(const DetectAnomaly&) = delete;

 private:
  bool prev_;
};
bool anomaly_detection_enabled();

// dL/d(root) = grad_root (default: 1 for a one-element root). Frees the graph
// it walks (saved tensors are released as soon as their node has run).
void backward(const Var& root, Tensor grad_root = Tensor());

// Grad mode: on by default; NoGrad turns it off for its scope (thread-local).
bool grad_enabled();
class NoGrad {
 public:
  NoGrad();
  ~NoGrad();
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;
 private:
  bool prev_;
};

// Train/eval mode: eval (off) by default; TrainingMode turns training on for
// its scope (thread-local), as model.train() / model.eval() in PyTorch. What
// differs between training and inference reads it (LoRA dropout is applied
// only in training: lora/lora_linear.cpp), so every program computes in eval
// mode unless it trains: the trainer sets it around its training steps' forward
// and backward only (training/trainer.h), not around its evaluation.
bool is_training();
class TrainingMode {
 public:
  explicit TrainingMode(bool training = true);  // TrainingMode(false): eval inside a training scope
  ~TrainingMode();
  TrainingMode(const TrainingMode&) = delete;
  TrainingMode& operator=(const TrainingMode&) = delete;
 private:
  bool prev_;
};

// Gradient checkpointing: runs fn(inputs) without recording, keeps only the
// inputs, and during backward re-runs fn with recording on to get the
// gradients. The RNG position (runtime/rng.h) and the train/eval mode of the
// forward are restored for the re-run (whatever mode backward() runs in), so
// dropout masks are identical; gradients equal those of fn run directly.
// Parameters that fn uses (captured leaves) receive their gradients as usual.
// With an offload (runtime/offload.h), the inputs' values move to host memory once
// fn has run and come back when the backward needs them: the Vars given as inputs
// hold no value in between, so the caller passes them on and does not read them
// (the decoder's layer inputs, ./train --offload-activations).
Var checkpoint(const std::function<Var(const std::vector<Var>&)>& fn, const std::vector<Var>& inputs,
               const std::shared_ptr<HostOffload>& offload = nullptr);

// Sequence chunking: fn (row-wise: row i of its output depends on row i of x only,
// and x [N, ...] -> [N, ...]) applied to rows [0, C), [C, 2C), ... of x, each chunk
// run without recording and re-run in backward, one chunk at a time, so no
// temporary of fn is larger than C rows (the decoder's MLP, --mlp-chunk-rows).
// The RNG position of each chunk is restored for its re-run, as in checkpoint().
// The result is fn(x) up to the reduction order of what fn sums over rows (the
// gradients of its parameters are summed chunk by chunk).
Var checkpoint_rows(const std::function<Var(const Var&)>& fn, const Var& x, int64_t chunk_rows);

// Row segments: fn(s, rows) applied to rows [offsets[s], offsets[s+1]) of x, for each s
// (empty segments skipped; fn(s, .) may differ per segment, and must keep the rows), the
// outputs stacked in order: [N, ...]. Each segment is its own graph, kept (not recomputed)
// until the node's backward runs it with that segment's rows of the incoming gradient,
// so x's gradient is written slice by slice, never summed from full-size pieces: the
// mixture-of-experts block runs expert s on the tokens routed to it this way (model/moe.h).
// offsets: S+1 non-decreasing values from 0 to N.
Var row_segments(const Var& x, const std::vector<int64_t>& offsets,
                 const std::function<Var(size_t segment, const Var& rows)>& fn);

}  // namespace nq
