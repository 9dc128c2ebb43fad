// Dropout from the counter-based RNG: element i is kept iff
// philox_uniform(seed, offset, i) >= p, and kept values are scaled by 1/(1-p)
// so the expectation is unchanged. The mask is a pure function of
// (seed, offset, i): the backward applies the very same mask to the gradient,
// and a checkpoint re-run reproduces it.
#pragma once
#include <cstdint>

namespace nq::cpu {

// out[i] = keep(i) ? in[i] / (1 - p) : 0   (forward on x, backward on dy)
template <typename T> void dropout_apply(const T* in, T* out, int64_t n, float p, uint64_t seed, uint64_t offset);

}  // namespace nq::cpu
