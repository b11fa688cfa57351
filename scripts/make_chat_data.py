"""Synthetic chat data for the application recipes (README "Applications"): offline, seeded.

    python scripts/make_chat_data.py all --out data/chat      # or one recipe: translation | ...
writes OUT/RECIPE_train.jsonl and OUT/RECIPE_val.jsonl, one `messages` row per line (but one
`tokens`/`labels` row for extraction_tokens):
- translation: a number in English words -> the same number in French words (0..999); the val
  numbers never appear in training, so exact match measures generalisation, not recall;
- extraction: a sentence -> JSON {"name", "date", "city", "amount"}; val names are unseen;
- extraction_tokens: the same sentences (same seed and split) as token-classification rows,
  {"tokens": words, "labels": BIO tags} (B-NAME, I-NAME, ..., O); punctuation is a word of its own,
  so each field's words are exactly its value (configs/extraction_tokens.yaml, score_tokens.py);
- dialogue: "I am NAME." ... a small sum ... "my name?" -> NAME; val names are unseen, so the last
  reply is right only if the model reads the first turn of the history.
Rows fit a 128-token byte-level context (configs/demo.yaml's backbone) with the ChatML tokens.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen").split()  # fmt: skip
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
UNITES = ("zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze "
          "quinze seize dix-sept dix-huit dix-neuf").split()  # fmt: skip
DIZAINES = {2: "vingt", 3: "trente", 4: "quarante", 5: "cinquante", 6: "soixante"}
CITIES = ["Lyon", "Paris", "Oslo", "Rome", "Lima", "Kyiv", "Cairo", "Quito", "Dakar", "Porto"]
SENTENCES = [
    "{name} paid {amount} in {city} on {date}.",
    "On {date}, {name} spent {amount} in {city}.",
    "{city}, {date}: {name} paid {amount}.",
    "In {city} {name} paid {amount} on {date}.",
]
RECIPES = ("translation", "extraction", "extraction_tokens", "dialogue")
PUNCTUATION = ".,:"  # split off the end of a word: "{date}," -> "{date}" ","


def english(n: int) -> str:
    """0..999 in English words: 342 -> "three hundred forty-two"."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + (f"-{ONES[n % 10]}" if n % 10 else "")
    rest = n % 100
    return f"{ONES[n // 100]} hundred" + (f" {english(rest)}" if rest else "")


def french(n: int) -> str:
    """0..999 in French words (1990 spelling rules aside): 342 -> "trois cent quarante-deux"."""
    if n < 20:
        return UNITES[n]
    if n < 70:
        tens, unit = divmod(n, 10)
        return DIZAINES[tens] + {0: "", 1: " et un"}.get(unit, f"-{UNITES[unit]}")
    if n < 80:
        return "soixante et onze" if n == 71 else f"soixante-{UNITES[n - 60]}"
    if n < 100:
        return "quatre-vingts" if n == 80 else f"quatre-vingt-{UNITES[n - 80]}"
    hundreds, rest = divmod(n, 100)
    head = "cent" if hundreds == 1 else f"{UNITES[hundreds]} cent" + ("" if rest else "s")
    return head + (f" {french(rest)}" if rest else "")


def _turns(*pairs) -> dict:
    messages = []
    for user, assistant in pairs:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def _names(rng: random.Random, n: int) -> list[str]:
    """n distinct made-up names (consonant-vowel syllables), so none is a word the model knows."""
    names: set[str] = set()
    while len(names) < n:
        k = rng.choice((2, 2, 3))
        names.add("".join(rng.choice("bdfklmnprstvz") + rng.choice("aeiou") for _ in range(k)))
    return sorted(name.capitalize() for name in names)


def translation(rng: random.Random, n_val: int) -> tuple[list, list]:
    numbers = list(range(1000))
    rng.shuffle(numbers)
    rows = [_turns((english(n), french(n))) for n in numbers]
    return rows[n_val:], rows[:n_val]


def _extraction_rows(rng: random.Random, n_val: int) -> tuple[list, list]:
    """(train, val) lists of (sentence template, fields); val names are never seen in training."""
    names = _names(rng, 2000)  # more names than rows: copied from the sentence, not memorised
    rng.shuffle(names)
    split = {"train": names[100:], "val": names[:100]}

    def row(pool):
        fields = {"name": rng.choice(pool), "date": f"2024-{rng.randint(1, 12):02d}-"
                  f"{rng.randint(1, 28):02d}", "city": rng.choice(CITIES),
                  "amount": str(rng.randint(1, 999))}  # fmt: skip
        return rng.choice(SENTENCES), fields

    return [row(split["train"]) for _ in range(1500)], [row(split["val"]) for _ in range(n_val)]


def extraction(rng: random.Random, n_val: int) -> tuple[list, list]:
    def chat(template: str, fields: dict) -> dict:
        answer = json.dumps(fields, separators=(",", ":"))
        return _turns((template.format(**fields), answer))

    train, val = _extraction_rows(rng, n_val)
    return [chat(*r) for r in train], [chat(*r) for r in val]


def words(text: str) -> list[str]:
    """Space-separated words with trailing punctuation split off: "Oslo, on" -> Oslo , on."""
    out = []
    for chunk in text.split():
        stripped = chunk.rstrip(PUNCTUATION)
        out += ([stripped] if stripped else []) + list(chunk[len(stripped) :])
    return out


def tagged(template: str, fields: dict) -> dict:
    """A token-classification row: the template's words, each {field} spelled out with BIO tags."""
    tokens, labels = [], []
    for word in words(template):
        if not (word.startswith("{") and word.endswith("}")):
            tokens.append(word)
            labels.append("O")
            continue
        key, value = word[1:-1].upper(), words(fields[word[1:-1]])
        tokens += value
        labels += [f"B-{key}"] + [f"I-{key}"] * (len(value) - 1)  # one span per field
    return {"tokens": tokens, "labels": labels}


def extraction_tokens(rng: random.Random, n_val: int) -> tuple[list, list]:
    train, val = _extraction_rows(rng, n_val)  # the rng draws of extraction(): same sentences
    return [tagged(*r) for r in train], [tagged(*r) for r in val]


def dialogue(rng: random.Random, n_val: int) -> tuple[list, list]:
    # more names than rows: none repeats often enough to be memorised, so the model must copy
    names = _names(rng, 2000)
    rng.shuffle(names)
    split = {"train": names[100:], "val": names[:100]}

    def row(pool):
        name, a, b = rng.choice(pool), rng.randint(1, 9), rng.randint(1, 9)
        return _turns((f"I am {name}.", f"Hi {name}."), (f"{a}+{b}?", str(a + b)),
                      ("my name?", name))  # fmt: skip

    return [row(split["train"]) for _ in range(1500)], [row(split["val"]) for _ in range(n_val)]


def write(recipe: str, out: Path, *, seed: int = 0, n_val: int = 100) -> tuple[Path, Path]:
    """Write OUT/RECIPE_train.jsonl and OUT/RECIPE_val.jsonl; returns their paths."""
    make = {"translation": translation, "extraction": extraction, "dialogue": dialogue,
            "extraction_tokens": extraction_tokens}[recipe]  # fmt: skip
    train, val = make(random.Random(seed), n_val)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"{recipe}_train.jsonl", out / f"{recipe}_val.jsonl"
    for path, rows in zip(paths, (train, val), strict=True):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=[*RECIPES, "all"])
    parser.add_argument("--out", default="data/chat", help="output folder (default data/chat)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-rows", type=int, default=100, help="held-out rows per recipe")
    args = parser.parse_args()
    for recipe in RECIPES if args.recipe == "all" else [args.recipe]:
        train, val = write(recipe, Path(args.out), seed=args.seed, n_val=args.val_rows)
        print(f"{recipe}: {train} ({sum(1 for _ in open(train))} rows), {val}")


if __name__ == "__main__":
    main()
