"""Reference fixtures for the decoder (model/): tiny random Qwen3 and Llama models
run by transformers (fp32, eager attention).

For each model, tests/fixtures/model/<name>/ holds
  config.json, model.safetensors   the checkpoint, written by save_pretrained
  reference.safetensors            what transformers computed on it:
    input_ids [2, 17] i32          a batch (labels = input_ids, shifted inside as HF does)
    logits [2, 17, V] f32, loss [1] f32
    grad.<hf name> f32             d(loss)/d(parameter) for EVERY parameter
    padded_ids, padded_labels [2, 17] i32   row 1 right-padded, labels -100 on the padding
    padded_loss [1] f32
    prompt_ids [1, 6] i32, greedy_ids [1, 32] i32   model.generate(do_sample=False)
  qwen3_untied_bias/adapter/   a PEFT LoRA adapter (all-linear, r=4, random B); its logits on
    input_ids are reference.safetensors' adapter_logits
  qwen3_tied/eval_<format>.jsonl, eval_reference.json   ./eval's loss and token count for
    each dataset format (messages, text, prompt-completion, alpaca), computed with
    qwen3_tied/tokenizer.json (a copy of the small GPT-2-style tokenizer of
    tests/fixtures/tokenizer/gpt2, ids < 1000), tokenizer_config.json (EOS <|im_end|>)
    and Qwen3's chat template

Sizes are small so every fixture fits the 1.5 MB budget; head_dim differs from
hidden/heads in the Qwen3 models on purpose. Weights get a larger init (0.1)
and random norm weights / biases so gradients are not trivial and greedy
decoding has clear margins (asserted below, so the fixture is not fragile).

Run with tools/ref/.venv/bin/python (see tools/ref/make_fixtures.sh).
"""
import copy
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "model"

T = 17
PAD_ID = 0
PADDED_LEN = 11  # real tokens in row 1 of the padded batch
NEW_TOKENS = 32


def build(name, cls, config, seed, dtype, root=OUT):
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = cls(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
        # Round the weights to the on-disk dtype, then compute in fp32 from exactly those values.
        # (Only parameters: model.to(bf16) would also round the RoPE inv_freq buffer.)
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(dtype).save_pretrained(out)
    (out / "generation_config.json").unlink(missing_ok=True)
    return model, out


def reference(model, seed):
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ref = {}

    ids = torch.randint(1, V, (2, T), generator=g)
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    ref["input_ids"] = ids.to(torch.int32)
    ref["logits"] = out.logits.detach()
    ref["loss"] = out.loss.detach().reshape(1)
    for pname, p in model.named_parameters():
        ref["grad." + pname] = p.grad.detach().clone()
    # A tied lm_head is the same Parameter as embed_tokens: named_parameters() lists it once.

    padded = ids.clone()
    padded[1, PADDED_LEN:] = PAD_ID
    labels = padded.clone()
    labels[1, PADDED_LEN:] = -100
    mask = torch.ones_like(padded)
    mask[1, PADDED_LEN:] = 0
    with torch.no_grad():
        ref["padded_loss"] = model(input_ids=padded, attention_mask=mask, labels=labels).loss.reshape(1)
    ref["padded_ids"] = padded.to(torch.int32)
    ref["padded_labels"] = labels.to(torch.int32)

    prompt = torch.randint(1, V, (1, 6), generator=g)
    with torch.no_grad():
        gen = model.generate(prompt, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             pad_token_id=PAD_ID, eos_token_id=None)
        new = gen[:, prompt.shape[1]:]
        # Each greedy step must win by a clear margin, or fp32 rounding could flip it.
        logits = model(gen[:, :-1]).logits[0, prompt.shape[1] - 1:]
        top2 = logits.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).min().item()
        assert margin > 1e-3, f"greedy margin too small: {margin}"
    ref["prompt_ids"] = prompt.to(torch.int32)
    ref["greedy_ids"] = new.to(torch.int32)
    return {k: v.contiguous() for k, v in ref.items()}


# ./eval's reference: one small file per dataset format (training/data.h), the
# tokens the loss counts as training/encode.h defines them (TRL's conventions).
EVAL_FILES = {
    "messages": [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                      {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?"},
                      {"role": "assistant", "content": "It is 6."}]},
        {"messages": [{"role": "user", "content": "No answer here."}]},  # no assistant turn: no targets, dropped
        {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]},
    ],
    "text": [
        {"text": "The quick brown fox jumps over the lazy dog."},
        {"text": "Hello world! Tokens, numbers 12345 and symbols #@."},
    ],
    "prompt-completion": [
        {"prompt": "The capital of France is", "completion": " Paris."},
        {"prompt": "Two plus two equals", "completion": " four, of course."},
    ],
    "alpaca": [
        {"instruction": "Say hello.", "output": "Hello!"},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    ],
}
EOS_TOKEN, PAD_TOKEN = "<|im_end|>", "<|endoftext|>"


def alpaca_prompt(instruction, input_text):
    """tatsu-lab/stanford_alpaca's PROMPT_DICT (the output follows "### Response:" directly)."""
    if input_text:
        return ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:")
    return ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            f"request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def chat_labels(tok, template, messages):
    """Qwen3's chat template; targets from just after "<|im_start|>assistant\n" through that turn's "<|im_end|>"."""
    text = tok.apply_chat_template(messages, chat_template=template, tokenize=False, enable_thinking=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, at = [], 0
    while (at := text.find("<|im_start|>assistant\n", at)) >= 0:
        begin = at + len("<|im_start|>assistant\n")
        end = text.index("<|im_end|>", begin) + len("<|im_end|>")
        spans.append((begin, end))
        at = end
    labels = [i if any(b <= s and e <= end for b, end in spans) else -100
              for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])]
    return enc["input_ids"], labels


def example_labels(tok, template, fmt, row, eos):
    """ids and HF labels (the token where it is a target, else -100) of one line of format fmt."""
    if fmt == "messages":
        return chat_labels(tok, template, row["messages"])
    if fmt == "text":  # every token, EOS appended (TRL's language modeling)
        ids = tok(row["text"], add_special_tokens=False)["input_ids"] + [eos]
        return ids, list(ids)
    if fmt == "prompt-completion":
        prompt, completion = row["prompt"], row["completion"]
    else:
        prompt, completion = alpaca_prompt(row["instruction"], row.get("input", "")), row["output"]
    # prompt ++ completion ++ EOS, encoded separately; trained on the completion and EOS
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"] + [eos]
    return p + c, [-100] * len(p) + c


def eval_reference(model):
    """./eval on each of EVAL_FILES with the small GPT-2-style tokenizer of the tokenizer fixtures
    (ids < 1000 fit the tied model's vocabulary), EOS <|im_end|> and Qwen3's real chat template.
    Returns {format: {"loss", "tokens", "samples", "lines"}}: the token-weighted mean CE."""
    from transformers import PreTrainedTokenizerFast

    tok_dir = ROOT / "tests" / "fixtures" / "tokenizer"
    template = json.loads((tok_dir / "qwen3" / "tokenizer_config.json").read_text())["chat_template"]
    # A frozen copy next to the model, so the model dir is complete and this fixture stays
    # consistent if the tokenizer fixtures are regenerated.
    out = OUT / "qwen3_tied"
    shutil.copyfile(tok_dir / "gpt2" / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}) + "\n")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    eos = tok.convert_tokens_to_ids(EOS_TOKEN)
    result = {}
    for fmt, rows in EVAL_FILES.items():
        total, count, samples = 0.0, 0, 0
        for row in rows:
            ids, labels = example_labels(tok, template, fmt, row, eos)
            n = sum(l != -100 for l in labels[1:])  # position 0 is never predicted
            if n == 0:
                continue
            with torch.no_grad():
                loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
            total += loss * n
            count += n
            samples += 1
        (out / f"eval_{fmt.replace('-', '_')}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        result[fmt] = {"loss": total / count, "tokens": count, "samples": samples, "lines": len(rows)}
    return result


def adapter_reference(model, out, seed):
    """A PEFT LoRA adapter (all-linear, r=4) with non-zero B, saved to <out>/adapter, and the
    logits of the adapted model on the reference batch."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                 target_modules="all-linear"))
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if "lora_B" in pname:
                p.copy_(0.2 * torch.randn_like(p))  # PEFT inits B = 0, which would test nothing
    peft_model.peft_config["default"].base_model_name_or_path = f"tests/fixtures/model/{out.name}"
    peft_model.save_pretrained(out / "adapter")
    (out / "adapter" / "README.md").unlink(missing_ok=True)
    # PEFT writes target_modules in set order (varies run to run): sort for a stable fixture.
    config_path = out / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return peft_model.eval()


def main():
    torch.set_grad_enabled(True)
    common = dict(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, initializer_range=0.1,
                  rms_norm_eps=1e-6, max_position_embeddings=128)
    models = [
        # tied lm_head, head_dim 16 != hidden/heads = 8, vocab > 1000
        ("qwen3_tied", Qwen3ForCausalLM,
         Qwen3Config(hidden_size=32, intermediate_size=48, head_dim=16, vocab_size=1024, rope_theta=10000.0,
                     tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, **common), torch.float32),
        # separate lm_head and q/k/v/o biases
        ("qwen3_untied_bias", Qwen3ForCausalLM,
         Qwen3Config(hidden_size=32, intermediate_size=48, head_dim=16, vocab_size=256, rope_theta=1000.0,
                     tie_word_embeddings=False, attention_bias=True, bos_token_id=1, eos_token_id=2, **common),
         torch.float32),
        # Llama: no q/k norm, head_dim = hidden/heads; stored as bf16 to cover the conversion
        ("llama", LlamaForCausalLM,
         LlamaConfig(hidden_size=32, intermediate_size=64, vocab_size=256, rope_theta=10000.0,
                     tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, **common), torch.bfloat16),
    ]
    for i, (name, cls, config, dtype) in enumerate(models):
        model, out = build(name, cls, config, seed=100 + i, dtype=dtype)
        ref = reference(model, seed=200 + i)
        if name == "qwen3_untied_bias":
            with torch.no_grad():
                ref["adapter_logits"] = adapter_reference(model, out, seed=300).forward(
                    input_ids=ref["input_ids"].long()).logits.contiguous()
        save_file(ref, str(out / "reference.safetensors"))
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{name}: loss {ref['loss'].item():.6f}, {len(ref)} tensors, {size / 1024:.0f} KiB")
        if name == "qwen3_tied":
            result = eval_reference(model)
            (out / "eval_reference.json").write_text(json.dumps(result, indent=1) + "\n")
            print(f"{name}: eval {result}")


if __name__ == "__main__":
    main()
