"""Tokenizer speed: HF `tokenizers` (one thread, one string at a time) vs ./tokenize.

Generates a ~10 MB JSONL corpus deterministically (the fixture corpus generator with
other seeds; written to build/bench/, never committed), encodes it with the real Qwen3
tokenizer in Python and with ./tokenize, checks the ids agree on every line, and
prints MB/s for both. Run from anywhere after `make`:
    tools/ref/.venv/bin/python tools/ref/bench_tokenizer.py [--mb 10]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before importing tokenizers
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tokenizer_fixtures import make_corpus  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="corpus size in MB of UTF-8 text")
    args = parser.parse_args()
    import tokenizers
    from tokenizers import Tokenizer

    tokenizer_dir = ROOT / "build" / "fixtures" / "qwen3-tokenizer"
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    texts, size, seed = [], 0, 1
    while size < args.mb * 1e6:
        for t in make_corpus(10_000 + seed, 5000):
            texts.append(t)
            size += len(t.encode("utf-8"))
        seed += 1
    corpus = out / "tokenizer_corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    mb = size / 1e6

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    start = time.perf_counter()
    hf_ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    hf_s = time.perf_counter() - start

    start = time.perf_counter()
    with open(corpus, "rb") as stdin:
        run = subprocess.run([str(ROOT / "tokenize"), "--tokenizer", str(tokenizer_dir), "--stats"], stdin=stdin,
                             capture_output=True, check=True)
    nq_s = time.perf_counter() - start
    nq_ids = [json.loads(line)["ids"] for line in run.stdout.decode().splitlines()]
    mismatches = sum(a != b for a, b in zip(hf_ids, nq_ids)) + abs(len(hf_ids) - len(nq_ids))

    print(f"corpus: {len(texts)} strings, {mb:.2f} MB ({corpus})")
    print(f"HF tokenizers {tokenizers.__version__}, 1 thread, one string at a time: "
          f"{mb / hf_s:.2f} MB/s ({hf_s:.2f} s)")
    print(f"./tokenize end to end (load tokenizer.json, JSON in/out): {mb / nq_s:.2f} MB/s ({nq_s:.2f} s)")
    print(f"./tokenize {run.stderr.decode().strip()}")
    print(f"lines whose ids differ: {mismatches}")


if __name__ == "__main__":
    main()
