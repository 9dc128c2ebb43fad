// Checkpoint save / load (see checkpoint.h).
#include "training/checkpoint.h"
#include "formats/atomic_file.h"
#include "formats/json.h"

#include <fcntl.h>
#include <stdio.h>
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
               {"data_epoch", state.data.epoch}, {"data_index", state.data.index}, {"tokens_seen", state.tokens_seen}};
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
  s.step = j.at("step").integer(1);
  s.rng.seed = j.at("rng_seed").unsigned_integer();
  s.rng.offset = j.at("rng_offset").unsigned_integer();
  s.data.epoch = j.at("data_epoch").integer(0);
  s.data.index = j.at("data_index").integer(0);
  s.tokens_seen = j.at("tokens_seen").integer(0);

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
