"""Multiple choice (HellaSwag / ARC shape): the choice the model finds most likely is its answer.

    gptkit eval runs/demo --choices rows.jsonl      # rows: {"context", "choices", "label"}
Each choice is scored as the continuation `" " + choice` of the context (lm-eval's default
target delimiter) by its summed log-likelihood; `acc` takes the highest sum, `acc_norm` the
highest sum per character of the choice -- lm-eval 0.4's `acc_norm` (it divides by
`len(choice)`; its byte-normalised twin is `acc_bytes`). Ties go to the first choice, as
numpy's argmax does there.
"""

from __future__ import annotations

from gptkit.evaluation import rows as eval_rows
from gptkit.evaluation.lm import encode_pair, load_lm, loglikelihoods

DELIMITER = " "  # between context and choice, as lm-eval's `target_delimiter` default


def score_file(path, file: str, *, batch_size: int = 8, device: str = "auto") -> dict:
    """{"acc", "acc_norm", "n"} of the model at `path` on the --choices rows in `file`."""
    rows = eval_rows.choice_rows(eval_rows.read(file, "--choices"))
    model, tok = load_lm(path, device)
    return score(model, tok, rows, batch_size=batch_size)


def score(model, tok, rows, *, batch_size: int = 8) -> dict:
    """acc and acc_norm over (context, choices, label) rows, every choice in batched forwards."""
    pairs = [encode_pair(tok, ctx, DELIMITER + c) for ctx, choices, _ in rows for c in choices]
    lls = iter(ll for ll, _ in loglikelihoods(model, pairs, batch_size=batch_size))
    acc = acc_norm = 0
    for _, choices, label in rows:
        row = [next(lls) for _ in choices]
        acc += _argmax(row) == label
        acc_norm += _argmax([ll / len(c) for ll, c in zip(row, choices, strict=True)]) == label
    n = len(rows)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "n": n}


def _argmax(values: list[float]) -> int:
    """Index of the largest value; the first one on ties."""
    return max(range(len(values)), key=values.__getitem__)
