// The eval loss of the trainer and ./eval (see evaluate.h).
#include "training/evaluate.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <regex>

#include "autograd/var.h"
#include "model/adapters.h"
#include "model/device.h"
#include "model/generate.h"
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

EvalReport evaluate(const EvalConfig& cfg, std::ostream& log, const GenerateScoreOptions& gen) {
  const TrainConfig& run = cfg.run;
  run.validate();
  NQ_CHECK(gen.prompts >= 0, "--generate must be >= 0, got ", gen.prompts);
  NQ_CHECK(gen.max_new_tokens >= 1, "--max-new-tokens must be >= 1, got ", gen.max_new_tokens);
  // Decoding runs on the CPU (as ./generate): with --generate, auto means cpu.
  NQ_CHECK(gen.prompts == 0 || run.device != "cuda", "--generate decodes on the CPU; use --device cpu or auto");
  const Device device = gen.prompts > 0 ? Device::CPU : select_device(run.device, "--device");
  // What can fail cheaply fails before the model is loaded.
  NQ_CHECK(std::ifstream(run.data).good(), "--data ", run.data, ": cannot read the file");
  const BadLinePolicy policy = parse_bad_line_policy(run.on_bad_line);
  log << "device: " << device_summary(device) << "\n";

  // The model as ./train builds it: NF4 base (a 4-bit checkpoint's as stored), the adapter, then the device.
  std::string dtype_note;
  const DType compute = select_compute_dtype(run.dtype, device, "--dtype", &dtype_note);
  if (!dtype_note.empty()) log << "note: " << dtype_note << "\n";
  LoadedModel loaded = load_model(run.model, WeightLoad::qlora(!run.no_quant, device, compute));
  loaded.config.apply_rope_scaling_flag(run.rope_scaling);
  NQ_CHECK(loaded.tokenizer.has_value(), "--model ", run.model, ": no tokenizer (tokenizer.json) to encode --data with");
  Decoder model = build_decoder(loaded, {}, /*nf4_base=*/!run.no_quant);
  if (!cfg.adapter.empty()) load_peft_adapter(cfg.adapter, model);
  to_device(model, device, compute);
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
  if (gen.prompts > 0) {
    // Stop at the config's eos ids and the tokenizer's end-of-turn tokens (./generate's list).
    std::vector<int32_t> stop = loaded.config.eos_token_ids;
    for (int32_t id : {tok.eos_id, tok.token_id("<|im_end|>"), tok.token_id("<|endoftext|>")})
      if (id >= 0) stop.push_back(id);
    const auto t_gen = Clock::now();
    r.generated = generate_score(model, tok, data.samples, gen, stop);
    for (const GeneratedAnswer& a : r.generated->answers)
      log << (a.right ? "  right" : "  wrong") << " (line " << a.line << "): " << nlohmann::json(a.answer).dump()
          << (gen.match.empty() && !a.right ? "  expected " + nlohmann::json(a.reference).dump() : "") << "\n";
    log << "generate: " << r.generated->right << " of " << r.generated->prompts << " answers right ("
        << r.generated->metric << "), score " << r.generated->score << ", in "
        << format_duration(std::chrono::duration<double>(Clock::now() - t_gen).count()) << "\n";
  }
  return r;
}

namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// The answer a person reads: a thinking model's (Qwen3's) reasoning block, empty or not,
// is not part of it (the text after the last "</think>"); outer whitespace trimmed.
std::string answer_text(const std::string& s) {
  const size_t think_end = s.rfind("</think>");
  return trim(think_end == std::string::npos ? s : s.substr(think_end + 8));
}

}  // namespace

GenerateScore generate_score(const Decoder& model, const Tokenizer& tok, const std::vector<Sample>& samples,
                             const GenerateScoreOptions& options, const std::vector<int32_t>& stop_ids) {
  GenerateScore score;
  std::optional<std::regex> pattern;
  if (!options.match.empty()) {
    try {
      pattern.emplace(options.match, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw Error(str("--match '", options.match, "': not a regular expression: ", e.what()));
    }
    score.metric = "match /" + options.match + "/";
  } else {
    score.metric = "exact";
  }
  GenerateOptions g;
  g.max_new_tokens = options.max_new_tokens;
  g.sampling.greedy = true;
  g.stop_ids = stop_ids;
  TrainingMode eval_mode(false);
  NoGrad no_grad;
  const int64_t n = std::min<int64_t>(options.prompts, int64_t(samples.size()));
  for (int64_t i = 0; i < n; ++i) {
    const Sample& s = samples[size_t(i)];
    // The last trained span [begin, end): the answer the sample teaches.
    int64_t end = int64_t(s.trained.size());
    while (end > 0 && !s.trained[size_t(end - 1)]) --end;
    NQ_CHECK(end > 0, "sample ", i, " (line ", s.line, "): no trained token to take a reference answer from");
    int64_t begin = end;
    while (begin > 0 && s.trained[size_t(begin - 1)]) --begin;
    NQ_CHECK(begin > 0, "sample ", i, " (line ", s.line, "): the answer starts at the first token; no prompt");
    std::vector<int32_t> reference(s.ids.begin() + begin, s.ids.begin() + end);
    while (!reference.empty() && std::count(stop_ids.begin(), stop_ids.end(), reference.back())) reference.pop_back();
    const std::vector<int32_t> prompt(s.ids.begin(), s.ids.begin() + begin);
    GeneratedAnswer a;
    a.line = s.line;
    a.reference = answer_text(tok.decode(reference));
    a.answer = answer_text(tok.decode(generate(model, prompt, g)));
    a.right = pattern ? std::regex_match(a.answer, *pattern) : a.answer == a.reference;
    score.right += a.right;
    score.answers.push_back(std::move(a));
  }
  score.prompts = n;
  score.score = n > 0 ? double(score.right) / double(n) : NAN;
  return score;
}

std::string eval_report_json(const EvalReport& r) {
  nlohmann::json j = {{"loss", r.result.loss},
                      {"tokens", r.result.targets},
                      {"samples", r.samples},
                      {"lines", r.lines},
                      {"format", data_format_name(r.format)}};
  if (r.generated)
    j["generate"] = {{"metric", r.generated->metric},
                     {"prompts", r.generated->prompts},
                     {"right", r.generated->right},
                     {"score", r.generated->score}};
  return j.dump();
}

}  // namespace nq
