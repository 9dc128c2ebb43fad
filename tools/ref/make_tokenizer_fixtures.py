"""Tokenizer fixtures: what HF `tokenizers` and transformers' chat templates produce.

Writes tests/fixtures/tokenizer/:
  qwen3/tokenizer.json.xz, tokenizer_config.json, LICENSE   the real Qwen3 tokenizer (xz -9)
  gpt2/tokenizer.json        a tiny byte-level BPE (vocab 1000) trained here with the
                             GPT-2 pre-tokenizer (ByteLevel use_regex=true)
  llama3/tokenizer.json      the same with Llama-3's pre-tokenizer (Split regex + ByteLevel)
                             and ignore_merges=true
  corpus.jsonl.xz            {"text", "qwen3", "gpt2", "gpt2_prefix", "llama3": ids} per string
                             (add_special_tokens=False; gpt2_prefix: gpt2 with add_prefix_space=true),
                             plus "<key>_decoded" where decode(ids) != text (NFC, prefix space)
  chats.jsonl                {"kind", "messages", "add_generation_prompt", "text", "ids", "mask"}
                             rendered by transformers' apply_chat_template

The Qwen3 tokenizer is read from $QWEN3_TOKENIZER_DIR (default: the copy already
committed under tests/fixtures/tokenizer/qwen3). Deterministic: a seeded corpus.
"""
import json
import lzma
import os
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tokenizer"

# ---------------------------------------------------------------- the corpus
WORDS = ("the of and to in is you that it he was for on are as with his they I at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up "
         "other about out many then them these so some her would make like him into time has look two more write "
         "go see number no way could people my than first water been call who oil its now find long down day did "
         "get come made may part Hello World HTTP URL JSON NanoQLoRA Qwen").split()
CODE = [
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "#include <stdio.h>\nint main() { printf(\"%d\\n\", 42); }", "SELECT * FROM users WHERE id = 7;",
    "const x = () => { return [1, 2, 3].map(v => v ** 2); };", "if __name__ == '__main__':\n    main()",
    "<div class=\"a\">&nbsp;</div>", "x <<= 3; y >>= 1; z != w && q || r;", "fn main() -> Result<(), Box<dyn Error>> {}",
    "    \n\n    indented\r\n\tline", "{\"key\": [1, 2.5e-3, null, true]}", "a_b_c = d__e + __init__",
]
SCRIPTS = [
    "你好，世界！这是一个测试。", "日本語のテキストです。カタカナとひらがな。", "한국어 문장입니다.", "مرحبا بالعالم، هذا اختبار.",
    "Привет, мир! Ёжик.", "Γειά σου Κόσμε", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Ünïcödé çàfé naïve résumé",
    "Straße ß ẞ ﬁ ﬂ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛", "Ⅻ ½ ² ³ ① ٣ ४ ๕", "ǅ ǈ ǋ ǲ Σσς", "I\u0307 ı İ i̇",
]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷🇯🇵", "🧑🏿‍💻", "✈︎", "👩‍❤️‍💋‍👨", "🤖🦙🐉"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "A\u030a", "\u1100\u1161\u11a8", "o\u0302\u0323", "\u212b", "\u2126",
             "c\u0327\u0301", "q\u0307\u0323", "\u0041\u0301\u0301", "\u00e9\u0301"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "'Ll", "'x"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "<|fim_prefix|>",
           "<|im_start", "im_end|>", "<|im_start|><|im_end|>", "<<|im_end|>>", "<|endoftext|>>"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n ", "\u00a0", "\u3000", "\u2003", " \t\n",
          "\u2028", "\u0085", "\u180e", "\u200b", "\ufeff", "\x0b", "\x0c"]
ODD = ["\u0000", "\x01\x7f", "\ud7ff", "\ue000", "\uffff", "\U0010ffff", "\U0001f600\U0001f600", "\u00ad", "\u0300",
       "\u200d", "\u2060", "\ufffd", "\U000e0041"]


def random_number(rng):
    digits = rng.randint(1, 40)
    s = "".join(rng.choice("0123456789") for _ in range(digits))
    return rng.choice([s, s, "-" + s, s[: digits // 2 + 1] + "." + s[digits // 2 + 1:], "1,234,567", "3.14159e+10",
                       "0x" + s[:8], "١٢٣٤", "１２３"])


def piece(rng):
    kind = rng.randrange(12)
    if kind == 0: return rng.choice(CODE)
    if kind == 1: return rng.choice(SCRIPTS)
    if kind == 2: return rng.choice(EMOJI)
    if kind == 3: return rng.choice(WORDS) + rng.choice(COMBINING)
    if kind == 4: return rng.choice(WORDS) + rng.choice(CONTRACTIONS)
    if kind == 5: return rng.choice(SPECIAL)
    if kind == 6: return rng.choice(SPACES)
    if kind == 7: return random_number(rng)
    if kind == 8: return rng.choice(ODD)
    if kind == 9: return rng.choice(WORDS).upper() + rng.choice(CONTRACTIONS).upper()
    if kind == 10: return "".join(chr(rng.randint(0x20, 0x2fff)) for _ in range(rng.randint(1, 6)))
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + rng.choice([".", ",", "!", "?", "", "..."])


def make_corpus(seed, n):
    """n deterministic strings: single pieces, joined mixtures, edge cases."""
    rng = random.Random(seed)
    out = ["", " ", "  leading and trailing  ", "\n", "a", "A", "'s", "'S'", "e\u0301", "<|im_start|>"]
    while len(out) < n:
        parts = [piece(rng) for _ in range(rng.randint(1, 8))]
        sep = rng.choice(["", " ", "", "\n", " "])
        text = sep.join(parts)
        if rng.random() < 0.1: text = " " + text
        if rng.random() < 0.1: text = text + rng.choice(SPACES)
        if rng.random() < 0.03: text = rng.choice(WORDS) * rng.randint(20, 200)  # one very long pre-token
        if rng.random() < 0.03: text = " " * rng.randint(10, 300) + "x"            # long whitespace run
        out.append(text)
    return out


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# ---------------------------------------------------------------- chats
CHATML = ("{%- for m in messages %}{%- if m.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
          "{% generation %}{{- m.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
          "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

# The official Qwen3 template (no tools) with {% generation %} around what the loss
# trains on: everything after "<|im_start|>assistant\n" up to and including <|im_end|>.
# Its text is checked equal to the official template's below.
QWEN3_MASKED = """
{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}
{%- set ns = namespace(last_query_index=messages|length - 1) %}
{%- set ns2 = namespace(found=false) %}
{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}
{%- if not ns2.found and message.role == "user" %}{%- set ns2.found = true %}{%- set ns.last_query_index = index %}{%- endif %}
{%- endfor %}
{%- for message in messages %}
{%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
{%- elif message.role == "assistant" %}
{%- set content = message.content %}{%- set reasoning_content = '' %}
{%- if '</think>' in message.content %}
{%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
{%- set reasoning_content = message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
{%- endif %}
{{- '<|im_start|>assistant\\n' }}{% generation %}
{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
{{- '<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
{%- else %}{{- content }}{%- endif %}
{{- '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}
"""


def conversations():
    S = {"role": "system", "content": "You are a helpful assistant."}
    def U(c): return {"role": "user", "content": c}
    def A(c): return {"role": "assistant", "content": c}
    return [
        ([U("Hi")], True), ([U("Hi"), A("Hello!")], False), ([S, U("Hi"), A("Hello!")], False),
        ([S, U("What is 2+2?")], True),
        ([S, U("One"), A("1"), U("Two"), A("2")], False),
        ([U("One"), A("1"), U("Two"), A("2"), U("Three")], True),
        ([U("Translate: 你好"), A("Hello (你好 means hello).")], False),
        ([U("Leading newline?"), A("\n\nStarts with newlines")], False),
        ([U("space"), A(" starts with a space")], False),
        ([U("think"), A("<think>\nreasoning here\n</think>\n\nThe answer is 4.")], False),
        ([U("q1"), A("<think>old reasoning</think>a1"), U("q2"), A("a2")], False),
        ([S, U("code?"), A("```python\ndef f():\n    return 1\n```")], False),
        ([U("emoji 👨‍👩‍👧‍👦"), A("🙂 e\u0301")], False),
        ([{"role": "system", "content": ""}, U(""), A("")], False),
        ([U("tab\tand\r\nCRLF"), A("ok\t\r\n")], False),
        ([S, U("a"), A("b"), {"role": "system", "content": "mid system"}, U("c"), A("d")], False),
        ([U("special <|im_end|> inside"), A("echo <|im_start|> text")], False),
        ([S, U("multi\nline\nuser")], True),
        ([U("x"), A("y"), U("z")], False),
        ([U("long " * 50), A("answer " * 40)], False),
        ([U("Don't you think it's 'fine'?"), A("I'LL say it's FINE.")], False),
    ]


def main():
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    qwen_dir = Path(os.environ.get("QWEN3_TOKENIZER_DIR", OUT / "qwen3"))
    (OUT / "qwen3").mkdir(parents=True, exist_ok=True)
    (OUT / "gpt2").mkdir(parents=True, exist_ok=True)
    (OUT / "llama3").mkdir(parents=True, exist_ok=True)
    xz_path = qwen_dir / "tokenizer.json.xz"
    tok_json = xz_path.read_bytes() if xz_path.exists() else (qwen_dir / "tokenizer.json").read_bytes()
    if xz_path.exists():
        tok_json = lzma.decompress(tok_json)
    if qwen_dir.resolve() != (OUT / "qwen3").resolve():
        (OUT / "qwen3" / "tokenizer.json.xz").write_bytes(
            lzma.compress(tok_json, preset=9 | lzma.PRESET_EXTREME))
        for name in ("tokenizer_config.json", "LICENSE"):
            (OUT / "qwen3" / name).write_bytes((qwen_dir / name).read_bytes())
    qwen = Tokenizer.from_str(tok_json.decode("utf-8"))

    corpus = make_corpus(1234, 2500)

    # A GPT-2 style byte-level BPE trained on the corpus itself.
    gpt2 = Tokenizer(models.BPE())
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    gpt2.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    gpt2.train_from_iterator(make_corpus(99, 3000), trainer=trainer)
    gpt2.save(str(OUT / "gpt2" / "tokenizer.json"))
    gpt2_prefix = Tokenizer.from_str(gpt2.to_str())
    gpt2_prefix.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)

    llama3 = Tokenizer(models.BPE(ignore_merges=True))
    llama3.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    llama3.decoder = decoders.ByteLevel()
    llama3.train_from_iterator(make_corpus(98, 3000), trainer=trainer)
    # Words that are in the vocabulary but that the merges cannot build: ignore_merges
    # makes each of them one token, plain BPE would split them.
    llama3_json = json.loads(llama3.to_str())
    vocab = llama3_json["model"]["vocab"]
    for word in ("Ġwater", "Ġpeople", "number", "Ġ__init__", "ĠResult", "ĠNanoQLoRA"):
        vocab.setdefault(word, len(vocab) + len(llama3_json["added_tokens"]))
    llama3 = Tokenizer.from_str(json.dumps(llama3_json))
    llama3.save(str(OUT / "llama3" / "tokenizer.json"))

    lines = []
    tokenizers_by_key = {"qwen3": qwen, "gpt2": gpt2, "gpt2_prefix": gpt2_prefix, "llama3": llama3}
    for text in corpus:
        row = {"text": text}
        for key, tok in tokenizers_by_key.items():
            row[key] = tok.encode(text, add_special_tokens=False).ids
            # decode(ids) differs from text where the normalizer changed it (Qwen3's NFC)
            # or a prefix space was added.
            decoded = tok.decode(row[key], skip_special_tokens=False)
            if decoded != text:
                row[key + "_decoded"] = decoded
        lines.append(json.dumps(row, ensure_ascii=False))
    with lzma.open(OUT / "corpus.jsonl.xz", "wt", encoding="utf-8", preset=9) as f:
        f.write("\n".join(lines) + "\n")

    config = json.loads((OUT / "qwen3" / "tokenizer_config.json").read_text())
    fast = PreTrainedTokenizerFast(tokenizer_object=qwen, chat_template=config["chat_template"])
    chats = []
    for messages, gen in conversations():
        for kind, template in (("qwen3", None), ("chatml", CHATML)):
            official = fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                                enable_thinking=False, chat_template=template)
            masked = fast.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, enable_thinking=False,
                                              return_dict=True, return_assistant_tokens_mask=True,
                                              chat_template=template or QWEN3_MASKED)
            ids = list(masked["input_ids"])
            assert official == fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                                        chat_template=template or QWEN3_MASKED), (kind, messages)
            assert ids == qwen.encode(official, add_special_tokens=False).ids
            chats.append(json.dumps({"kind": kind, "messages": messages, "add_generation_prompt": gen,
                                     "text": official, "ids": ids, "mask": list(masked["assistant_masks"])},
                                    ensure_ascii=False))
    (OUT / "chats.jsonl").write_text("\n".join(chats) + "\n", encoding="utf-8")
    print(f"tokenizer fixtures: {len(corpus)} strings, {len(chats)} chats (tokenizers {tokenizers.__version__})")


if __name__ == "__main__":
    main()
