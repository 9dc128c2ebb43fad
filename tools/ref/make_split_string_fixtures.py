"""Fixture for a tokenizer.json whose Split pre-tokenizer has a {"String": ...} pattern
(a literal, not a regex): HF tokenizers builds it, saves it and encodes a few texts;
tests/test_hostile.cpp loads the same file and must give the same ids.

Writes tests/fixtures/tokenizer/split_string/{tokenizer.json, expected.json}.
"""
import json
import os

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "tokenizer", "split_string")


def bytes_to_unicode():
    # GPT-2's byte -> printable character map
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main():
    os.makedirs(OUT, exist_ok=True)
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = [("h", "e"), (b2u[ord(" ")], "t"), ("a", "*")]
    for i, (l, r) in enumerate(merges):
        vocab[l + r] = 256 + i
    tok = Tokenizer(BPE(vocab=vocab, merges=merges))
    tok.normalizer = normalizers.Sequence([normalizers.NFC()])
    # "a*" and "." as literals: as regexes they would mean "a, a, a..." and "any character".
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(".", behavior="isolated"),
        pre_tokenizers.Split("a*", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    path = os.path.join(OUT, "tokenizer.json")
    tok.save(path)
    saved = json.load(open(path))
    assert saved["pre_tokenizer"]["pretokenizers"][0]["pattern"] == {"String": "."}, saved["pre_tokenizer"]
    texts = ["a.b..c", "the heat. a*a**aa*", "no dots here", "...", "caf\u00e9.\u4f60\u597d.a*", ""]
    expected = [{"text": t, "ids": tok.encode(t).ids} for t in texts]
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
