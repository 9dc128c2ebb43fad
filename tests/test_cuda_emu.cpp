// The emulated GPU itself (cuda_emu/, build/emu only): that a launch computes
// what CUDA specifies (thread indices, shuffles, WMMA, cuBLASLt against naive
// double loops) and that each rule the emulator enforces fails with an
// nq::Error naming kernel, block, thread and the broken rule (so a pass of the
// GPU tests under the emulator means these rules held). Kernels are written
// here as host functions and launched through the emulator's launcher (what
// cuda_emu/rewrite.sed turns `<<<...>>>` into). Other builds compile nothing.
#include <doctest/doctest.h>

#ifdef NQ_CUDA_EMU
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <vector>

#include "runtime/error.h"
#include "tests/temp_dir.h"

#define LAUNCH(kernel, ...) ::cuda_emu::launch(kernel, #kernel, __FILE__, __LINE__)(__VA_ARGS__)

namespace {

namespace wmma = nvcuda::wmma;

__global__ void write_indices(int* out) {
  int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int b = blockIdx.x + gridDim.x * blockIdx.y;
  out[b * blockDim.x * blockDim.y * blockDim.z + t] = b * 1000 + t;
}

// shuffles: out[4 * t + i] = xor 3, down 5, up 2, idx 7 of value 100 + lane
__global__ void shuffles(int* out) {
  int lane = threadIdx.x & 31, v = 100 + lane;
  out[4 * threadIdx.x + 0] = __shfl_xor_sync(0xffffffffu, v, 3);
  out[4 * threadIdx.x + 1] = __shfl_down_sync(0xffffffffu, v, 5);
  out[4 * threadIdx.x + 2] = __shfl_up_sync(0xffffffffu, v, 2);
  out[4 * threadIdx.x + 3] = __shfl_sync(0xffffffffu, v, 7);
}

__global__ void divergent_barrier() {
  if (threadIdx.x < 16) return;
  __syncthreads();
}
__global__ void shuffle_after_return(float* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
__global__ void shuffle_in_partial_warp(float* out) { out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1); }
__global__ void mixed_barriers() {
  if (threadIdx.x == 0) __syncthreads();
  else __syncwarp();
}

// Each lane writes its slot of shared memory, then reads its neighbour's, with or without __syncwarp.
__global__ void neighbour_dynamic(float* out, bool sync) {
  float* slots = ::cuda_emu::dynamic_shared_memory();
  int lane = threadIdx.x;
  slots[lane] = float(lane);
  if (sync) __syncwarp();
  out[blockIdx.x * 32 + lane] = slots[(lane + 1) % 32];
}
__global__ void overflow_shared(int n) {
  unsigned char* smem = ::cuda_emu::dynamic_shared_memory();
  if (threadIdx.x == 0) smem[n] = 1;
}

// One warp: D [16, 16] = A [16, 16] B (B column-major when b_col), bf16 in, f32 out.
__global__ void wmma_product(float* d, const __nv_bfloat16* a, const __nv_bfloat16* b, bool b_col) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.5f);
  wmma::load_matrix_sync(fa, a, 16);
  if (b_col) {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
  } else {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}
__global__ void wmma_load(const __nv_bfloat16* p, unsigned ldm) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, p, ldm);
}
__global__ void wmma_half_warp(const __nv_bfloat16* p) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  if ((threadIdx.x & 31) < 16) wmma::load_matrix_sync(fa, p, 16);
  __syncwarp();
}
// out[i] = in[i + shift] for i < n: with shift > 0 the last threads read past the end of `in`.
__global__ void copy_shifted(float* out, const float* in, int n, int shift) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i + shift];
}
__global__ void vector_atomic(float* p) { atomicAdd(reinterpret_cast<float4*>(p), make_float4(1, 2, 3, 4)); }
__global__ void nothing() {}

// A death test: runs f in a forked child with stderr on a pipe (stdout discarded);
// the signal that killed the child (0: none), and what it wrote to stderr.
struct ChildResult {
  bool aborted = false;  // killed by SIGABRT
  int signal = 0;
  int exit_code = -1;
  std::string stderr_text;
};
ChildResult run_in_child(const std::function<void()>& f) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  std::cout.flush();
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    const int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, STDOUT_FILENO);
    try {
      f();
    } catch (...) {
      _exit(2);
    }
    _exit(0);
  }
  close(fds[1]);
  ChildResult r;
  char buf[4096];
  for (ssize_t got; (got = read(fds[0], buf, sizeof buf)) > 0;) r.stderr_text.append(buf, size_t(got));
  close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.aborted = r.signal == SIGABRT;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  return r;
}

}  // namespace

TEST_CASE("cuda_emu: thread and block indices cover the grid, each thread once") {
  dim3 grid(3, 2), block(4, 2, 3);
  std::vector<int> out(6 * 24, -1);
  LAUNCH(write_indices, grid, block)(out.data());
  REQUIRE(cudaGetLastError() == cudaSuccess);
  for (int b = 0; b < 6; ++b)
    for (int t = 0; t < 24; ++t) CHECK(out[size_t(b * 24 + t)] == b * 1000 + t);
}

TEST_CASE("cuda_emu: shuffles return the source lane's value (out of range: the caller's own)") {
  std::vector<int> out(64 * 4, -1);
  LAUNCH(shuffles, 1, 64)(out.data());
  for (int t = 0; t < 64; ++t) {
    int lane = t & 31;
    CAPTURE(t);
    CHECK(out[size_t(4 * t + 0)] == 100 + (lane ^ 3));
    CHECK(out[size_t(4 * t + 1)] == 100 + (lane + 5 < 32 ? lane + 5 : lane));
    CHECK(out[size_t(4 * t + 2)] == 100 + (lane >= 2 ? lane - 2 : lane));
    CHECK(out[size_t(4 * t + 3)] == 100 + 7);
  }
}

TEST_CASE("cuda_emu: barrier and shuffle rules fail with the kernel, block, thread and line") {
  std::string e = thrown_message([] { LAUNCH(divergent_barrier, 2, 64)(); });
  CHECK(e.find("kernel divergent_barrier (launched at tests/test_cuda_emu.cpp:") == 0);
  CHECK(e.find("block (0,0,0)") != std::string::npos);
  CHECK(e.find("__syncthreads at tests/test_cuda_emu.cpp:") != std::string::npos);
  CHECK(e.find("reached by 48 of 64 threads; the other 16 returned") != std::string::npos);

  std::vector<float> out(64);
  e = thrown_message([&] { LAUNCH(shuffle_after_return, 1, 32)(out.data()); });
  CHECK(e.find("lane 5 returned while its warp waits in __shfl_xor_sync") != std::string::npos);
  e = thrown_message([&] { LAUNCH(shuffle_in_partial_warp, 1, 48)(out.data()); });
  // The first lane of warp 1 to reach the shuffle: 32, or 47 when this launch runs its
  // lanes in descending order (the order alternates from launch to launch).
  CHECK((e.find("thread (32,0,0): __shfl_xor_sync at") != std::string::npos ||
         e.find("thread (47,0,0): __shfl_xor_sync at") != std::string::npos));
  CHECK(e.find("warp 1, which has only 16 threads") != std::string::npos);
  e = thrown_message([] { LAUNCH(mixed_barriers, 1, 32)(); });
  CHECK(e.find("deadlock: no thread can proceed; thread (0,0,0) waits at __syncthreads") != std::string::npos);

  // A failed launch leaves the emulator usable: the next one runs normally.
  std::vector<int> idx(32, -1);
  LAUNCH(write_indices, 1, 32)(idx.data());
  CHECK(idx[31] == 31);
}

TEST_CASE("cuda_emu: a missing __syncwarp reads poisoned shared memory; with it, the data") {
  // Blocks alternate between ascending and descending lane order. Ascending, lanes 0..30
  // read their neighbour's slot before the neighbour ran (lane 31 reads lane 0's, written);
  // descending, only lane 31 does.
  std::vector<float> out(64);
  LAUNCH(neighbour_dynamic, 2, 32, 32 * sizeof(float))(out.data(), false);
  int nans[2] = {0, 0};
  for (int t = 0; t < 64; ++t) nans[t / 32] += std::isnan(out[size_t(t)]);
  CHECK(std::min(nans[0], nans[1]) == 1);
  CHECK(std::max(nans[0], nans[1]) == 31);
  CHECK(std::isnan(out[31]) != std::isnan(out[63]));  // lane 31 misses only in the descending block
  LAUNCH(neighbour_dynamic, 2, 32, 32 * sizeof(float))(out.data(), true);
  for (int t = 0; t < 64; ++t) CHECK(out[size_t(t)] == float((t % 32 + 1) % 32));
  std::string e = thrown_message([] { LAUNCH(overflow_shared, 1, 32, 64)(64); });
  CHECK(e.find("wrote past the end of its 64 bytes of dynamic shared memory") != std::string::npos);
}

TEST_CASE("cuda_emu: launch configurations the GPU refuses set the error and run nothing") {
  std::vector<int> out(2048, -1);
  LAUNCH(write_indices, 1, 1025)(out.data());
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(out[0] == -1);
  LAUNCH(write_indices, dim3(1, 65536), 32)(out.data());
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  LAUNCH(nothing, 1, 32, 64 << 10)();  // over 48 KiB without the attribute
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK(cudaFuncSetAttribute(nothing, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10) == cudaSuccess);
  LAUNCH(nothing, 1, 32, 64 << 10)();
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(cudaFuncSetAttribute(nothing, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 << 10) == cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaSuccess);  // read and cleared
}

TEST_CASE("cuda_emu: cudaMemcpy checks that its kind says where the pointers are") {
  float host[4] = {1, 2, 3, 4}, back[4] = {};
  float* dev = nullptr;
  REQUIRE(cudaMalloc(&dev, sizeof host) == cudaSuccess);
  CHECK(cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaMemcpy(back, dev, sizeof host, cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(back[3] == 4.0f);
  CHECK(cudaMemcpy(back, dev, sizeof host, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(dev, host, sizeof host, cudaMemcpyDeviceToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(dev + 1, dev, sizeof host, cudaMemcpyDeviceToDevice) == cudaErrorInvalidValue);  // runs past the block
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK(cudaFree(dev) == cudaSuccess);
  CHECK(cudaFree(dev) == cudaErrorInvalidValue);  // not a live block any more
  cudaGetLastError();
}

TEST_CASE("cuda_emu: WMMA computes A B + C and enforces alignment, ldm and whole-warp use") {
  alignas(32) __nv_bfloat16 a[256], b[256];
  alignas(32) float d[256];
  for (int i = 0; i < 256; ++i) {
    a[i] = __float2bfloat16_rn(std::sin(0.37f * float(i)));
    b[i] = __float2bfloat16_rn(std::cos(0.11f * float(i)));
  }
  for (bool b_col : {false, true}) {
    CAPTURE(b_col);
    std::fill(d, d + 256, NAN);
    LAUNCH(wmma_product, 1, 32)(d, a, b, b_col);
    double worst = 0;
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < 16; ++c) {
        double want = 0.5;
        for (int k = 0; k < 16; ++k)
          want += double(__bfloat162float(a[r * 16 + k])) * __bfloat162float(b_col ? b[c * 16 + k] : b[k * 16 + c]);
        worst = std::max(worst, std::fabs(double(d[r * 16 + c]) - want));
      }
    CHECK(worst < 1e-5);  // f32 accumulation of exact bf16 products
  }
  std::string e = thrown_message([&] { LAUNCH(wmma_load, 1, 32)(a + 8, 16u); });
  CHECK(e.find("wmma::load_matrix_sync at tests/test_cuda_emu.cpp:") != std::string::npos);
  CHECK(e.find("is not 32-byte aligned") != std::string::npos);
  e = thrown_message([&] { LAUNCH(wmma_load, 1, 32)(a, 12u); });
  CHECK(e.find("ldm 12 (24 bytes) is not a multiple of 16 bytes") != std::string::npos);
  e = thrown_message([&] { LAUNCH(wmma_half_warp, 1, 32)(a); });
  CHECK(e.find("lanes 0 and 16 issued different WMMA operations") != std::string::npos);
  alignas(16) float acc[8] = {};
  e = thrown_message([&] { LAUNCH(vector_atomic, 1, 1)(acc + 2); });
  CHECK(e.find("atomicAdd(float4*): address not 16-byte aligned") != std::string::npos);
  LAUNCH(vector_atomic, 1, 3)(acc + 4);
  CHECK(acc[4] == 3.0f);
  CHECK(acc[7] == 12.0f);
}

namespace {
struct LtLayout {
  cublasLtMatrixLayout_t d = nullptr;
  LtLayout(cudaDataType t, uint64_t rows, uint64_t cols, int64_t ld) { cublasLtMatrixLayoutCreate(&d, t, rows, cols, ld); }
  ~LtLayout() { cublasLtMatrixLayoutDestroy(d); }
};
}  // namespace

TEST_CASE("cuda_emu: cuBLASLt follows its descriptors (order, ld, transposes, batches, beta) and checks them") {
  // D [m, n] = 2 op(A) op(B) + 0.5 C, A stored [k, m] column-major (op = T), B [k, n] row-major, 2 batches.
  const int m = 5, n = 3, k = 7, batch = 2;
  const int64_t lda = k + 1, ldb = n + 2, ldc = m, stride_a = lda * m, stride_b = ldb * k, stride_c = m * n;
  std::vector<float> a(size_t(stride_a * batch)), b(size_t(stride_b * batch)), c(size_t(stride_c * batch)), d(c.size());
  for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.3f * float(i));
  for (size_t i = 0; i < b.size(); ++i) b[i] = std::cos(0.7f * float(i));
  for (size_t i = 0; i < c.size(); ++i) c[i] = 0.1f * float(i);
  LtLayout la(CUDA_R_32F, k, m, lda), lb(CUDA_R_32F, k, n, ldb), lc(CUDA_R_32F, m, n, ldc);
  int32_t row = CUBLASLT_ORDER_ROW, count = batch;
  REQUIRE(cublasLtMatrixLayoutSetAttribute(lb.d, CUBLASLT_MATRIX_LAYOUT_ORDER, &row, sizeof row) == CUBLAS_STATUS_SUCCESS);
  for (auto [l, stride] : {std::pair<LtLayout*, int64_t>{&la, stride_a}, {&lb, stride_b}, {&lc, stride_c}}) {
    REQUIRE(cublasLtMatrixLayoutSetAttribute(l->d, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutSetAttribute(l->d, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                             sizeof stride) == CUBLAS_STATUS_SUCCESS);
  }
  // an attribute of the wrong size (int64 batch count) is refused, as by cuBLASLt
  int64_t wide = batch;
  CHECK(cublasLtMatrixLayoutSetAttribute(la.d, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &wide, sizeof wide) ==
        CUBLAS_STATUS_INVALID_VALUE);
  cublasLtMatmulDesc_t op;
  REQUIRE(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  cublasOperation_t t = CUBLAS_OP_T;
  REQUIRE(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t) == CUBLAS_STATUS_SUCCESS);
  cublasLtHandle_t h;
  cublasLtCreate(&h);
  const float alpha = 2.0f, beta = 0.5f;
  CHECK(cublasLtMatmul(h, op, &alpha, a.data(), la.d, b.data(), lb.d, &beta, c.data(), lc.d, d.data(), lc.d, nullptr,
                       nullptr, 0, nullptr) == CUBLAS_STATUS_SUCCESS);
  double worst = 0;
  for (int bi = 0; bi < batch; ++bi)
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double s = 0;
        for (int kk = 0; kk < k; ++kk) s += double(a[bi * stride_a + kk + i * lda]) * b[bi * stride_b + kk * ldb + j];
        double want = 2 * s + 0.5 * c[bi * stride_c + i + j * ldc];
        worst = std::max(worst, std::fabs(want - d[bi * stride_c + i + j * ldc]));
      }
  CHECK(worst < 1e-5);
  // op(A) [m, k] against op(B) [k + 1, n]: the shapes do not fit
  LtLayout wrong_b(CUDA_R_32F, k + 1, n, k + 1);
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulHeuristicResult_t result{};
  int found = -1;
  CHECK(cublasLtMatmulAlgoGetHeuristic(h, op, la.d, wrong_b.d, lc.d, lc.d, pref, 1, &result, &found) ==
        CUBLAS_STATUS_INVALID_VALUE);
  CHECK(found == 0);
  // an algorithm chosen for 256-byte aligned buffers refuses a 4-byte aligned one
  LtLayout la1(CUDA_R_32F, k, m, lda), lb1(CUDA_R_32F, k, n, k), lc1(CUDA_R_32F, m, n, m);
  REQUIRE(cublasLtMatmulAlgoGetHeuristic(h, op, la1.d, lb1.d, lc1.d, lc1.d, pref, 1, &result, &found) ==
          CUBLAS_STATUS_SUCCESS);
  REQUIRE(found == 1);
  float* dev = nullptr;
  REQUIRE(cudaMalloc(&dev, 4096) == cudaSuccess);  // 256-byte aligned
  CHECK(cublasLtMatmul(h, op, &alpha, dev, la1.d, dev + 256, lb1.d, &beta, dev + 512, lc1.d, dev + 512, lc1.d,
                       &result.algo, nullptr, 0, nullptr) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatmul(h, op, &alpha, dev + 1, la1.d, dev + 256, lb1.d, &beta, dev + 512, lc1.d, dev + 512, lc1.d,
                       &result.algo, nullptr, 0, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  cudaFree(dev);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatmulDescDestroy(op);
  cublasLtDestroy(h);
}

TEST_CASE("cuda_emu: a read past the end of a cudaMalloc block dies naming kernel, block, thread and offset") {
  // 64 floats = 256 bytes: the block ends exactly at its guard page.
  float *in = nullptr, *out = nullptr;
  REQUIRE(cudaMalloc(&in, 64 * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaMalloc(&out, 64 * sizeof(float)) == cudaSuccess);
  for (int i = 0; i < 64; ++i) in[i] = float(i);
  const int line = __LINE__ + 1;
  const auto copy = [&](int shift) { LAUNCH(copy_shifted, 2, 32)(out, in, 64, shift); };

  // Within bounds: the child exits normally, and the same launch here copies every element.
  ChildResult ok = run_in_child([&] { copy(0); });
  CHECK_FALSE(ok.aborted);
  CHECK(ok.exit_code == 0);
  CHECK(ok.stderr_text.empty());
  copy(0);
  for (int i = 0; i < 64; ++i) CHECK(out[i] == float(i));

  // One element past the end: thread 63 of the grid (block 1, thread 31) reads in[64].
  ChildResult bad = run_in_child([&] { copy(1); });
  CAPTURE(bad.stderr_text);
  CHECK(bad.aborted);
  const std::string site = "cuda_emu: kernel copy_shifted (launched at tests/test_cuda_emu.cpp:" + std::to_string(line) +
                           "), block (1,0,0), thread (31,0,0): access at 0x";
  CHECK(bad.stderr_text.find(site) == 0);
  CHECK(bad.stderr_text.find(" is 0 bytes past the end of a 256-byte allocation (cudaMalloc at 0x") !=
        std::string::npos);
  CHECK(std::count(bad.stderr_text.begin(), bad.stderr_text.end(), '\n') == 1);  // one line
  cudaFree(in);
  cudaFree(out);

  // 250 floats = 1000 bytes, rounded to 1024: in[250..255] are the alignment slack (not
  // caught), in[256] (byte 1024, thread 246 = block 7, thread 22) is the first fault.
  REQUIRE(cudaMalloc(&in, 250 * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaMalloc(&out, 250 * sizeof(float)) == cudaSuccess);
  bad = run_in_child([&] { LAUNCH(copy_shifted, 8, 32)(out, in, 250, 10); });
  CAPTURE(bad.stderr_text);
  CHECK(bad.aborted);
  // Threads 22..31 of block 7 all fault; which one is reported first depends on the lane
  // order the scheduler gives this launch (it alternates between launches: cuda_emu/scheduler.cpp).
  // Thread t reads in[7 * 32 + t + 10], byte 4 (234 + t): 4 t - 64 bytes past the end.
  const size_t at = bad.stderr_text.find("block (7,0,0), thread (");
  REQUIRE(at != std::string::npos);
  const int t = std::atoi(bad.stderr_text.c_str() + at + std::strlen("block (7,0,0), thread ("));
  CHECK(t >= 22);
  CHECK(t <= 31);
  CHECK(bad.stderr_text.find(nq::str(" is ", 4 * t - 64, " bytes past the end of a 1000-byte allocation (cudaMalloc at 0x")) !=
        std::string::npos);
  cudaFree(in);
  cudaFree(out);
}

TEST_CASE("cuda_emu: pinned host memory has a guard page too; a fault outside a kernel says so") {
  float* pinned = nullptr;
  REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&pinned), 512, cudaHostAllocDefault) == cudaSuccess);
  CHECK(reinterpret_cast<uintptr_t>(pinned) % 256 == 0);
  CHECK(std::isnan(pinned[127]));  // poisoned
  ChildResult bad = run_in_child([&] {
    volatile float* p = pinned;  // (cudaHostAlloc installed the handler)
    std::fprintf(stderr, "%g", double(p[128]));
  });
  CAPTURE(bad.stderr_text);
  CHECK(bad.aborted);
  CHECK(bad.stderr_text.find("cuda_emu: host code (no kernel running): access at 0x") == 0);
  CHECK(bad.stderr_text.find(" is 0 bytes past the end of a 512-byte allocation (cudaHostAlloc at 0x") !=
        std::string::npos);
  CHECK(cudaFreeHost(pinned) == cudaSuccess);

  // A fault outside every guard page keeps the default action: killed by SIGSEGV, no message.
  ChildResult other = run_in_child([] {
    void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(page, 4096);
    cuda_emu::install_fault_handler();
    std::fprintf(stderr, "%d", *static_cast<volatile int*>(page));
  });
  CHECK(other.signal == SIGSEGV);
  CHECK(other.stderr_text.empty());
}

// ---- streams and events (cuda_emu/streams.cpp): work on a created stream is queued
// and runs when a synchronisation needs it, unordered streams in reverse issue order.

namespace {

__global__ void affine_in_place(float* x, int n, float mul, float add) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = x[i] * mul + add;
}

// Emulated device (or pinned) memory read directly by the host: no CUDA call, so
// nothing queued runs; shows what the memory holds at this point.
std::vector<float> peek(const float* p, int n) { return std::vector<float>(p, p + n); }
bool all_equal(const std::vector<float>& v, float x) {
  return std::all_of(v.begin(), v.end(), [x](float y) { return y == x; });
}

constexpr int kN = 64;  // floats per buffer in these tests: grids of 2 x 32 threads

// Device buffers of kN floats, set to 0 (a default-stream memset, complete at once).
struct DeviceFloats {
  float* p = nullptr;
  DeviceFloats() {
    REQUIRE(cudaMalloc(&p, kN * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemset(p, 0, kN * sizeof(float)) == cudaSuccess);
  }
  ~DeviceFloats() { cudaFree(p); }
};
struct PinnedFloats {
  float* p = nullptr;
  explicit PinnedFloats(float fill) {
    REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&p), kN * sizeof(float), cudaHostAllocDefault) == cudaSuccess);
    std::fill(p, p + kN, fill);
  }
  ~PinnedFloats() { cudaFreeHost(p); }
};
struct Stream {
  cudaStream_t s = nullptr;
  explicit Stream(unsigned flags = cudaStreamNonBlocking) { REQUIRE(cudaStreamCreateWithFlags(&s, flags) == cudaSuccess); }
  ~Stream() { cudaStreamDestroy(s); }
};
struct Event {
  cudaEvent_t e = nullptr;
  explicit Event(unsigned flags = cudaEventDisableTiming) { REQUIRE(cudaEventCreateWithFlags(&e, flags) == cudaSuccess); }
  ~Event() { cudaEventDestroy(e); }
};
// x := x * mul + add on `stream`.
void affine(float* x, float mul, float add, cudaStream_t stream) {
  LAUNCH(affine_in_place, 2, 32, 0, stream)(x, kN, mul, add);
  REQUIRE(cudaGetLastError() == cudaSuccess);
}

}  // namespace

TEST_CASE("cuda_emu: streams: a kernel on B reading A's upload sees stale data unless B waits for A's event") {
  PinnedFloats host(7.0f);
  DeviceFloats in, out;
  Stream a, b;
  Event uploaded;
  for (bool with_event : {false, true}) {
    CAPTURE(with_event);
    REQUIRE(cudaMemset(in.p, 0, kN * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemset(out.p, 0xff, kN * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemcpyAsync(in.p, host.p, kN * sizeof(float), cudaMemcpyHostToDevice, a.s) == cudaSuccess);
    if (with_event) {
      REQUIRE(cudaEventRecord(uploaded.e, a.s) == cudaSuccess);
      REQUIRE(cudaStreamWaitEvent(b.s, uploaded.e, 0) == cudaSuccess);
    }
    LAUNCH(copy_shifted, 2, 32, 0, b.s)(out.p, in.p, kN, 0);
    CHECK(std::isnan(peek(out.p, kN)[0]));  // queued: nothing ran yet
    CHECK(all_equal(peek(in.p, kN), 0.0f));
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(all_equal(peek(in.p, kN), 7.0f));  // the upload ran either way
    CHECK(all_equal(peek(out.p, kN), with_event ? 7.0f : 0.0f));  // without the event, before it
  }
}

TEST_CASE("cuda_emu: streams: a host write to a pinned source before the sync reaches the copy; a pinned download is stale until the sync") {
  PinnedFloats src(1.0f), dst(0.0f);
  DeviceFloats dev;
  Stream a;
  REQUIRE(cudaMemcpyAsync(dev.p, src.p, kN * sizeof(float), cudaMemcpyHostToDevice, a.s) == cudaSuccess);
  std::fill(src.p, src.p + kN, 2.0f);  // the hazard: the copy has not read the source yet
  REQUIRE(cudaStreamSynchronize(a.s) == cudaSuccess);
  CHECK(all_equal(peek(dev.p, kN), 2.0f));  // the copy read the new value (a GPU may read either)

  REQUIRE(cudaMemcpyAsync(dst.p, dev.p, kN * sizeof(float), cudaMemcpyDeviceToHost, a.s) == cudaSuccess);
  CHECK(all_equal(peek(dst.p, kN), 0.0f));  // read before the sync: stale
  REQUIRE(cudaStreamSynchronize(a.s) == cudaSuccess);
  CHECK(all_equal(peek(dst.p, kN), 2.0f));

  // Pageable memory (CUDA's rules): the source is staged at the call, the download complete at return.
  std::vector<float> pageable(kN, 5.0f);
  REQUIRE(cudaMemcpyAsync(dev.p, pageable.data(), kN * sizeof(float), cudaMemcpyHostToDevice, a.s) == cudaSuccess);
  std::fill(pageable.begin(), pageable.end(), 6.0f);
  CHECK(all_equal(peek(dev.p, kN), 2.0f));  // queued
  REQUIRE(cudaStreamSynchronize(a.s) == cudaSuccess);
  CHECK(all_equal(peek(dev.p, kN), 5.0f));
  affine(dev.p, 1, 1, a.s);
  REQUIRE(cudaMemcpyAsync(pageable.data(), dev.p, kN * sizeof(float), cudaMemcpyDeviceToHost, a.s) == cudaSuccess);
  CHECK(all_equal(pageable, 6.0f));
}

TEST_CASE("cuda_emu: streams: each synchronisation runs the work it must and leaves the rest queued") {
  DeviceFloats x, y, z;
  Stream a, b;
  Event e;

  SUBCASE("cudaStreamSynchronize: that stream only; cudaEventSynchronize: up to the record") {
    affine(x.p, 1, 1, a.s);  // x = 1
    REQUIRE(cudaEventRecord(e.e, a.s) == cudaSuccess);
    affine(x.p, 10, 0, a.s);  // x = 10
    affine(y.p, 1, 1, b.s);   // y = 1
    REQUIRE(cudaStreamSynchronize(b.s) == cudaSuccess);
    CHECK(all_equal(peek(y.p, kN), 1.0f));
    CHECK(all_equal(peek(x.p, kN), 0.0f));
    REQUIRE(cudaEventSynchronize(e.e) == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 1.0f));
    REQUIRE(cudaStreamSynchronize(a.s) == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 10.0f));
  }
  SUBCASE("cudaStreamWaitEvent waits for the record as of the call, not a later re-record") {
    affine(x.p, 1, 1, a.s);  // x = 1
    REQUIRE(cudaEventRecord(e.e, a.s) == cudaSuccess);
    REQUIRE(cudaStreamWaitEvent(b.s, e.e, 0) == cudaSuccess);
    LAUNCH(copy_shifted, 2, 32, 0, b.s)(y.p, x.p, kN, 0);  // y = x
    affine(x.p, 10, 0, a.s);  // x = 10
    REQUIRE(cudaEventRecord(e.e, a.s) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(b.s) == cudaSuccess);
    CHECK(all_equal(peek(y.p, kN), 1.0f));
    CHECK(all_equal(peek(x.p, kN), 1.0f));  // not needed by b: still queued
    REQUIRE(cudaStreamSynchronize(a.s) == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 10.0f));
  }
  SUBCASE("cudaDeviceSynchronize, cudaFree, cudaFreeHost, cudaStreamDestroy, cudaEventQuery, a default-stream wait") {
    affine(x.p, 1, 1, a.s);
    affine(y.p, 1, 1, b.s);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 1.0f));
    CHECK(all_equal(peek(y.p, kN), 1.0f));
    affine(x.p, 1, 1, a.s);
    float* block = nullptr;
    REQUIRE(cudaMalloc(&block, 256) == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 1.0f));  // cudaMalloc does not synchronise
    REQUIRE(cudaFree(block) == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 2.0f));
    affine(x.p, 1, 1, a.s);
    REQUIRE(cudaMallocHost(reinterpret_cast<void**>(&block), 256) == cudaSuccess);
    REQUIRE(cudaFreeHost(block) == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 3.0f));
    {
      Stream c;
      affine(x.p, 1, 1, c.s);
      CHECK(all_equal(peek(x.p, kN), 3.0f));
    }  // cudaStreamDestroy
    CHECK(all_equal(peek(x.p, kN), 4.0f));
    affine(x.p, 1, 1, a.s);
    REQUIRE(cudaEventRecord(e.e, a.s) == cudaSuccess);
    CHECK(cudaEventQuery(e.e) == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 5.0f));
    affine(x.p, 1, 1, a.s);
    REQUIRE(cudaEventRecord(e.e, a.s) == cudaSuccess);
    REQUIRE(cudaStreamWaitEvent(nullptr, e.e, 0) == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 6.0f));
  }
  SUBCASE("the legacy default stream waits for blocking streams, not for non-blocking ones") {
    Stream blocking(cudaStreamDefault);
    affine(x.p, 1, 1, blocking.s);
    affine(y.p, 1, 1, a.s);
    LAUNCH(copy_shifted, 2, 32)(z.p, x.p, kN, 0);  // default stream: z = x, after the blocking stream's work
    CHECK(all_equal(peek(z.p, kN), 1.0f));
    CHECK(all_equal(peek(y.p, kN), 0.0f));
    affine(x.p, 1, 1, blocking.s);
    REQUIRE(cudaMemset(z.p, 0, kN * sizeof(float)) == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 2.0f));
    CHECK(all_equal(peek(y.p, kN), 0.0f));
  }
  SUBCASE("timing events: the time of the record's run; not ready while queued") {
    Event t0(cudaEventDefault), t1(cudaEventDefault);
    REQUIRE(cudaEventRecord(t0.e, a.s) == cudaSuccess);
    affine(x.p, 1, 1, a.s);
    REQUIRE(cudaEventRecord(t1.e, a.s) == cudaSuccess);
    float ms = -1;
    CHECK(cudaEventElapsedTime(&ms, t0.e, t1.e) == cudaErrorNotReady);
    CHECK(cudaGetLastError() == cudaErrorNotReady);
    REQUIRE(cudaEventSynchronize(t1.e) == cudaSuccess);
    CHECK(cudaEventElapsedTime(&ms, t0.e, t1.e) == cudaSuccess);
    CHECK(ms >= 0.0f);
    CHECK(cudaEventElapsedTime(&ms, t0.e, e.e) == cudaErrorInvalidResourceHandle);  // e: no timing
    cudaGetLastError();
  }
  SUBCASE("launch errors at the launch; a kernel fault at the synchronisation that runs it") {
    LAUNCH(affine_in_place, 1, 1025, 0, a.s)(x.p, kN, 1.0f, 1.0f);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    LAUNCH(divergent_barrier, 2, 64, 0, a.s)();
    CHECK(cudaGetLastError() == cudaSuccess);
    const std::string err = thrown_message([&] { cudaStreamSynchronize(a.s); });
    CHECK(err.find("kernel divergent_barrier (launched at tests/test_cuda_emu.cpp:") == 0);
    CHECK(err.find("reached by 48 of 64 threads") != std::string::npos);
    affine(x.p, 1, 1, a.s);  // the stream goes on; the refused launch never ran
    REQUIRE(cudaStreamSynchronize(a.s) == cudaSuccess);
    CHECK(all_equal(peek(x.p, kN), 1.0f));
    cudaStream_t gone = nullptr;
    REQUIRE(cudaStreamCreateWithFlags(&gone, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaStreamDestroy(gone) == cudaSuccess);
    CHECK(cudaMemsetAsync(x.p, 0, 4, gone) == cudaErrorInvalidResourceHandle);
    CHECK(cudaStreamSynchronize(gone) == cudaErrorInvalidResourceHandle);
    cudaGetLastError();
  }
}

TEST_CASE("cuda_emu: streams: cuBLASLt on a stream runs at the sync, from descriptors copied at the call") {
  // D [2, 2] = A B, column-major: A = [[1, 2], [3, 4]], B = I.
  const float a_host[4] = {1, 3, 2, 4}, b_host[4] = {1, 0, 0, 1}, alpha = 1.0f, beta = 0.0f;
  DeviceFloats a, b, d;
  REQUIRE(cudaMemcpy(a.p, a_host, sizeof a_host, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(b.p, b_host, sizeof b_host, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemset(d.p, 0xff, sizeof a_host) == cudaSuccess);
  Stream s;
  cublasLtHandle_t h;
  cublasLtCreate(&h);
  cublasLtMatmulDesc_t op;
  REQUIRE(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  {
    LtLayout l(CUDA_R_32F, 2, 2, 2);
    CHECK(cublasLtMatmul(h, op, &alpha, a.p, l.d, b.p, l.d, &beta, d.p, l.d, d.p, l.d, nullptr, nullptr, 0, s.s) ==
          CUBLAS_STATUS_SUCCESS);
  }  // the layout is gone before the matmul runs
  cublasLtMatmulDescDestroy(op);
  CHECK(std::isnan(peek(d.p, 4)[0]));
  REQUIRE(cudaStreamSynchronize(s.s) == cudaSuccess);
  const std::vector<float> got = peek(d.p, 4);
  for (int i = 0; i < 4; ++i) CHECK(got[size_t(i)] == a_host[i]);
  cublasLtDestroy(h);
}

TEST_CASE("cuda_emu: streams: upload -> compute -> download through two slots is right with its events, wrong without") {
  // Six pages of kN floats stream through two device slots, as the paged optimizer does:
  // upload (page p into slot p % 2), x := 2x + 1, download. The upload into a slot must
  // wait for the download of the page that used it before (the slot is reused).
  constexpr int kPages = 6, kSlots = 2;
  for (bool wait_for_slot : {true, false}) {
    CAPTURE(wait_for_slot);
    std::vector<std::unique_ptr<PinnedFloats>> pages;
    for (int p = 0; p < kPages; ++p) pages.push_back(std::make_unique<PinnedFloats>(float(p)));
    DeviceFloats slots[kSlots];
    Stream upload, compute, download;
    Event uploaded[kSlots], computed[kSlots], downloaded[kSlots];
    for (int p = 0; p < kPages; ++p) {
      const int s = p % kSlots;
      if (wait_for_slot && p >= kSlots) REQUIRE(cudaStreamWaitEvent(upload.s, downloaded[s].e, 0) == cudaSuccess);
      REQUIRE(cudaMemcpyAsync(slots[s].p, pages[size_t(p)]->p, kN * sizeof(float), cudaMemcpyHostToDevice,
                              upload.s) == cudaSuccess);
      REQUIRE(cudaEventRecord(uploaded[s].e, upload.s) == cudaSuccess);
      REQUIRE(cudaStreamWaitEvent(compute.s, uploaded[s].e, 0) == cudaSuccess);
      affine(slots[s].p, 2, 1, compute.s);
      REQUIRE(cudaEventRecord(computed[s].e, compute.s) == cudaSuccess);
      REQUIRE(cudaStreamWaitEvent(download.s, computed[s].e, 0) == cudaSuccess);
      REQUIRE(cudaMemcpyAsync(pages[size_t(p)]->p, slots[s].p, kN * sizeof(float), cudaMemcpyDeviceToHost,
                              download.s) == cudaSuccess);
      REQUIRE(cudaEventRecord(downloaded[s].e, download.s) == cudaSuccess);
    }
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    int right = 0;
    for (int p = 0; p < kPages; ++p) right += all_equal(peek(pages[size_t(p)]->p, kN), 2.0f * float(p) + 1.0f);
    // Without the wait, the upload stream (its next copy always issued after the compute
    // waiting for its last record) runs all six uploads first: each slot holds the last page
    // uploaded into it (4, 5), computed three times, and downloaded into three pages.
    CHECK(right == (wait_for_slot ? kPages : 0));
    if (!wait_for_slot) CHECK(all_equal(peek(pages[0]->p, kN), ((4.0f * 2 + 1) * 2 + 1) * 2 + 1));
  }
}

#endif  // NQ_CUDA_EMU
