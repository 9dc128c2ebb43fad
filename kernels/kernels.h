// The Tensor-level kernel API: one function per op (forward and backward),
// shape/dtype checks and device dispatch live here, once. Each function checks
// its arguments (errors name the op and the shapes), then calls the CPU kernel
// (kernels/cpu/, fp32, the readable reference) or the CUDA kernel
// (kernels/cuda/, bf16 activations with fp32 accumulation) for the tensors'
// device. The autograd ops (autograd/ops.h) and the CUDA-vs-CPU test harness
// are written against this API only: nothing above kernels/ calls kernels/cuda/
// or needs to know whether this build has CUDA.
//
// Conventions: rows-major, contiguous. N = tokens (B*T flattened), D = hidden,
// H = heads, Dh = head_dim, V = vocab. Integer tensors are i32.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/adamw_math.h"
#include "kernels/rope_table.h"
#include "quant/nf4.h"
#include "runtime/tensor.h"

namespace nq {
class CudaStream;  // runtime/cuda_runtime.h
}

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
// x [N, H, Dh], positions [N], the model's table (kernels/rope_table.h: inv_freq [Dh/2],
// attention scaling s). For i < Dh/2, angle = pos * inv_freq_i, cos and sin times s:
//   y[i] = x[i] cos - x[i+Dh/2] sin,  y[i+Dh/2] = x[i+Dh/2] cos + x[i] sin.
// Backward is the transpose: the rotation by -angle, times s.
Tensor rope_forward(const Tensor& x, const Tensor& positions, const RopeTable& table);
Tensor rope_backward(const Tensor& grad_y, const Tensor& positions, const RopeTable& table);

// ---- SwiGLU: y = silu(gate) * up ------------------------------------------
Tensor swiglu_forward(const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& grad_y, const Tensor& gate, const Tensor& up, Tensor* grad_gate, Tensor* grad_up);

// ---- mixture-of-experts routing --------------------------------------------
// transformers' Qwen3MoeTopKRouter after its linear: logits [N, E] (the activations' dtype),
// p = softmax(logits) in f32 per row; experts [N, k] i32 = the k largest p of each row, largest first
// (ties: the lower expert index first); weights [N, k] = p[experts], divided by their sum when
// `renormalize` (norm_topk_prob), rounded to logits' dtype. 1 <= k <= E.
Tensor moe_route_forward(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts);
// grad_weights [N, k] (weights' dtype) -> grad_logits [N, E] (logits' dtype). With G the grads scattered to
// [N, E] (zero where not selected) and p recomputed from logits:
//   not renormalized: dlogit_i = p_i (G_i - sum_e G_e p_e)
//   renormalized (the weights are a softmax over the selected logits): dlogit_{e_j} = w_j (g_j - sum_m g_m w_m),
//   zero for experts not selected.
Tensor moe_route_backward(const Tensor& grad_weights, const Tensor& logits, const Tensor& experts,
                          const Tensor& weights, bool renormalize);

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

// ---- matmuls against a frozen NF4 weight (QLoRA's base, quant/nf4.h) --------
// W [out, in] is never dequantized whole on the CPU: kNf4CpuTileRows rows at a
// time are dequantized into a Workspace buffer [kNf4CpuTileRows, in] f32 and
// multiplied (cblas_sgemm). The GPU dequantizes W inside its kernels or, for
// many rows, into a Workspace copy first (`path`, below).
//   nf4_matmul:    y [..., out] = x [..., in] W^T   (+ scale * a [M, r] w^T,  w = B [out, r])
//   nf4_matmul_dx: dx [..., in] = dy [..., out] W   (+ scale * a [M, r] w,    w = A [r, in])
// M = rows of x (leading dims flattened). The optional low-rank term is the
// LoRA bypass: a and w in x's dtype; on the CPU (scale * a) w^T (or w) is
// accumulated into the output by one more GEMM. W is frozen: there is no gradient for it. The tensors of W
// must be on x's device (model/device.h moves them).
// `path` matters only on the GPU (CPU: one way, the tile loop): Auto picks by M
// (kernels/cuda/nf4.h: the fused kernels below kNf4DequantMinRows rows, W
// dequantized into a Workspace copy + cuBLASLt from there on); Fused and
// Dequantized force one way (tests and ./bench compare them).
constexpr int64_t kNf4CpuTileRows = 128;
struct LowRankTerm {
  Tensor a, w;
  float scale = 1.0f;
};
enum class Nf4MatmulPath { Auto, Fused, Dequantized };
Tensor nf4_matmul(const Tensor& x, const Nf4Tensor& w, const LowRankTerm* extra = nullptr,
                  Nf4MatmulPath path = Nf4MatmulPath::Auto);
Tensor nf4_matmul_dx(const Tensor& dy, const Nf4Tensor& w, const LowRankTerm* extra = nullptr,
                     Nf4MatmulPath path = Nf4MatmulPath::Auto);
// W [out, in] as a `dtype` tensor on W's device (f32 bit-identical to bitsandbytes'
// dequantize_4bit; the GPU also gives bf16, the CPU only f32).
Tensor nf4_dequantize(const Nf4Tensor& w, DType dtype);
// The Workspace bytes one nf4_matmul / nf4_matmul_dx with M rows of x in `dtype`
// over W [out, in] takes on `device` (the memory plan's term, from the same
// constants the products use): CPU, one tile min(kNf4CpuTileRows, out) x in f32;
// GPU, W whole in x's dtype when Auto takes the Dequantized way (M >= 256), else 0.
size_t nf4_matmul_workspace_bytes(int64_t M, int64_t out, int64_t in, DType dtype, Device device);

// ---- the experts of a MoE layer: one grouped NF4 matmul ------------------------
// x [M, in] with its rows grouped by expert (model/moe.h): expert e owns rows
// [offsets[e], offsets[e+1]) (E + 1 host values, 0 = offsets[0] <= ... <= offsets[E] = M);
// w[e] is expert e's NF4 weight, every one [out, in], on x's device.
//   nf4_grouped_matmul:    y [M, out],  y[rows_e]  = x[rows_e] W_e^T  (+ s_e a[rows_e] w_e^T, w_e = B_e [out, r])
//   nf4_grouped_matmul_dx: dx [M, in],  dx[rows_e] = dy[rows_e] W_e   (+ s_e a[rows_e] w_e,   w_e = A_e [r, in])
// The optional low-rank term is each expert's LoRA bypass: a [M, r] has x's rows, w[e] and
// scale[e] are expert e's (all one rank), in x's dtype. The GPU runs every expert's rows in
// ONE launch, the bypass as r more steps of each tile's reduction (a tile scheduler over
// (expert, row tile), kernels/cuda/nf4_grouped_matmul.cu); the CPU runs nf4_matmul's tile
// loop and the bypass product on each expert's rows.
struct GroupedLowRankTerm {
  Tensor a;                // [M, r]
  std::vector<Tensor> w;   // [E]: B_e [out, r] (forward) or A_e [r, in] (dx)
  std::vector<float> scale;  // [E]
};
Tensor nf4_grouped_matmul(const Tensor& x, const std::vector<const Nf4Tensor*>& w, const std::vector<int64_t>& offsets,
                          const GroupedLowRankTerm* extra = nullptr);
Tensor nf4_grouped_matmul_dx(const Tensor& dy, const std::vector<const Nf4Tensor*>& w,
                             const std::vector<int64_t>& offsets, const GroupedLowRankTerm* extra = nullptr);

// ---- dense products per expert: the experts' LoRA factors ---------------------------
// Rows grouped as nf4_grouped_matmul's (offsets: E + 1 host values from 0 to M), expert e's
// weight w[e] and scale s[e] (E each; every w[e] one shape, in a's dtype and device):
//   grouped_matmul:      y [M, n],   y[rows_e] = s_e a[rows_e] w_e^T   (trans_w false: w_e [n, k])
//                                    y[rows_e] = s_e a[rows_e] w_e     (trans_w true:  w_e [k, n])
//   grouped_weight_grad: g [E, p, q] f32, g[e] = s_e a[rows_e]^T b[rows_e]  (a [M, p], b [M, q];
//                        zeros for an expert without rows): grouped_matmul's weight gradient
// The GPU runs each in one launch (grouped_matmul: nf4_grouped_matmul.cu's tiles with no NF4
// part; grouped_weight_grad.cu); the CPU one product per expert.
Tensor grouped_matmul(const Tensor& a, const std::vector<Tensor>& w, const std::vector<int64_t>& offsets, bool trans_w,
                      const std::vector<float>& scales);
Tensor grouped_weight_grad(const Tensor& a, const Tensor& b, const std::vector<int64_t>& offsets,
                           const std::vector<float>& scales);

// ---- LoRA over an NF4 base, one fused op ------------------------------------
// y = x W^T + s * (dropout(x) A^T) B^T      x [M, in] (leading dims flattened),
// A [r, in], B [out, r] in x's dtype (the f32 masters' working copies), W NF4.
// Forward: u = dropout(x) A^T [M, r] is written to *u (saved for the backward,
// the bypass's one activation); y [..., out] = x W^T + (s u) B^T through
// nf4_matmul's low-rank term.
// Backward, given dy [..., out]: dB = s dy^T u [out, r] and dA = s (dy B)^T
// dropout(x) [r, in], both f32; dx [..., in] = dy W + dropout_backward(s (dy B) A).
// Null outputs are skipped (dx is null when x needs no gradient). The dropout
// mask is Philox (seed, offset) over x's elements, recomputed, not stored;
// dropout = 0 applies none.
struct LoraParams {
  Tensor a, b;          // [r, in], [out, r]
  float scale = 1.0f;   // alpha / r
  float dropout = 0.0f;
  uint64_t seed = 0, offset = 0;
};
Tensor lora_nf4_forward(const Tensor& x, const Nf4Tensor& w, const LoraParams& lora, Tensor* u);
void lora_nf4_backward(const Tensor& dy, const Tensor& x, const Tensor& u, const Nf4Tensor& w, const LoraParams& lora,
                       Tensor* dx, Tensor* grad_a, Tensor* grad_b);
// The same over a MoE layer's experts, rows grouped as nf4_grouped_matmul's: expert e's rows
// through W_e and its adapter (A_e, B_e, scale_e of `lora`: every one of rank r; one dropout
// mask over all of x). Forward: u = dropout(x)_e A_e^T [M, r] (x's rows),
// one grouped_matmul, then ONE grouped NF4 matmul with the bypasses riding in it. Backward:
// v = s_e dy_e B_e (grouped_matmul), dB_e = s_e dy_e^T u_e and dA_e = v_e^T dropout(x)_e
// (grouped_weight_grad; f32, undefined for an expert without rows), dx through one grouped
// dx matmul (the bypass riding in it when no dropout is on). Composed of the ops above on
// either device: a fixed number of launches whatever E.
struct GroupedLoraParams {
  std::vector<Tensor> a, b;   // [E]: A_e [r, in], B_e [out, r] in x's dtype
  std::vector<float> scale;   // [E]: alpha / r of each expert's adapter
  float dropout = 0.0f;       // the mask over all of x: Philox (seed, offset) over its elements
  uint64_t seed = 0, offset = 0;
};
Tensor lora_nf4_grouped_forward(const Tensor& x, const std::vector<const Nf4Tensor*>& w,
                                const GroupedLoraParams& lora, const std::vector<int64_t>& offsets, Tensor* u);
void lora_nf4_grouped_backward(const Tensor& dy, const Tensor& x, const Tensor& u, const std::vector<const Nf4Tensor*>& w,
                               const GroupedLoraParams& lora, const std::vector<int64_t>& offsets, Tensor* dx,
                               std::vector<Tensor>* grad_a, std::vector<Tensor>* grad_b);

// ---- optimizer: the AdamW update and the global gradient norm ----------------
// One AdamW step in place, element by element (kernels/adamw_math.h's
// adamw_update_element, torch's order of operations), with grad * grad_scale
// rounded to f32 as the gradient (1 = as is). param, grad, exp_avg, exp_avg_sq:
// f32, contiguous, the same number of elements (spans of larger tensors through
// Tensor::view / slice), on one device. stream (GPU only; null = the default
// stream): the launch is asynchronous on it. On the CPU stream must be null.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWScalars& s,
                  float grad_scale = 1.0f, const CudaStream* stream = nullptr);
// sqrt(sum over every element of every tensor of g^2), as torch's
// clip_grad_norm_ (norm_type 2) computes it: f32 tensors on one device. CPU:
// each tensor's norm in double rounded to f32, the norm of those norms in
// double, rounded to f32. GPU: f32 within blocks of 65536 elements, double
// across blocks. No tensors: 0.
double global_grad_norm(const std::vector<Tensor>& grads);

}  // namespace nq::kernels
