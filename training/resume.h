// ./train's command line when it continues a run, as HF Trainer's
// resume_from_checkpoint does: `./train --resume OUT/checkpoint-N` alone is enough.
//
//   --resume OUT/checkpoint-N   that checkpoint
//   --resume OUT                the newest complete checkpoint in OUT
//   --resume last               the newest complete checkpoint in --out
//
// The checkpoint's train_config.json supplies every option; --out defaults to the
// folder holding the checkpoint. A flag given beside --resume (or in a --config
// file) that would change the losses (trajectory_difference: --lr, --r, --data,
// --seed, ...) is an error naming the flag, its value and the checkpoint's; one that
// does not (--save-every, --eval-every, --device, --max-steps or --epochs extending
// the run, ...) is applied, and a note says so.
#pragma once
#include <string>
#include <vector>

#include "training/train_config.h"

namespace nq {

// Parses ./train's argv into *cfg (validated). Without --resume: parse_train_args.
// With it: the resolved checkpoint's config, the harmless flags over it, cfg->resume
// set to the checkpoint folder; `notes` gets one line per flag that differs from the
// checkpoint's run. Returns false when --help was given (the help is printed).
bool parse_train_command_line(int argc, char** argv, TrainConfig* cfg, std::vector<std::string>* notes);

}  // namespace nq
