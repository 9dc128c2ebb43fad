#!/usr/bin/env bash
# Renders a run picture (OUT/curves.svg, training/curves_svg.h) in a real browser,
# headless Chromium (Debian's package `chromium`, installed here with apt-get when
# missing), to PNG, and checks the picture a person would see: it is not blank,
# and inside each panel's plot area the colour of every curve the SVG declares
# there is drawn (at least MIN_PIXELS pixels of it, within 6 px of the area: an
# end marker sticks out), so the PNG shows the expected number of curves.
#
#   tools/check_curves_render.sh SVG [PNG]     (PNG default: SVG with .png)
#
# Exit 0 and "ok: N curves drawn ..." when it holds; 1 and what is missing otherwise.
# Not part of `make test` (it needs Chromium, about 300 MB); run it after a change
# to the picture. docs/images/make_run_curves.png is its PNG of `make run`'s picture.
set -euo pipefail
SVG=${1:?usage: tools/check_curves_render.sh SVG [PNG]}
PNG=${2:-${SVG%.svg}.png}
MIN_PIXELS=${MIN_PIXELS:-20}
[ -f "$SVG" ] || { echo "error: $SVG: no such file" >&2; exit 1; }

if ! command -v chromium >/dev/null; then
  cmd="apt-get update && apt-get install -y --no-install-recommends chromium"
  if [ "$(id -u)" = 0 ]; then sh -c "DEBIAN_FRONTEND=noninteractive $cmd" >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo sh -c "DEBIAN_FRONTEND=noninteractive $cmd" >/dev/null
  else echo "error: chromium is missing; run as root:  $cmd" >&2; exit 1; fi
fi

# The window is the SVG's own size, so one SVG pixel is one PNG pixel.
read -r W H < <(python3 - "$SVG" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
print(int(float(root.get("width"))), int(float(root.get("height"))))
PY
)
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
# --no-sandbox: Chromium refuses to run as root with its sandbox; the page is our own file.
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$PROFILE" \
  --force-device-scale-factor=1 --window-size="$W,$H" --screenshot="$(realpath -m "$PNG")" \
  "file://$(realpath "$SVG")" >/dev/null 2>&1
[ -s "$PNG" ] || { echo "error: chromium wrote no $PNG" >&2; exit 1; }

python3 - "$SVG" "$PNG" "$MIN_PIXELS" <<'PY'
import struct, sys, zlib
import xml.etree.ElementTree as ET

svg_path, png_path, min_pixels = sys.argv[1], sys.argv[2], int(sys.argv[3])

def read_png(path):
    """8-bit RGB/RGBA, non-interlaced (what Chromium writes) -> (width, height, rows of (r, g, b))."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    at, idat, ihdr = 8, b"", None
    while at < len(data):
        n, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + n]
        if kind == b"IHDR": ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT": idat += body
        at += 12 + n
    w, h, depth, color, _, _, interlace = ihdr
    assert depth == 8 and color in (2, 6) and interlace == 0, f"{path}: unsupported PNG {ihdr}"
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return w, h, rows

ns = {"s": "http://www.w3.org/2000/svg"}
root = ET.parse(svg_path).getroot()
panels = []
for g in root.findall("s:g[@class='panel']", ns):
    r = g.find("s:rect[@class='plot-area']", ns)
    box = [float(r.get(k)) for k in ("x", "y", "width", "height")]
    curves = [(c.get("data-series"), c.get("stroke")) for c in g.findall("s:polyline[@class='curve']", ns)]
    panels.append((g.get("data-y"), box, curves))
declared = sum(len(c) for _, _, c in panels)

w, h, rows = read_png(png_path)
non_white = sum(1 for row in rows for p in row if min(p) < 235)
problems = []
if non_white < 0.01 * w * h:
    problems.append(f"the PNG is (nearly) blank: {non_white} non-white pixels of {w * h}")

def near(p, q, tol=40):
    return sum(abs(a - b) for a, b in zip(p, q)) <= tol

drawn = 0
for name, (x, y, bw, bh), curves in panels:
    # The plot area and a 6 px margin: a marker at the edge (r 4) sticks out of it; the legend
    # sits 10 px and more above it.
    inside = [rows[j][i] for j in range(max(0, int(y) - 6), min(h, int(y + bh) + 7))
              for i in range(max(0, int(x) - 6), min(w, int(x + bw) + 7))]
    for series, color in curves:
        rgb = tuple(int(color[k:k + 2], 16) for k in (1, 3, 5))
        n = sum(1 for p in inside if near(p, rgb))
        if n >= min_pixels: drawn += 1
        else: problems.append(f"panel '{name}': curve {series} ({color}) has {n} pixels drawn (< {min_pixels})")
if not panels: problems.append("the SVG has no panels")
if problems:
    print(f"FAIL {png_path} ({w}x{h}):\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"ok: {drawn} curves drawn of {declared} declared in {len(panels)} panels; "
      f"{non_white} non-white pixels of {w}x{h}; {png_path}")
PY
