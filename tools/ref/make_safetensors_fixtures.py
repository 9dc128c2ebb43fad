"""safetensors fixtures written by the real `safetensors` library.

Writes tests/fixtures/safetensors/:
  single.safetensors          one tensor per dtype (F32 BF16 F16 I32 I64 U8) + metadata
  sharded/                    model.safetensors.index.json + two shards
  expected.json               every tensor's dtype, shape and values (as numbers)
"""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "safetensors"
(OUT / "sharded").mkdir(parents=True, exist_ok=True)
g = torch.Generator().manual_seed(7)

tensors = {
    "f32": torch.randn(3, 4, generator=g),
    "bf16": torch.randn(2, 3, 5, generator=g).to(torch.bfloat16),
    "f16": torch.randn(7, generator=g).to(torch.float16),
    "i32": torch.randint(-1000, 1000, (2, 2), generator=g, dtype=torch.int32),
    "i64": torch.randint(-(1 << 40), 1 << 40, (3,), generator=g, dtype=torch.int64),
    "u8": torch.randint(0, 256, (4, 2), generator=g, dtype=torch.uint8),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 3),
}
save_file(tensors, OUT / "single.safetensors", metadata={"format": "pt"})  # one key: the library orders several randomly

shards = {
    "model-00001-of-00002.safetensors": {"model.embed.weight": torch.randn(4, 3, generator=g).to(torch.bfloat16),
                                         "model.norm.weight": torch.randn(3, generator=g)},
    "model-00002-of-00002.safetensors": {"lm_head.weight": torch.randn(4, 3, generator=g)},
}
weight_map = {}
for fname, ts in shards.items():
    save_file(ts, OUT / "sharded" / fname, metadata={"format": "pt"})
    weight_map.update({name: fname for name in ts})
(OUT / "sharded" / "model.safetensors.index.json").write_text(
    json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2) + "\n")

names = {"f32": "F32", "bf16": "BF16", "f16": "F16", "i32": "I32", "i64": "I64", "u8": "U8"}
def describe(t):
    dtype = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int32: "I32",
             torch.int64: "I64", torch.uint8: "U8"}[t.dtype]
    vals = t.double() if t.is_floating_point() else t.long()
    return {"dtype": dtype, "shape": list(t.shape), "values": vals.reshape(-1).tolist()}

expected = {"single": {k: describe(v) for k, v in tensors.items()},
            "sharded": {k: describe(v) for ts in shards.values() for k, v in ts.items()}}
(OUT / "expected.json").write_text(json.dumps(expected) + "\n")
print("wrote", OUT)
