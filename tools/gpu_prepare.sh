#!/usr/bin/env bash
# tools/gpu_prepare.sh: run HERE, on a machine with network, before a GPU
# machine (which has none) runs tools/gpu_check.sh. Writes .carry/ (git-ignored):
#
#   .carry/deps.tar.xz  the Debian build dependencies, unpacked with `dpkg -x`
#                       (nothing installed): headers and shared libraries of
#                       OpenBLAS (pthread), utf8proc, PCRE2, doctest, nlohmann-json,
#                       and OpenBLAS' Fortran runtime. gpu_check.sh unpacks it into
#                       /tmp/nqdeps and builds with `make DEPS_ROOT=/tmp/nqdeps` when
#                       the machine lacks the headers.
#   .carry/bnb.tar.xz   bitsandbytes (tools/ref/requirements.txt's version), the
#                       package folder of its manylinux wheel with the CUDA 13
#                       libraries only (the wheel's ten CUDA/ROCm builds weigh 130 MB). gpu_check.sh unpacks it into
#                       /tmp/site and puts that on PYTHONPATH for tools/ref/bench_qlora_gpu.py.
#
# Then copy the checkout with .carry/ to the GPU machine and run `tools/gpu_check.sh`
# (or `tools/gpu_check.sh train`) there. Both archives together are about 15 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.carry
mkdir -p "$CARRY"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ---- Debian packages (Debian 12 builds; the GPU image's glibc is as new or newer)
PKGS="libopenblas-pthread-dev libopenblas0-pthread libgfortran5 libquadmath0 libutf8proc-dev libutf8proc2
      libpcre2-dev libpcre2-8-0 doctest-dev nlohmann-json3-dev"
mkdir -p "$WORK/debs" "$WORK/root"
# shellcheck disable=SC2086
if ! (cd "$WORK/debs" && apt-get download $PKGS > "$WORK/apt.log" 2>&1); then
  echo "apt-get download failed; refreshing the package lists (apt-get update) and trying again"
  apt-get update > /dev/null
  # shellcheck disable=SC2086
  (cd "$WORK/debs" && apt-get download $PKGS) || { cat "$WORK/apt.log"; exit 1; }
fi
for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$WORK/root"; done
# Keep what the build and the programs need: headers and shared libraries (no
# static archives, docs or man pages).
(cd "$WORK/root" && tar cJf - --exclude='*.a' --exclude='usr/share' --exclude='usr/lib/x86_64-linux-gnu/cmake' \
  --exclude='usr/lib/x86_64-linux-gnu/pkgconfig' usr) > "$CARRY/deps.tar.xz"
LISTING=$(tar tJf "$CARRY/deps.tar.xz")
for h in cblas.h doctest/doctest.h nlohmann/json.hpp utf8proc.h pcre2.h; do
  grep -q "/$h\$" <<< "$LISTING" || { echo "error: $h is not in $CARRY/deps.tar.xz"; exit 1; }
done
echo "wrote $CARRY/deps.tar.xz ($(du -h "$CARRY/deps.tar.xz" | cut -f1)): $(echo $PKGS | wc -w) Debian packages"

# ---- bitsandbytes for the GPU machine's Python 3.12
BNB=$(grep -E '^bitsandbytes==' tools/ref/requirements.txt | cut -d= -f3)
[ -n "$BNB" ] || { echo "error: no bitsandbytes==VERSION line in tools/ref/requirements.txt"; exit 1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$WORK/whl" "bitsandbytes==$BNB"
mkdir -p "$WORK/site"
(cd "$WORK/site" && python3 -m zipfile -e "$WORK"/whl/bitsandbytes-*.whl .)
# torch on the GPU image is built for CUDA 13 (KINDS.md: torch 2.11.0+cu130): keep
# bitsandbytes' CUDA 13.x libraries and its CPU library, drop the rest.
find "$WORK/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cuda13*.so' \
  ! -name 'libbitsandbytes_cpu.so' -delete
ls "$WORK"/site/bitsandbytes/libbitsandbytes_cuda13*.so > /dev/null
(cd "$WORK/site" && tar cJf - .) > "$CARRY/bnb.tar.xz"
echo "wrote $CARRY/bnb.tar.xz ($(du -h "$CARRY/bnb.tar.xz" | cut -f1)): bitsandbytes $BNB (CUDA 13 builds)"
echo "next: copy the checkout with .carry/ to the GPU machine and run tools/gpu_check.sh there"
