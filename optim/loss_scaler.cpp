// Dynamic loss scaling: torch.amp.GradScaler.update's arithmetic (torch's
// _amp_update_scale_ kernel), in f32 as torch keeps the scale.
#include "optim/loss_scaler.h"

#include <cmath>

#include "runtime/error.h"

namespace nq {

LossScaler::LossScaler(const LossScalerConfig& config) : enabled_(true), config_(config) {
  NQ_CHECK(std::isfinite(config.init_scale) && config.init_scale > 0, "loss scaler: init_scale must be > 0, got ",
           config.init_scale);
  NQ_CHECK(config.growth_factor > 1, "loss scaler: growth_factor must be > 1, got ", config.growth_factor);
  NQ_CHECK(config.backoff_factor > 0 && config.backoff_factor < 1, "loss scaler: backoff_factor must be in (0, 1), got ",
           config.backoff_factor);
  NQ_CHECK(config.growth_interval > 0, "loss scaler: growth_interval must be > 0, got ", config.growth_interval);
  state_.scale = config.init_scale;
}

bool LossScaler::update(bool found_inf) {
  if (!enabled_) return true;
  if (found_inf) {
    state_.scale *= config_.backoff_factor;
    state_.growth_tracker = 0;
    return false;
  }
  const int64_t successful = state_.growth_tracker + 1;
  if (successful == config_.growth_interval) {
    const float grown = state_.scale * config_.growth_factor;
    if (std::isfinite(grown)) state_.scale = grown;  // torch keeps the scale when growing would overflow f32
    state_.growth_tracker = 0;
  } else {
    state_.growth_tracker = successful;
  }
  return true;
}

void LossScaler::load_state(const LossScalerState& state, const char* source) {
  NQ_CHECK(std::isfinite(state.scale) && state.scale > 0, source, ": loss scale must be finite and > 0, got ",
           state.scale);
  NQ_CHECK(state.growth_tracker >= 0 && state.growth_tracker < config_.growth_interval, source,
           ": loss scaler growth_tracker must be in [0, ", config_.growth_interval, "), got ", state.growth_tracker);
  state_ = state;
}

}  // namespace nq
