// cuda_emu: cuBLASLt on the host (see include/cublasLt.h). The descriptors are
// plain records; cublasLtMatmul validates them like the library (returning its
// status codes) and computes D = alpha op(A) op(B) + beta C per batch, at once on
// the default stream, queued on a created one (cuda_emu/streams.cpp):
//   op(A) [m, k], op(B) [k, n] are copied to f32 row-major buffers, then row i
//   of D is accumulated over k in order (acc[j] += a[i, k] b[k, j]), f32 throughout,
//   and rounded once to D's type.
#include <cublasLt.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "runtime/half.h"

struct cublasLtContext {};
struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType_t type;
  int32_t order = CUBLASLT_ORDER_COL;
  uint64_t rows, cols;
  int64_t ld;
  int32_t batch = 1;
  int64_t stride = 0;
};
struct cublasLtMatmulDescOpaque_t {
  int32_t compute, scale;
  int32_t pointer_mode = 0;
  int32_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N, trans_c = CUBLAS_OP_N;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
};
struct cublasLtMatmulPreferenceOpaque_t {
  uint32_t search_mode = 0;
  uint64_t max_workspace = 0;
  uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D: cuBLASLt's default assumption
};

namespace {

// Copies an attribute value of exactly the documented size (a size mismatch is INVALID_VALUE, as in cuBLASLt).
template <typename T> bool take(T& field, const void* buf, size_t size) {
  if (!buf || size != sizeof(T)) return false;
  std::memcpy(&field, buf, sizeof(T));
  return true;
}


float load(cudaDataType_t t, const void* base, size_t index) {
  switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(base)[index];
    case CUDA_R_16BF: return nq::bf16_to_f32(static_cast<const uint16_t*>(base)[index]);
    case CUDA_R_16F: return nq::f16_to_f32(static_cast<const uint16_t*>(base)[index]);
    default: return float(static_cast<const double*>(base)[index]);
  }
}
void store(cudaDataType_t t, void* base, size_t index, float v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(base)[index] = v; break;
    case CUDA_R_16BF: static_cast<uint16_t*>(base)[index] = nq::f32_to_bf16(v); break;
    case CUDA_R_16F: static_cast<uint16_t*>(base)[index] = nq::f32_to_f16(v); break;
    default: static_cast<double*>(base)[index] = v; break;
  }
}
// Element (i, j) of a layout, batch b.
size_t offset(const cublasLtMatrixLayoutOpaque_t& l, uint64_t i, uint64_t j, int64_t b) {
  return size_t(b * l.stride) + (l.order == CUBLASLT_ORDER_COL ? i + j * size_t(l.ld) : i * size_t(l.ld) + j);
}
bool valid_layout(const cublasLtMatrixLayoutOpaque_t& l) {
  if (l.order != CUBLASLT_ORDER_COL && l.order != CUBLASLT_ORDER_ROW) return false;
  if (l.batch < 1 || l.ld < 1) return false;
  return l.order == CUBLASLT_ORDER_COL ? uint64_t(l.ld) >= l.rows : uint64_t(l.ld) >= l.cols;
}

struct Problem {
  uint64_t m, n, k;
  int32_t batch;
};

// Checks a matmul description as cuBLASLt does; fills the problem's dimensions.
cublasStatus_t check(const cublasLtMatmulDescOpaque_t* desc, const cublasLtMatrixLayoutOpaque_t* a,
                     const cublasLtMatrixLayoutOpaque_t* b, const cublasLtMatrixLayoutOpaque_t* c,
                     const cublasLtMatrixLayoutOpaque_t* d, Problem* p) {
  if (!desc || !a || !b || !c || !d) return CUBLAS_STATUS_INVALID_VALUE;
  if (desc->compute != CUBLAS_COMPUTE_32F || desc->scale != CUDA_R_32F || desc->pointer_mode != 0 ||
      desc->trans_c != CUBLAS_OP_N)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  for (int32_t t : {desc->trans_a, desc->trans_b})
    if (t != CUBLAS_OP_N && t != CUBLAS_OP_T && t != CUBLAS_OP_C) return CUBLAS_STATUS_INVALID_VALUE;
  if (desc->epilogue != CUBLASLT_EPILOGUE_DEFAULT && desc->epilogue != CUBLASLT_EPILOGUE_RELU &&
      desc->epilogue != CUBLASLT_EPILOGUE_BIAS && desc->epilogue != CUBLASLT_EPILOGUE_RELU_BIAS)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if ((desc->epilogue & CUBLASLT_EPILOGUE_BIAS) && !desc->bias) return CUBLAS_STATUS_INVALID_VALUE;
  // Types: A, B both f32 -> f32; both bf16 (or f16) -> the same 16-bit type or f32; C and D alike.
  if (a->type != b->type || c->type != d->type) return CUBLAS_STATUS_NOT_SUPPORTED;
  bool ok = (a->type == CUDA_R_32F && c->type == CUDA_R_32F) ||
            ((a->type == CUDA_R_16BF || a->type == CUDA_R_16F) && (c->type == a->type || c->type == CUDA_R_32F));
  if (!ok) return CUBLAS_STATUS_NOT_SUPPORTED;
  for (auto* l : {a, b, c, d})
    if (!valid_layout(*l)) return CUBLAS_STATUS_INVALID_VALUE;
  const bool ta = desc->trans_a != CUBLAS_OP_N, tb = desc->trans_b != CUBLAS_OP_N;
  p->m = ta ? a->cols : a->rows;
  p->k = ta ? a->rows : a->cols;
  const uint64_t kb = tb ? b->cols : b->rows;
  p->n = tb ? b->rows : b->cols;
  if (kb != p->k || c->rows != p->m || c->cols != p->n || d->rows != p->m || d->cols != p->n)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (a->batch != d->batch || b->batch != d->batch || c->batch != d->batch) return CUBLAS_STATUS_INVALID_VALUE;
  p->batch = d->batch;
  return CUBLAS_STATUS_SUCCESS;
}

uint32_t alignment_of(const void* ptr) {
  uint32_t a = 256;
  while (a > 1 && reinterpret_cast<uintptr_t>(ptr) % a) a >>= 1;
  return a;
}

}  // namespace

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (!layout) return CUBLAS_STATUS_INVALID_VALUE;
  *layout = new cublasLtMatrixLayoutOpaque_t{type, CUBLASLT_ORDER_COL, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t size) {
  if (!l) return CUBLAS_STATUS_INVALID_VALUE;
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: {
      uint32_t t;
      if ((ok = take(t, buf, size))) l->type = cudaDataType_t(t);
      break;
    }
    case CUBLASLT_MATRIX_LAYOUT_ORDER: ok = take(l->order, buf, size); break;
    case CUBLASLT_MATRIX_LAYOUT_ROWS: ok = take(l->rows, buf, size); break;
    case CUBLASLT_MATRIX_LAYOUT_COLS: ok = take(l->cols, buf, size); break;
    case CUBLASLT_MATRIX_LAYOUT_LD: ok = take(l->ld, buf, size); break;
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: ok = take(l->batch, buf, size); break;
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: ok = take(l->stride, buf, size); break;
  }
  return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute, cudaDataType_t scale) {
  if (!desc) return CUBLAS_STATUS_INVALID_VALUE;
  *desc = new cublasLtMatmulDescOpaque_t{int32_t(compute), int32_t(scale)};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size) {
  if (!d) return CUBLAS_STATUS_INVALID_VALUE;
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: ok = take(d->compute, buf, size); break;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: ok = take(d->scale, buf, size); break;
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: ok = take(d->pointer_mode, buf, size); break;
    case CUBLASLT_MATMUL_DESC_TRANSA: ok = take(d->trans_a, buf, size); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: ok = take(d->trans_b, buf, size); break;
    case CUBLASLT_MATMUL_DESC_TRANSC: ok = take(d->trans_c, buf, size); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: ok = take(d->epilogue, buf, size); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: ok = take(d->bias, buf, size); break;
  }
  return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
  *pref = new cublasLtMatmulPreferenceOpaque_t;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t size) {
  if (!p) return CUBLAS_STATUS_INVALID_VALUE;
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: ok = take(p->search_mode, buf, size); break;
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: ok = take(p->max_workspace, buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: ok = take(p->align[0], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: ok = take(p->align[1], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: ok = take(p->align[2], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: ok = take(p->align[3], buf, size); break;
  }
  return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

// One "algorithm": it remembers the alignments it was chosen for; cublasLtMatmul refuses less aligned buffers.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t* results, int* returned) {
  if (!handle || !pref || !results || !returned || requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  Problem p;
  cublasStatus_t st = check(desc, a, b, c, d, &p);
  *returned = 0;
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  for (int i = 0; i < 4; ++i) results[0].algo.data[i] = pref->align[i];
  results[0].workspaceSize = 0;
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

namespace {

// D = alpha op(A) op(B) + beta C for a checked problem; the descriptors are copies
// taken at the call (a queued matmul outlives the caller's descriptors, as in cuBLASLt).
struct Matmul {
  cublasLtMatmulDescOpaque_t desc;
  cublasLtMatrixLayoutOpaque_t a_desc, b_desc, c_desc, d_desc;
  Problem p;
  float alpha, beta;
  const void *a, *b, *c;
  void* d;
  void run() const;
};

void Matmul::run() const {
  cuda_emu::install_fault_handler();  // reads past a buffer's end hit its guard page
  const bool ta = desc.trans_a != CUBLAS_OP_N, tb = desc.trans_b != CUBLAS_OP_N;
  std::vector<float> op_a(p.m * p.k), op_b(p.k * p.n), acc(p.n);
  for (int32_t bi = 0; bi < p.batch; ++bi) {
    for (uint64_t i = 0; i < p.m; ++i)
      for (uint64_t kk = 0; kk < p.k; ++kk)
        op_a[i * p.k + kk] = load(a_desc.type, a, ta ? offset(a_desc, kk, i, bi) : offset(a_desc, i, kk, bi));
    for (uint64_t kk = 0; kk < p.k; ++kk)
      for (uint64_t j = 0; j < p.n; ++j)
        op_b[kk * p.n + j] = load(b_desc.type, b, tb ? offset(b_desc, j, kk, bi) : offset(b_desc, kk, j, bi));
    for (uint64_t i = 0; i < p.m; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (uint64_t kk = 0; kk < p.k; ++kk) {
        const float x = op_a[i * p.k + kk];
        const float* row = &op_b[kk * p.n];
        for (uint64_t j = 0; j < p.n; ++j) acc[j] += x * row[j];
      }
      for (uint64_t j = 0; j < p.n; ++j) {
        float v = alpha * acc[j];
        if (beta != 0.0f) v += beta * load(c_desc.type, c, offset(c_desc, i, j, bi));  // beta = 0: C is not read
        if (desc.epilogue & CUBLASLT_EPILOGUE_BIAS) v += load(d_desc.type, desc.bias, i);
        if (desc.epilogue == CUBLASLT_EPILOGUE_RELU || desc.epilogue == CUBLASLT_EPILOGUE_RELU_BIAS)
          v = std::max(v, 0.0f);
        store(d_desc.type, d, offset(d_desc, i, j, bi), v);
      }
    }
  }
}

}  // namespace

// Checked at the call; computed then (default stream) or when the stream runs it (cuda_emu/streams.cpp).
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* a,
                              cublasLtMatrixLayout_t a_desc, const void* b, cublasLtMatrixLayout_t b_desc,
                              const void* beta, const void* c, cublasLtMatrixLayout_t c_desc, void* d,
                              cublasLtMatrixLayout_t d_desc, const cublasLtMatmulAlgo_t* algo, void*, size_t,
                              cudaStream_t stream) {
  if (!handle || !alpha || !beta || !a || !b || !d) return CUBLAS_STATUS_INVALID_VALUE;
  Problem p;
  cublasStatus_t st = check(desc, a_desc, b_desc, c_desc, d_desc, &p);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  if (c == d && std::memcmp(c_desc, d_desc, sizeof *c_desc) != 0) return CUBLAS_STATUS_INVALID_VALUE;  // in place: same layout
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);  // host pointer mode
  if (be != 0.0f && !c) return CUBLAS_STATUS_INVALID_VALUE;
  if (algo) {
    const void* ptrs[4] = {a, b, c ? c : d, d};
    for (int i = 0; i < 4; ++i)
      if (alignment_of(ptrs[i]) < algo->data[i]) return CUBLAS_STATUS_INVALID_VALUE;  // chosen for stricter alignment
  }
  const Matmul mm{*desc, *a_desc, *b_desc, *c_desc, *d_desc, p, al, be, a, b, c, d};
  if (cuda_emu::submit(stream, [mm] { mm.run(); }) != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
  return CUBLAS_STATUS_SUCCESS;
}
