// The registrations of kernels/registry.h, one function per family of ops (one
// file each), and the small helpers they share. kernels/registry.cpp calls the
// functions in this order, which is the order of `./bench list`.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/registry.h"
#include "runtime/cuda_compare.h"

namespace nq::kernels::registry::family {

void register_elementwise(std::vector<Op>& ops);  // add, add_inplace, mul, sum, swiglu, dropout, scale
void register_matmul(std::vector<Op>& ops);       // matmul (and matmul_into)
void register_embedding(std::vector<Op>& ops);
void register_rmsnorm(std::vector<Op>& ops);
void register_rope(std::vector<Op>& ops);
void register_attention(std::vector<Op>& ops);
void register_cross_entropy(std::vector<Op>& ops);  // linear_cross_entropy
void register_qlora(std::vector<Op>& ops);          // nf4_matmul (+ forced ways), nf4_grouped_matmul, nf4_dequantize, lora_nf4, adamw, grad_norm
void register_moe(std::vector<Op>& ops);            // moe_route, grouped_matmul (+ grouped_weight_grad)

// A tensor's values in double (f32 or i32 host tensors).
std::vector<double> doubles(const Tensor& t);
std::vector<int32_t> ints(const Tensor& t);
// sum(a * b) in double.
double dot(const std::vector<double>& a, const std::vector<double>& b);
// The problem's inputs `x` held where the check perturbs them; the lambdas read them.
using Values = std::shared_ptr<std::vector<std::vector<double>>>;
inline Values values(std::vector<std::vector<double>> x) {
  return std::make_shared<std::vector<std::vector<double>>>(std::move(x));
}
// The rows of `tokens` grouped among `experts` (the MoE ops' inputs): E + 1 bounds, i32,
// host-only: E - 1 uniform cuts, sorted; expert 1 (when E > 2) gets no rows, so an expert
// without tokens is in every test.
Input expert_row_bounds(int64_t tokens, int64_t experts, uint64_t seed);
std::vector<int64_t> row_bounds(const Tensor& bounds);  // that input as the ops' offsets
// The grouped products in double, expert by expert (rows [bounds[e], bounds[e+1]) are expert
// e's; w holds the E weights [n, k] one after the other, expert e's scaled by scales[e]):
//   y [M, n] = s_e a_e w_e^T,  dx [M, k] = s_e dy_e w_e,  dw [E, n, k] = s_e dy_e^T a_e
struct GroupedReference {
  std::vector<double> y, dx, dw;
};
GroupedReference grouped_reference(const std::vector<double>& a, const std::vector<double>& w,
                                   const std::vector<double>& dy, const std::vector<int64_t>& bounds,
                                   const std::vector<double>& scales, int64_t n, int64_t k);
// One shape list per mode: shapes_for(mode, reference, grad, device).
inline std::vector<Dims> pick(Mode mode, std::vector<Dims> reference, std::vector<Dims> grad, std::vector<Dims> device) {
  return mode == Mode::Reference ? reference : mode == Mode::Grad ? grad : device;
}

}  // namespace nq::kernels::registry::family
