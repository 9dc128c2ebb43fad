"""Qwen3's thinking mode as transformers' apply_chat_template renders it
(tests/fixtures/thinking/renders.json), with the Qwen3 tokenizer and chat template of
tests/fixtures/tokenizer/qwen3.

For each conversation (plain answers, reasoning written as <think>...</think> in the
answer, reasoning in an earlier turn that the template drops, a reasoning_content
field) the rendered text for add_generation_prompt False / True x enable_thinking
True / False. The C++ test (tests/test_trl_masks.cpp) renders the same with
model/chat_format and compares.
"""
import json
import lzma
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
QWEN3 = ROOT / "tests" / "fixtures" / "tokenizer" / "qwen3"
OUT = ROOT / "tests" / "fixtures" / "thinking"

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "user", "content": "What is 3*3?"},
     {"role": "assistant", "content": "<think>\nThree threes.\n</think>\n\n9."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
     {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n2."},
     {"role": "user", "content": "And 2+2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
]
# reasoning_content (the field the template reads first) and the same reasoning
# written into the content: the template renders both alike.
REASONING = [
    ([{"role": "user", "content": "5-3?"}, {"role": "assistant", "content": "2.", "reasoning_content": "Five minus three."}],
     [{"role": "user", "content": "5-3?"}, {"role": "assistant", "content": "<think>\nFive minus three.\n</think>\n\n2."}]),
]


def main():
    with tempfile.TemporaryDirectory() as t:
        d = Path(t)
        (d / "tokenizer.json").write_bytes(lzma.decompress((QWEN3 / "tokenizer.json.xz").read_bytes()))
        shutil.copy(QWEN3 / "tokenizer_config.json", d / "tokenizer_config.json")
        tok = AutoTokenizer.from_pretrained(d)
        renders = []
        for messages in CONVERSATIONS:
            for generation in (False, True):
                for thinking in (True, False):
                    renders.append({"messages": messages, "add_generation_prompt": generation,
                                    "enable_thinking": thinking,
                                    "text": tok.apply_chat_template(messages, tokenize=False,
                                                                    add_generation_prompt=generation,
                                                                    enable_thinking=thinking)})
        reasoning = [{"with_field": a, "in_content": b,
                      "text_with_field": tok.apply_chat_template(a, tokenize=False),
                      "text_in_content": tok.apply_chat_template(b, tokenize=False)} for a, b in REASONING]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "renders.json").write_text(json.dumps({"renders": renders, "reasoning_content": reasoning}, indent=1) + "\n")
    print(f"{len(renders)} renders, {len(reasoning)} reasoning_content pairs")


if __name__ == "__main__":
    main()
