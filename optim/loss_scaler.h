// Dynamic loss scaling for fp16 training, with torch.amp.GradScaler's semantics.
//
// fp16 has 5 exponent bits: values below 2^-24 flush to zero, above 65504
// overflow to inf. Activation gradients in a deep network are often smaller
// than 2^-24, so the backward runs on the loss times a scale S (2^16 to start):
// every gradient is S times larger and stays representable. The LoRA
// gradients (f32) are unscaled before clipping and the update:
//
//   backward(S * loss)                       every gradient is S * g
//   norm   = || S g || / S                   (the grad norm the trainer logs and clips with)
//   found_inf = norm is inf or NaN           some gradient overflowed in fp16
//   found_inf: skip the update, S <- S * backoff (0.5), tracker <- 0
//   else:      update with g = (S g) / S,   tracker <- tracker + 1;
//              tracker == growth_interval (2000): S <- S * growth (2) when finite, tracker <- 0
//
// torch checks every gradient element for inf/NaN (_amp_foreach_non_finite_check_and_unscale_);
// the norm of all gradients is inf or NaN exactly when one of them is, unless the
// f32 sum of squares itself overflows (a gradient above ~1.8e19: the step is then
// skipped here where torch would take it with an infinite norm and clip it to nothing).
// S stays a power of two (2^16, x2, x0.5), so multiplying by 1/S is exact in f32 and
// unscaling can be folded into the update's grad_scale without changing a bit.
//
// With bf16 (8 exponent bits, f32's range) or f32 no scaler runs: enabled() is false
// and scale() is 1. Its state (scale, tracker) is part of a checkpoint
// (training/checkpoint.h), so a resumed run skips and grows at the same steps.
#pragma once
#include <cstdint>

namespace nq {

// torch.amp.GradScaler's constructor arguments and defaults.
struct LossScalerConfig {
  float init_scale = 65536.0f;  // 2^16
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  int64_t growth_interval = 2000;
};

struct LossScalerState {
  float scale = 1.0f;
  int64_t growth_tracker = 0;  // clean steps since the last change of scale
};

class LossScaler {
 public:
  // Disabled (bf16 / f32 training): scale 1, update() never changes it.
  LossScaler() = default;
  explicit LossScaler(const LossScalerConfig& config);  // enabled; the config is checked

  bool enabled() const { return enabled_; }
  float scale() const { return state_.scale; }
  // 1 / scale as torch computes it: scale.double().reciprocal().float().
  float inv_scale() const { return float(1.0 / double(state_.scale)); }

  // After a backward on the scaled loss: found_inf says whether some gradient
  // was inf or NaN. Returns whether the optimizer step is to be taken (always
  // true when disabled) and moves the scale as GradScaler.update() does.
  bool update(bool found_inf);

  const LossScalerState& state() const { return state_; }
  // A checkpoint's state (scale finite and > 0, tracker in [0, growth_interval)),
  // else an Error naming `source`.
  void load_state(const LossScalerState& state, const char* source);

 private:
  bool enabled_ = false;
  LossScalerConfig config_;
  LossScalerState state_;
};

}  // namespace nq
