"""Does PEFT reproduce given logits from a Qwen3-MoE base + a LoRA adapter? (not part of `make test`)

Loads --model with transformers (fp32, eager attention, the eager per-expert loop), puts
--adapter on it with PeftModel.from_pretrained (PEFT 0.21 applies its transformers-5 config
conversion there, as for any user), runs --ref's --ids-key batch and compares the logits
with --ref's --logits-key: prints the max relative error (max |peft - ref| / max |ref|) and
exits 1 above --tol. It also says which saved adapter tensors PEFT did not load verbatim
(a name it does not know is dropped with only a warning; a v4-style per-expert adapter is
converted on load, so for those this line is informational).

tools/ref/make_moe_fixtures.py runs it on every adapter it writes; for an adapter
nanoqlora wrote, e.g. (from the repository root):
  tools/ref/.venv/bin/python tools/ref/check_moe_adapter.py --model tests/fixtures/moe/renorm \
      --adapter build/moe_check/adapter --ref build/moe_check/logits.safetensors
"""
import argparse
import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import Qwen3MoeForCausalLM


def load_base(model_dir):
    model = Qwen3MoeForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager",
                                                experts_implementation="eager").eval()
    assert model.config._experts_implementation == "eager", model.config._experts_implementation
    return model


def load_adapted(model_dir, adapter_dir):
    return PeftModel.from_pretrained(load_base(model_dir), adapter_dir).eval()


def not_loaded_verbatim(peft_model, adapter_dir):
    """Saved tensor names (adapter_model.safetensors) whose value is not a parameter of peft_model."""
    saved = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    params = {n.replace(".default.", "."): p for n, p in peft_model.named_parameters()}
    return sorted(k for k, v in saved.items() if k not in params or not torch.equal(params[k].detach().cpu(), v))


def max_rel(ours, ref):
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def check(model_dir, adapter_dir, ref_path, ids_key="input_ids", logits_key="adapter_logits", tol=1e-4):
    """Returns (max relative error, the saved tensors not loaded verbatim)."""
    ref = load_file(str(ref_path))
    model = load_adapted(model_dir, adapter_dir)
    with torch.no_grad():
        logits = model(input_ids=ref[ids_key].long()).logits
    return max_rel(logits, ref[logits_key]), not_loaded_verbatim(model, adapter_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the base model dir (config.json + model.safetensors)")
    ap.add_argument("--adapter", required=True, help="the PEFT adapter dir (adapter_config.json + adapter_model.safetensors)")
    ap.add_argument("--ref", required=True, help="a safetensors file with the batch and the expected logits")
    ap.add_argument("--ids-key", default="input_ids")
    ap.add_argument("--logits-key", default="adapter_logits")
    ap.add_argument("--tol", type=float, default=1e-4, help="max relative error allowed")
    args = ap.parse_args()
    err, missing = check(args.model, args.adapter, args.ref, args.ids_key, args.logits_key, args.tol)
    if missing:
        print(f"note: {len(missing)} saved adapter tensors not loaded verbatim, e.g. {missing[:3]}")
    ok = err <= args.tol
    print(f"{'ok  ' if ok else 'FAIL'} peft: {args.model} + {args.adapter} vs {args.ref}:{args.logits_key}: "
          f"max relative error {err:.3e} (tolerance {args.tol:g})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
