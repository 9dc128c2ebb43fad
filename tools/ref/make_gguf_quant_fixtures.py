"""Adversarial blocks for the GGUF export's encoders, quantized by gguf-py.

Writes tests/fixtures/gguf_export/:
  quant_input.f32     N blocks of 32 float32 weights (little-endian), the cases below
  quant_<TYPE>.bin    gguf.quants.quantize(input, TYPE) for F16 BF16 Q8_0 Q4_0 Q4_1
  quant_cases.json    the name of each block, in order

tests/test_gguf_export.cpp encodes quant_input.f32 with quant/gguf_blocks.h's
quantize_row and requires the same bytes.
"""
import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gguf_export"
OUT.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(2026)

cases = []


def block(name, values):
    v = np.asarray(values, dtype=np.float32)
    assert v.shape == (32,), name
    cases.append((name, v))


block("zeros", np.zeros(32))
block("negative zeros", -np.zeros(32))
one = np.zeros(32); one[7] = 3.5
block("one outlier among zeros", one)
out = rng.standard_normal(32) * 0.01; out[20] = -40.0
block("one negative outlier", out)
block("all equal positive", np.full(32, 0.3))
block("all equal negative", np.full(32, -1.25))
tie = rng.uniform(-0.5, 0.5, 32); tie[3] = -2.0; tie[11] = 2.0
block("max magnitude tie, negative first", tie)
tie2 = rng.uniform(-0.5, 0.5, 32); tie2[3] = 2.0; tie2[11] = -2.0
block("max magnitude tie, positive first", tie2)
block("f32 subnormals", rng.uniform(-1, 1, 32) * 1e-39)
block("f32 subnormals, positive", rng.uniform(0, 1, 32) * 1e-40)
block("tiny: f16-subnormal scale", rng.uniform(-1, 1, 32) * 1e-6)
block("huge: f16 scale overflows", rng.uniform(-1, 1, 32) * 1e7)
block("near the f16 range", rng.uniform(-1, 1, 32) * 6e4)
block("half steps of 127", (np.arange(32) - 16) * (1.0 / 127) * 0.5 + 0.5 / 127)
block("integers -16..15", np.arange(32) - 16)
block("ramp 0..31", np.arange(32))
block("one weight, rest equal", np.r_[np.full(31, 1.0), 1.0 + 2 ** -20])
for k in range(8):
    block(f"normal #{k}", rng.standard_normal(32) * (10.0 ** rng.uniform(-3, 1)))

x = np.stack([v for _, v in cases]).astype("<f4")          # [N, 32]
(OUT / "quant_input.f32").write_bytes(x.tobytes())
with np.errstate(all="ignore"):
    for qtype in [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1]:
        raw = quantize(x, qtype)
        (OUT / f"quant_{qtype.name}.bin").write_bytes(np.ascontiguousarray(raw).view(np.uint8).tobytes())
(OUT / "quant_cases.json").write_text(json.dumps([n for n, _ in cases], indent=1) + "\n")
print(f"wrote {len(cases)} blocks to {OUT}")
