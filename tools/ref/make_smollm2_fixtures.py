"""Reference fixtures for a real GGUF model: SmolLM2-135M-Instruct (Q4_1), as
transformers loads it (from_pretrained(..., gguf_file=...): every tensor
dequantized to fp32, Q/K rows un-permuted, the tokenizer built from the GGUF
vocabulary, the chat template taken from the file).

Needs .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (`make model`); without it
the script says so and writes nothing. tests/fixtures/smollm2/ gets:

  tokenizer.json   {"strings": [...200 texts...], "ids": [[...], ...]}
                   transformers' GGUF tokenizer, no special tokens added
  chat.json        [{"messages": [...], "add_generation_prompt": bool, "text": str, "ids": [...]}]
                   apply_chat_template with the template stored in the GGUF
  logits.safetensors, for each prompt p in 0..2:
    p{p}.ids [T] i32              the prompt (token ids)
    p{p}.top_values [T, 256] f32  the 256 largest logits at every position, descending
    p{p}.top_indices [T, 256] i32 their token ids
    p{p}.logsumexp [T] f32        log(sum(exp(logits))) over the whole vocabulary (49152)
    p{p}.greedy [32] i32          the first 32 greedy tokens (argmax, no stopping at eos)
    p{p}.greedy_margin [32] f32   top-1 minus top-2 logit at each greedy step
  The full logits would be 3 x T x 49152 floats (several MB); the top-256 values
  check the tokens that matter elementwise, and the logsumexp checks the whole
  row at once (an error anywhere in the vocabulary moves it).

fp32 on the CPU, eager attention. Deterministic: no sampling, no randomness
except a seeded generator for the mixed strings.
"""
import json
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
GGUF_DIR = ROOT / ".cache" / "models"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "tests" / "fixtures" / "smollm2"

TOP = 256
NEW_TOKENS = 32

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n",
]

# Hand-picked texts: words, numbers, code, whitespace runs, contractions,
# accents, CJK, emoji, control tokens written in the text, invalid-looking mixes,
# and control bytes that SmolLM2's vocabulary has no token for (HF drops them).
BASE_STRINGS = [
    "", " ", "  ", "\n", "\n\n\n", "\t", " \t \n ", "a", "A", "hello", " hello", "Hello, world!",
    "Hello world. How are you doing today?", "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've gone, isn't it? We'd've known.", "DON'T SHOUT'S", "it's 'quoted' text",
    "0", "7", "42", "123", "2024", "3.14159", "1,234,567.89", "+1 (555) 010-9999", "x = 12345678901234567890",
    "version 1.2.3-rc4", "0x1F 0b1010 1e-5", "$100 and 50% off", "12:30pm on 2026-11-28",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "if __name__ == \"__main__\":\n    main()", "SELECT * FROM users WHERE id = 1;", "<div class=\"a\">b</div>",
    "#include <stdio.h>\nint main() { printf(\"hi\\n\"); }", "https://example.com/path?q=1&r=two#frag",
    "email@example.org", "   leading spaces", "trailing spaces   ", "multiple   inner    spaces",
    "line one\nline two\r\nline three", "tabs\tin\tbetween", "café naïve résumé", "Ünïcödé ÅÄÖ ß ø",
    "Привет, мир!", "Γειά σου Κόσμε", "こんにちは世界", "你好，世界！", "안녕하세요", "مرحبا بالعالم", "שלום עולם",
    "हिन्दी भाषा", "emoji 😀🎉👍🏽", "🇫🇷 flags 🇯🇵", "math ∑ ∫ √ ≤ ≥ ≠ ∞ π", "arrows → ← ↑ ↓ ⇒", "“smart quotes” and ‘single’",
    "em—dash and en–dash…", "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "combining e\u0301 vs é",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nhi<|im_end|>",
    "text<|endoftext|>more text", "<|im_start|>assistant\nSure!<|im_end|>\n", "not <|special|> token",
    "<|im_start", "im_end|>", "ALLCAPS WORDS HERE", "camelCaseIdentifier snake_case_name kebab-case",
    "!!!???...,,,;;;", "(((nested)))", "[brackets] {braces} <angles>", "a-b_c.d/e\\f", "@user #hashtag",
    "ctrl\x04chars\x06 dropped\x13\x14\x16\x1d", "\x04", "ab\x04cd x\x06\x06y",
    "Once upon a time, there was a little robot who loved to paint.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The mitochondria is the powerhouse of the cell.", "To be, or not to be, that is the question.",
]

FRAGMENTS = [
    "the", " cat", " sat", " on", " mat", "123", " 456", "7.5", "!", "?", ",", ".", " and", " or",
    "\n", "  ", "\t", "über", " naïve", "日本", "語", "😀", " emoji", "<|im_end|>", "<|im_start|>",
    "don't", " we'll", "'s", " (x)", " [y]", " {z}", " -> ", " == ", " +=", " 0.001", " 1e9",
    " HTTP", "/api/v1", " Москва", " Ελλάδα", " résumé", " 你好", " ", "   ", "\r\n", " foo_bar",
    "Baz", " QUX", " 2026", " #", " @", " $", " %", " &", " *",
]

CONVERSATIONS = [
    ([{"role": "user", "content": "Hi there!"}], True),
    ([{"role": "system", "content": "You are a terse assistant."},
      {"role": "user", "content": "What is the capital of Italy?"}], True),
    ([{"role": "user", "content": "Name a prime number."},
      {"role": "assistant", "content": "7 is a prime number."},
      {"role": "user", "content": "And an even one?"}], True),
    ([{"role": "system", "content": "Answer in French."},
      {"role": "user", "content": "Good morning"},
      {"role": "assistant", "content": "Bonjour !"}], False),
    ([{"role": "user", "content": "Write code:\n```python\nprint('hi')\n```"},
      {"role": "assistant", "content": "Done. 😀"}], False),
]


def strings():
    rng = random.Random(1234)
    out = list(BASE_STRINGS)
    while len(out) < 200:
        out.append("".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(2, 12))))
    return out


@torch.no_grad()
def prompt_reference(model, ids):
    x = torch.tensor([ids])
    logits = model(x).logits[0].float()  # [T, V]
    top = torch.topk(logits, TOP, dim=-1)  # sorted descending
    lse = torch.logsumexp(logits.double(), dim=-1).float()
    # Greedy continuation with a full forward per step (no cache, no eos stopping).
    seq = list(ids)
    greedy, margin = [], []
    for _ in range(NEW_TOKENS):
        last = model(torch.tensor([seq])).logits[0, -1].float()
        two = torch.topk(last, 2)
        greedy.append(int(two.indices[0]))
        margin.append(float(two.values[0] - two.values[1]))
        seq.append(greedy[-1])
    return {
        "ids": torch.tensor(ids, dtype=torch.int32),
        "top_values": top.values.contiguous(),
        "top_indices": top.indices.to(torch.int32).contiguous(),
        "logsumexp": lse,
        "greedy": torch.tensor(greedy, dtype=torch.int32),
        "greedy_margin": torch.tensor(margin, dtype=torch.float32),
    }


def main():
    if not (GGUF_DIR / GGUF_NAME).exists():
        print(f"skipped: {GGUF_DIR / GGUF_NAME} not found (run `make model` first)")
        return 0
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    OUT.mkdir(parents=True, exist_ok=True)

    texts = strings()
    ids = [tok.encode(s, add_special_tokens=False) for s in texts]
    (OUT / "tokenizer.json").write_text(json.dumps({"strings": texts, "ids": ids}, ensure_ascii=False) + "\n")

    chats = []
    for messages, add_gen in CONVERSATIONS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_gen)
        chat_ids = tok.encode(text, add_special_tokens=False)
        chats.append({"messages": messages, "add_generation_prompt": add_gen, "text": text, "ids": chat_ids})
    (OUT / "chat.json").write_text(json.dumps(chats, ensure_ascii=False, indent=1) + "\n")

    tensors = {}
    for p, text in enumerate(PROMPTS):
        ref = prompt_reference(model, tok.encode(text, add_special_tokens=False))
        for k, v in ref.items():
            tensors[f"p{p}.{k}"] = v
        print(f"prompt {p}: {len(ref['ids'])} tokens, greedy -> {tok.decode(ref['greedy'].tolist())!r}, "
              f"smallest greedy margin {ref['greedy_margin'].min().item():.4f}")
    save_file(tensors, str(OUT / "logits.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
