"""Runs the README's "load the adapter with transformers + PEFT" lines as written
(not part of `make test`: it needs this venv).

The lines are taken from README.md, between <!-- peft-snippet --> and the end of the
code block after it, with "runs/demo" replaced by the adapter under test, so the README
cannot drift from what is checked. Then:
  1. `model` is a PeftModel over the base named by adapter_config.json's
     base_model_name_or_path (an absolute path, or a hub id), with LoRA on every target;
  2. the adapter changes the logits (B is trained, not zero);
  3. its logits equal those of ./merge's f32 output for the same adapter, loaded by
     transformers alone (max |diff| / max |logit| <= 1e-4): PEFT applies the adapter
     ./train wrote as ./merge folds it in.

Default: a 3-step ./train run on the tiny Qwen3 fixture (tests/fixtures/model/qwen3_tied)
into build/peft_snippet/. --adapter DIR checks an existing one instead (e.g. runs/demo
after `make run`: its base is the demo GGUF, which transformers dequantizes), checks 1-2
and prints the greedy answer to one question.

Run from the repository root after `make`:
  tools/ref/.venv/bin/python tools/ref/check_peft_snippet.py [--adapter runs/demo]
Exits 1 when a check fails.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests/fixtures/model/qwen3_tied"


def readme_snippet():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- peft-snippet -->\s*```python\n(.*?)```", text, re.S)
    if not m:
        sys.exit("README.md: no <!-- peft-snippet --> python block")
    return m.group(1)


def run(cmd):
    print("$", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", help="an adapter ./train wrote (default: train one on the tiny fixture)")
    args = ap.parse_args()

    work = ROOT / "build/peft_snippet"
    adapter = Path(args.adapter) if args.adapter else work / "run"
    if not args.adapter:
        shutil.rmtree(work, ignore_errors=True)
        run(["./train", "--model", FIXTURE, "--data", FIXTURE / "eval_messages.jsonl", "--out", adapter,
             "--max-steps", "3", "--lr", "1e-2", "--warmup-steps", "0", "--max-length", "64", "--device", "cpu",
             "--no-progress"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    print("base_model_name_or_path:", config["base_model_name_or_path"])

    snippet = readme_snippet().replace('"runs/demo"', repr(str(adapter)))
    print("running the README's lines:\n" + snippet, flush=True)
    scope = {}
    exec(compile(snippet, "README.md peft-snippet", "exec"), scope)
    model = scope["model"]
    failures = []
    if not isinstance(model, PeftModel):
        failures.append(f"model is a {type(model).__name__}, not a PeftModel")
    lora_modules = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    print(f"LoRA on {len(lora_modules)} modules")
    if len(lora_modules) != len(config["target_modules"]):
        failures.append(f"LoRA on {len(lora_modules)} modules, adapter_config.json names {len(config['target_modules'])}")

    model.eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 3, 11, 2]])
    with torch.no_grad():
        with_adapter = model(ids).logits.float()
        with model.disable_adapter():
            base = model(ids).logits.float()
    changed = max_rel(with_adapter, base)
    print(f"adapter vs base logits: max relative difference {changed:.3g}")
    if changed < 1e-4:
        failures.append("the adapter does not change the logits")

    if not args.adapter:
        merged = work / "merged"
        run(["./merge", "--model", FIXTURE, "--adapter", adapter, "--out", merged, "--dtype", "f32"])
        m = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        with torch.no_grad():
            err = max_rel(with_adapter, m(ids).logits.float())
        print(f"PEFT (README lines) vs ./merge + transformers: max relative error {err:.3g}")
        if err > 1e-4:
            failures.append(f"PEFT logits differ from the merged model's by {err:.3g} (> 1e-4)")
    else:
        base_path = config["base_model_name_or_path"]
        folder, gguf = (str(Path(base_path).parent), Path(base_path).name) if base_path.endswith(".gguf") else (base_path, None)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        prompt = tok.apply_chat_template([{"role": "user", "content": "What colour is a banana?"}],
                                         add_generation_prompt=True, return_tensors="pt")
        if not torch.is_tensor(prompt):
            prompt = prompt["input_ids"]
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=40, do_sample=False)
        print("greedy answer with the adapter:", tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True))

    for f in failures:
        print("✗", f)
    if failures:
        sys.exit(1)
    print("✓ the README's transformers + PEFT lines load the adapter ./train wrote")


if __name__ == "__main__":
    main()
