// The Tensor-level kernel API: one function per op (forward and backward),
// shape/dtype checks and device dispatch live here, once. Each function checks
// its arguments (errors name the op and the shapes), then calls the CPU kernel
// (kernels/cpu/, fp32, the readable reference) or the CUDA kernel
// (kernels/cuda/, bf16 activations with fp32 accumulation) for the tensors'
// device. The autograd ops (autograd/ops.h) and the CUDA-vs-CPU test harness
// are written against this API only.
//
// Conventions: rows-major, contiguous. N = tokens (B*T flattened), D = hidden,
// H = heads, Dh = head_dim, V = vocab. Integer tensors are i32.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace nq::kernels {

// The label of a position the loss ignores (padding, prompts, a sample's last
// token): PyTorch's / transformers' ignore_index, so HF labels need no remapping.
constexpr int32_t kIgnoreIndex = -100;

// ---- elementwise ---------------------------------------------------------
void add_inplace(Tensor& dst, const Tensor& src);              // dst += src (same shape)
Tensor add(const Tensor& a, const Tensor& b);                  // a + b
Tensor mul(const Tensor& a, const Tensor& b);                  // a * b
Tensor scale(const Tensor& a, float s);                        // s * a
float sum(const Tensor& a);                                    // sum of all elements (fp32/fp64 accumulation)
// x converted to `dtype` (x itself when it already has it). GPU: f32 <-> bf16;
// CPU: only f32, the reference dtype (other dtypes through Tensor::to_dtype).
Tensor cast(const Tensor& x, DType dtype);

// ---- matmul ---------------------------------------------------------------
// C = op(A) @ op(B) (+ C when accumulate), op = transpose when the flag is set.
// 2-D: A [M, K] (or [K, M] if trans_a), B [K, N] (or [N, K] if trans_b).
// 3-D: batched over the first dim (same batch for A, B, C).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
void matmul_into(Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, bool accumulate);

// ---- embedding ------------------------------------------------------------
Tensor embedding_forward(const Tensor& table, const Tensor& ids);                // [V, D], [N] -> [N, D]
Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t V);  // scatter-add -> [V, D]

// ---- RMSNorm (HF Qwen3: y = w * (x * rsqrt(mean(x^2) + eps)), stats in fp32) --
// x [N, D] (any leading dims flattened), w [D]. rstd [N] f32 is saved for backward
// (rstd may be null when no backward follows, e.g. generation).
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
// segment (packed samples). lse [B*T, Hq] f32 (log-sum-exp per query) is saved
// (lse may be null when no backward follows).
Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int64_t B, int64_t T,
                         const Tensor& segment_ids, Tensor* lse);
void attention_backward(const Tensor& grad_o, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& o, const Tensor& lse, int64_t B, int64_t T, const Tensor& segment_ids,
                        Tensor* grad_q, Tensor* grad_k, Tensor* grad_v);

// ---- lm_head fused with cross-entropy, in row chunks ------------------------
// h [N, D], w [V, D], labels [N] (kIgnoreIndex = ignored). loss = mean over counted rows
// of -log softmax(h w^T)[label]. Logits exist for `chunk_rows` rows at a time.
// When grad_h / grad_w are given they receive d(loss)/dh, d(loss)/dw (grad_w
// accumulated into, so a tied embedding can share it; an undefined *grad_w
// starts at zero). No counted row: loss 0, zero gradients. Returns the loss and
// writes the number of counted rows to *count (count may be null).
float linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& labels, int64_t chunk_rows,
                           Tensor* grad_h, Tensor* grad_w, int64_t* count);

// ---- dropout from the counter-based RNG ------------------------------------
// keep element i iff philox_uniform(seed, offset, i) >= p; kept values scale by 1/(1-p).
Tensor dropout_forward(const Tensor& x, float p, uint64_t seed, uint64_t offset);
Tensor dropout_backward(const Tensor& grad_y, float p, uint64_t seed, uint64_t offset);

}  // namespace nq::kernels
