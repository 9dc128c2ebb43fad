// cuda_emu stand-in for <mma.h>: nvcuda::wmma with 16x16x16 fragments (bf16 or
// f16 inputs, f32 accumulators) on the host. Every lane holds the whole 16x16
// tile as f32 (the GPU spreads it over the warp); a product is computed once per
// warp and shared by lanes whose inputs are identical;
// stores are split as on the GPU, each lane writing its own 8 accumulator
// elements (the m16n8 layout: rows lane/4 and lane/4 + 8, columns 2 (lane%4) + {0, 1}
// and + 8), so a lane that reads the stored tile before a __syncwarp sees poison.
// PTX rules enforced (wmma.load / wmma.store): the address is 32-byte aligned
// and ldm is a multiple of 16 bytes; all lanes of the warp issue the same
// operations with the same arguments (checked at the next warp-wide sync point).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_emu/emu.h"
#include "runtime/error.h"

namespace nvcuda::wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "cuda_emu: only 16x16x16 WMMA shapes are emulated");

 public:
  static constexpr int num_elements = 256;  // per lane here (all of the tile)
  float tile[16][16];                       // [row][col], f32 (bf16 and f16 inputs are exact in f32)
};

namespace detail {
inline float value(float v) { return v; }
inline float value(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float value(__half v) { return __half2float(v); }

template <typename T>
void check(const char* op, const T* p, unsigned ldm, int layout, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    cuda_emu::fault(nq::str("wmma::", op, " at ", file, ":", line, ": pointer ", static_cast<const void*>(p),
                            " is not 32-byte aligned"));
  if ((size_t(ldm) * sizeof(T)) % 16 != 0)
    cuda_emu::fault(nq::str("wmma::", op, " at ", file, ":", line, ": ldm ", ldm, " (", size_t(ldm) * sizeof(T),
                            " bytes) is not a multiple of 16 bytes"));
  uint64_t h = reinterpret_cast<uintptr_t>(p) * 0x9e3779b97f4a7c15ull ^ (uint64_t(ldm) << 32) ^
               (uint64_t(layout) << 60) ^ uint64_t(line) ^ (uint64_t(op[0]) << 48);
  cuda_emu::note_warp_op(h);
}
// Whether this lane owns element (r, c) of an accumulator tile (the m16n8k16 layout).
inline bool owns(int lane, int r, int c) { return (r % 8) == lane / 4 && (c % 8) / 2 == lane % 4; }
}  // namespace detail

template <typename Use, typename T, typename L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulators are loaded with a layout argument");
  constexpr bool col = std::is_same<L, col_major>::value;
  detail::check("load_matrix_sync", p, ldm, col, file, line);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.tile[r][c] = detail::value(col ? p[r + size_t(c) * ldm] : p[size_t(r) * ldm + c]);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check("load_matrix_sync", p, ldm, 2 + layout, file, line);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.tile[r][c] = layout == mem_row_major ? p[size_t(r) * ldm + c] : p[r + size_t(c) * ldm];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout,
                              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check("store_matrix_sync", p, ldm, 4 + layout, file, line);
  int lane = cuda_emu::lane_id();
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      if (detail::owns(lane, r, c)) (layout == mem_row_major ? p[size_t(r) * ldm + c] : p[r + size_t(c) * ldm]) = f.tile[r][c];
}

template <typename Use, typename T, typename L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, float v) {
  for (auto& row : f.tile)
    for (float& x : row) x = v;
}

// d = a b + c, f32 accumulation in k order (the tensor cores' order differs).
// Computed once per warp (cuda_emu::next_mma_slot), as the hardware does.
template <typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  static_assert(std::is_same<TA, TB>::value, "wmma::mma_sync: a and b must have the same element type");
  cuda_emu::note_warp_op(0x6d6d61);  // "mma": every lane must issue it
  cuda_emu::MmaSlot& slot = cuda_emu::next_mma_slot();
  if (slot.filled && std::memcmp(slot.in[0], a.tile, sizeof a.tile) == 0 &&
      std::memcmp(slot.in[1], b.tile, sizeof b.tile) == 0 && std::memcmp(slot.in[2], c.tile, sizeof c.tile) == 0) {
    std::memcpy(d.tile, slot.out, sizeof d.tile);
    return;
  }
  float out[16][16];
  for (int r = 0; r < 16; ++r) {
    for (int col = 0; col < 16; ++col) out[r][col] = c.tile[r][col];
    for (int k = 0; k < 16; ++k) {
      const float x = a.tile[r][k];
      for (int col = 0; col < 16; ++col) out[r][col] += x * b.tile[k][col];
    }
  }
  if (!slot.filled) {
    std::memcpy(slot.in[0], a.tile, sizeof a.tile);
    std::memcpy(slot.in[1], b.tile, sizeof b.tile);
    std::memcpy(slot.in[2], c.tile, sizeof c.tile);
    std::memcpy(slot.out, out, sizeof out);
    slot.filled = true;
  }
  std::memcpy(d.tile, out, sizeof out);
}

}  // namespace nvcuda::wmma
