"""Write small synthetic fine-tuning datasets (deterministic, offline) for the finetune presets.

    python scripts/make_finetune_data.py [--out data/finetune] [--rows 2000] [--seed 0]

classify_*.jsonl: {text, label} — which of three keywords (apple/banana/cherry) a sentence holds;
sft_*.jsonl: {prompt, completion} — repeat a word twice; regress_*.jsonl: {text, target} —
target = 0.5 * word count; ner_*.jsonl: {tokens, tags} — FRUIT on keywords, O elsewhere.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

KEYWORDS = ("apple", "banana", "cherry")
FILLER = ("the", "a", "big", "small", "house", "tree", "road", "runs", "sits", "near", "over",
          "under", "quiet", "old", "new", "river", "stone", "window", "green", "cold")  # fmt: skip


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(rng.randint(lo, hi))]


def classify_rows(n: int, seed: int) -> list[dict]:
    """Sentences holding exactly one keyword; the label is the keyword."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, key = _words(rng, 3, 9), rng.choice(KEYWORDS)
        words.insert(rng.randint(0, len(words)), key)
        rows.append({"text": " ".join(words), "label": key})
    return rows


def sft_rows(n: int, seed: int) -> list[dict]:
    """Instruction -> answer pairs: repeat a word twice."""
    rng = random.Random(seed)
    pool = FILLER + KEYWORDS
    return [
        {"prompt": f"Repeat twice: {w}\nAnswer:", "completion": f" {w} {w}"}
        for w in (rng.choice(pool) for _ in range(n))
    ]


def regress_rows(n: int, seed: int) -> list[dict]:
    """Sentences of 1..12 words; target = 0.5 * number of words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = _words(rng, 1, 12)
        rows.append({"text": " ".join(words), "target": 0.5 * len(words)})
    return rows


def ner_rows(n: int, seed: int) -> list[dict]:
    """Word lists with a FRUIT tag on every keyword and O elsewhere."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = _words(rng, 3, 9)
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randint(0, len(words)), rng.choice(KEYWORDS))
        rows.append({"tokens": words, "tags": ["FRUIT" if w in KEYWORDS else "O" for w in words]})
    return rows


MAKERS = {"classify": classify_rows, "sft": sft_rows, "regress": regress_rows, "ner": ner_rows}


def write_jsonl(path: Path, rows: list[dict]):
    """One JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main(argv=None):
    """Write every dataset's train and val files."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/finetune", help="output folder")
    p.add_argument("--rows", type=int, default=2000, help="training rows per dataset")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    args = p.parse_args(argv)
    for name, make in MAKERS.items():
        write_jsonl(Path(args.out) / f"{name}_train.jsonl", make(args.rows, args.seed))
        write_jsonl(Path(args.out) / f"{name}_val.jsonl", make(args.rows // 10, args.seed + 1))
    print(
        f"wrote {', '.join(MAKERS)} ({args.rows} train / {args.rows // 10} val rows) to {args.out}"
    )


if __name__ == "__main__":
    main()
