// The process's random stream: a seed and a running Philox offset. Anything
// random (LoRA init, dropout masks, data shuffling) reserves a range of the
// stream with rng_reserve(n) and then computes philox_uniform(seed, offset, i)
// itself, on the CPU or in a kernel. Saving and restoring RngState replays the
// same numbers (checkpoint re-runs, resumed training).
#pragma once
#include <cstdint>

#include "runtime/philox.h"

namespace nq {

struct RngState {
  uint64_t seed = 0;
  uint64_t offset = 0;  // in Philox blocks (4 u32 each)
};

RngState& rng_state();                  // thread-local
void rng_seed(uint64_t seed);           // offset := 0
uint64_t rng_reserve(uint64_t count);   // returns the offset of `count` fresh u32s

}  // namespace nq
