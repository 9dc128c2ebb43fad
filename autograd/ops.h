// Differentiable ops over Vars. Each op = a forward (kernels/kernels.h) and a
// backward lambda (its derivative), recorded with record() in autograd/var.h.
// Shapes as in kernels/kernels.h.
#pragma once
#include <memory>

#include "autograd/var.h"
#include "kernels/rope_table.h"
#include "quant/nf4.h"

namespace nq {

Var add(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var scale(const Var& a, float s);
Var sum(const Var& a);                        // -> [1]
Var mean(const Var& a);                       // -> [1]
Var reshape(const Var& a, Shape shape);       // a view, gradient reshaped back
Var matmul(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);
Var linear(const Var& x, const Var& w, const Var& bias = Var());  // x [N, in], w [out, in] -> x w^T + b
Var add_bias(const Var& y, const Var& bias);  // y [..., out] + bias [out] (for NF4 / LoRA bases)
// x [..., in] -> x W^T [..., out] for a frozen NF4 weight W [out, in] (kernels::nf4_matmul,
// backward nf4_matmul_dx): gradient for x only. Here, not in quant/: quant/ holds the codec,
// below kernels/; an op over Vars sits above both. w is kept alive by the backward.
Var nf4_linear(const Var& x, std::shared_ptr<const Nf4Tensor> w);
// Rows of x [M, in] grouped by expert (rows [offsets[e], offsets[e+1]) are expert e's) ->
// [M, out], each expert's rows times its own frozen NF4 weight W_e^T: one
// kernels::nf4_grouped_matmul each way (a MoE layer's experts in one GPU launch).
Var nf4_grouped_linear(const Var& x, std::vector<std::shared_ptr<const Nf4Tensor>> w, std::vector<int64_t> offsets);
Var embedding(const Var& table, const Tensor& ids);
// Rows of x by index: x [N, D], index [M] i32 in [0, N) -> [M, D]; the gradient scatters
// back and adds where an index repeats (the embedding's kernels, with x as the table).
Var gather_rows(const Var& x, const Tensor& index);
// The mixture-of-experts router's top-k softmax (kernels::moe_route_forward): logits [N, E]
// -> routing weights [N, k], the chosen experts [N, k] i32 into *experts (no gradient).
Var moe_route(const Var& logits, int64_t k, bool renormalize, Tensor* experts);
Var rmsnorm(const Var& x, const Var& w, float eps);
Var rope(const Var& x, const Tensor& positions, const RopeTable& table);
Var swiglu(const Var& gate, const Var& up);
Var attention(const Var& q, const Var& k, const Var& v, int64_t B, int64_t T, const Tensor& segment_ids = Tensor());
Var dropout(const Var& x, float p);           // reserves its mask from the RNG stream; identity when p == 0
// lm_head + cross-entropy (mean over labels != kernels::kIgnoreIndex) -> [1]. w may be the tied embedding.
Var linear_cross_entropy(const Var& h, const Var& w, const Tensor& labels, int64_t chunk_rows = 1024);

}  // namespace nq
