#!/usr/bin/env bash
# Regenerates every fixture in tests/fixtures with the real libraries
# (transformers, PEFT, bitsandbytes, tokenizers, gguf), pinned in
# requirements.txt and installed into tools/ref/.venv on first use.
# The engine never needs this venv to build, run or test.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  echo "creating tools/ref/.venv (torch, transformers, peft, bitsandbytes, tokenizers, gguf from PyPI)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
fi
for script in make_*.py; do
  echo "== $script"
  .venv/bin/python "$script"
done
# The TensorBoard fixture reads what ./train writes: it needs the program built.
echo "== read_tensorboard.py --fixture"
[ -x ../../train ] || make -C ../.. --no-print-directory train
.venv/bin/python read_tensorboard.py --fixture
# The GGUF export against llama.cpp's converters and runtime: it runs ./merge.
echo "== check_gguf_export.py"
[ -x ../../merge ] || make -C ../.. --no-print-directory merge
.venv/bin/python check_gguf_export.py
echo "fixtures written under tests/fixtures/"
