// Rotary position embedding, rotate-half (NeoX / HF) layout. For a head vector
// x of size Dh and i < Dh/2, with angle a = pos * theta^(-2i/Dh):
//   y[i]      = x[i]      cos a - x[i+Dh/2] sin a
//   y[i+Dh/2] = x[i+Dh/2] cos a + x[i]      sin a
// Each pair (i, i+Dh/2) is rotated by a; the backward is the rotation by -a.
#pragma once
#include <cstdint>

namespace nq::cpu {

// x [N, H, Dh], positions [N] -> y [N, H, Dh]. direction = +1 forward, -1 backward.
template <typename T>
void rope_rotate(const T* x, const int32_t* positions, T theta, int direction, T* y, int64_t N, int64_t H,
                 int64_t Dh);

}  // namespace nq::cpu
