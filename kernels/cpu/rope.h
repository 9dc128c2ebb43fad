// Rotary position embedding, rotate-half (NeoX / HF) layout. For a head vector
// x of size Dh and i < Dh/2, with angle a = pos * inv_freq_i and s the attention
// scaling of the table (kernels/rope_table.h; 1 unless the model uses YaRN):
//   y[i]      = s (x[i]      cos a - x[i+Dh/2] sin a)
//   y[i+Dh/2] = s (x[i+Dh/2] cos a + x[i]      sin a)
// Each pair (i, i+Dh/2) is rotated by a and scaled by s, as transformers multiplies
// cos and sin by attention_scaling; the backward is the transpose, s times the
// rotation by -a.
#pragma once
#include <cmath>
#include <cstdint>

namespace nq::cpu {

// theta^(2i / Dh) in T, as HF computes it (the exponent rounded to T first), whose
// reciprocal is inv_freq_i. The one definition: rope_table() builds every table from it, and the CUDA
// kernel takes its table from there too, so GPU angles are the CPU's bit for bit (the
// device powf is not correctly rounded).
template <typename T> T rope_pow(T theta, int64_t i, int64_t Dh) { return std::pow(theta, T(2 * i) / T(Dh)); }

// x [N, H, Dh], positions [N], inv_freq [Dh/2] -> y [N, H, Dh]. direction = +1 forward,
// -1 backward; `scaling` multiplies cos and sin in both.
template <typename T>
void rope_rotate(const T* x, const int32_t* positions, const T* inv_freq, T scaling, int direction, T* y, int64_t N,
                 int64_t H, int64_t Dh);

}  // namespace nq::cpu
