// Argument checks and CPU/CUDA dispatch for kernels/kernels.h. Every op checks
// its arguments here, once (errors name the op and the shapes), then runs the
// CPU kernel (kernels/cpu/, f32) or, for CUDA tensors, the CUDA kernel
// (kernels/cuda/ops.h), which may assume checked input.
#include <algorithm>
#include <initializer_list>

#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/grad_norm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/moe_route.h"
#include "kernels/cpu/nf4_matmul.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/cuda/nf4.h"  // the NF4 matmuls' row thresholds (plain constants, every build)
#include "kernels/kernels.h"
#include "runtime/cuda_runtime.h"
#ifdef NQ_CUDA
#include "kernels/cuda/cast.h"
#include "kernels/cuda/ops.h"
#endif

namespace nq::kernels {

// For CUDA tensors: return the CUDA kernel's result, or fail in a CPU-only build.
#ifdef NQ_CUDA
#define NQ_RUN_CUDA(op, ...) return cuda::op(__VA_ARGS__)
#else
#define NQ_RUN_CUDA(op, ...) no_cuda_kernel(#op)
#endif
[[maybe_unused]] [[noreturn]] static void no_cuda_kernel(const char* op) {
  throw Error(str(op, ": no CUDA in this build"));
}

// ---- shared argument checks ------------------------------------------------
static void check_defined(const char* op, const char* name, const Tensor& t) {
  NQ_CHECK(t.defined(), op, ": ", name, " is undefined");
}
static void check_ndim(const char* op, const char* name, const Tensor& t, int ndim) {
  check_defined(op, name, t);
  NQ_CHECK(t.ndim() == ndim, op, ": ", name, " must be ", ndim, "-D, got ", t.shape().str());
}
// Floating tensors on the CPU must be f32 (the CPU kernels are the f32 reference).
static void check_float(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  bool ok = t.device() == Device::CPU ? t.dtype() == DType::F32
                                      : (t.dtype() == DType::F32 || t.dtype() == DType::BF16 || t.dtype() == DType::F16);
  NQ_CHECK(ok, op, ": ", name, " must be a float tensor (f32 on the CPU), got ", t.desc());
}
static void check_i32(const char* op, const char* name, const Tensor& t, int64_t numel) {
  check_defined(op, name, t);
  NQ_CHECK(t.dtype() == DType::I32, op, ": ", name, " must be i32, got ", t.desc());
  NQ_CHECK(t.numel() == numel, op, ": ", name, " ", t.shape().str(), " must have ", numel, " elements");
}
static void check_same_device(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = *ts.begin();
  for (const Tensor* t : ts)
    if (t->defined())
      NQ_CHECK(t->device() == first->device(), op, ": tensors on different devices: ", first->desc(), " and ",
               t->desc());
}
static void check_same(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, "an argument", a);
  check_defined(op, "an argument", b);
  NQ_CHECK(a.shape() == b.shape(), op, ": shape mismatch ", a.shape().str(), " vs ", b.shape().str());
  NQ_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch ", dtype_name(a.dtype()), " vs ", dtype_name(b.dtype()));
  check_same_device(op, {&a, &b});
  check_float(op, "an argument", a);
}
// Token ids index a table of V rows: on the CPU, check each one (user data).
static void check_ids_in_range(const char* op, const char* name, const Tensor& ids, int64_t V) {
  if (ids.device() != Device::CPU) return;
  const int32_t* p = ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    NQ_CHECK(p[i] >= 0 && p[i] < V, op, ": ", name, "[", i, "] = ", p[i], " out of range [0, ", V, ")");
}

// ---- elementwise ---------------------------------------------------------
void add_inplace(Tensor& dst, const Tensor& src) {
  check_same("add_inplace", dst, src);
  if (dst.device() == Device::CUDA) NQ_RUN_CUDA(add_inplace, dst, src);
  cpu::add_inplace(dst.data<float>(), src.data<float>(), dst.numel());
}
Tensor add(const Tensor& a, const Tensor& b) {
  check_same("add", a, b);
  if (a.device() == Device::CUDA) NQ_RUN_CUDA(add, a, b);
  Tensor out = Tensor::empty(a.shape());
  cpu::add(a.data<float>(), b.data<float>(), out.data<float>(), a.numel());
  return out;
}
Tensor mul(const Tensor& a, const Tensor& b) {
  check_same("mul", a, b);
  if (a.device() == Device::CUDA) NQ_RUN_CUDA(mul, a, b);
  Tensor out = Tensor::empty(a.shape());
  cpu::mul(a.data<float>(), b.data<float>(), out.data<float>(), a.numel());
  return out;
}
Tensor scale(const Tensor& a, float s) {
  check_float("scale", "a", a);
  if (a.device() == Device::CUDA) NQ_RUN_CUDA(scale, a, s);
  Tensor out = Tensor::empty(a.shape());
  cpu::scale(a.data<float>(), s, out.data<float>(), a.numel());
  return out;
}
float sum(const Tensor& a) {
  check_float("sum", "a", a);
  if (a.device() == Device::CUDA) NQ_RUN_CUDA(sum, a);
  return float(cpu::sum(a.data<float>(), a.numel()));
}
Tensor cast(const Tensor& x, DType dtype) {
  check_float("cast", "x", x);
  if (x.dtype() == dtype) return x;
  NQ_CHECK(x.device() == Device::CUDA && (dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16),
           "cast: cannot convert ", x.desc(), " to ", dtype_name(dtype),
           " (the GPU converts between f32, bf16 and f16; the cpu keeps f32)");
  NQ_RUN_CUDA(cast, x, dtype);
}

// ---- matmul ---------------------------------------------------------------
struct MatmulDims { int64_t batch, M, N, K; };
static MatmulDims matmul_dims(const char* op, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_float(op, "a", a);
  check_float(op, "b", b);
  check_same_device(op, {&a, &b});
  NQ_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch ", a.desc(), " vs ", b.desc());
  NQ_CHECK((a.ndim() == 2 || a.ndim() == 3) && a.ndim() == b.ndim(), op, ": a ", a.shape().str(), " and b ",
           b.shape().str(), " must both be 2-D or both 3-D");
  int o = a.ndim() - 2;  // first matrix dim
  MatmulDims d;
  d.batch = o ? a.size(0) : 1;
  NQ_CHECK(!o || b.size(0) == d.batch, op, ": batch sizes disagree: a ", a.shape().str(), " b ", b.shape().str());
  d.M = trans_a ? a.size(o + 1) : a.size(o);
  d.K = trans_a ? a.size(o) : a.size(o + 1);
  int64_t kb = trans_b ? b.size(o + 1) : b.size(o);
  d.N = trans_b ? b.size(o) : b.size(o + 1);
  NQ_CHECK(d.K == kb, op, ": inner dimensions disagree: a ", a.shape().str(), (trans_a ? "^T" : ""), " @ b ",
           b.shape().str(), (trans_b ? "^T" : ""), " (", d.K, " vs ", kb, ")");
  return d;
}
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  MatmulDims d = matmul_dims("matmul", a, b, trans_a, trans_b);
  if (a.device() == Device::CUDA) NQ_RUN_CUDA(matmul, a, b, trans_a, trans_b);
  Tensor c = Tensor::empty(a.ndim() == 3 ? Shape{d.batch, d.M, d.N} : Shape{d.M, d.N});
  cpu::matmul(a.data<float>(), b.data<float>(), c.data<float>(), d.batch, d.M, d.N, d.K, trans_a, trans_b, false);
  return c;
}
void matmul_into(Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, bool accumulate) {
  MatmulDims d = matmul_dims("matmul_into", a, b, trans_a, trans_b);
  check_float("matmul_into", "c", c);
  check_same_device("matmul_into", {&a, &c});
  Shape want = a.ndim() == 3 ? Shape{d.batch, d.M, d.N} : Shape{d.M, d.N};
  NQ_CHECK(c.shape() == want, "matmul_into: c ", c.shape().str(), " but a ", a.shape().str(), " @ b ",
           b.shape().str(), " gives ", want.str());
  if (a.device() == Device::CUDA) NQ_RUN_CUDA(matmul_into, c, a, b, trans_a, trans_b, accumulate);
  cpu::matmul(a.data<float>(), b.data<float>(), c.data<float>(), d.batch, d.M, d.N, d.K, trans_a, trans_b,
              accumulate);
}

// ---- embedding ------------------------------------------------------------
Tensor embedding_forward(const Tensor& table, const Tensor& ids) {
  const char* op = "embedding_forward";
  check_ndim(op, "table", table, 2);
  check_float(op, "table", table);
  check_i32(op, "ids", ids, ids.numel());
  check_same_device(op, {&table, &ids});
  check_ids_in_range(op, "ids", ids, table.size(0));
  if (table.device() == Device::CUDA) NQ_RUN_CUDA(embedding_forward, table, ids);
  int64_t N = ids.numel(), D = table.size(1);
  Tensor out = Tensor::empty({N, D});
  cpu::embedding_forward(table.data<float>(), ids.data<int32_t>(), out.data<float>(), N, D);
  return out;
}
Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t V) {
  const char* op = "embedding_backward";
  check_ndim(op, "grad_out", grad_out, 2);
  check_float(op, "grad_out", grad_out);
  check_i32(op, "ids", ids, grad_out.size(0));
  check_same_device(op, {&grad_out, &ids});
  NQ_CHECK(V > 0, op, ": vocabulary size must be positive, got ", V);
  check_ids_in_range(op, "ids", ids, V);
  if (grad_out.device() == Device::CUDA) NQ_RUN_CUDA(embedding_backward, grad_out, ids, V);
  int64_t N = grad_out.size(0), D = grad_out.size(1);
  Tensor grad_table = Tensor::empty({V, D});
  cpu::embedding_backward(grad_out.data<float>(), ids.data<int32_t>(), grad_table.data<float>(), N, V, D);
  return grad_table;
}

// ---- RMSNorm ----------------------------------------------------------------
static void check_rmsnorm(const char* op, const Tensor& x, const Tensor& w) {
  check_float(op, "x", x);
  check_float(op, "w", w);
  check_same_device(op, {&x, &w});
  NQ_CHECK(x.ndim() >= 1 && w.ndim() == 1 && x.size(-1) == w.size(0), op, ": x ", x.shape().str(), " and w ",
           w.shape().str(), " disagree on D");
  NQ_CHECK(w.size(0) > 0, op, ": D must be positive, w is ", w.shape().str());
}
Tensor rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor* rstd) {
  check_rmsnorm("rmsnorm_forward", x, w);
  Tensor unused_rstd;  // inference callers may pass no rstd
  if (!rstd) rstd = &unused_rstd;
  if (x.device() == Device::CUDA) NQ_RUN_CUDA(rmsnorm_forward, x, w, eps, rstd);
  int64_t D = w.size(0), N = x.numel() / D;
  Tensor y = Tensor::empty(x.shape());
  *rstd = Tensor::empty({N});
  cpu::rmsnorm_forward(x.data<float>(), w.data<float>(), eps, y.data<float>(), rstd->data<float>(), N, D);
  return y;
}
void rmsnorm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* grad_x,
                      Tensor* grad_w) {
  const char* op = "rmsnorm_backward";
  check_rmsnorm(op, x, w);
  check_same(op, grad_y, x);
  int64_t D = w.size(0), N = x.numel() / D;
  check_defined(op, "rstd", rstd);
  NQ_CHECK(rstd.dtype() == DType::F32 && rstd.numel() == N, op, ": rstd ", rstd.desc(), " must be f32 with ", N,
           " elements for x ", x.shape().str());
  if (x.device() == Device::CUDA) NQ_RUN_CUDA(rmsnorm_backward, grad_y, x, w, rstd, grad_x, grad_w);
  if (grad_x) *grad_x = Tensor::empty(x.shape());
  if (grad_w) *grad_w = Tensor::empty(w.shape());
  cpu::rmsnorm_backward(grad_y.data<float>(), x.data<float>(), w.data<float>(), rstd.data<float>(),
                        grad_x ? grad_x->data<float>() : nullptr, grad_w ? grad_w->data<float>() : nullptr, N, D);
}

// ---- RoPE -------------------------------------------------------------------
static void check_rope(const char* op, const Tensor& x, const Tensor& positions, const RopeTable& table) {
  check_ndim(op, "x", x, 3);
  check_float(op, "x", x);
  NQ_CHECK(x.size(2) % 2 == 0, op, ": head_dim must be even, x is ", x.shape().str());
  NQ_CHECK(int64_t(table.inv_freq.size()) == x.size(2) / 2, op, ": the RoPE table has ", table.inv_freq.size(),
           " frequencies, x ", x.shape().str(), " needs head_dim / 2 = ", x.size(2) / 2);
  check_i32(op, "positions", positions, x.size(0));
  check_same_device(op, {&x, &positions});
}
Tensor rope_forward(const Tensor& x, const Tensor& positions, const RopeTable& table) {
  check_rope("rope_forward", x, positions, table);
  if (x.device() == Device::CUDA) NQ_RUN_CUDA(rope_forward, x, positions, table);
  Tensor y = Tensor::empty(x.shape());
  cpu::rope_rotate(x.data<float>(), positions.data<int32_t>(), table.inv_freq.data(), table.attention_scaling, +1,
                   y.data<float>(), x.size(0), x.size(1), x.size(2));
  return y;
}
Tensor rope_backward(const Tensor& grad_y, const Tensor& positions, const RopeTable& table) {
  check_rope("rope_backward", grad_y, positions, table);
  if (grad_y.device() == Device::CUDA) NQ_RUN_CUDA(rope_backward, grad_y, positions, table);
  Tensor grad_x = Tensor::empty(grad_y.shape());
  cpu::rope_rotate(grad_y.data<float>(), positions.data<int32_t>(), table.inv_freq.data(), table.attention_scaling,
                   -1, grad_x.data<float>(), grad_y.size(0), grad_y.size(1), grad_y.size(2));
  return grad_x;
}

// ---- SwiGLU -----------------------------------------------------------------
Tensor swiglu_forward(const Tensor& gate, const Tensor& up) {
  check_same("swiglu_forward", gate, up);
  if (gate.device() == Device::CUDA) NQ_RUN_CUDA(swiglu_forward, gate, up);
  Tensor y = Tensor::empty(gate.shape());
  cpu::swiglu_forward(gate.data<float>(), up.data<float>(), y.data<float>(), gate.numel());
  return y;
}
void swiglu_backward(const Tensor& grad_y, const Tensor& gate, const Tensor& up, Tensor* grad_gate, Tensor* grad_up) {
  check_same("swiglu_backward", gate, up);
  check_same("swiglu_backward", grad_y, gate);
  if (gate.device() == Device::CUDA) NQ_RUN_CUDA(swiglu_backward, grad_y, gate, up, grad_gate, grad_up);
  if (grad_gate) *grad_gate = Tensor::empty(gate.shape());
  if (grad_up) *grad_up = Tensor::empty(up.shape());
  cpu::swiglu_backward(grad_y.data<float>(), gate.data<float>(), up.data<float>(),
                       grad_gate ? grad_gate->data<float>() : nullptr, grad_up ? grad_up->data<float>() : nullptr,
                       gate.numel());
}

// ---- mixture-of-experts routing ---------------------------------------------------
// logits [N, E] float with E >= 1 and 1 <= k <= E.
static void check_moe_logits(const char* op, const Tensor& logits, int64_t k) {
  check_ndim(op, "logits", logits, 2);
  check_float(op, "logits", logits);
  const int64_t E = logits.size(1);
  NQ_CHECK(E > 0, op, ": logits ", logits.shape().str(), " has no experts");
  NQ_CHECK(k >= 1 && k <= E, op, ": k = ", k, " out of range [1, ", E, "] for logits ", logits.shape().str());
}
// A [N, k] tensor of the selection (experts, weights, grad_weights) in `dtype`.
static void check_moe_selection(const char* op, const char* name, const Tensor& t, DType dtype, int64_t N, int64_t k) {
  check_defined(op, name, t);
  NQ_CHECK(t.dtype() == dtype && t.shape() == (Shape{N, k}), op, ": ", name, " ", t.desc(), " must be ",
           dtype_name(dtype), "[", N, ", ", k, "]");
}
Tensor moe_route_forward(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts) {
  const char* op = "moe_route_forward";
  check_moe_logits(op, logits, k);
  NQ_CHECK(experts, op, ": the experts output is required (the weights mean nothing without it)");
  if (logits.device() == Device::CUDA) NQ_RUN_CUDA(moe_route_forward, logits, k, renormalize, experts);
  const int64_t N = logits.size(0), E = logits.size(1);
  Tensor weights = Tensor::empty({N, k});
  *experts = Tensor::empty({N, k}, DType::I32);
  cpu::moe_route_forward(logits.data<float>(), N, E, k, renormalize, experts->data<int32_t>(),
                         weights.data<float>());
  return weights;
}
Tensor moe_route_backward(const Tensor& grad_weights, const Tensor& logits, const Tensor& experts,
                          const Tensor& weights, bool renormalize) {
  const char* op = "moe_route_backward";
  check_ndim(op, "experts", experts, 2);
  const int64_t k = experts.size(1);
  check_moe_logits(op, logits, k);
  const int64_t N = logits.size(0), E = logits.size(1);
  check_moe_selection(op, "experts", experts, DType::I32, N, k);
  check_moe_selection(op, "weights", weights, logits.dtype(), N, k);
  check_moe_selection(op, "grad_weights", grad_weights, logits.dtype(), N, k);
  check_same_device(op, {&logits, &experts, &weights, &grad_weights});
  check_ids_in_range(op, "experts", experts, E);
  if (logits.device() == Device::CUDA) NQ_RUN_CUDA(moe_route_backward, grad_weights, logits, experts, weights, renormalize);
  Tensor grad_logits = Tensor::empty(logits.shape());
  cpu::moe_route_backward(grad_weights.data<float>(), logits.data<float>(), experts.data<int32_t>(),
                          weights.data<float>(), N, E, k, renormalize, grad_logits.data<float>());
  return grad_logits;
}

// ---- attention ----------------------------------------------------------------
static void check_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, int64_t B, int64_t T,
                            const Tensor& segment_ids) {
  check_ndim(op, "q", q, 3);
  check_ndim(op, "k", k, 3);
  check_float(op, "q", q);
  check_same(op, k, v);
  NQ_CHECK(q.dtype() == k.dtype(), op, ": dtype mismatch q ", q.desc(), " vs k ", k.desc());
  check_same_device(op, {&q, &k, &segment_ids});
  NQ_CHECK(B > 0 && T > 0 && q.size(0) == B * T && k.size(0) == B * T, op, ": q ", q.shape().str(), " and k ",
           k.shape().str(), " must have B*T = ", B, "*", T, " rows");
  NQ_CHECK(q.size(2) == k.size(2) && q.size(2) > 0, op, ": head_dim disagrees or is 0: q ", q.shape().str(), " vs k ",
           k.shape().str());
  NQ_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, op, ": ", q.size(1), " query heads (q ", q.shape().str(),
           ") are not a multiple of ", k.size(1), " kv heads (k ", k.shape().str(), ")");
  if (segment_ids.defined()) check_i32(op, "segment_ids", segment_ids, B * T);
}
static const int32_t* segment_ptr(const Tensor& segment_ids) {
  return segment_ids.defined() ? segment_ids.data<int32_t>() : nullptr;
}
Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int64_t B, int64_t T,
                         const Tensor& segment_ids, Tensor* lse) {
  check_attention("attention_forward", q, k, v, B, T, segment_ids);
  Tensor unused_lse;  // inference callers may pass no lse
  if (!lse) lse = &unused_lse;
  if (q.device() == Device::CUDA) NQ_RUN_CUDA(attention_forward, q, k, v, B, T, segment_ids, lse);
  Tensor o = Tensor::empty(q.shape());
  *lse = Tensor::empty({B * T, q.size(1)});
  cpu::attention_forward(q.data<float>(), k.data<float>(), v.data<float>(), segment_ptr(segment_ids), o.data<float>(),
                         lse->data<float>(), B, T, q.size(1), k.size(1), q.size(2));
  return o;
}
void attention_backward(const Tensor& grad_o, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                        const Tensor& lse, int64_t B, int64_t T, const Tensor& segment_ids, Tensor* grad_q,
                        Tensor* grad_k, Tensor* grad_v) {
  const char* op = "attention_backward";
  check_attention(op, q, k, v, B, T, segment_ids);
  check_same(op, grad_o, q);
  check_same(op, o, q);
  check_defined(op, "lse", lse);
  NQ_CHECK(lse.dtype() == DType::F32 && lse.shape() == (Shape{B * T, q.size(1)}), op, ": lse ", lse.desc(),
           " must be f32[", B * T, ", ", q.size(1), "]");
  NQ_CHECK(grad_q && grad_k && grad_v, op, ": grad_q, grad_k and grad_v outputs are required");
  if (q.device() == Device::CUDA)
    NQ_RUN_CUDA(attention_backward, grad_o, q, k, v, o, lse, B, T, segment_ids, grad_q, grad_k, grad_v);
  *grad_q = Tensor::empty(q.shape());
  *grad_k = Tensor::empty(k.shape());
  *grad_v = Tensor::empty(v.shape());
  cpu::attention_backward(grad_o.data<float>(), q.data<float>(), k.data<float>(), v.data<float>(), o.data<float>(),
                          lse.data<float>(), segment_ptr(segment_ids), grad_q->data<float>(), grad_k->data<float>(),
                          grad_v->data<float>(), B, T, q.size(1), k.size(1), q.size(2));
}

// ---- linear + cross-entropy ---------------------------------------------------
float linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& labels, int64_t chunk_rows,
                           Tensor* grad_h, Tensor* grad_w, int64_t* count) {
  const char* op = "linear_cross_entropy";
  check_ndim(op, "h", h, 2);
  check_ndim(op, "w", w, 2);
  check_float(op, "h", h);
  check_float(op, "w", w);
  NQ_CHECK(h.size(1) == w.size(1), op, ": h ", h.shape().str(), " and w ", w.shape().str(), " disagree on D");
  check_i32(op, "labels", labels, h.size(0));
  check_same_device(op, {&h, &w, &labels});
  NQ_CHECK(chunk_rows > 0, op, ": chunk_rows must be positive, got ", chunk_rows);
  int64_t N = h.size(0), D = h.size(1), V = w.size(0);
  if (labels.device() == Device::CPU) {
    const int32_t* y = labels.data<int32_t>();
    for (int64_t n = 0; n < N; ++n)
      NQ_CHECK(y[n] == kIgnoreIndex || (y[n] >= 0 && y[n] < V), op, ": labels[", n, "] = ", y[n],
               " out of range [0, ", V, ") and not ", kIgnoreIndex);
  }
  if (grad_w && grad_w->defined())
    NQ_CHECK(grad_w->shape() == w.shape() && grad_w->dtype() == w.dtype(), op, ": grad_w ", grad_w->desc(),
             " to accumulate into does not match w ", w.desc());
  int64_t counted = 0;
  if (!count) count = &counted;
  if (h.device() == Device::CUDA) NQ_RUN_CUDA(linear_cross_entropy, h, w, labels, chunk_rows, grad_h, grad_w, count);
  if (grad_h) *grad_h = Tensor::empty(h.shape());
  if (grad_w && !grad_w->defined()) *grad_w = Tensor::zeros(w.shape());
  // The one chunk of logits that exists at a time, counted as workspace memory.
  Tensor logits = Tensor::empty({std::min(chunk_rows, N), V}, DType::F32, Device::CPU, MemCategory::Workspace);
  return float(cpu::linear_cross_entropy(h.data<float>(), w.data<float>(), labels.data<int32_t>(), N, D, V,
                                         chunk_rows, logits.data<float>(), grad_h ? grad_h->data<float>() : nullptr,
                                         grad_w ? grad_w->data<float>() : nullptr, count));
}

// ---- dropout ------------------------------------------------------------------
static void check_dropout(const char* op, const Tensor& x, float p) {
  check_float(op, "x", x);
  NQ_CHECK(p >= 0.0f && p < 1.0f, op, ": p must be in [0, 1), got ", p);
}
Tensor dropout_forward(const Tensor& x, float p, uint64_t seed, uint64_t offset) {
  check_dropout("dropout_forward", x, p);
  if (x.device() == Device::CUDA) NQ_RUN_CUDA(dropout_forward, x, p, seed, offset);
  Tensor y = Tensor::empty(x.shape());
  cpu::dropout_apply(x.data<float>(), y.data<float>(), x.numel(), p, seed, offset);
  return y;
}
Tensor dropout_backward(const Tensor& grad_y, float p, uint64_t seed, uint64_t offset) {
  check_dropout("dropout_backward", grad_y, p);
  if (grad_y.device() == Device::CUDA) NQ_RUN_CUDA(dropout_backward, grad_y, p, seed, offset);
  Tensor grad_x = Tensor::empty(grad_y.shape());
  cpu::dropout_apply(grad_y.data<float>(), grad_x.data<float>(), grad_y.numel(), p, seed, offset);
  return grad_x;
}

// ---- NF4 matmuls ----------------------------------------------------------------
static Shape with_last(const Shape& s, int64_t last) {
  Shape o = s;
  o.dims[o.ndim - 1] = last;
  return o;
}
// The device W's tensors are on (packed decides; the GPU view checks the others).
static Device nf4_device(const char* op, const Nf4Tensor& w) {
  NQ_CHECK(w.packed.defined(), op, ": the NF4 weight [", w.out, ", ", w.in, "] has no packed codes");
  return w.packed.device();
}
// Checks x [..., features] against W [out, in] (shape, dtype, device) and returns its rows M.
static int64_t check_nf4_input(const char* op, const char* name, const Tensor& x, int64_t features,
                               const Nf4Tensor& w) {
  check_float(op, name, x);
  NQ_CHECK(x.ndim() >= 1 && x.size(-1) == features, op, ": ", name, " ", x.shape().str(),
           " does not match the NF4 weight [", w.out, ", ", w.in, "] (last dim must be ", features, ")");
  NQ_CHECK(nf4_device(op, w) == x.device(), op, ": ", name, " is ", x.desc(), " but the NF4 weight is on ",
           device_name(w.packed.device()), " (move the model with to_device)");
  return features ? x.numel() / features : 0;
}
// The low-rank term: a [M, r], w [n, r] (forward, n = out) or [r, n] (dx, n = in), in x's dtype and device.
static void check_low_rank(const char* op, const LowRankTerm& t, const Tensor& x, int64_t M, int64_t n,
                           bool transposed) {
  check_ndim(op, "low-rank a", t.a, 2);
  check_ndim(op, "low-rank w", t.w, 2);
  const int64_t r = t.a.size(1);
  const Shape want_w = transposed ? Shape{r, n} : Shape{n, r};
  NQ_CHECK(t.a.size(0) == M && t.w.shape() == want_w, op, ": low-rank term a ", t.a.shape().str(), ", w ",
           t.w.shape().str(), " does not fit x ", x.shape().str(), " (expected a [", M, ", r], w ",
           transposed ? "[r, in]" : "[out, r]", ")");
  NQ_CHECK(t.a.dtype() == x.dtype() && t.w.dtype() == x.dtype(), op, ": low-rank operands ", t.a.desc(), ", ",
           t.w.desc(), " must have the dtype of ", x.desc());
  check_same_device(op, {&x, &t.a, &t.w});
}
// out [M, n] += (scale * a) w^T (forward) or (scale * a) w (dx), on the CPU.
static void add_low_rank_cpu(Tensor& out, const LowRankTerm& t, int64_t M, int64_t n, bool transposed) {
  Tensor scaled = Tensor::empty(t.a.shape());
  cpu::scale(t.a.data<float>(), t.scale, scaled.data<float>(), t.a.numel());
  cpu::matmul(scaled.data<float>(), t.w.data<float>(), out.data<float>(), 1, M, n, t.a.size(1), false, !transposed,
              /*accumulate=*/true);
}
static Tensor cpu_tile(const Nf4Tensor& w) {  // one tile of W's rows, f32, counted as workspace
  return Tensor::empty({std::min(kNf4CpuTileRows, w.out), w.in}, DType::F32, Device::CPU, MemCategory::Workspace);
}

Tensor nf4_matmul(const Tensor& x, const Nf4Tensor& w, const LowRankTerm* extra, Nf4MatmulPath path) {
  const char* op = "nf4_matmul";
  const int64_t M = check_nf4_input(op, "x", x, w.in, w);
  if (extra) check_low_rank(op, *extra, x, M, w.out, false);
  if (x.device() == Device::CUDA) NQ_RUN_CUDA(nf4_matmul, x, cuda::nf4_device_view(w), extra, path);
  Tensor y = Tensor::empty(with_last(x.shape(), w.out));  // [..., out]
  if (M == 0) return y;
  Tensor tile = cpu_tile(w);
  cpu::nf4_matmul(x.data<float>(), w, y.data<float>(), M, kNf4CpuTileRows, tile.data<float>());
  if (extra) add_low_rank_cpu(y, *extra, M, w.out, false);
  return y;
}
Tensor nf4_matmul_dx(const Tensor& dy, const Nf4Tensor& w, const LowRankTerm* extra, Nf4MatmulPath path) {
  const char* op = "nf4_matmul_dx";
  const int64_t M = check_nf4_input(op, "dy", dy, w.out, w);
  if (extra) check_low_rank(op, *extra, dy, M, w.in, true);
  if (dy.device() == Device::CUDA) NQ_RUN_CUDA(nf4_matmul_dx, dy, cuda::nf4_device_view(w), extra, path);
  Tensor dx = Tensor::zeros(with_last(dy.shape(), w.in));  // [..., in]
  if (M == 0) return dx;
  Tensor tile = cpu_tile(w);
  cpu::nf4_matmul_dx(dy.data<float>(), w, dx.data<float>(), M, kNf4CpuTileRows, tile.data<float>());
  if (extra) add_low_rank_cpu(dx, *extra, M, w.in, true);
  return dx;
}
Tensor nf4_dequantize(const Nf4Tensor& w, DType dtype) {
  if (nf4_device("nf4_dequantize", w) == Device::CUDA) {
    NQ_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
             "nf4_dequantize: the GPU gives f32, bf16 or f16, not ",
             dtype_name(dtype));
    NQ_RUN_CUDA(nf4_dequantize, cuda::nf4_device_view(w), dtype);
  }
  NQ_CHECK(dtype == DType::F32, "nf4_dequantize: the cpu gives f32 (the reference dtype), not ", dtype_name(dtype));
  return dequantize_nf4(w);
}
size_t nf4_matmul_workspace_bytes(int64_t M, int64_t out, int64_t in, DType dtype, Device device) {
  if (M <= 0) return 0;
  if (device == Device::CPU) return size_t(std::min(kNf4CpuTileRows, out) * in) * sizeof(float);
  return M >= cuda::kNf4DequantMinRows ? size_t(out * in) * dtype_size(dtype) : 0;
}

// ---- the grouped NF4 matmul of a MoE layer's experts ------------------------------
// Checks the row bounds of a [M, ...] for E experts (E + 1 values from 0 to M, non-decreasing).
static void check_bounds(const char* op, const Tensor& a, size_t E, const std::vector<int64_t>& offsets) {
  NQ_CHECK(E > 0 && offsets.size() == E + 1, op, ": ", E, " experts need ", E + 1, " row bounds, got ", offsets.size());
  NQ_CHECK(offsets.front() == 0 && offsets.back() == a.size(0), op, ": row bounds run from ", offsets.front(), " to ",
           offsets.back(), ", expected 0 to ", a.size(0));
  for (size_t e = 0; e < E; ++e)
    NQ_CHECK(offsets[e] <= offsets[e + 1], op, ": expert ", e, "'s rows [", offsets[e], ", ", offsets[e + 1],
             ") run backwards");
}
// Checks x [M, features] against the experts (one shape, on x's device), the row bounds
// (E + 1, from 0 to M, non-decreasing) and the low-rank term (a [M, r], expert e's w [n, r]
// or, transposed, [r, n], all in x's dtype and device).
static void check_grouped(const char* op, const char* name, const Tensor& x, const std::vector<const Nf4Tensor*>& w,
                          const std::vector<int64_t>& offsets, const GroupedLowRankTerm* extra, bool transposed) {
  NQ_CHECK(!w.empty(), op, ": no experts");
  check_ndim(op, name, x, 2);
  for (size_t e = 0; e < w.size(); ++e) {
    NQ_CHECK(w[e] != nullptr && w[e]->out == w[0]->out && w[e]->in == w[0]->in, op, ": expert ", e, "'s NF4 weight ",
             w[e] ? str("[", w[e]->out, ", ", w[e]->in, "]") : std::string("is null"), ", expected [", w[0]->out,
             ", ", w[0]->in, "] as expert 0's");
    check_nf4_input(op, name, x, transposed ? w[e]->out : w[e]->in, *w[e]);
  }
  check_bounds(op, x, w.size(), offsets);
  if (!extra) return;
  NQ_CHECK(extra->w.size() == w.size() && extra->scale.size() == w.size(), op, ": the low-rank term has ",
           extra->w.size(), " weights and ", extra->scale.size(), " scales for ", w.size(), " experts");
  check_ndim(op, "low-rank a", extra->a, 2);
  const int64_t r = extra->a.size(1), n = transposed ? w[0]->in : w[0]->out;
  NQ_CHECK(extra->a.size(0) == x.size(0) && extra->a.dtype() == x.dtype(), op, ": low-rank a ", extra->a.desc(),
           " does not fit ", name, " ", x.desc(), " (expected [", x.size(0), ", r] in its dtype)");
  for (size_t e = 0; e < w.size(); ++e) {
    const Shape want = transposed ? Shape{r, n} : Shape{n, r};
    NQ_CHECK(extra->w[e].defined() && extra->w[e].shape() == want && extra->w[e].dtype() == x.dtype(), op,
             ": expert ", e, "'s low-rank w ", extra->w[e].defined() ? extra->w[e].desc() : std::string("undefined"),
             ", expected ", want.str(), " in ", name, "'s dtype");
    check_same_device(op, {&x, &extra->a, &extra->w[e]});
  }
}
#ifdef NQ_CUDA
static std::vector<cuda::Nf4Weight> device_views(const std::vector<const Nf4Tensor*>& w) {
  std::vector<cuda::Nf4Weight> views;
  for (const Nf4Tensor* e : w) views.push_back(cuda::nf4_device_view(*e));
  return views;
}
#endif
// CPU: expert by expert, nf4_matmul's tile loop and the bypass on its rows.
static Tensor grouped_cpu(const Tensor& x, const std::vector<const Nf4Tensor*>& w, const std::vector<int64_t>& offsets,
                          const GroupedLowRankTerm* extra, bool transposed) {
  const int64_t K = transposed ? w[0]->out : w[0]->in, N = transposed ? w[0]->in : w[0]->out;
  Tensor out = Tensor::zeros({x.size(0), N});  // [M, N]; the dx tile loop accumulates
  Tensor tile = cpu_tile(*w[0]);
  for (size_t e = 0; e < w.size(); ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    if (!rows) continue;
    const float* in = x.data<float>() + r0 * K;
    float* o = out.data<float>() + r0 * N;
    if (transposed) cpu::nf4_matmul_dx(in, *w[e], o, rows, kNf4CpuTileRows, tile.data<float>());
    else cpu::nf4_matmul(in, *w[e], o, rows, kNf4CpuTileRows, tile.data<float>());
    if (!extra) continue;
    Tensor rows_out = out.slice(r0, r0 + rows);
    add_low_rank_cpu(rows_out, {extra->a.slice(r0, r0 + rows), extra->w[e], extra->scale[e]}, rows, N, transposed);
  }
  return out;
}
Tensor nf4_grouped_matmul(const Tensor& x, const std::vector<const Nf4Tensor*>& w, const std::vector<int64_t>& offsets,
                          const GroupedLowRankTerm* extra) {
  check_grouped("nf4_grouped_matmul", "x", x, w, offsets, extra, false);
  if (x.device() == Device::CUDA) NQ_RUN_CUDA(nf4_grouped_matmul, x, device_views(w), offsets, extra, false);
  return grouped_cpu(x, w, offsets, extra, false);
}
Tensor nf4_grouped_matmul_dx(const Tensor& dy, const std::vector<const Nf4Tensor*>& w,
                             const std::vector<int64_t>& offsets, const GroupedLowRankTerm* extra) {
  check_grouped("nf4_grouped_matmul_dx", "dy", dy, w, offsets, extra, true);
  if (dy.device() == Device::CUDA) NQ_RUN_CUDA(nf4_grouped_matmul, dy, device_views(w), offsets, extra, true);
  return grouped_cpu(dy, w, offsets, extra, true);
}

// ---- dense products per expert ---------------------------------------------------------
Tensor grouped_matmul(const Tensor& a, const std::vector<Tensor>& w, const std::vector<int64_t>& offsets, bool trans_w,
                      const std::vector<float>& scales) {
  const char* op = "grouped_matmul";
  check_float(op, "a", a);
  check_ndim(op, "a", a, 2);
  check_bounds(op, a, w.size(), offsets);
  NQ_CHECK(scales.size() == w.size(), op, ": ", scales.size(), " scales for ", w.size(), " experts");
  const Shape shape = w[0].shape();
  for (size_t e = 0; e < w.size(); ++e) {
    check_ndim(op, "w", w[e], 2);
    NQ_CHECK(w[e].shape() == shape && w[e].dtype() == a.dtype(), op, ": expert ", e, "'s w ", w[e].desc(),
             ", expected ", shape.str(), " in a's dtype ", dtype_name(a.dtype()));
    check_same_device(op, {&a, &w[e]});
  }
  const int64_t k = trans_w ? shape[0] : shape[1], n = trans_w ? shape[1] : shape[0];
  NQ_CHECK(a.size(1) == k, op, ": a ", a.shape().str(), " does not fit w ", shape.str(), trans_w ? "" : " transposed");
  if (a.device() == Device::CUDA) NQ_RUN_CUDA(grouped_matmul, a, w, offsets, trans_w, scales);
  Tensor y = Tensor::empty({a.size(0), n});  // [M, n], every row written (the rows are the experts')
  for (size_t e = 0; e < w.size(); ++e) {
    const int64_t r0 = offsets[e], r1 = offsets[e + 1];
    if (r0 == r1) continue;
    Tensor rows = y.slice(r0, r1);
    rows.copy_from(scale(matmul(a.slice(r0, r1), w[e], false, !trans_w), scales[e]));
  }
  return y;
}
Tensor grouped_weight_grad(const Tensor& a, const Tensor& b, const std::vector<int64_t>& offsets,
                           const std::vector<float>& scales) {
  const char* op = "grouped_weight_grad";
  check_float(op, "a", a);
  check_float(op, "b", b);
  check_ndim(op, "a", a, 2);
  check_ndim(op, "b", b, 2);
  check_bounds(op, a, scales.size(), offsets);
  NQ_CHECK(b.size(0) == a.size(0) && b.dtype() == a.dtype(), op, ": b ", b.desc(), " does not fit a ", a.desc(),
           " (the same rows and dtype)");
  check_same_device(op, {&a, &b});
  const int64_t E = int64_t(scales.size()), P = a.size(1), Q = b.size(1);
  if (a.device() == Device::CUDA) NQ_RUN_CUDA(grouped_weight_grad, a, b, offsets, scales);
  Tensor g = Tensor::zeros({E, P, Q});  // [E, p, q] f32
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[size_t(e)], r1 = offsets[size_t(e) + 1];
    if (r0 == r1) continue;
    Tensor part = g.slice(e, e + 1).view({P, Q});
    part.copy_from(scale(matmul(a.slice(r0, r1), b.slice(r0, r1), true, false), scales[size_t(e)]));
  }
  return g;
}

// ---- LoRA over an NF4 base ---------------------------------------------------------
// Checks x against W and the adapter (A [r, in], B [out, r] in x's dtype and device); returns M.
static int64_t check_lora_nf4(const char* op, const Tensor& x, const Nf4Tensor& w, const LoraParams& lora) {
  const int64_t M = check_nf4_input(op, "x", x, w.in, w);
  check_ndim(op, "A", lora.a, 2);
  check_ndim(op, "B", lora.b, 2);
  const int64_t r = lora.a.size(0);
  NQ_CHECK(lora.a.size(1) == w.in && lora.b.shape() == (Shape{w.out, r}), op, ": A ", lora.a.shape().str(),
           " and B ", lora.b.shape().str(), " do not fit the NF4 weight [", w.out, ", ", w.in,
           "] (expected A [r, in], B [out, r])");
  NQ_CHECK(lora.a.dtype() == x.dtype() && lora.b.dtype() == x.dtype(), op, ": A ", lora.a.desc(), " and B ",
           lora.b.desc(), " must have the dtype of x ", x.desc());
  check_same_device(op, {&x, &lora.a, &lora.b});
  NQ_CHECK(lora.dropout >= 0.0f && lora.dropout < 1.0f, op, ": dropout must be in [0, 1), got ", lora.dropout);
  return M;
}
// dropout(t) with the adapter's mask, t itself when p = 0 (the mask is its own backward).
static Tensor lora_dropped(const Tensor& t, const LoraParams& lora) {
  return lora.dropout > 0.0f ? dropout_forward(t, lora.dropout, lora.seed, lora.offset) : t;
}
Tensor lora_nf4_forward(const Tensor& x, const Nf4Tensor& w, const LoraParams& lora, Tensor* u) {
  check_lora_nf4("lora_nf4_forward", x, w, lora);
  if (x.device() == Device::CUDA) NQ_RUN_CUDA(lora_nf4_forward, x, cuda::nf4_device_view(w), lora, u);
  // CPU: composed of the ops above (the f32 reference the fused GPU kernels are held to).
  const int64_t M = x.numel() / w.in;
  const Tensor x2 = x.view({M, w.in});                                                 // [M, in]
  Tensor h = matmul(lora_dropped(x2, lora), lora.a, false, true);                      // u = xd A^T [M, r]
  const LowRankTerm bypass{h, lora.b, lora.scale};                                     // + (s u) B^T
  Tensor y = nf4_matmul(x2, w, &bypass);                                               // [M, out]
  if (u) *u = h;
  return y.view(with_last(x.shape(), w.out));
}
void lora_nf4_backward(const Tensor& dy, const Tensor& x, const Tensor& u, const Nf4Tensor& w, const LoraParams& lora,
                       Tensor* dx, Tensor* grad_a, Tensor* grad_b) {
  const char* op = "lora_nf4_backward";
  const int64_t M = check_lora_nf4(op, x, w, lora);
  check_float(op, "dy", dy);
  check_defined(op, "u", u);
  NQ_CHECK(dy.size(-1) == w.out && dy.numel() == M * w.out && u.shape() == (Shape{M, lora.a.size(0)}) &&
               u.dtype() == x.dtype() && dy.dtype() == x.dtype(),
           op, ": dy ", dy.desc(), " and saved u ", u.desc(), " do not fit x ", x.desc(), " (expected dy [..., ",
           w.out, "] and u [", M, ", ", lora.a.size(0), "] in x's dtype)");
  check_same_device(op, {&x, &dy, &u});
  if (x.device() == Device::CUDA)
    NQ_RUN_CUDA(lora_nf4_backward, dy, x, u, cuda::nf4_device_view(w), lora, dx, grad_a, grad_b);
  // CPU: composed of the ops above.
  const Tensor x2 = x.view({M, w.in}), dy2 = dy.view({M, w.out});
  if (grad_b) *grad_b = scale(matmul(dy2, u, true, false), lora.scale);  // dB = s dy^T u [out, r]
  const Tensor v = scale(matmul(dy2, lora.b), lora.scale);               // v = s dy B [M, r]
  if (grad_a) *grad_a = matmul(v, lora_dropped(x2, lora), true, false);  // dA = v^T xd [r, in]
  if (!dx) return;
  Tensor d = nf4_matmul_dx(dy2, w);                                      // dy W [M, in]
  add_inplace(d, lora_dropped(matmul(v, lora.a), lora));                 // + dropout_backward(v A)
  *dx = d.view(x.shape());
}

// ---- LoRA over a MoE layer's NF4 experts, grouped --------------------------------------
// Expert e's adapter as lora_nf4's parameters (its checks, the shared mask).
static LoraParams expert_params(const GroupedLoraParams& g, size_t e) {
  return {g.a[e], g.b[e], g.scale[e], g.dropout, g.seed, g.offset};
}
// Checks the experts' adapters against x [M, in] and their weights (one rank); returns it.
static int64_t check_grouped_lora(const char* op, const Tensor& x, const std::vector<const Nf4Tensor*>& w,
                                  const GroupedLoraParams& lora, const std::vector<int64_t>& offsets) {
  check_grouped(op, "x", x, w, offsets, nullptr, false);
  NQ_CHECK(lora.a.size() == w.size() && lora.b.size() == w.size() && lora.scale.size() == w.size(), op, ": ",
           lora.a.size(), " A, ", lora.b.size(), " B and ", lora.scale.size(), " scales for ", w.size(), " experts");
  for (size_t e = 0; e < w.size(); ++e) {
    check_lora_nf4(op, x, *w[e], expert_params(lora, e));
    NQ_CHECK(lora.a[e].size(0) == lora.a[0].size(0), op, ": expert ", e, "'s adapter has rank ", lora.a[e].size(0),
             ", expert 0's ", lora.a[0].size(0), " (one rank for all the experts of a projection)");
  }
  return lora.a[0].size(0);
}
Tensor lora_nf4_grouped_forward(const Tensor& x, const std::vector<const Nf4Tensor*>& w,
                                const GroupedLoraParams& lora, const std::vector<int64_t>& offsets, Tensor* u) {
  check_grouped_lora("lora_nf4_grouped_forward", x, w, lora, offsets);
  const std::vector<float> ones(w.size(), 1.0f);
  const Tensor xd = lora_dropped(x, expert_params(lora, 0));     // the one mask over x
  const Tensor h = grouped_matmul(xd, lora.a, offsets, false, ones);  // u = xd_e A_e^T [M, r]
  const GroupedLowRankTerm bypass{h, lora.b, lora.scale};            // + (s_e u_e) B_e^T
  Tensor y = nf4_grouped_matmul(x, w, offsets, &bypass);              // [M, out]
  if (u) *u = h;
  return y;
}
void lora_nf4_grouped_backward(const Tensor& dy, const Tensor& x, const Tensor& u, const std::vector<const Nf4Tensor*>& w,
                               const GroupedLoraParams& lora, const std::vector<int64_t>& offsets, Tensor* dx,
                               std::vector<Tensor>* grad_a, std::vector<Tensor>* grad_b) {
  const char* op = "lora_nf4_grouped_backward";
  const int64_t r = check_grouped_lora(op, x, w, lora, offsets), M = x.size(0);
  check_float(op, "dy", dy);
  check_defined(op, "u", u);
  NQ_CHECK(dy.shape() == (Shape{M, w[0]->out}) && u.shape() == (Shape{M, r}) && dy.dtype() == x.dtype() &&
               u.dtype() == x.dtype(),
           op, ": dy ", dy.desc(), " and saved u ", u.desc(), " do not fit x ", x.desc(), " (expected dy [", M, ", ",
           w[0]->out, "] and u [", M, ", ", r, "] in x's dtype)");
  check_same_device(op, {&x, &dy, &u});
  const size_t E = w.size();
  const std::vector<float> ones(E, 1.0f);
  const LoraParams mask = expert_params(lora, 0);
  const Tensor v = grouped_matmul(dy, lora.b, offsets, true, lora.scale);  // v_e = s_e dy_e B_e [M, r]
  // dB_e = s_e dy_e^T u_e [out, r], dA_e = v_e^T xd_e [r, in] (f32); none for an expert without rows
  auto per_expert = [&](const Tensor& all, std::vector<Tensor>* out) {  // [E, p, q] -> E tensors [p, q]
    out->assign(E, Tensor());
    for (size_t e = 0; e < E; ++e)
      if (offsets[e] < offsets[e + 1])
        (*out)[e] = all.slice(int64_t(e), int64_t(e) + 1).view({all.size(1), all.size(2)});
  };
  if (grad_b) per_expert(grouped_weight_grad(dy, u, offsets, lora.scale), grad_b);
  if (grad_a) per_expert(grouped_weight_grad(v, lora_dropped(x, mask), offsets, ones), grad_a);
  if (!dx) return;
  if (lora.dropout == 0.0f) {  // dx = dy_e W_e + v_e A_e, one grouped product
    const GroupedLowRankTerm bypass{v, lora.a, ones};
    *dx = nf4_grouped_matmul_dx(dy, w, offsets, &bypass);
    return;
  }
  Tensor d = nf4_grouped_matmul_dx(dy, w, offsets);                                   // dy_e W_e [M, in]
  add_inplace(d, lora_dropped(grouped_matmul(v, lora.a, offsets, true, ones), mask));  // + dropout_backward(v_e A_e)
  *dx = d;
}

// ---- optimizer ---------------------------------------------------------------------
void adamw_update(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWScalars& s,
                  float grad_scale, const CudaStream* stream) {
  const char* op = "adamw_update";
  const Tensor* args[] = {&param, &grad, &exp_avg, &exp_avg_sq};
  for (const Tensor* t : args) {
    check_defined(op, "an argument", *t);
    NQ_CHECK(t->dtype() == DType::F32 && t->numel() == param.numel(), op, ": param, grad, exp_avg, exp_avg_sq ",
             "must be f32 with one element count, got ", t->desc(), " for param ", param.desc());
  }
  check_same_device(op, {&param, &grad, &exp_avg, &exp_avg_sq});
  if (param.device() == Device::CUDA)
    NQ_RUN_CUDA(adamw_update_span, param.data<float>(), grad.data<float>(), exp_avg.data<float>(),
                exp_avg_sq.data<float>(), param.numel(), s, grad_scale, stream ? stream->handle() : nullptr);
  NQ_CHECK(stream == nullptr, op, ": a stream is for cuda tensors, the tensors are on the cpu");
  cpu::adamw_update_span(param.data<float>(), grad.data<float>(), exp_avg.data<float>(), exp_avg_sq.data<float>(),
                         param.numel(), s, grad_scale);
}
double global_grad_norm(const std::vector<Tensor>& grads) {
  const char* op = "global_grad_norm";
  if (grads.empty()) return 0.0;
  for (size_t i = 0; i < grads.size(); ++i) {
    check_defined(op, "a gradient", grads[i]);
    NQ_CHECK(grads[i].dtype() == DType::F32 && grads[i].device() == grads[0].device(), op, ": tensor ", i, " is ",
             grads[i].desc(), ", expected f32 on ", device_name(grads[0].device()));
  }
  if (grads[0].device() == Device::CUDA) NQ_RUN_CUDA(global_grad_norm, grads);
  std::vector<cpu::FloatSpan> spans;
  for (const Tensor& g : grads) spans.push_back({g.data<float>(), g.numel()});
  return double(cpu::global_l2_norm(spans));
}

}  // namespace nq::kernels
