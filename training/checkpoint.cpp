// Checkpoint save / load (see checkpoint.h).
#include "training/checkpoint.h"
#include "formats/json.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
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

// fsync a file or a folder by path, so a rename after it publishes complete data.
void sync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  NQ_CHECK(fd >= 0, path, ": cannot open to sync: ", std::strerror(errno));
  int rc = ::fsync(fd);
  ::close(fd);
  NQ_CHECK(rc == 0, path, ": fsync failed: ", std::strerror(errno));
}

void write_text(const std::string& path, const std::string& text) {
  {
    std::ofstream f(path, std::ios::trunc);
    f << text;
    f.flush();
    NQ_CHECK(f.good(), path, ": write failed (disk full?)");
  }
  sync_path(path);
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
               {"data_epoch", state.data.epoch}, {"data_index", state.data.index}, {"tokens_seen", state.tokens_seen}};
    write_text(tmp + "/trainer_state.json", st.dump(1) + "\n");
    written("trainer_state");
    write_text(tmp + "/train_config.json", config.to_json());
    written("train_config");
    sync_path(tmp);

    // Publish: an older folder of the same step moves aside first (rename cannot replace a non-empty folder).
    const std::string old = final_dir + ".old";
    fs::remove_all(old, ec);
    if (fs::exists(final_dir)) fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    sync_path(out_dir);
    fs::remove_all(old, ec);
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
  json j = read_json(path);
  TrainerState s;
  try {
    auto field = [&](const char* key) -> const json& {
      NQ_CHECK(j.is_object() && j.contains(key), path, ": missing field \"", key, "\"");
      return j[key];
    };
    s.step = field("step").get<int64_t>();
    s.rng.seed = field("rng_seed").get<uint64_t>();
    s.rng.offset = field("rng_offset").get<uint64_t>();
    s.data.epoch = field("data_epoch").get<int64_t>();
    s.data.index = field("data_index").get<int64_t>();
    s.tokens_seen = field("tokens_seen").get<int64_t>();
  } catch (const json::exception& e) {
    throw Error(str(path, ": mistyped field: ", e.what()));
  }
  // step 0: a starting point written before any step (make experiments' LoRA initialisations)
  NQ_CHECK(s.step >= 0 && s.data.epoch >= 0 && s.data.index >= 0, path, ": step ", s.step, ", data position (",
           s.data.epoch, ", ", s.data.index, ") out of range");

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

}  // namespace nq
