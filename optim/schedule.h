// Learning-rate schedules, exactly as transformers.optimization:
//
//   warmup (all kinds), s < W:   f(s) = s / max(1, W)
//   constant:                    f(s) = 1
//   linear:                      f(s) = max(0, (S - s) / max(1, S - W))
//   cosine (num_cycles c = 0.5): f(s) = max(0, 0.5 (1 + cos(2 pi c (s - W) / max(1, S - W))))
//
// with W warmup steps, S total training steps, s the number of optimizer steps
// already taken; lr(s) = base_lr * f(s). Step 0 (the first update) of a run
// with warmup therefore uses lr = 0, as in transformers.
#pragma once
#include <cstdint>
#include <string>

namespace nq {

enum class ScheduleKind { Constant, Linear, Cosine };

// "constant" | "linear" | "cosine"; anything else throws, naming the value.
ScheduleKind parse_schedule_kind(const std::string& name);
const char* schedule_kind_name(ScheduleKind kind);

struct LrSchedule {
  ScheduleKind kind = ScheduleKind::Cosine;
  double base_lr = 2e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;    // unused by constant
  double num_cycles = 0.5;    // cosine only

  double factor(int64_t step) const;                  // f(s) above
  double lr(int64_t step) const { return base_lr * factor(step); }
  void validate() const;                              // throws on negative counts or lr
};

}  // namespace nq
