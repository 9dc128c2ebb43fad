"""Does the Python stack accept what nanoqlora writes? (not part of `make test`)

Reads build/peft_check/, written by the C++ side:
  adapter/             a PEFT adapter saved by save_peft_adapter (r 4 on q, v, o, down; B random)
  logits.safetensors   input_ids [2, 16] and our logits of base + that adapter, for the dense
                       fp32 base (logits_dense_base) and the bitsandbytes 4-bit base (logits_bnb_base)
  merged/              ./merge's f32 output for the dense base + adapter
  quantized/           ./quantize's output for the dense base (optional)
and checks, with peft / transformers / bitsandbytes on the CPU:
  1. PeftModel.from_pretrained(dense base, adapter)     == logits_dense_base
  2. PeftModel.from_pretrained(4-bit base, adapter)     == logits_bnb_base
  3. AutoModelForCausalLM.from_pretrained(merged)       == logits_dense_base
  4. AutoModelForCausalLM.from_pretrained(quantized)    == the base quantized by transformers + bitsandbytes

Check 4 alone on another model (e.g. a bf16 one):
  tools/ref/.venv/bin/python tools/ref/check_adapter.py --dense DIR --quantized OUT [--dtype bfloat16]
Run from the repository root:
  make CUDA=0 && ./build/cpu/test_all -tc="peft interop*"
  ./quantize --model tests/fixtures/qlora/model --out build/peft_check/quantized
  tools/ref/.venv/bin/python tools/ref/check_adapter.py
Prints each max relative error (max |ours - theirs| / max |theirs|) and exits 1 if one
exceeds its tolerance.
"""
import argparse
import sys
from pathlib import Path

import bitsandbytes as bnb
import torch
from peft import PeftModel
from safetensors.torch import load_file
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from bitsandbytes.backends.utils import _get_4bit_code
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

ROOT = Path(__file__).resolve().parents[2]


def max_rel(ours, theirs):
    return ((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max()).item()


def use_flat_nf4_dequantization():
    """bitsandbytes 0.50's native CPU kernel dequantizes NF4 in blocks per ROW when
    in_features % blocksize != 0 (the fixture's down_proj is [64, 96]), unlike its CUDA and
    default backends and the serialized format, whose blocks run over the flattened weight
    (bit-identical to quant/nf4 here). Route CPU dequantization through the default backend's
    flat implementation so that the comparison is with the format, not with that quirk."""
    def flat(A, absmax, blocksize, quant_type, shape, dtype):
        code = _get_4bit_code(quant_type, A.device)
        return _dequantize_4bit_compute(A.view(torch.uint8).reshape(-1), absmax, code, blocksize, shape, dtype)
    torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", flat)


def load(path, dtype=torch.float32, **kw):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map="cpu",
                                                 attn_implementation="eager", **kw).eval()
    # bitsandbytes' CPU inference fast path (AVX512-BF16) repacks the weights with bf16
    # absmax and needs in_features % blocksize == 0; keep its reference path (dequantize
    # to fp32, then matmul), the one the fixtures were made with.
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
    return model


@torch.no_grad()
def logits_of(model, ids):
    return model(input_ids=ids).logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=str(ROOT / "build" / "peft_check"), help="what the C++ side wrote")
    ap.add_argument("--fixtures", default=str(ROOT / "tests" / "fixtures" / "qlora"), help="base models")
    ap.add_argument("--tol", type=float, default=1e-5, help="max relative error allowed")
    ap.add_argument("--dense", help="check 4 only: this dense model (default: the fixture's model/)")
    ap.add_argument("--quantized", help="check 4 only: ./quantize's output for --dense")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="check 4: the dtype transformers loads both models in")
    args = ap.parse_args()
    use_flat_nf4_dequantization()
    d, fx = Path(args.dir), Path(args.fixtures)
    results = []
    if args.quantized:  # only check 4, on a model of one's choice
        dense_dir, quantized_dir = Path(args.dense or fx / "model"), Path(args.quantized)
        ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    else:
        ours = load_file(str(d / "logits.safetensors"))
        ids = ours["input_ids"].long()
        dense_dir, quantized_dir = fx / "model", d / "quantized"

        dense = PeftModel.from_pretrained(load(fx / "model"), d / "adapter").eval()
        results.append(("peft: dense base + our adapter", max_rel(ours["logits_dense_base"], logits_of(dense, ids))))

        bnb_base = PeftModel.from_pretrained(load(fx / "model-bnb-4bit"), d / "adapter").eval()
        results.append(("peft: bnb 4-bit base + our adapter",
                        max_rel(ours["logits_bnb_base"], logits_of(bnb_base, ids))))

        merged = load(d / "merged")
        results.append(("transformers: our merged f32 model",
                         max_rel(logits_of(merged, ids), ours["logits_dense_base"])))

    if quantized_dir.exists():
        dtype = getattr(torch, args.dtype)
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.float32)
        reference = load(dense_dir, dtype, quantization_config=cfg)
        ours_q = load(quantized_dir, dtype)
        results.append((f"transformers ({args.dtype}): our ./quantize output vs bnb-quantized original",
                        max_rel(logits_of(ours_q, ids), logits_of(reference, ids))))
    else:
        print(f"(skipped the ./quantize check: {quantized_dir} does not exist)")

    failed = False
    for name, err in results:
        ok = err <= args.tol
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: max relative error {err:.3e} (tolerance {args.tol:g})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
