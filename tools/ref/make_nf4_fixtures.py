"""NF4 fixtures: bitsandbytes' own CPU quantize_4bit / dequantize_4bit on adversarial inputs.

Writes tests/fixtures/nf4/: one raw little-endian .bin per array and index.json
describing every case (name, shape, blocksize, and for each array its file,
dtype and shape). tests/test_nf4.cpp checks that quant/nf4.cpp reproduces every
byte: packed nibbles, absmax (or its 8-bit codes + nested absmax + offset) and
the dequantized weights.

Run with the reference venv: tools/ref/.venv/bin/python tools/ref/make_nf4_fixtures.py
"""
import copy
import json
from pathlib import Path

import numpy as np
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "nf4"
torch.manual_seed(0)
rng = np.random.default_rng(1234)

NF4 = F.get_4bit_type("nf4", device="cpu")


def normal(rows, cols, scale=1.0):
    return torch.from_numpy((rng.standard_normal((rows, cols)) * scale).astype(np.float32))


def midpoints_case():
    # Block 0: absmax 1.0 (so the scale is exactly 1) and every value exactly on an
    # NF4 midpoint (as bnb computes it in fp32), plus one float either side of it.
    # Block 1: the same with absmax 2.0 (still exact scaling), negated.
    mids = ((NF4[:-1] + NF4[1:]) / 2).numpy()
    vals = [1.0]
    for m in mids:
        vals += [m, np.nextafter(m, np.float32(-2)), np.nextafter(m, np.float32(2))]
    vals = np.array(vals, dtype=np.float32)[:64]
    vals = np.concatenate([vals, np.zeros(64 - len(vals), np.float32)])
    b1 = -2 * vals
    return torch.from_numpy(np.concatenate([vals, b1]).reshape(2, 64))


def zero_blocks_case():
    w = normal(4, 64)
    w[0] = 0.0                      # an all-zero block: absmax 0
    w[1] = 0.0
    w[1, 17] = -3.5                 # a block with a single non-zero
    w[2, ::2] = -0.0                # negative zeros beside normal values
    w[3] = -0.0                     # a block of negative zeros only
    return w


def single_row_of_zero_and_one_nonzero():
    w = torch.zeros(1, 5)
    w[0, 3] = 0.25
    return w


def subnormal_nan_case():
    # Block absmax d, 2d, 3d (d a subnormal multiple of 2^-149): the offset (their
    # mean) is exactly 2d, so block 1 becomes 0 and its nested block's absmax d is
    # so small that 1/d overflows to inf: 0 * inf = NaN inside bnb's 8-bit quantizer.
    d = np.float32(1000 * 2.0**-149)
    w = np.zeros((3, 64), np.float32)
    for r in range(3):
        w[r] = np.linspace(-1, 1, 64, dtype=np.float32) * np.float32(r + 1) * d
    return torch.from_numpy(w)


def mean_probe(n):
    # A deterministic f32 vector the C++ test rebuilds: ((i * 7919) % 10007) / 10007 + 0.5
    i = np.arange(n, dtype=np.int64)
    return torch.from_numpy((((i * 7919) % 10007) / 10007.0 + 0.5).astype(np.float32))


CASES = [
    ("normal_3x37", normal(3, 37), 64),
    ("normal_17x127", normal(17, 127), 64),
    ("normal_1x1", normal(1, 1), 64),
    ("normal_64x64", normal(64, 64, 0.02), 64),
    ("normal_5x300_bs128", normal(5, 300), 128),
    ("normal_3x33_bs32", normal(3, 33), 32),
    ("tiny_1e-30", normal(4, 64, 1e-30), 64),
    ("subnormal_1e-40", normal(2, 64, 1e-40), 64),
    ("huge_1e30", normal(4, 64, 1e30), 64),
    ("midpoints", midpoints_case(), 64),
    ("zero_blocks", zero_blocks_case(), 64),
    ("one_nonzero_1x5", single_row_of_zero_and_one_nonzero(), 64),
    # more than 256 blocks: two nested blocks, the second partial
    ("normal_80x210", normal(80, 210, 0.05), 64),
    ("subnormal_nan_path", subnormal_nan_case(), 64),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for f in list(OUT.glob("*.bin")) + list(OUT.glob("*.safetensors")):
        f.unlink()
    index = {"dynamic_map": None, "nf4_code": None, "cases": []}

    def dump(name, t):
        t = t.detach().contiguous().cpu()
        tag16 = {torch.bfloat16: "bf16", torch.float16: "f16"}.get(t.dtype)
        if tag16:  # numpy has no bfloat16: the 16-bit patterns as they are
            t = t.view(torch.int16)
        a = t.numpy()
        dtype = tag16 or {np.float32: "f32", np.uint8: "u8"}[a.dtype.type]
        (OUT / f"{name}.bin").write_bytes(a.astype(a.dtype.newbyteorder("<")).tobytes())
        return {"file": f"{name}.bin", "dtype": dtype, "shape": list(a.shape)}

    index["dynamic_map"] = dump("dynamic_map", F.create_dynamic_map(signed=True))
    index["nf4_code"] = dump("nf4_code", NF4)

    for name, w, bs in CASES:
        case = {"name": name, "shape": list(w.shape), "blocksize": bs, "input": dump(f"{name}.input", w)}
        for dq in (False, True):
            tag = "dq" if dq else "plain"
            packed, qs = F.quantize_4bit(w.clone(), blocksize=bs, compress_statistics=dq, quant_type="nf4")
            deq = F.dequantize_4bit(packed, qs)
            assert deq.shape == w.shape and deq.dtype == torch.float32
            r = {"packed": dump(f"{name}.{tag}.packed", packed), "dequantized": dump(f"{name}.{tag}.dequant", deq)}
            blob = qs.as_dict(packed=True)["quant_state.bitsandbytes__nf4"]
            r["quant_state_json"] = bytes(blob.tolist()).decode()
            if dq:
                # bitsandbytes' 16-bit dequantization (quant_state.dtype: the compute dtype
                # of a Linear4bit): the f32 product code x absmax rounded once.
                for torch_dtype, short in ((torch.float16, "f16"), (torch.bfloat16, "bf16")):
                    qs16 = copy.deepcopy(qs)
                    qs16.dtype = torch_dtype
                    deq16 = F.dequantize_4bit(packed, qs16)
                    assert deq16.dtype == torch_dtype
                    r[f"dequantized_{short}"] = dump(f"{name}.{tag}.dequant_{short}", deq16)
                r["absmax_codes"] = dump(f"{name}.{tag}.absmax", qs.absmax)
                r["nested_absmax"] = dump(f"{name}.{tag}.nested_absmax", qs.state2.absmax)
                r["nested_code"] = dump(f"{name}.{tag}.nested_code", qs.state2.code)
                r["offset"] = dump(f"{name}.{tag}.offset", qs.offset.reshape(1))
                r["nested_blocksize"] = qs.state2.blocksize
            else:
                r["absmax"] = dump(f"{name}.{tag}.absmax", qs.absmax)
            case[tag] = r
        index["cases"].append(case)

    # The serialized form transformers / bnb save for one double-quantized Linear4bit
    # weight (QuantState.as_dict(packed=True) plus the packed weight itself).
    w = normal(24, 40, 0.1)
    packed, qs = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    sd = {"weight": packed}
    sd.update({f"weight.{k}": v for k, v in qs.as_dict(packed=True).items()})
    index["state_dict"] = {
        "shape": list(w.shape),
        "input": dump("state_dict.input", w),
        "tensors": {k: dump(f"state_dict.{k}", v) for k, v in sd.items()},
        "quant_state_json": bytes(sd["weight.quant_state.bitsandbytes__nf4"].tolist()).decode(),
    }

    # A checkpoint as bitsandbytes / transformers save it: Linear4bit layers moved to
    # the CPU (which quantizes them), state_dict() written with safetensors.
    layers = {}
    for prefix, (out_f, in_f, dq) in {
        "model.layers.0.self_attn.q_proj": (24, 40, True),
        "model.layers.0.mlp.down_proj": (40, 37, True),
        "model.layers.0.mlp.up_proj": (16, 64, False),
    }.items():
        dense = torch.nn.Linear(in_f, out_f, bias=False)
        with torch.no_grad():
            dense.weight.copy_(normal(out_f, in_f, 0.1))
        layer = bnb.nn.Linear4bit(in_f, out_f, bias=False, compress_statistics=dq, quant_type="nf4",
                                  compute_dtype=torch.float32)
        layer.load_state_dict(dense.state_dict())
        layer = layer.to("cpu")
        layers[prefix] = {"shape": [out_f, in_f], "double_quant": dq, "input": dump(f"{prefix}.input", dense.weight)}
        for k, v in layer.state_dict().items():
            layers.setdefault("tensors", {})[f"{prefix}.{k}"] = v.contiguous()
    tensors = layers.pop("tensors")
    save_file(tensors, str(OUT / "linear4bit.safetensors"), metadata={"format": "pt"})
    index["linear4bit"] = {"file": "linear4bit.safetensors", "layers": layers}

    # torch.mean (the double-quant offset) on vectors of awkward lengths; f32 bits as integers
    index["torch_mean"] = [
        {"n": n, "mean_bits": int(np.float32(mean_probe(n).mean().item()).view(np.uint32))}
        for n in (1, 3, 7, 8, 9, 31, 100, 1000, 4097, 20000, 32768)
    ]

    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {len(index['cases'])} cases to {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
