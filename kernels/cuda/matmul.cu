// Dense GEMM via cuBLASLt (kernels.h matmul / matmul_into), bf16, f16 or f32 inputs,
// fp32 accumulation (CUBLAS_COMPUTE_32F), tensor cores for bf16 and f16.
//
// Row-major to column-major: cuBLASLt thinks in column-major, and a row-major
// X [r, c] read as column-major is X^T [c, r]. So row-major C = A B is computed
// as column-major C^T = B^T A^T: cuBLASLt's first operand is our B, its second
// our A, and m/n swap. Shapes: A [M, K], B [K, N], C [M, N] (3-D: batched).
//
// The cuBLASLt handle, a 32 MiB workspace and the chosen algorithm per shape
// are created once and cached (the heuristic query costs tens of microseconds).
//
// cuBLASLt is opened with dlopen at the first GEMM, not linked: a program linked
// with it carries ~212 MB more resident memory from its start (an empty main()
// linked with -lcublasLt: 212 MB vs 1 MB peak RSS), which every CPU-only run of
// ./train, ./eval or ./tokenize would pay. The emulated GPU (cuda_emu/) links its
// own cuBLASLt into the program, so there the table holds those functions.
//   ./bench matmul --m 4096 --n 4096 --k 4096
#include <cublasLt.h>
#ifndef NQ_CUDA_EMU
#include <dlfcn.h>
#endif

#include <map>
#include <mutex>
#include <tuple>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

namespace {

// The cuBLASLt functions this file calls, as pointers: api().cublasLtMatmul(...).
#define NQ_CUBLASLT_FUNCTIONS(X)                                                              \
  X(cublasLtCreate) X(cublasLtGetStatusString)                                                \
  X(cublasLtMatrixLayoutCreate) X(cublasLtMatrixLayoutSetAttribute) X(cublasLtMatrixLayoutDestroy) \
  X(cublasLtMatmulDescCreate) X(cublasLtMatmulDescSetAttribute) X(cublasLtMatmulDescDestroy)  \
  X(cublasLtMatmulPreferenceCreate) X(cublasLtMatmulPreferenceSetAttribute)                   \
  X(cublasLtMatmulPreferenceDestroy) X(cublasLtMatmulAlgoGetHeuristic) X(cublasLtMatmul)
struct CublasLtApi {
#define NQ_DECLARE_POINTER(f) decltype(&::f) f = nullptr;
  NQ_CUBLASLT_FUNCTIONS(NQ_DECLARE_POINTER)
#undef NQ_DECLARE_POINTER
  std::string library;  // the file opened, or "linked" (cuda_emu)
};

CublasLtApi load_cublaslt() {
  CublasLtApi api;
#ifdef NQ_CUDA_EMU
#define NQ_TAKE_ADDRESS(f) api.f = &::f;
  NQ_CUBLASLT_FUNCTIONS(NQ_TAKE_ADDRESS)
#undef NQ_TAKE_ADDRESS
  api.library = "linked (cuda_emu)";
#else
  // The toolkit's copy first (NQ_CUDA_LIB_DIR, set by the Makefile), then the loader's search path.
  const std::string soname = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
  void* lib = nullptr;
  std::string tried;
  for (const std::string& path : {std::string(NQ_CUDA_LIB_DIR) + "/" + soname, soname}) {
    lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) { api.library = path; break; }
    tried += str(tried.empty() ? "" : "; ", path, ": ", dlerror());
  }
  NQ_CHECK(lib, "cuBLASLt could not be opened (the GPU's GEMMs need it): ", tried);
#define NQ_LOOK_UP(f)                                                                          \
  api.f = reinterpret_cast<decltype(&::f)>(dlsym(lib, #f));                                    \
  NQ_CHECK(api.f, api.library, " has no function " #f " (cuBLASLt older than the headers?)");
  NQ_CUBLASLT_FUNCTIONS(NQ_LOOK_UP)
#undef NQ_LOOK_UP
#endif
  return api;
}

const CublasLtApi& api() {
  static const CublasLtApi loaded = load_cublaslt();  // once (after a failure, tried and thrown again)
  return loaded;
}

}  // namespace

std::string cublaslt_library() { return api().library; }

#define CUBLAS_CHECK(call)                                                                  \
  do {                                                                                      \
    cublasStatus_t st_ = (call);                                                            \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                       \
      throw ::nq::Error(::nq::str(#call, " failed at ", __FILE__, ":", __LINE__, ": ",      \
                                  api().cublasLtGetStatusString(st_)));                     \
  } while (0)

static cudaDataType_t lt_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: throw Error(str("matmul: cuBLASLt takes f32/bf16/f16, got ", dtype_name(t)));
  }
}

namespace {
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// One matrix layout descriptor (column-major rows x cols, leading dim ld), freed on scope exit.
struct Layout {
  cublasLtMatrixLayout_t desc = nullptr;
  Layout(DType t, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
    CUBLAS_CHECK(api().cublasLtMatrixLayoutCreate(&desc, lt_type(t), uint64_t(rows), uint64_t(cols), ld));
    if (batch > 1) {
      int32_t count = int32_t(batch);
      CUBLAS_CHECK(api().cublasLtMatrixLayoutSetAttribute(desc, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      CUBLAS_CHECK(api().cublasLtMatrixLayoutSetAttribute(desc, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
    }
  }
  ~Layout() { api().cublasLtMatrixLayoutDestroy(desc); }
};

struct LtState {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::mutex mu;
  // (shape, transposes, types, batch) -> algorithm chosen by the heuristic
  std::map<std::tuple<int64_t, int64_t, int64_t, int, int, int, uint32_t, uint32_t, int64_t>, cublasLtMatmulAlgo_t> algos;
  LtState() {
    CUBLAS_CHECK(api().cublasLtCreate(&handle));
    CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
  }
};
LtState& lt() {
  static LtState s;  // lives until exit (the driver frees it with the context)
  return s;
}
// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristic
// assumes 256-byte aligned buffers unless told otherwise, and row-chunk views
// (cross_entropy.cu) start anywhere.
uint32_t alignment_of(const void* p) {
  uint32_t a = 256;
  while (a > 1 && reinterpret_cast<uintptr_t>(p) % a) a >>= 1;
  return a;
}
}  // namespace

void gemm(const GemmArgs& g) {
  if (g.m == 0 || g.n == 0) return;
  if (g.k == 0) {  // empty inner dimension: C = beta * C (beta 0 or 1) without asking cuBLASLt
    NQ_CHECK(g.beta == 0.0f || g.beta == 1.0f, "matmul: k = 0 with beta ", g.beta, " is not supported");
    if (g.beta == 0.0f)
      for (int64_t b = 0; b < g.batch; ++b)
        CUDA_CHECK(cudaMemset(static_cast<char*>(g.c) + b * g.stride_c * dtype_size(g.c_type), 0,
                              size_t(g.m * g.n) * dtype_size(g.c_type)));
    return;
  }
  LtState& s = lt();
  // cuBLASLt's op(first) = our op(B)^T (an n x k column-major matrix); stored
  // layouts are the transposes of our row-major buffers.
  int64_t b_rows = g.trans_b ? g.k : g.n, b_cols = g.trans_b ? g.n : g.k;  // column-major view of B
  int64_t a_rows = g.trans_a ? g.m : g.k, a_cols = g.trans_a ? g.k : g.m;  // column-major view of A
  Layout first(g.b_type, b_rows, b_cols, b_rows, g.batch, g.stride_b);
  Layout second(g.a_type, a_rows, a_cols, a_rows, g.batch, g.stride_a);
  Layout out(g.c_type, g.n, g.m, g.n, g.batch, g.stride_c);

  cublasLtMatmulDesc_t op = nullptr;
  CUBLAS_CHECK(api().cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  struct OpGuard { cublasLtMatmulDesc_t d; ~OpGuard() { api().cublasLtMatmulDescDestroy(d); } } op_guard{op};
  cublasOperation_t ta = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(api().cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CUBLAS_CHECK(api().cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));

  uint32_t align_first = alignment_of(g.b), align_second = alignment_of(g.a), align_c = alignment_of(g.c);
  auto key = std::make_tuple(g.m, g.n, g.k, int(g.trans_a) + 2 * int(g.trans_b), int(g.a_type) + 8 * int(g.b_type),
                             int(g.c_type) * 2 + (g.beta != 0.0f), align_first, align_second * 512 + align_c, g.batch);
  cublasLtMatmulAlgo_t algo;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.algos.find(key);
    if (it != s.algos.end()) {
      algo = it->second;
    } else {
      cublasLtMatmulPreference_t pref = nullptr;
      CUBLAS_CHECK(api().cublasLtMatmulPreferenceCreate(&pref));
      size_t ws = kWorkspaceBytes;
      CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
      CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_first,
                                                        sizeof(align_first)));
      CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_second,
                                                        sizeof(align_second)));
      CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                        sizeof(align_c)));
      CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                        sizeof(align_c)));
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      cublasStatus_t st = api().cublasLtMatmulAlgoGetHeuristic(s.handle, op, first.desc, second.desc, out.desc, out.desc,
                                                         pref, 1, &result, &found);
      api().cublasLtMatmulPreferenceDestroy(pref);
      // (not CUBLAS_CHECK(st): its message would name the variable, not the call)
      NQ_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, "matmul: cuBLASLt has no algorithm for [", g.m, ", ", g.k,
               "] x [", g.k, ", ", g.n, "] (batch ", g.batch, ") with types ", dtype_name(g.a_type), " x ",
               dtype_name(g.b_type), " -> ", dtype_name(g.c_type), " (cublasLtMatmulAlgoGetHeuristic: ",
               api().cublasLtGetStatusString(st), ", at ", __FILE__, ":", __LINE__, ")");
      algo = result.algo;
      s.algos.emplace(key, algo);
    }
  }
  CUBLAS_CHECK(api().cublasLtMatmul(s.handle, op, &g.alpha, g.b, first.desc, g.a, second.desc, &g.beta, g.c, out.desc,
                              g.c, out.desc, &algo, s.workspace, kWorkspaceBytes, 0));
}

// Row-major dims of op(A), op(B) for a 2-D or batched 3-D tensor.
static int64_t rows(const Tensor& t) { return t.size(-2); }
static int64_t cols(const Tensor& t) { return t.size(-1); }

void matmul_into(Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, bool accumulate) {
  GemmArgs g{a.raw(), a.dtype(), trans_a, b.raw(), b.dtype(), trans_b, c.raw(), c.dtype(),
             trans_a ? cols(a) : rows(a), trans_b ? rows(b) : cols(b), trans_a ? rows(a) : cols(a)};
  g.beta = accumulate ? 1.0f : 0.0f;
  if (a.ndim() == 3) {
    g.batch = a.size(0);
    g.stride_a = rows(a) * cols(a);
    g.stride_b = rows(b) * cols(b);
    g.stride_c = g.m * g.n;
  }
  gemm(g);
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  int64_t m = trans_a ? cols(a) : rows(a), n = trans_b ? rows(b) : cols(b);
  Tensor c = a.ndim() == 3 ? Tensor::empty({a.size(0), m, n}, a.dtype(), Device::CUDA)
                           : Tensor::empty({m, n}, a.dtype(), Device::CUDA);
  matmul_into(c, a, b, trans_a, trans_b, false);
  return c;
}

}  // namespace nq::kernels::cuda
