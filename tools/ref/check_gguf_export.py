"""The GGUF export against llama.cpp itself: its converters and its runtime.

Run after `make` (it calls ./merge):  tools/ref/.venv/bin/python tools/ref/check_gguf_export.py
[--converters-only | --runtime-only | --hf-only]

1. Converters. llama.cpp's convert_hf_to_gguf.py / convert_lora_to_gguf.py and its
   gguf-py, taken from the pinned llama-cpp-python sdist (LLAMA_CPP_PYTHON below,
   fetched with `pip download` into build/llamacpp-convert), convert
     - a tiny random Qwen3 with the real Qwen3 tokenizer (build/fixtures/qwen3-tokenizer),
     - SmolLM2-135M-Instruct (.cache/models, `make model`; skipped without it), as the
       HF folder ./merge writes from its GGUF, and the PEFT adapter below,
   and ./merge exports the same inputs. Required: every tensor byte-identical (f32,
   f16, bf16, q8_0), the same metadata keys, types and values apart from the
   differences listed in docs/gguf_export.md, which are printed.
   Writes tests/fixtures/gguf_export/converter_qwen3.json: gguf-py's reading of the
   converter's metadata for the tiny Qwen3 (tests/test_gguf_export.cpp compares ours).
2. Runtime. llama-cpp-python (pinned in requirements.txt) loads ./merge's merged
   exports (f32 f16 bf16 q8_0 q4_0 q4_1) and the base GGUF + ./merge's adapter GGUF for
     - qwen3: tests/fixtures/model/qwen3_tied + tests/fixtures/gguf_export/qwen3_adapter
       (a PEFT adapter made here: rsLoRA, r 4, all-linear, random B)
     - smollm2: the Q4_1 demo GGUF + tests/fixtures/gguf_export/smollm2_adapter
       (PEFT, r 2 on q_proj and k_proj, random B: the Q/K row permutation matters)
   and writes tests/fixtures/gguf_export/llamacpp_<model>.json: for each fixed prompt
   the logits at every position on a fixed sample of vocabulary ids, and the 16
   greedy tokens. tests/test_gguf_export.cpp runs our forward of base + adapter on
   the same prompts and compares. Each export's size is recorded so the test can tell
   that its own export today is the file llama.cpp read.
3. ./merge's HF folder of the demo GGUF (f32 and bf16) in transformers: the same
   tokens, chat template and logits as transformers' own reading of the GGUF.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "gguf_export"
LLAMA_CPP_PYTHON = "0.3.36"
CONVERT_DIR = ROOT / "build" / "llamacpp-convert"
SMOLLM2 = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN3_TOKENIZER = ROOT / "build" / "fixtures" / "qwen3-tokenizer"
MERGE = ROOT / "merge"
PY = sys.executable

PROMPTS = {
    "qwen3": ["Hello world", "The quick brown fox jumps", "1 2 3 4"],
    "smollm2": ["The capital of France is", "def fibonacci(n):", "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"],
}
EXPORT_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]


def converters() -> Path:
    """llama.cpp's conversion scripts from the pinned llama-cpp-python sdist."""
    marker = CONVERT_DIR / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"
    if marker.exists():
        return CONVERT_DIR
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([PY, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-python",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        if CONVERT_DIR.exists():
            shutil.rmtree(CONVERT_DIR)
        CONVERT_DIR.mkdir(parents=True)
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
                if rel and (rel in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py") or
                            rel.startswith(("conversion/", "gguf-py/"))) and m.isfile():
                    dest = CONVERT_DIR / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(tar.extractfile(m).read())
    marker.write_text("")
    return CONVERT_DIR


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r.stdout


def convert_hf(folder, out, outtype):
    run([PY, converters() / "convert_hf_to_gguf.py", "--outtype", outtype, "--outfile", out, folder])


def convert_lora(adapter, base, out):
    run([PY, converters() / "convert_lora_to_gguf.py", "--base", base, "--outfile", out, adapter])


def fnv1a(data: bytes) -> str:
    """FNV-1a 64 (tests/test_gguf_export.cpp computes the same over its arrays)."""
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def file_digest(path) -> dict:
    data = Path(path).read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def reader(path):
    import gguf
    return path if isinstance(path, gguf.GGUFReader) else gguf.GGUFReader(str(path))


def metadata(path) -> dict:
    """gguf-py's reading of a file's metadata: key -> {type, value | count + hash}."""
    import gguf
    r = reader(path)
    out = {}
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        types = [gguf.GGUFValueType(t).name for t in f.types]
        v = f.contents()
        entry = {"type": types}
        if isinstance(v, list):
            joined = "\x00".join(map(str, v)).encode()
            entry.update(count=len(v), fnv1a=fnv1a(joined))
            if len(v) <= 16:
                entry["value"] = v
        else:
            entry["value"] = float(v) if isinstance(v, (float, np.floating)) else v
        out[key] = entry
    return out


def tensors(path) -> dict:
    r = reader(path)
    return {t.name: (t.tensor_type.name, [int(d) for d in t.shape], np.array(t.data).tobytes()) for t in r.tensors}


def compare_files(ours, ref, what):
    """Tensor bytes must be equal; metadata differences are returned for the report."""
    ours, ref = reader(ours), reader(ref)  # parsed once (a 151k-token vocabulary is slow to parse)
    to, tr = tensors(ours), tensors(ref)
    assert set(to) == set(tr), f"{what}: tensor names differ: {sorted(set(to) ^ set(tr))[:8]}"
    bad = [n for n in tr if to[n] != tr[n]]
    assert not bad, f"{what}: {len(bad)} of {len(tr)} tensors differ from llama.cpp's converter, e.g. {bad[:4]}"
    mo, mr = metadata(ours), metadata(ref)
    diff = {"only_ours": [k for k in mo if k not in mr], "only_converter": [k for k in mr if k not in mo],
            "different": {k: [mo[k].get("value", mo[k].get("count")), mr[k].get("value", mr[k].get("count"))]
                          for k in mr if k in mo and mo[k] != mr[k]}}
    print(f"  {what}: {len(tr)} tensors byte-identical; metadata diff {json.dumps(diff, default=str)}")
    return diff


# ---------------------------------------------------------------- models

def tiny_qwen3_real_tokenizer(folder: Path):
    """A tiny random Qwen3 (head_dim 32 != hidden/heads 16) with the real Qwen3 tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(7)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645, dtype="float32")
    model = Qwen3ForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(QWEN3_TOKENIZER / name, folder / name)
    # The config the converter writes is derived from config.json alone.
    return json.loads((folder / "config.json").read_text())


def make_peft_adapter(base_folder, out, r, alpha, targets, rslora, seed, gguf_file=None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32, **kw)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                                                  use_rslora=rslora))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(out)
    cfg = json.loads((Path(out) / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_folder if not gguf_file else gguf_file)
    (Path(out) / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


# ---------------------------------------------------------------- 1. converters

def check_converters(work: Path):
    report = {}
    print("== llama.cpp converters vs ./merge")
    q = work / "qwen3-real-tok"
    tiny_qwen3_real_tokenizer(q)
    for t in ["f32", "f16", "bf16", "q8_0"]:
        convert_hf(q, work / f"qwen3-ref-{t}.gguf", t)
        run([MERGE, "--model", q, "--out", work / f"qwen3-ours-{t}.gguf", "--type", t])
        report[f"qwen3 {t}"] = compare_files(work / f"qwen3-ours-{t}.gguf", work / f"qwen3-ref-{t}.gguf", f"qwen3 {t}")
        if t == "f32":
            meta = metadata(work / "qwen3-ref-f32.gguf")
            (OUT / "converter_qwen3.json").write_text(json.dumps(
                {"llama_cpp_python": LLAMA_CPP_PYTHON, "config": json.loads((q / "config.json").read_text()),
                 "metadata": meta}, indent=1, default=str) + "\n")
    ad = work / "qwen3-real-tok-adapter"
    make_peft_adapter(q, ad, r=4, alpha=8, targets="all-linear", rslora=False, seed=3)
    convert_lora(ad, q, work / "qwen3-adapter-ref.gguf")
    run([MERGE, "--model", q, "--adapter", ad, "--adapter-gguf", work / "qwen3-adapter-ours.gguf"])
    report["qwen3 adapter"] = compare_files(work / "qwen3-adapter-ours.gguf", work / "qwen3-adapter-ref.gguf",
                                            "qwen3 adapter")

    if SMOLLM2.exists():
        hf = work / "smollm2-hf"
        run([MERGE, "--model", SMOLLM2, "--out", hf, "--dtype", "f32"])
        for t in ["f32", "q8_0"]:
            convert_hf(hf, work / f"smollm2-ref-{t}.gguf", t)
            run([MERGE, "--model", SMOLLM2, "--out", work / f"smollm2-ours-{t}.gguf", "--type", t])
            report[f"smollm2 {t}"] = compare_files(work / f"smollm2-ours-{t}.gguf", work / f"smollm2-ref-{t}.gguf",
                                                   f"smollm2 {t} (converter on ./merge's HF folder)")
        # The demo file itself was written by llama.cpp's converter (+ llama-quantize): its keys.
        mo, mr = metadata(work / "smollm2-ours-q8_0.gguf"), metadata(SMOLLM2)
        report["smollm2 vs the demo file"] = {
            "only_ours": [k for k in mo if k not in mr], "only_demo_file": [k for k in mr if k not in mo],
            "different": {k: [mo[k].get("value"), mr[k].get("value")] for k in mr if k in mo and mo[k] != mr[k]}}
        print(f"  smollm2 vs the demo GGUF's keys: {json.dumps(report['smollm2 vs the demo file'], default=str)}")
        ad = OUT / "smollm2_adapter"
        convert_lora(ad, hf, work / "smollm2-adapter-ref.gguf")
        run([MERGE, "--model", SMOLLM2, "--adapter", ad, "--adapter-gguf", work / "smollm2-adapter-ours.gguf"])
        report["smollm2 adapter"] = compare_files(work / "smollm2-adapter-ours.gguf", work / "smollm2-adapter-ref.gguf",
                                                  "smollm2 adapter")
    else:
        print(f"  {SMOLLM2} missing (make model): SmolLM2 skipped")
    return report


# ---------------------------------------------------------------- 3. ./merge's HF folder of a GGUF

def check_hf_folder_of_gguf(work: Path):
    """transformers loads the HF folder ./merge writes from the demo GGUF (bf16 and f32):
    its logits and tokens equal transformers' own reading of the GGUF (from_pretrained(...,
    gguf_file=...)), which tests/test_gguf_model.cpp shows equal to ours."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not SMOLLM2.exists():
        print(f"  {SMOLLM2} missing (make model): HF folder check skipped")
        return {}
    print("== ./merge's HF folder of the demo GGUF, in transformers")
    ref_tok = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
    ref = AutoModelForCausalLM.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name, dtype=torch.float32)
    texts = PROMPTS["smollm2"] + ["Numbers 12345 and 3.14, emoji 🦙, accents café"]
    out = {}
    for dtype in ["f32", "bf16"]:
        folder = work / f"smollm2-hf-{dtype}"
        run([MERGE, "--model", SMOLLM2, "--out", folder, "--dtype", dtype])
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        worst = 0.0
        for t in texts:
            ids = ref_tok(t, add_special_tokens=False)["input_ids"]
            assert tok(t, add_special_tokens=False)["input_ids"] == ids, (dtype, t)
            with torch.no_grad():
                a = model(torch.tensor([ids])).logits
                b = ref(torch.tensor([ids])).logits
            worst = max(worst, float((a - b).abs().max() / b.abs().max()))
        assert tok.chat_template == ref_tok.chat_template
        bound = 1e-5 if dtype == "f32" else 5e-2
        assert worst <= bound, (dtype, worst)
        out[dtype] = worst
        print(f"  {dtype}: same tokens and chat template; logits max |diff| / max |logit| = {worst:.3g}")
    return out


# ---------------------------------------------------------------- 2. llama.cpp runtime

def llama_logits(model_path, lora_path, prompt_ids, vocab_sample, n_greedy=16):
    from llama_cpp import Llama
    # KV cache in f32 (llama.cpp's default is f16, which alone moves logits by ~1e-3):
    # the comparison is then of the weights as exported.
    llm = Llama(model_path=str(model_path), lora_path=str(lora_path) if lora_path else None, n_ctx=128,
                logits_all=True, verbose=False, n_threads=2, seed=0, type_k=0, type_v=0)
    rows = []
    llm.reset()
    llm.eval(prompt_ids)
    scores = np.array(llm.scores[: len(prompt_ids)], dtype=np.float32)  # [T, V]
    rows = scores[:, vocab_sample].tolist()
    greedy = []
    ctx = list(prompt_ids)
    for _ in range(n_greedy):
        tok = int(np.argmax(llm.scores[len(ctx) - 1]))
        greedy.append(tok)
        ctx.append(tok)
        llm.eval([tok])
    n_vocab = llm.n_vocab()
    del llm
    return {"logits": rows, "greedy": greedy, "argmax": scores.argmax(axis=1).tolist(), "n_vocab": n_vocab}


def check_runtime(work: Path):
    import llama_cpp
    print(f"== llama.cpp runtime (llama-cpp-python {llama_cpp.__version__})")
    cases = {"qwen3": (ROOT / "tests" / "fixtures" / "model" / "qwen3_tied", OUT / "qwen3_adapter")}
    if SMOLLM2.exists():
        cases["smollm2"] = (SMOLLM2, OUT / "smollm2_adapter")
    from transformers import AutoTokenizer
    for name, (base, adapter) in cases.items():
        if name == "qwen3":
            tok = AutoTokenizer.from_pretrained(base)
            base_gguf = work / "qwen3-base-f32.gguf"
            run([MERGE, "--model", base, "--out", base_gguf, "--type", "f32"])
        else:
            tok = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
            base_gguf = SMOLLM2
        prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[name]]
        rng = np.random.default_rng(5)
        files = {}
        for t in EXPORT_TYPES:
            path = work / f"{name}-merged-{t}.gguf"
            run([MERGE, "--model", base, "--adapter", adapter, "--out", path, "--type", t])
            files[f"merged {t}"] = (path, None)
        ad_gguf = work / f"{name}-adapter.gguf"
        run([MERGE, "--model", base, "--adapter", adapter, "--adapter-gguf", ad_gguf])
        files["base + adapter"] = (base_gguf, ad_gguf)
        result = {"llama_cpp_python": llama_cpp.__version__, "prompts": prompts, "exports": {}}
        vocab = None
        for kind, (path, lora) in files.items():
            per_prompt = []
            for ids in prompts:
                if vocab is None:
                    from llama_cpp import Llama
                    n = Llama(model_path=str(path), vocab_only=True, verbose=False).n_vocab()
                    vocab = sorted(set(rng.choice(n, size=250, replace=False).tolist()) | set(range(6)))
                per_prompt.append(llama_logits(path, lora, ids, vocab))
            entry = {"file": file_digest(path) if path != SMOLLM2 else {"demo file": SMOLLM2.name},
                     "results": per_prompt}
            if lora:
                entry["adapter_file"] = file_digest(lora)
            result["exports"][kind] = entry
            print(f"  {name} {kind}: greedy {[r['greedy'][:8] for r in per_prompt]}")
        result["vocab_sample"] = vocab
        (OUT / f"llamacpp_{name}.json").write_text(json.dumps(result) + "\n")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    if not MERGE.exists():
        raise SystemExit(f"{MERGE} missing: run `make` first")
    # The adapters the runtime check uses (committed, so the C++ test has them).
    qa = OUT / "qwen3_adapter"
    if not qa.exists():
        make_peft_adapter(ROOT / "tests" / "fixtures" / "model" / "qwen3_tied", qa, r=4, alpha=8,
                          targets="all-linear", rslora=True, seed=11)
    sa = OUT / "smollm2_adapter"
    if not sa.exists() and SMOLLM2.exists():
        make_peft_adapter(str(SMOLLM2.parent), sa, r=2, alpha=4, targets=["q_proj", "k_proj"], rslora=False,
                          seed=12, gguf_file=SMOLLM2.name)
        cfg = json.loads((sa / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = str(SMOLLM2.relative_to(ROOT))
        (sa / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "--hf-only" in sys.argv:
            check_hf_folder_of_gguf(work)
            return
        if "--runtime-only" not in sys.argv:
            report = check_converters(work)
            report["HF folder of the demo GGUF in transformers"] = check_hf_folder_of_gguf(work)
            (OUT / "converter_report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        if "--converters-only" in sys.argv:
            return
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama-cpp-python is not installed in tools/ref/.venv: runtime check skipped")
            return
        check_runtime(work)


if __name__ == "__main__":
    main()
