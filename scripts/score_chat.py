"""Held-out score of a chat model on `messages` rows: greedy reply to the last user turn.

    python scripts/score_chat.py runs/chat_translation data/chat/translation_val.jsonl
Each row's history (every message before its last assistant turn, gold answers included) goes
through `gptkit chat`'s Session; the reply is compared with the row's last assistant message:
exact match, and for JSON answers (extraction) exact match per field. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gptkit import artifacts
from gptkit.commands.chat import Session
from gptkit.config import SampleConfig


def _fields(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def score(path: str, rows: list[dict], *, max_new_tokens: int = 80, device: str = "cpu") -> dict:
    """{"exact_match", per-field exact match where answers are JSON, "rows", "seconds"}."""
    art = artifacts.resolve(path)
    model, tok = art.load_model(device), art.tokenizer()
    cfg = SampleConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    start, hits, fields = time.perf_counter(), 0, {}
    for row in rows:
        *history, user, gold = row["messages"]
        session = Session(model, tok, torch.device(device), cfg)
        session.messages = list(history)
        reply = session.reply(user["content"])["reply"].strip()
        hits += reply == gold["content"]
        want = _fields(gold["content"])
        if want is not None:  # per-field exact match; an unparsable reply gets every field wrong
            got = _fields(reply) or {}
            for key, value in want.items():
                fields.setdefault(key, []).append(got.get(key) == value)
    result = {"exact_match": round(hits / len(rows), 4), "rows": len(rows)}
    result.update({f"{k}_match": round(sum(v) / len(v), 4) for k, v in fields.items()})
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="chat model: run, checkpoint or HF dir")
    parser.add_argument("rows", help="jsonl of messages rows ending with the reference answer")
    parser.add_argument("--limit", type=int, help="score only the first N rows")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with open(args.rows, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()][: args.limit]
    print(json.dumps({"model": args.path, **score(args.path, rows, device=args.device)}))


if __name__ == "__main__":
    main()
