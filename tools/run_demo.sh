#!/usr/bin/env bash
# The default job of `make run`: QLoRA-fine-tune SmolLM2-135M-Instruct (a real
# pretrained model, fetched by `make model`) on data/demo_train.jsonl, a small
# dataset that teaches a pirate persona, then ask the same questions before and
# after and print the answers side by side.
#
#   tools/run_demo.sh [extra ./train flags]    (e.g. --max-steps 10 for a quick look)
#
# NF4 all-linear LoRA r=16 (the seed's LoraConfig), on the GPU when there is one,
# else on the CPU (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=runs/demo
QUESTIONS=("What colour is a banana?" "Name the capital city of Japan." "How many legs does a spider have?")

[ -f "$MODEL" ] || make --no-print-directory model

ask() {  # ask [--adapter DIR]: one fresh conversation per question, greedy
  for q in "${QUESTIONS[@]}"; do
    printf '%s\n/reset\n' "$q"
  done | ./generate --model "$MODEL" --chat --greedy --max-new-tokens 40 "$@" 2>/dev/null |
    grep -v '^\[' | grep -v '^> /reset' || true
}

# The behaviour metric (./eval --generate, training/evaluate.h): the share of greedy answers to
# the first 10 held-out questions that are in persona (start "Arr!", end "Fair winds, matey!").
PERSONA='^Arr!.*Fair winds, matey!$'
score() {  # score [--adapter DIR]: prints "N of 10 answers in persona (score S); eval loss L"
  ./eval --model "$MODEL" --data data/demo_eval.jsonl --max-length 128 --packing --batch-size 4 --no-progress \
    --generate 10 --max-new-tokens 40 --match "$PERSONA" "$@" 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin); g=j["generate"]; print("%d of %d answers in persona (score %.2f); eval loss %.4f" % (g["right"], g["prompts"], g["score"], j["loss"]))'
}

echo "== before fine-tuning"
BEFORE=$(ask)
echo "$BEFORE"
SCORE_BEFORE=$(score)
echo "behaviour: $SCORE_BEFORE"

echo
echo "== fine-tuning (./train): QLoRA NF4 + LoRA r=16 all-linear on data/demo_train.jsonl"
# --overwrite: a fresh run each time (runs/demo holds one run; ./train --help)
./train --model "$MODEL" --data data/demo_train.jsonl --eval-data data/demo_eval.jsonl --out "$OUT" --overwrite \
  --max-steps 45 --batch-size 4 --max-length 128 --packing --lr 1e-3 --warmup-steps 3 \
  --schedule cosine --log-every 5 --eval-every 15 "$@"

echo
echo "== after fine-tuning (--adapter $OUT)"
AFTER=$(ask --adapter "$OUT")
echo "$AFTER"
SCORE_AFTER=$(score --adapter "$OUT")
echo "behaviour: $SCORE_AFTER"

echo
echo "== the behaviour metric (10 held-out questions, answers in persona; ./eval --generate 10 --match '$PERSONA')"
echo "before: $SCORE_BEFORE"
echo "after:  $SCORE_AFTER"
echo "The run's curves (train and eval loss, learning rate, grad norm): $OUT/curves.svg"
echo "  (redraw at any time, also during a run: ./plot $OUT; TensorBoard: add --report-to tensorboard)"

echo
echo "The adapter (PEFT format; README.md \"Loading the adapter with transformers + PEFT\"): $(ls "$OUT" | tr '\n' ' ')"
echo "Chat with it:  ./generate --model $MODEL --chat --adapter $OUT"
echo
echo "Use it elsewhere:"
echo "  transformers / vLLM: the PEFT adapter $OUT (peft.PeftModel.from_pretrained(base, \"$OUT\"))"
echo "  llama.cpp / Ollama / LM Studio: one command writes the merged GGUF and the adapter GGUF:"
echo "    ./merge --model $MODEL --adapter $OUT --out $OUT/model.gguf --type q8_0 --adapter-gguf $OUT/adapter.gguf"
echo "  then an Ollama Modelfile:  FROM ./model.gguf   (or: FROM ./$(basename "$MODEL") + ADAPTER ./adapter.gguf)"
