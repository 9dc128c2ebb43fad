// CUDA implementations of kernels/kernels.h, same signatures, in namespace
// nq::kernels::cuda. kernels/dispatch.cpp checks the arguments once and calls
// these for CUDA tensors; they assume checked input (and re-check only what
// the dispatch cannot: ids/labels on the device, the dtypes below). Each
// function is implemented in the kernels/cuda/*.cu file of its op. The GPU-only
// functions at the end (NF4, LoRA, gradient norm) are called directly.
//
// Dtypes on the GPU. "T" below is f32 or bf16 (activations are bf16 in
// training; f32 works everywhere too, for tests and LoRA master weights). All
// arithmetic is f32; a T output is rounded once, to nearest even.
//   elementwise, scale, sum:  T in, T out; sum returns f32 (f64 across blocks)
//   matmul / matmul_into:     A, B both bf16 or both f32; C bf16 or f32 (fp32 accumulate, cuBLASLt)
//   embedding_forward:        table T, ids i32 -> T;  embedding_backward -> f32 [V, D]
//   rmsnorm:                  x, dy, y, dx T;  w f32;  rstd f32;  grad_w f32
//   rope, swiglu, dropout:    T in, T out;  positions i32
//   attention:                q, k, v, o, dO and grads T;  lse f32;  segment_ids i32
//   linear_cross_entropy:     h, w both T, labels i32; grad_h T; grad_w accumulated in its own
//                             dtype when defined, else allocated as f32 zeros [V, D]
//   global_grad_norm: f32 only
// Backward functions allocate the gradient tensors they are given pointers to.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cuda/nf4.h"
#include "runtime/tensor.h"

namespace nq {
struct Nf4Tensor;  // quant/nf4.h
}

namespace nq::kernels::cuda {

// ---- elementwise ---------------------------------------------------------
void add_inplace(Tensor& dst, const Tensor& src);              // dst += src (same shape)
Tensor add(const Tensor& a, const Tensor& b);                  // a + b
Tensor mul(const Tensor& a, const Tensor& b);                  // a * b
Tensor scale(const Tensor& a, float s);                        // s * a
float sum(const Tensor& a);                                    // sum of all elements (fp32/fp64 accumulation)

// ---- matmul ---------------------------------------------------------------
// C = op(A) @ op(B) (+ C when accumulate), op = transpose when the flag is set.
// 2-D: A [M, K] (or [K, M] if trans_a), B [K, N] (or [N, K] if trans_b).
// 3-D: batched over the first dim (same batch for A, B, C).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
void matmul_into(Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, bool accumulate);

// ---- embedding ------------------------------------------------------------
Tensor embedding_forward(const Tensor& table, const Tensor& ids);                // [V, D], [N] -> [N, D]
Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t V);  // scatter-add -> [V, D]

// ---- RMSNorm (HF Qwen3: y = w * (x * rsqrt(mean(x^2) + eps)), stats in fp32) --
// x [N, D] (any leading dims flattened), w [D]. rstd [N] f32 is saved for backward.
Tensor rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor* rstd);
void rmsnorm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor* grad_x, Tensor* grad_w);  // grad_w: summed over N; null = skip

// ---- RoPE, rotate-half (NeoX) layout --------------------------------------
// x [N, H, Dh], positions [N]. For i < Dh/2, angle = pos * theta^(-2i/Dh):
//   y[i] = x[i] cos - x[i+Dh/2] sin,  y[i+Dh/2] = x[i+Dh/2] cos + x[i] sin.
// Backward is the rotation by -angle (inverse = transpose).
Tensor rope_forward(const Tensor& x, const Tensor& positions, float theta);
Tensor rope_backward(const Tensor& grad_y, const Tensor& positions, float theta);

// ---- SwiGLU: y = silu(gate) * up ------------------------------------------
Tensor swiglu_forward(const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& grad_y, const Tensor& gate, const Tensor& up, Tensor* grad_gate, Tensor* grad_up);

// ---- causal self-attention with GQA ----------------------------------------
// q [B*T, Hq, Dh], k, v [B*T, Hkv, Dh] -> o [B*T, Hq, Dh]. Query head h reads kv
// head h / (Hq / Hkv). Scale Dh^-0.5, softmax in fp32, causal within each row
// of T; segment_ids [B*T] (optional): a query attends only to keys of its own
// segment (packed samples). lse [B*T, Hq] f32 (log-sum-exp per query) is saved.
Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int64_t B, int64_t T,
                         const Tensor& segment_ids, Tensor* lse);
void attention_backward(const Tensor& grad_o, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& o, const Tensor& lse, int64_t B, int64_t T, const Tensor& segment_ids,
                        Tensor* grad_q, Tensor* grad_k, Tensor* grad_v);

// ---- lm_head fused with cross-entropy, in row chunks ------------------------
// h [N, D], w [V, D], labels [N] (-100 = ignored). loss = mean over counted rows
// of -log softmax(h w^T)[label]. Logits exist for `chunk_rows` rows at a time.
// When grad_h / grad_w are given they receive d(loss)/dh, d(loss)/dw (grad_w
// accumulated into, so a tied embedding can share it). Returns the loss and
// writes the number of counted rows to *count.
float linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& labels, int64_t chunk_rows,
                           Tensor* grad_h, Tensor* grad_w, int64_t* count);

// ---- dropout from the counter-based RNG ------------------------------------
// keep element i iff philox_uniform(seed, offset, i) >= p; kept values scale by 1/(1-p).
Tensor dropout_forward(const Tensor& x, float p, uint64_t seed, uint64_t offset);
Tensor dropout_backward(const Tensor& grad_y, float p, uint64_t seed, uint64_t offset);

// ---- NF4 weights (layout: kernels/cuda/nf4.h; not in kernels.h) ------------
// An Nf4Tensor (quant/nf4.h) copied to the GPU as is; `view` is what the kernels read
// and stays valid while this object lives.
struct Nf4DeviceTensor {
  Tensor packed, absmax, nested_absmax, nested_code;
  Nf4Weight view;
};
Nf4DeviceTensor nf4_to_device(const Nf4Tensor& q);
// W [out, in] dequantized to `dtype` (f32: bit-identical to bitsandbytes' dequantize_4bit),
// allocated in `category` (the matmuls' copy of W is Workspace).
Tensor nf4_dequantize(const Nf4Weight& w, DType dtype, MemCategory category = MemCategory::Activations);
// y [..., out] = x [..., in] W^T and dx [..., in] = dy [..., out] W, with M rows of x.
// x, dy: bf16 or f32; fp32 accumulation; output in the input's dtype. Two ways (nf4.h
// says which Auto picks by M):
//   Fused        W dequantized inside the kernel: the GEMV for M <= 16 (multiplies in
//                f32), else the tensor-core GEMM (x rounded to bf16 when staged, W bf16)
//   Dequantized  W dequantized to x's dtype into a workspace [out, in], then cuBLASLt
// `extra` adds a low-rank term (the LoRA bypass):
//   nf4_matmul:    + scale * a [M, r] w^T,  w = B [out, r]
//   nf4_matmul_dx: + scale * a [M, r] w,    w = A [r, in]
// a and w in the dtype of x. Fused: r more steps of the same reduction (y written once);
// Dequantized: a second cuBLASLt product accumulated into y (beta = 1).
struct LowRankTerm {
  Tensor a, w;
  float scale = 1.0f;
};
enum class Nf4MatmulPath { Auto, Fused, Dequantized };
Tensor nf4_matmul(const Tensor& x, const Nf4Weight& w, const LowRankTerm* extra = nullptr,
                  Nf4MatmulPath path = Nf4MatmulPath::Auto);
Tensor nf4_matmul_dx(const Tensor& dy, const Nf4Weight& w, const LowRankTerm* extra = nullptr,
                     Nf4MatmulPath path = Nf4MatmulPath::Auto);

// ---- LoRA over an NF4 base (lora.cu; not in kernels.h) ---------------------
// y = x W^T + s * (dropout(x) A^T) B^T, x [M, in], A [r, in], B [out, r]: A, B
// are the bf16 (or f32) working copies of the f32 master weights, in x's dtype.
// Forward: u = dropout(x) A^T (cuBLASLt), then one NF4 GEMM pass that adds
// s * u B^T; u [M, r] is saved for the backward (the bypass's one activation).
// Backward: v = dy B; dB = s dy^T u; dA = s v^T dropout(x) (f32, [r, in] and
// [out, r]); dx = dy W + dropout_backward(s v A), fused into the NF4 dx GEMM
// when p = 0. The dropout mask is Philox (seed, offset): recomputed, not stored.
struct LoraParams {
  Tensor a, b;          // [r, in], [out, r]
  float scale = 1.0f;   // alpha / r
  float dropout = 0.0f;
  uint64_t seed = 0, offset = 0;
};
Tensor lora_nf4_forward(const Tensor& x, const Nf4Weight& w, const LoraParams& lora, Tensor* u);
void lora_nf4_backward(const Tensor& dy, const Tensor& x, const Tensor& u, const Nf4Weight& w, const LoraParams& lora,
                       Tensor* dx, Tensor* grad_a, Tensor* grad_b);

// ---- optimizer (GPU side of optim/; not in kernels.h) ------------------------
// The AdamW update itself is kernels/cuda/adamw_span.h (optim/adamw_update.h's
// arithmetic, the CPU optimizer's, run per element on a span of device memory).
// sqrt(sum of squares) over every element of every tensor (f32 CUDA tensors),
// f32 within a block of 65536 elements, f64 across blocks.
double global_grad_norm(const std::vector<Tensor>& grads);

}  // namespace nq::kernels::cuda
