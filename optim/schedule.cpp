// LR schedules (formulas in schedule.h), in double as in Python.
#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "runtime/error.h"

namespace nq {

ScheduleKind parse_schedule_kind(const std::string& name) {
  if (name == "constant") return ScheduleKind::Constant;
  if (name == "linear") return ScheduleKind::Linear;
  if (name == "cosine") return ScheduleKind::Cosine;
  throw Error(str("unknown lr schedule '", name, "' (expected constant, linear or cosine)"));
}

const char* schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::Constant: return "constant";
    case ScheduleKind::Linear: return "linear";
    case ScheduleKind::Cosine: return "cosine";
  }
  return "?";
}

double LrSchedule::factor(int64_t step) const {
  if (step < warmup_steps) return double(step) / double(std::max<int64_t>(1, warmup_steps));
  double decay_steps = double(std::max<int64_t>(1, total_steps - warmup_steps));
  switch (kind) {
    case ScheduleKind::Constant: return 1.0;
    case ScheduleKind::Linear: return std::max(0.0, double(total_steps - step) / decay_steps);
    case ScheduleKind::Cosine: {
      double progress = double(step - warmup_steps) / decay_steps;
      return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * num_cycles * 2.0 * progress)));
    }
  }
  return 1.0;
}

void LrSchedule::validate() const {
  NQ_CHECK(std::isfinite(base_lr) && base_lr >= 0.0, "lr schedule: learning rate must be >= 0, got ", base_lr);
  NQ_CHECK(warmup_steps >= 0, "lr schedule: warmup steps must be >= 0, got ", warmup_steps);
  NQ_CHECK(kind == ScheduleKind::Constant || total_steps >= 1,
           "lr schedule: ", schedule_kind_name(kind), " needs total steps >= 1, got ", total_steps);
}

}  // namespace nq
