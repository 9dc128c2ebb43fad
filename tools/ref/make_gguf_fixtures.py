"""GGUF fixtures: ggml block bytes and gguf-py's dequantized fp32, a Q/K
permutation case, and a tiny GGUF file written by gguf-py's GGUFWriter.

Writes tests/fixtures/gguf/:
  blocks/<TYPE>.bin   the quantized bytes of 512 weights (2 rows x 256)
  blocks/<TYPE>.f32   gguf.quants.dequantize of those bytes, little-endian f32
  permute_hf.f32      an HF-order q_proj weight [n_head*head_dim, cols]
  permute_gguf.f32    the same after convert_hf_to_gguf's LlamaModel.permute
  permute.json        its n_head, head_dim, cols
  tiny.gguf           GGUFWriter output: metadata of several types, 3 tensors
  tiny.json           what tiny.gguf holds (metadata values, tensor fp32 values)
"""
import json
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gguf"
(OUT / "blocks").mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(1234)

ROWS, COLS = 2, 256


def k_quant_blocks(qtype, n_blocks):
    """Random bytes for a K-quant gguf-py cannot quantize, with sane fp16 scales."""
    _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.05, size=(n_blocks, 2)).astype(np.float16).view(np.uint8)
    if qtype == T.Q4_K:   # {f16 d, f16 dmin, scales[12], qs[128]}
        b[:, 0:4] = scales
    elif qtype == T.Q6_K:  # {ql[128], qh[64], i8 scales[16], f16 d}
        b[:, 208:210] = scales[:, 0:2]
    return b


for qtype in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q6_K]:
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    if qtype == T.F32:
        raw = x.view(np.uint8)
    elif qtype == T.F16:
        raw = x.astype(np.float16).view(np.uint8)
    elif qtype in (T.Q4_K, T.Q6_K):
        raw = k_quant_blocks(qtype, ROWS * COLS // 256).reshape(ROWS, -1)
    else:
        raw = quantize(x, qtype)
    y = dequantize(raw, qtype).astype("<f4")
    assert y.shape == (ROWS, COLS), (qtype, y.shape)
    (OUT / "blocks" / f"{qtype.name}.bin").write_bytes(np.ascontiguousarray(raw).tobytes())
    (OUT / "blocks" / f"{qtype.name}.f32").write_bytes(y.tobytes())


# Q/K permutation, as llama.cpp's convert_hf_to_gguf.py LlamaModel.permute does it.
def llama_permute(w, n_head):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


n_head, head_dim, cols = 3, 8, 5
w_hf = rng.standard_normal((n_head * head_dim, cols)).astype("<f4")
w_gguf = llama_permute(w_hf, n_head)
# transformers' GGUF loader undoes it the same way we must:
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
back = LlamaTensorProcessor(config={})._reverse_permute_weights(w_gguf, n_head, n_head)
assert np.array_equal(back, w_hf)
(OUT / "permute_hf.f32").write_bytes(w_hf.tobytes())
(OUT / "permute_gguf.f32").write_bytes(np.ascontiguousarray(w_gguf).tobytes())
(OUT / "permute.json").write_text(json.dumps({"n_head": n_head, "head_dim": head_dim, "cols": cols}) + "\n")


# A tiny GGUF file written by the reference writer.
path = OUT / "tiny.gguf"
w = gguf.GGUFWriter(str(path), arch="llama")
w.add_uint32("llama.block_count", 2)
w.add_float32("llama.rope.freq_base", 10000.0)
w.add_int32("test.i32", -7)
w.add_uint64("test.u64", 1 << 40)
w.add_bool("test.bool", True)
w.add_string("tokenizer.ggml.model", "gpt2")
w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b", "ab"])
w.add_array("tokenizer.ggml.token_type", [3, 1, 1, 1])
w.add_array("tokenizer.ggml.merges", ["a b"])
tensors = {
    "token_embd.weight": (rng.standard_normal((4, 64)).astype(np.float32), T.Q8_0),
    "blk.0.attn_q.weight": (rng.standard_normal((8, 32)).astype(np.float32), T.Q4_1),
    "output_norm.weight": (rng.standard_normal((64,)).astype(np.float32), T.F32),
}
expected = {}
for name, (x, qtype) in tensors.items():
    raw = x if qtype == T.F32 else quantize(x, qtype)
    w.add_tensor(name, raw, raw_dtype=qtype)
    expected[name] = {"type": qtype.name, "shape": list(x.shape),
                      "values": dequantize(raw, qtype).reshape(-1).astype(np.float64).tolist()}
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
(OUT / "tiny.json").write_text(json.dumps({"tensors": expected}) + "\n")
print("wrote", OUT)
