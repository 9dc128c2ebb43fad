"""What TRL's SFTTrainer trains on, written by TRL itself (tests/fixtures/trl_masks/).

For each data format (messages, prompt-completion as plain text, prompt-completion
as a conversation, text), each chat template (the Qwen3 tokenizer of
tests/fixtures/tokenizer/qwen3 with its own template; the same tokenizer with TRL's
bundled current Qwen3 template, trl/chat_templates/qwen3.jinja; the tiny model of
tests/fixtures/trajectory with SmolLM2's template) and each loss setting (TRL's
defaults, assistant_only_loss=True, completion_only_loss=False), an SFTTrainer is
built with the pinned TRL and its prepared train_dataset is recorded: per sample
input_ids and labels (-100 = not trained; labels[t] is the target of token t, the
model shifts), or the error TRL raises. For the tiny model (dense fp32) the
token-weighted loss is recorded too: TRL's data collator on all samples of the
case as one batch, then the model's loss (sum of token CEs / counted targets).

  data/messages.jsonl, data/prompt_completion.jsonl, data/text.jsonl   the inputs
  templates/qwen3_trl.jinja   TRL's current Qwen3 template (the C++ test renders with it)
  cases.json                  [{name, tokenizer, template, data, conversational, config,
                                error | samples [{input_ids, labels}], loss, targets}]
"""
import json
import logging
import shutil
import tempfile
import warnings
import lzma
from pathlib import Path

import datasets
import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "trl_masks"
QWEN3 = ROOT / "tests" / "fixtures" / "tokenizer" / "qwen3"
TINY = ROOT / "tests" / "fixtures" / "trajectory" / "model"  # make_trajectory_fixtures.py (runs first)

MESSAGES = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
     {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Yes, hello."}],
    # reasoning in the last answer: the template keeps it
    [{"role": "user", "content": "What is 3*3?"},
     {"role": "assistant", "content": "<think>\nThree threes.\n</think>\n\n9."}],
    # reasoning in an earlier answer: the Qwen3 template drops it from the history
    [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n2."},
     {"role": "user", "content": "And 2+2?"}, {"role": "assistant", "content": "4."}],
]
PROMPT_COMPLETION = [
    {"prompt": "Say hi.", "completion": " Hi!"},
    {"prompt": "Capital of France?", "completion": " Paris."},
    # the boundary splits a word: joint and separate tokenization differ
    {"prompt": "Complete: Hello wor", "completion": "ld, friend."},
    {"prompt": "Count:", "completion": " one two three"},
]
TEXT = [{"text": "The cat sat on the mat."}, {"text": "A short line"}, {"text": "Numbers: 1, 2, 3."}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tokenizer(kind, tmp):
    if kind == "qwen3":
        d = tmp / "qwen3"
        if not d.exists():
            d.mkdir()
            (d / "tokenizer.json").write_bytes(lzma.decompress((QWEN3 / "tokenizer.json.xz").read_bytes()))
            shutil.copy(QWEN3 / "tokenizer_config.json", d / "tokenizer_config.json")
        return AutoTokenizer.from_pretrained(d)
    return AutoTokenizer.from_pretrained(TINY)


def dataset_rows(data_format, conversational):
    if data_format == "messages":
        return [{"messages": m} for m in MESSAGES]
    if data_format == "text":
        return TEXT
    if conversational:
        return [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "completion": [{"role": "assistant", "content": r["completion"]}]} for r in PROMPT_COMPLETION]
    return PROMPT_COMPLETION


def run_case(case, tmp, tiny_model):
    tok = tokenizer(case["tokenizer"], tmp)
    if case["template"] == "trl-qwen3":
        tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
    model = tiny_model if case["tokenizer"] == "tiny" else AutoModelForCausalLM.from_config(
        tiny_model.config.__class__(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    args = SFTConfig(output_dir=str(tmp / "out"), report_to=[], max_length=1024, use_cpu=True,
                     per_device_train_batch_size=8, **case["config"])
    rows = dataset_rows(case["format"], case["conversational"])
    try:
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    except Exception as e:  # what TRL refuses is a finding too
        case["error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        return case
    ds = trainer.train_dataset
    case["samples"] = [{"input_ids": list(ds[i]["input_ids"]), "labels": list(ds[i]["labels"])}
                       for i in range(len(ds))]
    if case["tokenizer"] == "tiny":
        batch = trainer.data_collator([ds[i] for i in range(len(ds))])
        model.eval()
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                        labels=batch["labels"])
        case["loss"] = out.loss.item()
        case["targets"] = int((batch["labels"][:, 1:] != -100).sum())
    return case


def main():
    warnings.filterwarnings("ignore")
    datasets.disable_progress_bars()
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "data").mkdir(parents=True)
    (OUT / "templates").mkdir()
    write_jsonl(OUT / "data" / "messages.jsonl", [{"messages": m} for m in MESSAGES])
    write_jsonl(OUT / "data" / "prompt_completion.jsonl", PROMPT_COMPLETION)
    write_jsonl(OUT / "data" / "text.jsonl", TEXT)
    shutil.copy(Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja", OUT / "templates" / "qwen3_trl.jinja")

    tiny_model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32, attn_implementation="eager")
    files = {"messages": "messages.jsonl", "prompt-completion": "prompt_completion.jsonl", "text": "text.jsonl"}
    settings = [("default", {}), ("assistant_only_loss", {"assistant_only_loss": True}),
                ("completion_only_loss=False", {"completion_only_loss": False})]
    cases = []
    for tok_kind, template in (("qwen3", "tokenizer"), ("qwen3", "trl-qwen3"), ("tiny", "tokenizer")):
        for data, conversational in (("messages", False), ("prompt-completion", False), ("prompt-completion", True),
                                     ("text", False)):
            for setting, config in settings:
                if setting == "completion_only_loss=False" and data != "prompt-completion":
                    continue  # it only concerns prompt-completion data
                if setting == "assistant_only_loss" and data == "text":
                    continue
                name = f"{tok_kind}/{template}/{data}{' (conversational)' if conversational else ''}/{setting}"
                with tempfile.TemporaryDirectory() as t:
                    case = run_case({"name": name, "tokenizer": tok_kind, "template": template,
                                     "data": files[data], "format": data, "conversational": conversational,
                                     "setting": setting, "config": config}, Path(t), tiny_model)
                n = sum(sum(l != -100 for l in s["labels"][1:]) for s in case.get("samples", []))
                print(f"{name}: " + (case["error"][:100] if "error" in case else
                                     f"{n} targets" + (f", loss {case['loss']:.6f}" if "loss" in case else "")))
                cases.append(case)
    (OUT / "cases.json").write_text(json.dumps({"trl": trl.__version__, "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
