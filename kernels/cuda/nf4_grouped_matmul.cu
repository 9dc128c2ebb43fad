// The grouped NF4 matmul of a mixture-of-experts layer: every expert's rows in ONE launch.
//   forward:  y [M, out],  y[rows_e]  = x[rows_e] W_e^T (+ s_e u[rows_e] B_e^T)   nf4_grouped_matmul
//   backward: dx [M, in],  dx[rows_e] = dy[rows_e] W_e  (+ s_e v[rows_e] A_e)     (transposed: the input gradient)
// x's rows are grouped by expert (model/moe.h's ExpertGrouping): expert e owns rows
// [offsets[e], offsets[e+1]); W_e [out, in] is expert e's own NF4 weight (bitsandbytes
// layout, its own absmax, nested absmax and offset: each expert is quantized as its
// 2-D weight, so the experts cannot be one stacked NF4 tensor).
//
// A tile scheduler over (expert, row tile): the host lists, for every expert with rows,
// its ceil(rows_e / 64) row tiles as {expert, first row, end row}; blockIdx.y walks that
// list and blockIdx.x the 64-wide column tiles, and each block runs the dense kernel's
// tile (nf4_gemm_tile.cuh: W_e dequantized into shared memory, WMMA) on its rows only.
// So one launch replaces E launches of nf4_matmul, and an expert with no token costs
// nothing. Each expert's LoRA bypass can ride along as r more steps of its tiles'
// reduction (as in nf4_matmul): y_e = [x_e | u_e] [W_e | s_e B_e]^T. The list and the E
// experts (device views, bypass pointers) go up as two small tables (upload_table: under
// 100 bytes per expert and 24 per tile, asynchronous).
// Dtypes as nf4_matmul's fused GEMM: x / dy f32, bf16 or f16, staged as 16-bit tiles,
// accumulated in f32, the output in x's dtype.
// grouped_matmul is the same kernel with no NF4 part (K = 0): its whole reduction is the
// low-rank segment, y_e = s_e a_e w_e^T (or a_e w_e): the experts' LoRA factors u and v.
//   ./bench nf4_grouped_matmul --tokens 16384 --experts 128 --n 768 --k 2048
//   (tokens = N*k routed rows, Qwen3-30B-A3B's gate/up_proj [768, 2048] per expert)
//   ./bench grouped_matmul --tokens 16384 --experts 128 --n 16 --k 2048   (u = x_e A_e^T, r 16)
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nf4_gemm_tile.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

struct GroupedTile {
  int64_t expert, row0, row_end;  // rows [row0, row_end) of x and out, all of one expert
};
// Expert e's weight and, with a low-rank term, its bypass weight (T) and scale.
struct GroupedExpert {
  Nf4Weight w;
  const void* low_rank_w = nullptr;  // B_e [out, r] (forward) or A_e [r, in] (transposed)
  float scale = 0.0f;
};

// a_low_rank [M, r] has x's rows (r = 0: no low-rank term).
template <bool kTransposed, typename T>
__global__ void __launch_bounds__(kGemmThreads)
    nf4_grouped_gemm_kernel(T* out, const T* a, const GroupedExpert* experts, const GroupedTile* tiles, int64_t N,
                            int64_t K, const T* a_low_rank, int64_t r) {
  const GroupedTile t = tiles[blockIdx.y];
  const GroupedExpert e = experts[t.expert];  // a copy: the tile reads the weight view per element
  ExtraSegment<T> ext;
  if (r) {
    // E(n, j): forward E = B_e [out, r] (row n); transposed E(n, j) = A_e[j, n], A_e [r, in].
    ext = {a_low_rank, static_cast<const T*>(e.low_rank_w), r, kTransposed ? 1 : r, kTransposed ? N : 1, e.scale};
  }
  nf4_gemm_tile<kTransposed>(out, a, e.w, t.row0, t.row_end, int64_t(blockIdx.x) * kTileN, N, K, ext);
}

// out [M, N] = the grouped product of x [M, K] (K = 0: the low-rank term alone) with the
// experts' weights, the low-rank a [M, r] riding along (r = 0: none): one launch.
static Tensor grouped_product(const char* op, const Tensor& x, const std::vector<GroupedExpert>& experts,
                              const std::vector<int64_t>& offsets, int64_t N, int64_t K, const Tensor* a_low_rank,
                              int64_t r, bool transposed) {
  const int64_t M = x.size(0);
  Tensor out = Tensor::empty({M, N}, x.dtype(), Device::CUDA);
  if (M == 0 || N == 0) return out;
  std::vector<GroupedTile> tiles;
  for (size_t e = 0; e < experts.size(); ++e)
    for (int64_t row = offsets[e]; row < offsets[e + 1]; row += kTileM)
      tiles.push_back({int64_t(e), row, std::min(row + kTileM, offsets[e + 1])});
  NQ_CHECK(tiles.size() <= 65535, op, ": ", tiles.size(), " row tiles exceed the grid (gridDim.y <= 65535 tiles of ",
           kTileM, " rows); split the batch");
  const Tensor experts_dev = upload_table(experts), tiles_dev = upload_table(tiles);
  const auto* e_dev = static_cast<const GroupedExpert*>(experts_dev.raw());
  const auto* t_dev = static_cast<const GroupedTile*>(tiles_dev.raw());

  dispatch_float(x, op, [&](auto tag) {
    using T = decltype(tag);
    const T* lr = a_low_rank ? ptr<T>(*a_low_rank) : nullptr;
    dim3 grid(unsigned((N + kTileN - 1) / kTileN), unsigned(tiles.size()));
    const dim3 block(kGemmThreads);
    if (transposed)
      nf4_grouped_gemm_kernel<true, T><<<grid, block>>>(ptr<T>(out), ptr<T>(x), e_dev, t_dev, N, K, lr, r);
    else
      nf4_grouped_gemm_kernel<false, T><<<grid, block>>>(ptr<T>(out), ptr<T>(x), e_dev, t_dev, N, K, lr, r);
    NQ_LAUNCH_CHECK();
  });
  return out;
}

Tensor nf4_grouped_matmul(const Tensor& x, const std::vector<Nf4Weight>& w, const std::vector<int64_t>& offsets,
                          const GroupedLowRankTerm* extra, bool transposed) {
  std::vector<GroupedExpert> experts(w.size());
  for (size_t e = 0; e < w.size(); ++e) {
    experts[e].w = w[e];
    if (extra) experts[e].low_rank_w = extra->w[e].raw(), experts[e].scale = extra->scale[e];
  }
  const int64_t K = transposed ? w[0].out : w[0].in, N = transposed ? w[0].in : w[0].out;
  return grouped_product(transposed ? "nf4_grouped_matmul_dx" : "nf4_grouped_matmul", x, experts, offsets, N, K,
                         extra ? &extra->a : nullptr, extra ? extra->a.size(1) : 0, transposed);
}

// No NF4 part (K = 0): the whole reduction is the "low-rank" segment, a itself, over w_e.
Tensor grouped_matmul(const Tensor& a, const std::vector<Tensor>& w, const std::vector<int64_t>& offsets, bool trans_w,
                      const std::vector<float>& scales) {
  std::vector<GroupedExpert> experts(w.size());
  for (size_t e = 0; e < w.size(); ++e) experts[e].low_rank_w = w[e].raw(), experts[e].scale = scales[e];
  const int64_t N = trans_w ? w[0].size(1) : w[0].size(0);
  return grouped_product("grouped_matmul", a, experts, offsets, N, 0, &a, a.size(1), trans_w);
}

}  // namespace nq::kernels::cuda
