// The checkpoint form of AdamW's per-parameter state, shared by AdamW (CPU) and
// PagedAdamW (GPU) so that one format serves both:
//   "<name>.exp_avg", "<name>.exp_avg_sq"  f32, the parameter's shape
//   "<name>.step"                          i64 [1]
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace nq {

using OptimizerState = std::map<std::string, Tensor>;

// Adds one parameter's entries (the moments are stored as given: pass host copies).
void put_adamw_state(OptimizerState& out, const std::string& name, Tensor exp_avg, Tensor exp_avg_sq, int64_t step);

// Checks that every (name, shape) has its three entries with the right shape and
// dtype and a non-negative step, before the caller changes anything; returns the
// steps in order. Errors start with `who` ("AdamW::load_state_dict").
std::vector<int64_t> check_adamw_state(const OptimizerState& state,
                                       const std::vector<std::pair<std::string, Shape>>& params, const char* who);

}  // namespace nq
