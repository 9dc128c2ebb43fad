// The CUDA side of kernels/kernels.h, in namespace nq::kernels::cuda: one
// function per kernels.h op, with its meaning (documented there, once) and its
// signature, except that the NF4 ops take the weight's device view (Nf4Weight,
// below) and the AdamW update raw device spans and a cudaStream_t. Each is
// implemented in the kernels/cuda/*.cu file of its op. Only
// kernels/dispatch.cpp calls these (and the GPU tests); it checks the
// arguments first, so they assume checked input and re-check only what the
// dispatch cannot: ids/labels on the device, the dtypes below. What is GPU-only
// is documented here: the dtypes, the NF4 weight's device view, the streams.
//
// Dtypes on the GPU. "T" below is f32, bf16 or f16 (activations are bf16 or f16
// in training, --dtype; f32 works everywhere too, for tests and LoRA master
// weights). All arithmetic is f32; a T output is rounded once, to nearest even.
//   elementwise, scale, sum:  T in, T out; sum returns f32 (f64 across blocks)
//   cast:                     between f32, bf16 and f16 (kernels/cuda/cast.h)
//   matmul / matmul_into:     A, B both bf16, both f16 or both f32; C the same or f32 (fp32 accumulate, cuBLASLt)
//   embedding_forward:        table T, ids i32 -> T;  embedding_backward -> f32 [V, D]
//   rmsnorm:                  x, dy, y, dx T;  w f32;  rstd f32;  grad_w f32
//   rope, swiglu, dropout:    T in, T out;  positions i32
//   moe_route:                logits, weights, grad_weights, grad_logits T;  experts i32;
//                             at most 512 experts and top-k 32 (one warp per row, in registers)
//   attention:                q, k, v, o, dO and grads T;  lse f32;  segment_ids i32
//   linear_cross_entropy:     h, w both T, labels i32; grad_h T; grad_w accumulated in its own
//                             dtype when defined, else allocated as f32 zeros [V, D]
//   nf4_matmul / _dx:         x (dy), the low-rank a and w: T, all one dtype; output T
//   nf4_grouped_matmul / _dx, grouped_matmul: x (dy), a, w T; output T; at most 65535 row
//                             tiles of 64 (over all experts)
//   grouped_weight_grad:      a, b T; output f32
//   nf4_dequantize:           f32, bf16 or f16
//   lora_nf4:                 x, dy, A, B, u, dx T; grad_a, grad_b f32
//   adamw_update, global_grad_norm: f32 only
// Backward functions allocate the gradient tensors they are given pointers to.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cuda/nf4.h"
#include "kernels/kernels.h"
#include "runtime/tensor.h"

namespace nq::kernels::cuda {

// The structs and enums of kernels.h's NF4 / LoRA ops, also under this namespace.
using kernels::LoraParams;
using kernels::LowRankTerm;
using kernels::Nf4MatmulPath;

// ---- the generic ops (kernels.h, same order) ---------------------------------
void add_inplace(Tensor& dst, const Tensor& src);
Tensor add(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, float s);
float sum(const Tensor& a);
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
void matmul_into(Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, bool accumulate);
Tensor embedding_forward(const Tensor& table, const Tensor& ids);
Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t V);
Tensor rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor* rstd);
void rmsnorm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor* grad_x, Tensor* grad_w);
Tensor rope_forward(const Tensor& x, const Tensor& positions, const RopeTable& table);
Tensor rope_backward(const Tensor& grad_y, const Tensor& positions, const RopeTable& table);
Tensor swiglu_forward(const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& grad_y, const Tensor& gate, const Tensor& up, Tensor* grad_gate, Tensor* grad_up);
// experts is never null here.
Tensor moe_route_forward(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts);
Tensor moe_route_backward(const Tensor& grad_weights, const Tensor& logits, const Tensor& experts,
                          const Tensor& weights, bool renormalize);
// rstd / lse are never null here (the dispatch passes a local when the caller gives none).
Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int64_t B, int64_t T,
                         const Tensor& segment_ids, Tensor* lse);
void attention_backward(const Tensor& grad_o, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& o, const Tensor& lse, int64_t B, int64_t T, const Tensor& segment_ids,
                        Tensor* grad_q, Tensor* grad_k, Tensor* grad_v);
// count is never null here.
float linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& labels, int64_t chunk_rows,
                           Tensor* grad_h, Tensor* grad_w, int64_t* count);
Tensor dropout_forward(const Tensor& x, float p, uint64_t seed, uint64_t offset);
Tensor dropout_backward(const Tensor& grad_y, float p, uint64_t seed, uint64_t offset);

// ---- NF4 weights: the device view (layout: kernels/cuda/nf4.h) ---------------
// The kernels read an NF4 weight as plain device pointers (Nf4Weight). The one
// place that maps an Nf4Tensor's fields to that view (nf4_device.cu): every
// tensor of w must be on the GPU (errors name the one still on the cpu). The
// view is valid while w's tensors live.
Nf4Weight nf4_device_view(const Nf4Tensor& w);
// An Nf4Tensor (quant/nf4.h) copied to the GPU as is, with its view (for tests).
struct Nf4DeviceTensor {
  Tensor packed, absmax, nested_absmax, nested_code;
  Nf4Weight view;
};
Nf4DeviceTensor nf4_to_device(const Nf4Tensor& q);

// ---- NF4 matmuls (nf4_matmul.cu, nf4_dequantize.cu) -----------------------
// Allocated in `category` (the matmuls' own copy of W is Workspace).
Tensor nf4_dequantize(const Nf4Weight& w, DType dtype, MemCategory category = MemCategory::Activations);
// The two ways (nf4.h says which Auto picks by M):
//   Fused        W dequantized inside the kernel: the GEMV for M <= 16 (multiplies in
//                f32), else the tensor-core GEMM (16-bit tiles: x's dtype, bf16 for f32 x)
//   Dequantized  W dequantized to x's dtype into a workspace [out, in], then cuBLASLt
// The low-rank term: Fused, r more steps of the same reduction (y written once);
// Dequantized, a second cuBLASLt product accumulated into y (beta = 1).
Tensor nf4_matmul(const Tensor& x, const Nf4Weight& w, const LowRankTerm* extra = nullptr,
                  Nf4MatmulPath path = Nf4MatmulPath::Auto);
Tensor nf4_matmul_dx(const Tensor& dy, const Nf4Weight& w, const LowRankTerm* extra = nullptr,
                     Nf4MatmulPath path = Nf4MatmulPath::Auto);

// ---- the grouped NF4 matmul of a MoE layer's experts (nf4_grouped_matmul.cu) ----
// Every expert's rows in one launch; w[e] is expert e's device view (all one shape),
// offsets the E + 1 row bounds, extra the bypass (or null); transposed: the input gradient.
Tensor nf4_grouped_matmul(const Tensor& x, const std::vector<Nf4Weight>& w, const std::vector<int64_t>& offsets,
                          const GroupedLowRankTerm* extra, bool transposed);
// The same tiles with no NF4 part: y_e = s_e a_e w_e^T (or a_e w_e), the LoRA factors.
Tensor grouped_matmul(const Tensor& a, const std::vector<Tensor>& w, const std::vector<int64_t>& offsets, bool trans_w,
                      const std::vector<float>& scales);
// g [E, p, q] f32 = s_e a_e^T b_e (grouped_weight_grad.cu).
Tensor grouped_weight_grad(const Tensor& a, const Tensor& b, const std::vector<int64_t>& offsets,
                           const std::vector<float>& scales);

// ---- LoRA over an NF4 base (lora.cu) ------------------------------------------
// Forward: u (cuBLASLt), then one NF4 GEMM pass that adds s u B^T. Backward:
// dB and dA are cuBLASLt products with alpha = s; dx's bypass term rides in the
// NF4 dx GEMM when dropout = 0, else dx = dy W, then += dropout_backward(s v A).
Tensor lora_nf4_forward(const Tensor& x, const Nf4Weight& w, const LoraParams& lora, Tensor* u);
void lora_nf4_backward(const Tensor& dy, const Tensor& x, const Tensor& u, const Nf4Weight& w, const LoraParams& lora,
                       Tensor* dx, Tensor* grad_a, Tensor* grad_b);

// ---- optimizer (adamw_span.cu, grad_norm.cu) -----------------------------------
// The AdamW update over n f32 device elements each, launched asynchronously on
// `stream` (a cudaStream_t; null = the default stream).
void adamw_update_span(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                       const AdamWScalars& s, float grad_scale, void* stream);
// One multi-tensor launch over every tensor, chunked.
double global_grad_norm(const std::vector<Tensor>& grads);

}  // namespace nq::kernels::cuda
