// Checkpoint save / load (see checkpoint.h).
#include "training/checkpoint.h"
#include "formats/atomic_file.h"
#include "formats/json.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/safetensors.h"

namespace nq {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::function<void(const std::string&)>& fault_hook() {
  static std::function<void(const std::string&)> hook;
  return hook;
}

void written(const std::string& file) {
  if (fault_hook()) fault_hook()(file);
}

// A file of the checkpoint folder, fsync'ed (formats/atomic_file.h: a full disk is an
// error naming the file, never a short file).
void write_text(const std::string& path, const std::string& text) { write_file_atomically(path, text); }

// Makes `tmp` the folder `final_dir`. When there is one already (a checkpoint of the same
// step saved again), the two are swapped in one atomic rename (Linux renameat2
// RENAME_EXCHANGE), so a kill at any moment leaves a complete checkpoint-STEP; the old
// one, now at `tmp`, is removed after. Elsewhere: the old folder moves aside first.
void publish(const std::string& tmp, const std::string& final_dir) {
  if (!fs::exists(final_dir)) {
    fs::rename(tmp, final_dir);
    return;
  }
#ifdef RENAME_EXCHANGE
  if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    return;
  }
#endif
  const std::string old = final_dir + ".old";
  std::error_code ec;
  fs::remove_all(old, ec);
  fs::rename(final_dir, old);
  fs::rename(tmp, final_dir);
  fs::remove_all(old, ec);
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  NQ_CHECK(f.good(), path, ": cannot read (is this a checkpoint folder?)");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_json(ss.str(), path);
}

}  // namespace

void set_checkpoint_fault_hook(std::function<void(const std::string& file)> hook) { fault_hook() = std::move(hook); }

void ensure_writable_dir(const std::string& dir, const std::string& flag) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  NQ_CHECK(!ec, flag, " ", dir, ": cannot create the folder: ", ec.message());
  NQ_CHECK(fs::is_directory(dir), flag, " ", dir, ": exists and is not a folder");
  const std::string probe = dir + "/.nq_write_probe";
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  NQ_CHECK(fd >= 0, flag, " ", dir, ": cannot write in the folder: ", std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

std::string save_checkpoint(const std::string& out_dir, Decoder& model, const AdapterConfig& adapter,
                            const Optimizer& optimizer, const TrainerState& state, const TrainConfig& config) {
  const std::string name = str("checkpoint-", state.step);
  const std::string final_dir = out_dir + "/" + name, tmp = out_dir + "/." + name + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    NQ_CHECK(fs::create_directories(tmp, ec) && !ec, tmp, ": cannot create the folder: ", ec.message());
    save_peft_adapter(tmp, model, adapter);  // each file fsync'ed + renamed inside
    written("adapter");

    std::vector<std::pair<std::string, Tensor>> tensors;
    for (auto& [key, t] : optimizer.state_dict()) tensors.emplace_back(key, t);
    save_safetensors(tmp + "/optimizer.safetensors", tensors);
    written("optimizer");

    json st = {{"step", state.step},           {"rng_seed", state.rng.seed},   {"rng_offset", state.rng.offset},
               {"data_epoch", state.data.epoch}, {"data_index", state.data.index}, {"tokens_seen", state.tokens_seen},
               {"compute_dtype", state.compute_dtype},   {"loss_scale", state.loss_scaler.scale},
               {"loss_scale_growth_tracker", state.loss_scaler.growth_tracker}, {"skipped_steps", state.skipped_steps}};
    write_text(tmp + "/trainer_state.json", st.dump(1) + "\n");
    written("trainer_state");
    write_text(tmp + "/train_config.json", config.to_json());
    written("train_config");
    sync_path(tmp);

    written("publish");
    publish(tmp, final_dir);
    sync_path(out_dir);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    throw Error(str(final_dir, ": checkpoint not saved: ", e.what()));
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  return final_dir;
}

TrainConfig read_checkpoint_config(const std::string& dir) {
  const std::string path = dir + "/train_config.json";
  TrainConfig cfg;
  cfg.apply_json(read_json(path).dump(), path);
  return cfg;
}

TrainerState load_checkpoint_state(const std::string& dir, Optimizer& optimizer) {
  const std::string path = dir + "/trainer_state.json";
  const json doc = read_json(path);
  const JsonIn j(doc, path);
  j.expect_object();
  TrainerState s;
  s.step = j.at("step").integer(0);  // 0: a starting point written before any step (make experiments' LoRA inits)
  s.rng.seed = j.at("rng_seed").unsigned_integer();
  s.rng.offset = j.at("rng_offset").unsigned_integer();
  s.data.epoch = j.at("data_epoch").integer(0);
  s.data.index = j.at("data_index").integer(0);
  s.tokens_seen = j.at("tokens_seen").integer(0);
  // The loss scaler's keys (absent in checkpoints of runs without one); their ranges are
  // the scaler's to check (LossScaler::load_state), the skipped steps at most the steps.
  if (auto v = j.find("compute_dtype")) {
    s.compute_dtype = v->string();
    NQ_CHECK(s.compute_dtype == "f32" || s.compute_dtype == "bf16" || s.compute_dtype == "f16", path,
             ": \"compute_dtype\" must be f32, bf16 or f16, got \"", s.compute_dtype, "\"");
  }
  if (auto v = j.find("loss_scale")) {
    const double scale = v->number();  // checked before the conversion: a double beyond f32 is UB to convert
    NQ_CHECK(std::isfinite(scale) && scale > 0 && scale <= double(FLT_MAX), path,
             ": \"loss_scale\" must be a positive f32 value, got ", scale);
    s.loss_scaler.scale = float(scale);
  }
  if (auto v = j.find("loss_scale_growth_tracker")) s.loss_scaler.growth_tracker = v->integer(0);
  if (auto v = j.find("skipped_steps")) s.skipped_steps = v->integer(0, s.step);

  const std::string opt_path = dir + "/optimizer.safetensors";
  SafetensorsFile file = SafetensorsFile::open(opt_path);
  std::map<std::string, Tensor> state;
  for (const std::string& key : file.names()) state[key] = file.get(key);
  try {
    optimizer.load_state_dict(state);
  } catch (const Error& e) {
    throw Error(str(opt_path, ": ", e.what()));
  }
  return s;
}

// ---- Which checkpoint, and one run per output folder

const char* const kCheckpointFiles[5] = {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                                         "trainer_state.json", "train_config.json"};

namespace {

// STEP of a folder named checkpoint-STEP (digits only), else -1: ".checkpoint-6.tmp" and
// "checkpoint-6.old" (the save's scratch names) are not checkpoints.
int64_t checkpoint_step(const std::string& name) {
  const std::string prefix = "checkpoint-";
  if (name.compare(0, prefix.size(), prefix) != 0 || name.size() == prefix.size() || name.size() > prefix.size() + 18)
    return -1;
  for (size_t i = prefix.size(); i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return -1;
  return std::stoll(name.substr(prefix.size()));
}

bool is_complete_checkpoint(const fs::path& dir) {
  for (const char* file : kCheckpointFiles)
    if (!fs::is_regular_file(dir / file)) return false;
  return true;
}

// Every checkpoint-STEP folder, complete or not, oldest first.
std::vector<CheckpointDir> checkpoint_folders(const std::string& out_dir) {
  std::vector<CheckpointDir> found;
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec)) return found;
  for (const fs::directory_entry& e : fs::directory_iterator(out_dir, ec)) {
    const int64_t step = checkpoint_step(e.path().filename().string());
    if (step >= 0 && e.is_directory(ec)) found.push_back({step, (fs::path(out_dir) / e.path().filename()).string()});
  }
  std::sort(found.begin(), found.end(), [](const CheckpointDir& a, const CheckpointDir& b) { return a.step < b.step; });
  return found;
}

}  // namespace

std::vector<CheckpointDir> list_checkpoints(const std::string& out_dir) {
  std::vector<CheckpointDir> complete;
  for (const CheckpointDir& c : checkpoint_folders(out_dir))
    if (is_complete_checkpoint(c.path)) complete.push_back(c);
  return complete;
}

std::string resolve_resume_checkpoint(const std::string& arg, const std::string& out_dir) {
  const std::string dir = arg == "last" ? out_dir : arg;
  const std::string named = arg == "last" ? str("--resume last: --out ", out_dir) : str("--resume ", arg);
  std::error_code ec;
  NQ_CHECK(fs::is_directory(dir, ec), named, ": no such folder");
  if (fs::exists(fs::path(dir) / "trainer_state.json", ec)) return dir;  // a checkpoint itself
  const std::vector<CheckpointDir> complete = list_checkpoints(dir);
  if (!complete.empty()) return complete.back().path;
  const size_t incomplete = checkpoint_folders(dir).size();
  throw Error(str(named, ": holds no complete checkpoint (checkpoint-STEP with ", kCheckpointFiles[3], " and ",
                  kCheckpointFiles[2], ")", incomplete ? str("; ", incomplete, " incomplete checkpoint folders") : ""));
}

void claim_output_folder(const std::string& out_dir, bool overwrite, const std::string& metrics_path) {
  const std::vector<CheckpointDir> found = checkpoint_folders(out_dir);
  if (found.empty()) return;
  if (!overwrite) {
    const std::string which = found.size() == 1 ? fs::path(found[0].path).filename().string()
                                                : str(found.size(), " checkpoints, ", fs::path(found[0].path).filename().string(),
                                                      " to ", fs::path(found.back().path).filename().string());
    throw Error(str("--out ", out_dir, " already holds a run (", which, "): continue it with --resume ", out_dir,
                    ", replace it with --overwrite, or choose another --out"));
  }
  std::error_code ec;
  std::vector<fs::path> doomed;  // collected first: deleting while iterating a folder is unspecified
  for (const fs::directory_entry& e : fs::directory_iterator(out_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("checkpoint-", 0) == 0 || name.rfind(".checkpoint-", 0) == 0 || name == "adapter_config.json" ||
        name == "adapter_model.safetensors")
      doomed.push_back(e.path());
  }
  if (!metrics_path.empty()) doomed.push_back(metrics_path);
  for (const fs::path& p : doomed) {
    fs::remove_all(p, ec);
    NQ_CHECK(!ec, "--overwrite: cannot delete ", p.string(), ": ", ec.message());
  }
}

std::vector<std::string> prune_checkpoints(const std::string& out_dir, int64_t keep) {
  std::vector<std::string> deleted;
  if (keep <= 0) return deleted;
  const std::vector<CheckpointDir> complete = list_checkpoints(out_dir);
  for (size_t i = 0; i + size_t(keep) < complete.size(); ++i) {
    std::error_code ec;
    fs::remove_all(complete[i].path, ec);
    NQ_CHECK(!ec, "--save-total-limit: cannot delete ", complete[i].path, ": ", ec.message());
    deleted.push_back(complete[i].path);
  }
  return deleted;
}

}  // namespace nq
