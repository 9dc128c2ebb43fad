#!/usr/bin/env python3
"""Writes the format dataset: data/format_train.jsonl and data/format_eval.jsonl.

A task a persona cannot fake: arithmetic word problems whose answer must be the
bare result in GSM8K's final-answer format, "#### <number>", and nothing else.
A model that learns only the style ("####") but not the arithmetic gets the
answer wrong; the score is exact-match accuracy (./eval --generate N, without
--match). Operands are small (sums and differences of two-digit numbers,
products of a two-digit and a one-digit number) so a 135M model can do some of
it. Eval questions are disjoint from the training ones.

Standard library only; deterministic (seeded). Run: python3 tools/make_format_data.py
"""
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TEMPLATES = {
    "+": ["What is {a} plus {b}?", "Add {a} and {b}.", "A crate holds {a} apples and another holds {b}. How many apples in all?",
          "Compute {a} + {b}."],
    "-": ["What is {a} minus {b}?", "Subtract {b} from {a}.", "A ship carries {a} barrels and unloads {b}. How many are left?",
          "Compute {a} - {b}."],
    "*": ["What is {a} times {b}?", "Multiply {a} by {b}.", "There are {a} rows of {b} chairs. How many chairs?",
          "Compute {a} * {b}."],
}


def problem(rng):
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(11, 49), rng.randint(2, 9)
    else:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if op == "-" and b > a:
            a, b = b, a
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    question = rng.choice(TEMPLATES[op]).format(a=a, b=b)
    return question, f"#### {result}"


def main():
    rng = random.Random(20260216)
    seen, rows = set(), []
    while len(rows) < 400:
        q, a = problem(rng)
        if q in seen:
            continue
        seen.add(q)
        rows.append({"messages": [{"role": "user", "content": q},
                                  {"role": "assistant", "content": a}]})
    for name, part in [("format_train.jsonl", rows[:360]), ("format_eval.jsonl", rows[360:])]:
        with open(ROOT / "data" / name, "w") as f:
            for r in part:
                f.write(json.dumps(r) + "\n")
    print("wrote data/format_train.jsonl (360) and data/format_eval.jsonl (40)")


if __name__ == "__main__":
    main()
