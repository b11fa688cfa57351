"""Generation metrics over (prediction, references) rows; every number is its library's own.

    bleu, chrf     sacrebleu's corpus BLEU / chrF with default settings (0-100)
    rouge1/2/L     rouge-score F-measure (default tokenizer, no stemming; the best reference of
                   each row, as `score_multi` picks it), averaged over rows (0-1)
    meteor         nltk's `meteor_score` over whitespace tokens (best reference), averaged (0-1);
                   without WordNet (wordnet.py) exact + stem matches only, and a note says so
    exact_match    share of rows whose stripped output equals a stripped reference (0-1)
Per-row scores use the same libraries (`sentence_bleu`, `sentence_chrf`, ...).
"""

from __future__ import annotations

import difflib

from gptkit.errors import GptkitError
from gptkit.evaluation import wordnet
from gptkit.evaluation.optional import require

METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "meteor", "exact_match")
ROUGE = ("rouge1", "rouge2", "rougeL")
_LIBRARY = {"bleu": "sacrebleu", "chrf": "sacrebleu", "meteor": "nltk"}  # ROUGE: rouge_score


def parse_metrics(text: str | None) -> tuple[str, ...]:
    """--metrics "bleu,rougeL" -> ("bleu", "rougeL"), in METRICS order; None -> all of them."""
    if text is None:
        return METRICS
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in METRICS:
            close = difflib.get_close_matches(name, METRICS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise GptkitError(
                f"unknown metric '{name}' in --metrics{hint}; choose from {', '.join(METRICS)}"
            )
    if not names:
        raise GptkitError(f"--metrics is empty; choose from {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)


def check_installed(names=METRICS):
    """Fail before any generating when a library the chosen metrics need is missing."""
    for name in names:
        if name != "exact_match":
            require(_LIBRARY.get(name, "rouge_score"))


def score(predictions: list[str], references: list[list[str]], names=METRICS):
    """(corpus scores {metric: value}, per-row scores [{metric: value}], meteor note or None)."""
    assert len(predictions) == len(references) > 0, "one list of references per prediction"
    corpus: dict = {}
    rows: list[dict] = [{} for _ in predictions]
    note = None
    for name in names:
        if name in ("bleu", "chrf"):
            corpus[name], per_row = _sacrebleu(name, predictions, references)
        elif name in ROUGE:
            corpus[name], per_row = _rouge(name, predictions, references)
        elif name == "meteor":
            corpus[name], per_row, note = _meteor(predictions, references)
        else:
            per_row = [_exact(p, refs) for p, refs in zip(predictions, references, strict=True)]
            corpus[name] = sum(per_row) / len(per_row)
        for row, value in zip(rows, per_row, strict=True):
            row[name] = float(value)  # rouge-score gives an int 0 for an empty output
    return corpus, rows, note


def _sacrebleu(name: str, predictions, references):
    sacrebleu = require("sacrebleu")
    corpus_fn, sentence_fn = {
        "bleu": (sacrebleu.corpus_bleu, sacrebleu.sentence_bleu),
        "chrf": (sacrebleu.corpus_chrf, sacrebleu.sentence_chrf),
    }[name]
    # sacrebleu takes reference *streams*; None fills the rows with fewer references.
    streams = [[refs[i] if i < len(refs) else None for refs in references]
               for i in range(max(map(len, references)))]  # fmt: skip
    rows = [sentence_fn(p, refs).score for p, refs in zip(predictions, references, strict=True)]
    return corpus_fn(predictions, streams).score, rows


def _rouge(name: str, predictions, references):
    require("rouge_score")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([name])
    rows = [scorer.score_multi(refs, p)[name].fmeasure
            for p, refs in zip(predictions, references, strict=True)]  # fmt: skip
    return sum(rows) / len(rows), rows


class _NoSynonyms:
    """Stands in for WordNet: no word has synonyms, so METEOR matches exact words and stems."""

    def synsets(self, word):
        return []


def _meteor(predictions, references):
    require("nltk")
    from nltk.translate.meteor_score import meteor_score

    wn, note = wordnet.find()
    wn = wn if wn is not None else _NoSynonyms()
    rows = [meteor_score([r.split() for r in refs], p.split(), wordnet=wn)
            for p, refs in zip(predictions, references, strict=True)]  # fmt: skip
    return sum(rows) / len(rows), rows, note


def _exact(prediction: str, references: list[str]) -> float:
    return float(prediction.strip() in {r.strip() for r in references})
