// The eval loss of the trainer and ./eval (see evaluate.h).
#include "training/evaluate.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>

#include "autograd/var.h"
#include "model/adapters.h"
#include "model/device.h"
#include "model/load_model.h"
#include "training/progress.h"

namespace nq {

namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

EvalLoss evaluate_samples(Decoder& model, const std::vector<Sample>& samples, const std::vector<int64_t>& subset,
                          const LoaderOptions& options, const std::function<void(const EvalProgress&)>& on_batch) {
  LoaderOptions opt = options;
  opt.shuffle = false;
  DataLoader loader(samples, subset, opt);
  const Device device = model_device(model);
  TrainingMode eval_mode(false);  // eval mode even when called from the trainer: no LoRA dropout
  NoGrad no_grad;
  double sum = 0;  // Σ -log p over the counted targets
  EvalProgress p;
  p.so_far.loss = NAN;  // until a target is counted
  p.batches = loader.batches_in_epoch(0);
  for (p.batch = 1; p.batch <= p.batches; ++p.batch) {
    Batch b = loader.next();
    p.tokens += b.n_tokens;
    if (b.n_targets > 0) {
      // forward_loss: [1] f32, the mean over this batch's n_targets targets
      sum += double(model.forward_loss(decoder_batch(b, device)).value().to_vector()[0]) * double(b.n_targets);
      p.so_far.targets += b.n_targets;
    }
    p.so_far.loss = p.so_far.targets > 0 ? sum / double(p.so_far.targets) : NAN;
    if (on_batch) on_batch(p);
  }
  return p.so_far;
}

EvalReport evaluate(const EvalConfig& cfg, std::ostream& log) {
  const TrainConfig& run = cfg.run;
  run.validate();
  const Device device = select_device(run.device, "--device");
  // What can fail cheaply fails before the model is loaded.
  NQ_CHECK(std::ifstream(run.data).good(), "--data ", run.data, ": cannot read the file");
  const BadLinePolicy policy = parse_bad_line_policy(run.on_bad_line);
  log << "device: " << device_summary(device) << "\n";

  // The model as ./train builds it: NF4 base (a 4-bit checkpoint's as stored), the adapter, then the device.
  LoadedModel loaded = load_model(run.model);
  NQ_CHECK(loaded.tokenizer.has_value(), "--model ", run.model, ": no tokenizer (tokenizer.json) to encode --data with");
  Decoder model = build_decoder(loaded, {}, /*nf4_base=*/!run.no_quant);
  if (!cfg.adapter.empty()) load_peft_adapter(cfg.adapter, model);
  to_device(model, device);
  log << "model: " << model.config().summary() << (run.no_quant ? ", dense f32 base" : ", NF4 base")
      << (cfg.adapter.empty() ? std::string() : ", adapter " + cfg.adapter) << "\n";

  const Tokenizer& tok = *loaded.tokenizer;
  Dataset data = load_dataset(run.data, tok, encode_options(run, loaded, log), policy);
  EvalReport r;
  r.format = data.format;
  r.samples = int64_t(data.samples.size());
  r.truncated = data.truncated;
  r.dropped_untrained = data.dropped_untrained;
  r.skipped_lines = data.skipped_lines;
  r.lines = r.samples + r.dropped_untrained + r.skipped_lines;
  log << "data: " << run.data << " (" << data_format_name(data.format) << "): " << r.samples << " samples of "
      << r.lines << " lines; " << r.truncated << " truncated to " << run.max_length << " tokens, "
      << r.dropped_untrained << " without a target token, " << r.skipped_lines << " bad lines skipped\n";
  if (data.skipped_lines > 0) log << "  first skipped: " << data.first_skip_message << "\n";

  std::vector<int64_t> all(data.samples.size());
  std::iota(all.begin(), all.end(), int64_t(0));
  std::optional<ProgressBar> bar;  // made at the first batch, when the pass's length is known
  const bool tty = &log == &std::cerr && isatty(STDERR_FILENO);
  const auto start = Clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  auto on_batch = [&](const EvalProgress& p) {
    if (run.no_progress) return;
    if (!bar) bar.emplace(log, p.batches, tty, std::max<int64_t>(1, p.batches / 10), BarKind::Eval);
    StepMetrics m;
    m.step = p.batch;
    m.loss = p.so_far.loss;
    m.tokens_per_s = double(p.tokens) / elapsed();
    bar->update(m, elapsed());
  };
  r.result = evaluate_samples(model, data.samples, all, loader_options(run, tok), on_batch);
  if (bar) bar->finish();
  r.seconds = elapsed();
  for (const Sample& s : data.samples) r.tokens += int64_t(s.ids.size());
  log << r.samples << " samples, " << r.tokens << " tokens (" << r.result.targets << " targets) in "
      << format_duration(r.seconds) << ", " << int64_t(double(r.tokens) / r.seconds) << " tokens/s\n";
  return r;
}

std::string eval_report_json(const EvalReport& r) {
  return nlohmann::json{{"loss", r.result.loss},
                        {"tokens", r.result.targets},
                        {"samples", r.samples},
                        {"lines", r.lines},
                        {"format", data_format_name(r.format)}}
      .dump();
}

}  // namespace nq
