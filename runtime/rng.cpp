#include "runtime/rng.h"

namespace nq {

RngState& rng_state() {
  thread_local RngState s;
  return s;
}
void rng_seed(uint64_t seed) { rng_state() = RngState{seed, 0}; }
uint64_t rng_reserve(uint64_t count) {
  RngState& s = rng_state();
  uint64_t off = s.offset;
  s.offset += (count + 3) / 4;
  return off;
}

}  // namespace nq
