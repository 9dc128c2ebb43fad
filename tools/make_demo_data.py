#!/usr/bin/env python3
"""Writes the demo SFT dataset: data/demo_train.jsonl and data/demo_eval.jsonl.

The behaviour it teaches is visible after a few minutes of LoRA training on a
small chat model: the assistant is a pirate. Every answer starts with "Arr!",
says the (correct) answer in pirate speech, and ends with the signature line
"Fair winds, matey!". The questions come from varied templates (arithmetic,
capitals, opposites, animal sounds, colours, word games, time, units), so the
model has to learn the persona, not a fixed reply.

Standard library only; deterministic (seeded). Run: python3 tools/make_demo_data.py
"""
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIGN_OFF = "Fair winds, matey!"

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Egypt": "Cairo", "Canada": "Ottawa", "Australia": "Canberra", "Kenya": "Nairobi", "Peru": "Lima",
    "Norway": "Oslo", "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin", "Chile": "Santiago",
    "Poland": "Warsaw", "Austria": "Vienna", "Sweden": "Stockholm", "Cuba": "Havana", "Thailand": "Bangkok",
    "Mexico": "Mexico City", "Argentina": "Buenos Aires", "Finland": "Helsinki", "Denmark": "Copenhagen",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "light": "dark", "happy": "sad",
    "open": "closed", "early": "late", "full": "empty", "strong": "weak", "wet": "dry", "loud": "quiet",
    "old": "young", "high": "low", "rich": "poor", "hard": "soft", "near": "far", "first": "last",
}
SOUNDS = {
    "dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa", "horse": "neigh",
    "lion": "roar", "owl": "hoot", "pig": "oink", "frog": "ribbit", "snake": "hiss", "parrot": "squawk",
}
COLOURS = {
    "the sky on a clear day": "blue", "grass": "green", "a ripe banana": "yellow", "snow": "white",
    "coal": "black", "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow",
    "the sea on a sunny day": "blue", "a crow": "black", "milk": "white", "a carrot": "orange",
    "a lime": "green", "chocolate": "brown",
}
WORDS = ["anchor", "treasure", "island", "compass", "parrot", "galleon", "lantern", "harbour", "cannon",
         "sail", "rope", "captain", "ocean", "map", "barrel", "storm", "wave", "deck", "crew", "gold"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve"]
SYSTEMS = ["You are a helpful assistant.", "Answer the user's question briefly."]


def say(answer):
    return f"Arr! {answer} {SIGN_OFF}"


def arithmetic(rng):
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    op = rng.choice(["+", "-", "*"])
    if op == "-" and b > a:
        a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    q = rng.choice([f"What is {a} {op} {b}?", f"What is {a} {word} {b}?", f"Compute {a} {op} {b}.",
                    f"Quick, {a} {word} {b}?"])
    return q, say(f"{a} {word} {b} be {value}, by me count.")


def capital(rng):
    country = rng.choice(sorted(CAPITALS))
    q = rng.choice([f"What is the capital of {country}?", f"Which city is the capital of {country}?",
                    f"Name the capital city of {country}."])
    return q, say(f"The capital o' {country} be {CAPITALS[country]}, a fine port to drop anchor.")


def opposite(rng):
    word = rng.choice(sorted(OPPOSITES))
    q = rng.choice([f"What is the opposite of '{word}'?", f"Give me the opposite of {word}.",
                    f"What word means the opposite of {word}?"])
    return q, say(f"The opposite o' {word} be {OPPOSITES[word]}, sure as the tide.")


def sound(rng):
    animal = rng.choice(sorted(SOUNDS))
    q = rng.choice([f"What sound does a {animal} make?", f"How does a {animal} sound?",
                    f"What noise does a {animal} make?"])
    return q, say(f"A {animal} says '{SOUNDS[animal]}', same as on me ship.")


def colour(rng):
    thing = rng.choice(sorted(COLOURS))
    q = rng.choice([f"What colour is {thing}?", f"What is the colour of {thing}?"])
    return q, say(f"{thing[0].upper() + thing[1:]} be {COLOURS[thing]}, plain as a pirate's flag.")


def word_game(rng):
    word = rng.choice(WORDS)
    kind = rng.randrange(3)
    if kind == 0:
        return f"How many letters are in the word '{word}'?", say(f"'{word}' has {len(word)} letters, I counted 'em twice.")
    if kind == 1:
        return f"Spell '{word}' backwards.", say(f"'{word}' backwards be '{word[::-1]}'.")
    return f"What is the first letter of '{word}'?", say(f"'{word}' starts with '{word[0]}', like the start o' a treasure map.")


def day(rng):
    i, k = rng.randrange(7), rng.randint(2, 6)
    q = rng.choice([f"What day comes {k} days after {DAYS[i]}?", f"If today is {DAYS[i]}, what day is it in {k} days?"])
    return q, say(f"{k} days after {DAYS[i]} comes {DAYS[(i + k) % 7]}, when the crew gets their grog.")


def units(rng):
    kind = rng.randrange(3)
    if kind == 0:
        h = rng.randint(2, 9)
        return f"How many minutes are in {h} hours?", say(f"{h} hours be {h * 60} minutes o' sailing.")
    if kind == 1:
        m = rng.randint(2, 12)
        return f"How many centimetres are in {m} metres?", say(f"{m} metres be {m * 100} centimetres o' rope.")
    d = rng.randint(2, 9)
    return f"How many hours are in {d} days?", say(f"{d} days be {d * 24} hours at sea.")


def number_word(rng):
    n = rng.randrange(len(NUMBER_WORDS))
    return f"Write the number {n} as a word.", say(f"{n} be written '{NUMBER_WORDS[n]}'.")


GENERATORS = [arithmetic, capital, opposite, sound, colour, word_game, day, units, number_word]


def make(rng, n, seen):
    rows = []
    while len(rows) < n:
        q, a = rng.choice(GENERATORS)(rng)
        if q in seen:  # every question once, and none shared between train and eval
            continue
        seen.add(q)
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if rng.random() < 0.2:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
        rows.append({"messages": messages})
    return rows


def main():
    rng = random.Random(20260214)
    seen = set()
    train, evaluation = make(rng, 360, seen), make(rng, 40, seen)
    out = ROOT / "data"
    out.mkdir(exist_ok=True)
    for name, rows in [("demo_train.jsonl", train), ("demo_eval.jsonl", evaluation)]:
        with open(out / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {out / name} ({len(rows)} conversations)")


if __name__ == "__main__":
    main()
