// Rotary position embedding, rotate-half (NeoX / HF) layout. For a head vector
// x of size Dh and i < Dh/2, with angle a = pos * theta^(-2i/Dh):
//   y[i]      = x[i]      cos a - x[i+Dh/2] sin a
//   y[i+Dh/2] = x[i+Dh/2] cos a + x[i]      sin a
// Each pair (i, i+Dh/2) is rotated by a; the backward is the rotation by -a.
#pragma once
#include <cmath>
#include <cstdint>

namespace nq::cpu {

// inv_freq_i = 1 / theta^(2i / Dh) in T, as HF computes it (the exponent rounded to
// T first). The one definition: the CUDA kernel takes its table from here too, so
// GPU angles are the CPU's bit for bit (the device powf is not correctly rounded).
template <typename T> T rope_inv_freq(T theta, int64_t i, int64_t Dh) {
  return T(1) / std::pow(theta, T(2 * i) / T(Dh));
}

// x [N, H, Dh], positions [N] -> y [N, H, Dh]. direction = +1 forward, -1 backward.
template <typename T>
void rope_rotate(const T* x, const int32_t* positions, T theta, int direction, T* y, int64_t N, int64_t H,
                 int64_t Dh);

}  // namespace nq::cpu
