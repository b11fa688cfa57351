"""Held-out score of a token-classification run from its `gptkit predict` output (BIO tags).

    gptkit predict runs/extraction_tokens --input data/chat/extraction_tokens_val.jsonl \
        --output preds.jsonl && python scripts/score_tokens.py preds.jsonl
Each row holds `tokens`, the gold tags (`labels`) and the predicted ones (`label`). Entity F1 is
seqeval-style: exact spans (type, first word, last word), micro over all types and per type. Per
field, the text of the first predicted span of a type must equal the gold span's text: the same
exact match per field that score_chat.py gives an SFT model's JSON. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json


def spans(tags: list) -> list[tuple[str, int, int]]:
    """(type, start, end) of each entity in BIO tags; an I- that continues nothing opens one."""
    out, start, kind = [], None, None
    for i, tag in enumerate([*tags, "O"]):  # a trailing O closes the last span
        prefix, _, typ = (tag or "O").partition("-")  # None: a word past the context
        if start is not None and (prefix != "I" or typ != kind):
            out.append((kind, start, i))
            start = None
        if prefix in ("B", "I") and start is None:
            start, kind = i, typ
    return out


def fields(tokens: list[str], tags: list) -> dict[str, str]:
    """{type in lower case: words of its first span}: the record a tagger extracts."""
    out = {}
    for kind, start, end in spans(tags):
        out.setdefault(kind.lower(), " ".join(tokens[start:end]))
    return out


def _f1(tp: int, n_pred: int, n_gold: int) -> float:
    precision, recall = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return 2 * precision * recall / (precision + recall) if tp else 0.0


def score(rows: list[dict], *, gold: str = "labels", pred: str = "label") -> dict:
    """{"entity_f1", precision, recall, per-type F1, per-field and all-field exact match, rows}."""
    if not rows:
        raise SystemExit("no rows to score")
    counts, hits, matches = {}, 0, {}  # counts: type -> [tp, predicted, gold]
    for i, row in enumerate(rows):
        if not all(k in row for k in ("tokens", gold, pred)):
            raise SystemExit(f"row {i + 1} lacks 'tokens', '{gold}' or '{pred}': score the output "
                             "of gptkit predict on rows with gold tags")  # fmt: skip
        want, got = set(spans(row[gold])), set(spans(row[pred]))
        for kind in {k for k, _, _ in want | got}:
            c = counts.setdefault(kind, [0, 0, 0])
            c[0] += sum(s[0] == kind for s in want & got)
            c[1] += sum(s[0] == kind for s in got)
            c[2] += sum(s[0] == kind for s in want)
        want, got = fields(row["tokens"], row[gold]), fields(row["tokens"], row[pred])
        for key, value in want.items():
            matches.setdefault(key, []).append(got.get(key) == value)
        hits += all(got.get(key) == value for key, value in want.items())
    tp, n_pred, n_gold = (sum(c[j] for c in counts.values()) for j in range(3))
    result = {"entity_f1": _f1(tp, n_pred, n_gold), "entity_precision": tp / max(n_pred, 1),
              "entity_recall": tp / max(n_gold, 1), "exact_match": hits / len(rows)}  # fmt: skip
    result.update({f"{k.lower()}_f1": _f1(*c) for k, c in sorted(counts.items())})
    result.update({f"{k}_match": sum(v) / len(v) for k, v in matches.items()})
    return {**{k: round(v, 4) for k, v in result.items()}, "rows": len(rows)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preds", help="jsonl written by gptkit predict (rows with gold tags)")
    parser.add_argument("--gold", default="labels", help="field of the gold tags (labels)")
    parser.add_argument("--pred", default="label", help="field of the predicted tags (label)")
    args = parser.parse_args()
    with open(args.preds, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print(json.dumps({"preds": args.preds, **score(rows, gold=args.gold, pred=args.pred)}))


if __name__ == "__main__":
    main()
