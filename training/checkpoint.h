// Training checkpoints: everything needed to continue a run exactly where it
// stopped, in one folder OUT/checkpoint-STEP/:
//
//   adapter_config.json, adapter_model.safetensors   the LoRA weights (PEFT format: loadable by peft too)
//   optimizer.safetensors     AdamW moments + step count per parameter (Optimizer::state_dict: the
//                             same form whatever AdamW's placement (host, GPU, paged), so a checkpoint
//                             written on one device resumes on the other)
//   trainer_state.json        {"step", "rng_seed", "rng_offset", "data_epoch", "data_index", "tokens_seen"}
//   train_config.json         the run's TrainConfig (training/train_config.h)
//
// The schedule needs no state of its own: lr is a function of the step. The RNG
// state (runtime/rng.h) replays the same dropout masks, the data position the
// same batches, so a resumed run computes bit-identical losses.
//
// Atomicity: the files are written into OUT/.checkpoint-STEP.tmp/, fsync'ed,
// and the folder is renamed to checkpoint-STEP only when all are complete (over
// an existing checkpoint-STEP: swapped with it in one atomic rename). A crash, a
// full disk or an error in the middle leaves at most a .tmp folder (removed on
// error) and every earlier checkpoint untouched.
//
// Reading one back refuses anything inconsistent with a one-line error naming the
// file: a truncated or mistyped file, a field out of range, an optimizer state whose
// tensors do not match the adapter.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/adapters.h"
#include "optim/optimizer.h"
#include "optim/loss_scaler.h"
#include "runtime/rng.h"
#include "training/batch.h"
#include "training/train_config.h"

namespace nq {

class Decoder;

struct TrainerState {
  int64_t step = 0;         // optimizer steps completed
  RngState rng;             // the process RNG after that step
  DataPosition data;        // where the next micro-batch starts
  int64_t tokens_seen = 0;  // non-padding tokens trained on so far
  // fp16 runs (optim/loss_scaler.h): the scaler after that step, and the steps it
  // skipped (an overflow: no update, and the LR schedule did not advance, as in
  // HF Trainer + accelerate). compute_dtype: the run's --dtype as resolved ("f32",
  // "bf16", "f16"); a resume in another dtype starts a fresh scaler.
  std::string compute_dtype = "f32";
  LossScalerState loss_scaler;
  int64_t skipped_steps = 0;
};

// Writes OUT/checkpoint-<state.step>/ atomically (replacing one of the same
// step) and returns its path.
std::string save_checkpoint(const std::string& out_dir, Decoder& model, const AdapterConfig& adapter,
                            const Optimizer& optimizer, const TrainerState& state, const TrainConfig& config);

// The config a checkpoint was trained with (train_config.json).
TrainConfig read_checkpoint_config(const std::string& dir);

// Reads trainer_state.json and loads optimizer.safetensors into `optimizer`
// (whose parameters must be the adapter loaded from the same folder with
// load_peft_adapter). Errors name the file and the field or tensor.
TrainerState load_checkpoint_state(const std::string& dir, Optimizer& optimizer);

// Creates `dir` if needed and checks that a file can be written in it; the
// error names `flag` (e.g. "--out") and the OS reason.
void ensure_writable_dir(const std::string& dir, const std::string& flag);

// ---- Which checkpoint, and one run per output folder (HF Trainer's rules)

struct CheckpointDir {
  int64_t step = 0;
  std::string path;  // OUT/checkpoint-STEP
};

// The complete checkpoints in `out_dir` (checkpoint-STEP folders holding every file a
// resume reads: kCheckpointFiles), oldest first; none when the folder does not exist.
std::vector<CheckpointDir> list_checkpoints(const std::string& out_dir);
extern const char* const kCheckpointFiles[5];

// The checkpoint --resume ARG names (HF Trainer's resume_from_checkpoint): a checkpoint
// folder itself (it holds trainer_state.json); an output folder, meaning its newest
// complete checkpoint; or "last", the newest complete checkpoint in `out_dir` (--out).
// Errors name ARG and what the folder holds.
std::string resolve_resume_checkpoint(const std::string& arg, const std::string& out_dir);

// Before a new run (no --resume) writes into `out_dir`: an error when the folder holds
// another run's checkpoints (HF's overwrite_output_dir check); with `overwrite` that
// run's files are deleted instead (checkpoint-*, the adapter files, `metrics_path`),
// and nothing else in the folder.
void claim_output_folder(const std::string& out_dir, bool overwrite, const std::string& metrics_path);

// --save-total-limit K (HF's save_total_limit): deletes the oldest complete checkpoints
// in `out_dir` beyond the `keep` newest; keep 0 keeps all. Returns the deleted paths.
std::vector<std::string> prune_checkpoints(const std::string& out_dir, int64_t keep);

// Test hook: called after each checkpoint file is written, with its name
// ("adapter", "optimizer", "trainer_state", "train_config"), and with "publish"
// just before the folder is renamed into place; it may throw to simulate a crash
// in the middle of a save. Empty function = no hook. (formats/atomic_file.h's
// set_write_fault_after fails the writes themselves, as a full disk does.)
void set_checkpoint_fault_hook(std::function<void(const std::string& file)> hook);

}  // namespace nq
