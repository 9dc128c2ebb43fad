// ./train --resume: the run's options from the checkpoint, the command line's
// harmless ones over them (see resume.h).
#include "training/resume.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "training/checkpoint.h"

namespace nq {

namespace {

using json = nlohmann::json;

// A setting's value as a user types it: 0.001, cosine, q_proj,v_proj.
std::string value_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string s;
    for (const json& e : v) s += (s.empty() ? "" : ",") + value_text(e);
    return s;
  }
  return v.dump();
}

}  // namespace

bool parse_train_command_line(int argc, char** argv, TrainConfig* cfg, std::vector<std::string>* notes) {
  TrainConfig given_cfg;
  FlagTable table = train_flags(given_cfg);
  if (!parse_train_table(table, argc, argv)) return false;  // --help
  if (given_cfg.resume.empty()) {  // a new run
    finish_train_args(table, &given_cfg);
    *cfg = given_cfg;
    return true;
  }
  const std::string checkpoint = resolve_resume_checkpoint(given_cfg.resume, given_cfg.out);
  const std::string config_path = checkpoint + "/train_config.json";
  TrainConfig run = read_checkpoint_config(checkpoint);
  run.resume = checkpoint;
  // The run's output folder is where its checkpoints are (the saved "out" may be relative to another directory).
  if (!table.given("out")) run.out = std::filesystem::path(checkpoint).parent_path().string();

  const json saved = json::parse(run.to_json()), wanted = json::parse(given_cfg.to_json());
  for (const Flag& f : table.flags()) {
    if (!table.given(f.name) || f.json_key.empty() || f.name == "resume" || f.name == "out") continue;
    const json& was = saved[f.json_key];
    const json& now = wanted[f.json_key];
    if (was == now) continue;
    TrainConfig changed = run;
    changed.apply_json(json{{f.json_key, now}}.dump(), "--" + f.name);
    const std::string key = changed.trajectory_difference(run);
    NQ_CHECK(key.empty(), "--", f.name, " ", value_text(now), " differs from the checkpoint's ", value_text(was), " (",
             config_path, "): it would change the run being resumed; drop the flag to continue it, or start a new ",
             "run in another --out");
    run = changed;
    notes->push_back(str("--", f.name, " ", value_text(now), " (the checkpoint's run: ", value_text(was), ")"));
  }
  run.validate();
  *cfg = run;
  return true;
}

}  // namespace nq
