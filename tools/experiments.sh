#!/usr/bin/env bash
# `make experiments`: the seed's claims about LoRA (rank, placement, initialisation,
# learning rate), measured with short QLoRA runs of ./train on SmolLM2-135M-Instruct
# (the demo model, `make model`), then docs/experiments.md written from what the
# runs wrote (tools/experiments_report.py). Not part of `make test`.
#
#   tools/experiments.sh            every run (20 runs of 12 steps, 5 exact-match scores: about an hour
#                                   on 2 busy cores, 3 to 10 s a step)
#   ONLY="rank_r1 lr_1e-1" tools/experiments.sh     just these runs, then the page
#
# Every run starts from scratch (its folder is removed first) with a fixed seed and a
# fixed thread count, so a second `make experiments` gives the same table: the losses
# are bit-identical for the same binary and --threads (the timings are not in the table).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
EXP=runs/experiments
PROBE=${PROBE:-build/cpu/lora_init_probe}
ONLY=${ONLY:-}
[ -f "$MODEL" ] || make --no-print-directory model
for p in ./train ./eval ./plot "$PROBE"; do
  [ -x "$p" ] || { echo "error: $p is missing: run make experiments (it builds them)" >&2; exit 1; }
done
mkdir -p "$EXP"

# The small-data set of the rank sweep: 8 chats, each seen about three times in 12 steps,
# so a model can memorise them (the seed's "small data").
head -n 8 data/demo_train.jsonl > "$EXP/demo_train_8.jsonl"
# The eval sets: the first 16 held-out chats of each task (an eval pass of 40 costs a minute here).
head -n 16 data/demo_eval.jsonl > "$EXP/demo_eval_16.jsonl"
head -n 16 data/format_eval.jsonl > "$EXP/format_eval_16.jsonl"

# What every run shares: 12 steps of 2 packed rows x 64 tokens, lr 1e-3 cosine after
# 1 warmup step, the seed's LoRA dropout 0.05, seed 42, 2 threads, eval at the end.
COMMON=(--model "$MODEL" --max-steps 12 --batch-size 2 --max-length 64 --packing --lr 1e-3 --warmup-steps 1
        --schedule cosine --seed 42 --threads 2 --log-every 4 --no-progress)
PIRATE=(--data data/demo_train.jsonl --eval-data "$EXP/demo_eval_16.jsonl")
SMALL=(--data "$EXP/demo_train_8.jsonl" --eval-data "$EXP/demo_eval_16.jsonl")
FORMAT=(--data data/format_train.jsonl --eval-data "$EXP/format_eval_16.jsonl")
GEN_FORMAT=(--data "$EXP/format_eval_16.jsonl" --max-length 64 --packing --batch-size 8 --generate 10 --max-new-tokens 10
            --no-progress)

wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

# run NAME ./train-flags...: one training run into $EXP/NAME (its command in NAME/command).
# A run that stops (the trainer's NaN stop) keeps its metrics; its error line goes to NAME/error.
run() {
  local name=$1; shift
  wanted "$name" || return 0
  local dir=$EXP/$name
  rm -rf "$dir" && mkdir -p "$dir"
  echo "./train ${COMMON[*]} $* --out $dir" > "$dir/command"
  echo "== $name"
  if ! ./train "${COMMON[@]}" "$@" --out "$dir" > "$dir/train.log" 2>&1; then
    grep '^error:' "$dir/train.log" | tail -1 > "$dir/error" || true
    echo "   stopped: $(cat "$dir/error")"
    ./plot "$dir" > /dev/null
  fi
  tail -n 1 "$dir/metrics.jsonl" | cut -c1-120
}

# init NAME VARIANT ./train-flags...: the probe's step-0 measurements, then ./train from its checkpoint.
init() {
  local name=$1 variant=$2; shift 2
  wanted "$name" || return 0
  local dir=$EXP/$name
  rm -rf "$dir" && mkdir -p "$dir"
  echo "$PROBE --init $variant ${COMMON[*]} $* --out $dir" > "$dir/probe_command"
  echo "./train ${COMMON[*]} $* --out $dir --resume $dir/checkpoint-0" > "$dir/command"
  echo "== $name"
  "$PROBE" --init "$variant" "${COMMON[@]}" "$@" --out "$dir" > "$dir/probe.json" 2> "$dir/probe.log"
  cat "$dir/probe.json"
  if ! ./train "${COMMON[@]}" "$@" --out "$dir" --resume "$dir/checkpoint-0" > "$dir/train.log" 2>&1; then
    grep '^error:' "$dir/train.log" | tail -1 > "$dir/error" || true
    ./plot "$dir" > /dev/null
  fi
  tail -n 1 "$dir/metrics.jsonl" | cut -c1-120
}

# behaviour NAME [--adapter DIR]: exact-match accuracy on 10 format-eval prompts.
behaviour() {
  local name=$1; shift
  wanted "$name" || return 0
  mkdir -p "$EXP/$name"
  echo "./eval --model $MODEL ${GEN_FORMAT[*]} $*" > "$EXP/$name/generate_command"
  ./eval --model "$MODEL" "${GEN_FORMAT[@]}" "$@" > "$EXP/$name/generate.json" 2> "$EXP/$name/generate.log"
  cat "$EXP/$name/generate.json"
}

# ---- initialisation (r 16, alpha 32, all-linear, the persona). init_peft is also the
# baseline of the placement and learning-rate runs: the probe's peft checkpoint resumed
# by ./train gives bit-identical losses to a plain ./train with the same flags.
for v in peft reverse both_random gaussian; do init "init_$v" "$v" "${PIRATE[@]}" --r 16 --alpha 32; done

# ---- rank: alpha = 2r (scale 2 at every rank), small data
for r in 1 4 16 64 256; do run "rank_r$r" "${SMALL[@]}" --r "$r" --alpha $((2 * r)); done

# ---- placement on the format task, equal rank (r 16, alpha 32), with the exact-match score
behaviour format_base
for t in "q_proj,v_proj:qv" "q_proj,k_proj,v_proj,o_proj:attention" "gate_proj,up_proj,down_proj:mlp" "all-linear:all"; do
  run "format_${t##*:}_r16" "${FORMAT[@]}" --targets "${t%%:*}" --r 16 --alpha 32
  behaviour "format_${t##*:}_r16" --adapter "$EXP/format_${t##*:}_r16"
done
# ---- placement on the persona, equal trainable parameters (all-linear r 16, init_peft: 162,816 per layer)
run place_qv_r85 "${PIRATE[@]}" --targets q_proj,v_proj --r 85 --alpha 170
run place_attention_r42 "${PIRATE[@]}" --targets q_proj,k_proj,v_proj,o_proj --r 42 --alpha 84
run place_mlp_r26 "${PIRATE[@]}" --targets gate_proj,up_proj,down_proj --r 26 --alpha 52

# ---- learning rate above the demo's 1e-3 (init_peft), to where it diverges and to where the
# trainer's NaN stop ends the run (r 16, alpha 32, all-linear, the persona)
for lr in 1e-2 1 1e3; do run "lr_$lr" "${PIRATE[@]}" --r 16 --alpha 32 --lr "$lr"; done

# ---- rsLoRA at r 256 (alpha 512 as rank_r256: scale 512 / sqrt(256) = 32 instead of 2), small data
run rslora_r256 "${SMALL[@]}" --r 256 --alpha 512 --rslora

python3 tools/experiments_report.py "$EXP" docs/experiments.md
