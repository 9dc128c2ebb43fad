// Tensor-core flash-attention forward (bf16 or f16 = E, head_dim 64 or 128), used
// by attention.cu for 16-bit inputs on sm_80 and newer; see attention.cu for the math.
//
// Tiling: a block of 4 warps owns 64 query rows of one (batch, head), 16 per
// warp, and walks the key tiles of 64 keys up to its last query (causal).
// Per key tile, in shared memory: Q [64, Dh] (loaded once), K and V [64, Dh]
// (shared by the 4 warps), and per warp S [16, 64] f32, P [16, 64] bf16 and
// the output accumulator O [16, Dh] f32.
//   S = Q K^T                          WMMA 16x16x16 bf16 (mma.sync), f32 accumulate
//   online softmax on S (2 lanes per row: running max m, sum l, rescale c),
//   causal / segment / length masking, P = exp(S - m) as bf16, O *= c
//   O += P V                           WMMA, O loaded from / stored to shared memory
// At the end o = O / l and lse = m + log l.
// O lives in shared memory, not registers, because WMMA does not expose which
// accumulator element is which row, and the online softmax rescales by row.
#pragma once
#include <mma.h>

#include "kernels/cuda/common.cuh"

namespace nq::kernels::cuda {

namespace flash {

namespace wmma = nvcuda::wmma;
constexpr int kRows = 64, kKeys = 64, kWarps = 4, kThreads = 32 * kWarps;
constexpr int kWarpRows = kRows / kWarps;  // 16

template <int Dh>
struct Layout {
  static constexpr int kLd = Dh + 8;                  // bf16 row stride of Q, K, V
  static constexpr int kSLd = kKeys + 4;              // f32 row stride of S
  static constexpr int kPLd = kKeys + 8;              // bf16 row stride of P
  static constexpr int kOLd = Dh + 4;                 // f32 row stride of O
  static constexpr size_t kQBytes = size_t(kRows) * kLd * 2;
  static constexpr size_t kSBytes = size_t(kWarps) * kWarpRows * kSLd * 4;
  static constexpr size_t kPBytes = size_t(kWarps) * kWarpRows * kPLd * 2;
  static constexpr size_t kOBytes = size_t(kWarps) * kWarpRows * kOLd * 4;
  static constexpr size_t kTotal = 3 * kQBytes + kSBytes + kPBytes + kOBytes;
};

// rows [r0, r0 + 64) of a [N, H, Dh] tensor's head h into smem [64][Ld]; rows >= r_end are zero.
// Called by all `Threads` threads of the block (128 in the forward, 256 in the backward).
template <int Dh, typename E, int Threads = kThreads>
__device__ __forceinline__ void load_tile(E* dst, const E* src, int64_t r0, int64_t r_end, int64_t H, int64_t h) {
  constexpr int kVecs = Dh / 8;  // 16-byte vectors per row
  for (int e = threadIdx.x; e < kRows * kVecs; e += Threads) {
    int r = e / kVecs, c = (e % kVecs) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r0 + r < r_end) v = *reinterpret_cast<const uint4*>(src + ((r0 + r) * H + h) * Dh + c);
    *reinterpret_cast<uint4*>(dst + r * Layout<Dh>::kLd + c) = v;
  }
}

template <int Dh, typename E>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(E* o, float* lse, const E* q, const E* k, const E* v, const int32_t* seg, int64_t T,
                   int64_t Hq, int64_t Hkv, float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // not built before sm_80 (attention.cu's tiled() picks these kernels on sm_80 and newer only)
#else
  using L = Layout<Dh>;
  extern __shared__ __align__(128) unsigned char smem[];
  E* q_s = reinterpret_cast<E*>(smem);
  E* k_s = reinterpret_cast<E*>(smem + L::kQBytes);
  E* v_s = reinterpret_cast<E*>(smem + 2 * L::kQBytes);
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* s_w = reinterpret_cast<float*>(smem + 3 * L::kQBytes) + warp * kWarpRows * L::kSLd;
  E* p_w = reinterpret_cast<E*>(smem + 3 * L::kQBytes + L::kSBytes) + warp * kWarpRows * L::kPLd;
  float* o_w = reinterpret_cast<float*>(smem + 3 * L::kQBytes + L::kSBytes + L::kPBytes) + warp * kWarpRows * L::kOLd;

  int64_t bh = blockIdx.y, b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
  int64_t t0 = int64_t(blockIdx.x) * kRows;        // first query position of the block
  int64_t base = b * T;                            // first row of this sequence
  load_tile<Dh, E>(q_s, q, base + t0, base + T, Hq, h);
  for (int e = lane; e < kWarpRows * Dh; e += 32) o_w[(e / Dh) * L::kOLd + e % Dh] = 0.0f;

  // Each row of the warp's 16 is owned by 2 lanes: row = lane / 2, columns half * 32 ..
  int row = lane >> 1, half = lane & 1;
  int64_t t = t0 + warp * kWarpRows + row;         // this row's query position
  int32_t my_seg = (seg && t < T) ? seg[base + t] : 0;
  float m = -INFINITY, l = 0.0f;

  int64_t last_key = min(T, t0 + kRows);           // keys [0, last_key) can be visible
  for (int64_t j0 = 0; j0 < last_key; j0 += kKeys) {
    __syncthreads();  // previous tile's K/V fully consumed
    load_tile<Dh, E>(k_s, k, base + j0, base + T, Hkv, g);
    load_tile<Dh, E>(v_s, v, base + j0, base + T, Hkv, g);
    __syncthreads();

    // S [16, 64] = Q_w K^T
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_frag[kKeys / 16];
#pragma unroll
    for (int n = 0; n < kKeys / 16; ++n) wmma::fill_fragment(s_frag[n], 0.0f);
#pragma unroll
    for (int d = 0; d < Dh; d += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> qa;
      wmma::load_matrix_sync(qa, q_s + warp * kWarpRows * L::kLd + d, L::kLd);
#pragma unroll
      for (int n = 0; n < kKeys / 16; ++n) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::col_major> kb;
        wmma::load_matrix_sync(kb, k_s + n * 16 * L::kLd + d, L::kLd);
        wmma::mma_sync(s_frag[n], qa, kb, s_frag[n]);
      }
    }
#pragma unroll
    for (int n = 0; n < kKeys / 16; ++n)
      wmma::store_matrix_sync(s_w + n * 16, s_frag[n], L::kSLd, wmma::mem_row_major);
    __syncwarp();

    // Online softmax on this lane's 32 columns of its row.
    float* s_row = s_w + row * L::kSLd + half * 32;
    float tile_max = -INFINITY;
    for (int c = 0; c < 32; ++c) {
      int64_t j = j0 + half * 32 + c;
      bool ok = t < T && j <= t && (!seg || seg[base + j] == my_seg);
      float sv = ok ? s_row[c] * scale : -INFINITY;
      s_row[c] = sv;
      tile_max = fmaxf(tile_max, sv);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    float m_new = fmaxf(m, tile_max);
    float m_use = m_new == -INFINITY ? 0.0f : m_new;  // all masked so far: p = 0, c = 1
    float c_scale = m == -INFINITY ? (m_new == -INFINITY ? 1.0f : 0.0f) : expf(m - m_new);
    float sum = 0.0f;
    E* p_row = p_w + row * L::kPLd + half * 32;
    for (int c = 0; c < 32; ++c) {
      float p = expf(s_row[c] - m_use);  // exp(-inf) = 0 for masked entries
      E pb = from_f32<E>(p);
      p_row[c] = pb;
      sum += to_f32(pb);  // l sums what P V multiplies
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * c_scale + sum;
    m = m_new;
    float* o_row = o_w + row * L::kOLd + half * (Dh / 2);
    for (int c = 0; c < Dh / 2; ++c) o_row[c] *= c_scale;
    __syncwarp();

    // O [16, Dh] += P [16, 64] V [64, Dh]
#pragma unroll
    for (int n = 0; n < Dh / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_frag;
      wmma::load_matrix_sync(o_frag, o_w + n * 16, L::kOLd, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kKeys; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> pa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::row_major> vb;
        wmma::load_matrix_sync(pa, p_w + kk, L::kPLd);
        wmma::load_matrix_sync(vb, v_s + kk * L::kLd + n * 16, L::kLd);
        wmma::mma_sync(o_frag, pa, vb, o_frag);
      }
      wmma::store_matrix_sync(o_w + n * 16, o_frag, L::kOLd, wmma::mem_row_major);
    }
    __syncwarp();
  }

  // o = O / l, lse = m + log l (every valid row sees at least its own key, so l > 0)
  if (t < T) {
    float inv_l = 1.0f / l;
    const float* o_row = o_w + row * L::kOLd + half * (Dh / 2);
    E* dst = o + ((base + t) * Hq + h) * Dh + half * (Dh / 2);
    for (int c = 0; c < Dh / 2; ++c) dst[c] = from_f32<E>(o_row[c] * inv_l);
    if (half == 0) lse[(base + t) * Hq + h] = m + logf(l);
  }
#endif
}

template <int Dh, typename E>
void launch_forward(E* o, float* lse, const E* q, const E* k, const E* v, const int32_t* seg, int64_t B,
                    int64_t T, int64_t Hq, int64_t Hkv, float scale) {
  size_t bytes = Layout<Dh>::kTotal;
  CUDA_CHECK(cudaFuncSetAttribute(forward_kernel<Dh, E>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  dim3 grid(unsigned((T + kRows - 1) / kRows), unsigned(B * Hq));
  forward_kernel<Dh, E><<<grid, kThreads, bytes>>>(o, lse, q, k, v, seg, T, Hq, Hkv, scale);
  NQ_LAUNCH_CHECK();
}

}  // namespace flash
}  // namespace nq::kernels::cuda
