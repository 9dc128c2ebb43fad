// The mixture-of-experts block (see moe.h for the math).
#include "model/moe.h"

#include <algorithm>
#include <cmath>

#include "autograd/ops.h"
#include "kernels/kernels.h"
#include "lora/lora_linear.h"

namespace nq {

ExpertGrouping group_by_expert(const std::vector<int32_t>& experts, int64_t N, int64_t k, int64_t E) {
  NQ_CHECK(int64_t(experts.size()) == N * k, "group_by_expert: ", experts.size(), " choices for ", N, " tokens x ", k);
  ExpertGrouping g;
  g.offsets.assign(size_t(E + 1), 0);
  for (int32_t e : experts) {
    NQ_CHECK(e >= 0 && e < E, "group_by_expert: expert ", e, " outside [0, ", E, ")");
    ++g.offsets[size_t(e) + 1];
  }
  for (int64_t e = 0; e < E; ++e) g.offsets[size_t(e + 1)] += g.offsets[size_t(e)];
  std::vector<int64_t> next(g.offsets.begin(), g.offsets.end() - 1);  // the next free row of each expert
  g.token_of_row.resize(size_t(N * k));
  g.row_of_slot.resize(size_t(N * k));
  for (int64_t slot = 0; slot < N * k; ++slot) {  // slot = n*k + j, in order: stable by token, then choice
    const int64_t row = next[size_t(experts[size_t(slot)])]++;
    g.token_of_row[size_t(row)] = int32_t(slot / k);
    g.row_of_slot[size_t(slot)] = int32_t(row);
  }
  return g;
}

RouterLoss::RouterLoss(int64_t num_experts, int64_t top_k, std::vector<uint8_t> counted)
    : E_(num_experts), k_(top_k), counted_(std::move(counted)), choices_(size_t(num_experts)),
      prob_sum_(size_t(num_experts)) {}

namespace {
// Row n's softmax in double, from a host f32 copy of the logits.
void softmax_row(const float* logits, int64_t E, std::vector<double>& p) {
  double max = logits[0], sum = 0;
  for (int64_t e = 1; e < E; ++e) max = std::max(max, double(logits[e]));
  for (int64_t e = 0; e < E; ++e) sum += p[size_t(e)] = std::exp(double(logits[e]) - max);
  for (double& v : p) v /= sum;
}
// A host f32 copy (the statistics are a few numbers per row; the GPU's [N, E] comes over).
Tensor host_f32(const Tensor& t) {
  Tensor h = t.device() == Device::CPU ? t : t.to(Device::CPU);
  return h.dtype() == DType::F32 ? h : h.to_dtype(DType::F32);
}
}  // namespace

Var RouterLoss::tap(const Var& logits) {
  const Tensor lv = logits.value();
  std::shared_ptr<const RouterLoss> self = shared_from_this();  // the graph keeps the statistics
  return record("router_loss_tap", lv, {logits}, [self, lv](const Tensor& g) {
    if (self->grad_ == 0.0f) return std::vector<Tensor>{g};
    return std::vector<Tensor>{kernels::add(g, self->logits_grad(lv))};
  });
}

void RouterLoss::add_layer(const Tensor& logits, const Tensor& chosen) {
  const int64_t N = logits.size(0);
  NQ_CHECK(logits.ndim() == 2 && logits.size(1) == E_ && int64_t(counted_.size()) == N, "router loss: logits ",
           logits.shape().str(), " for ", counted_.size(), " rows of ", E_, " experts");
  if (sealed_) return;  // a checkpointed layer's re-run in backward
  const Tensor l = host_f32(logits), c = chosen.device() == Device::CPU ? chosen : chosen.to(Device::CPU);
  const float* lp = l.data<float>();
  const int32_t* cp = c.data<int32_t>();
  std::vector<double> p(static_cast<size_t>(E_));
  for (int64_t n = 0; n < N; ++n) {
    if (!counted_[size_t(n)]) continue;
    softmax_row(lp + n * E_, E_, p);
    for (int64_t e = 0; e < E_; ++e) prob_sum_[size_t(e)] += p[size_t(e)];
    for (int64_t j = 0; j < k_; ++j) choices_[size_t(cp[n * k_ + j])] += 1;
    rows_ += 1;
  }
}

Tensor RouterLoss::logits_grad(const Tensor& logits) const {
  const Tensor l = host_f32(logits);
  const int64_t N = l.size(0);
  Tensor out = Tensor::zeros({N, E_});
  const float* lp = l.data<float>();
  float* gp = out.data<float>();
  const double scale = double(grad_) * double(E_) / (rows_ * rows_);
  std::vector<double> p(static_cast<size_t>(E_));
  for (int64_t n = 0; n < N; ++n) {
    if (!counted_[size_t(n)]) continue;
    softmax_row(lp + n * E_, E_, p);
    double cp = 0;  // sum_e c_e p_e
    for (int64_t e = 0; e < E_; ++e) cp += choices_[size_t(e)] * p[size_t(e)];
    for (int64_t i = 0; i < E_; ++i) gp[n * E_ + i] = float(scale * p[size_t(i)] * (choices_[size_t(i)] - cp));
  }
  if (logits.dtype() != DType::F32) out = out.to_dtype(logits.dtype());
  return out.to(logits.device());
}

Var RouterLoss::loss(const Var& anchor) {
  sealed_ = true;
  double aux = 0;
  if (rows_ > 0)
    for (int64_t e = 0; e < E_; ++e) aux += (choices_[size_t(e)] / rows_) * (prob_sum_[size_t(e)] / rows_);
  aux *= double(E_);
  return record("router_loss", Tensor::full({1}, float(aux), anchor.value().device()), {anchor},
                [self = shared_from_this()](const Tensor& g) {
                  self->grad_ = g.to_vector()[0];
                  return std::vector<Tensor>{Tensor()};
                });
}

namespace {
// Whether one projection of every expert can run as one grouped op: every base NF4 without
// a bias, and either no expert with an adapter or all with one of a single rank.
bool groupable(const std::vector<Linear>& proj) {
  for (const Linear& l : proj)
    if (!l.is_nf4() || l.bias().defined() || l.has_lora() != proj[0].has_lora() ||
        (l.has_lora() && l.lora().A.shape()[0] != proj[0].lora().A.shape()[0]))
      return false;
  return true;
}
// rows [N*k, in] grouped by expert -> [N*k, out] through every expert's projection at once.
Var grouped_projection(const Var& rows, const std::vector<Linear>& proj, const std::vector<int64_t>& offsets) {
  std::vector<std::shared_ptr<const Nf4Tensor>> bases;
  std::vector<const LoraLinear*> adapters;
  for (const Linear& l : proj) {
    bases.push_back(l.nf4());
    if (l.has_lora()) adapters.push_back(&l.lora());
  }
  if (adapters.empty()) return nf4_grouped_linear(rows, std::move(bases), offsets);
  return lora_grouped_linear(rows, std::move(bases), adapters, offsets);
}
}  // namespace

bool MoeExperts::grouped() const { return groupable(gate_proj) && groupable(up_proj) && groupable(down_proj); }

Var MoeExperts::forward(const Var& h, const MoeConfig& config, RouterLoss* router_loss) const {
  NQ_CHECK(h.value().ndim() == 2, "moe: h must be [N, D], got ", h.shape().str());
  const int64_t N = h.shape()[0], D = h.shape()[1], E = num_experts(), k = config.experts_per_token;
  const Device device = h.value().device();

  Var logits = linear(h, router);  // [N, E]
  if (router_loss) logits = router_loss->tap(logits);  // carries the load-balancing loss's gradient
  Tensor chosen;                                        // [N, k] i32
  Var weights = moe_route(logits, k, config.norm_topk_prob, &chosen);  // [N, k]
  if (router_loss) router_loss->add_layer(logits.value(), chosen);
  const Tensor chosen_host = device == Device::CPU ? chosen : chosen.to(Device::CPU);
  const int32_t* c = chosen_host.data<int32_t>();
  const ExpertGrouping g = group_by_expert(std::vector<int32_t>(c, c + N * k), N, k, E);

  Var grouped_rows = gather_rows(h, Tensor::from_ids(g.token_of_row, {N * k}).to(device));  // [N*k, D]
  Var outputs;                                                                           // [N*k, D]
  if (grouped()) {  // every expert in one grouped NF4 op per projection
    Var gate = grouped_projection(grouped_rows, gate_proj, g.offsets);  // [N*k, I]
    Var up = grouped_projection(grouped_rows, up_proj, g.offsets);      // [N*k, I]
    outputs = grouped_projection(swiglu(gate, up), down_proj, g.offsets);
  } else {  // expert e's Linears (dense bases, mixed adapters) on its rows, one expert at a time
    outputs = row_segments(grouped_rows, g.offsets, [this](size_t e, const Var& rows) {  // [rows_e, D]
      return down_proj[e].forward(swiglu(gate_proj[e].forward(rows), up_proj[e].forward(rows)));
    });
  }
  Var by_slot = gather_rows(outputs, Tensor::from_ids(g.row_of_slot, {N * k}).to(device));  // [N*k, D]
  Var y = matmul(reshape(weights, {N, 1, k}), reshape(by_slot, {N, k, D}));                  // [N, 1, D]
  return reshape(y, {N, D});
}

}  // namespace nq
