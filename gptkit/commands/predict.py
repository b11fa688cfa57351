"""`gptkit predict RUN [--input rows.jsonl] [--output out.jsonl] [--device auto]`: label rows.

Reads JSON lines (stdin without --input, or with `--input -`), runs a fine-tuned classification,
regression or token-classification model over the field it was trained on, and writes each row
back with `label` (token classification: one per word) or `value`, plus `probs` ({label: p}) for
classes (stdout without --output, or with `--output -`). A run dir uses its best-by-val checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from gptkit import artifacts
from gptkit.data import labeled
from gptkit.errors import GptkitError
from gptkit.train import runtime
from gptkit.train.checkpoint import write_text_atomic

TASK_HEADS = ("classification", "regression", "token_classification")


def load_predictor(path, device="cpu"):
    """(model in eval mode, tokenizer, head spec, finetune config dict) of a fine-tuned run:
    a checkpoint dir as given, else the run's best checkpoint (else its latest)."""
    art = artifacts.resolve(path, best=True)
    if art.head["name"] not in TASK_HEADS:
        raise GptkitError(
            f"{path} has a {art.head['name']} head; predict needs a classification, regression "
            "or token_classification run (use 'gptkit sample' for lm runs)"
        )
    if art.kind != "checkpoint":
        raise GptkitError(f"{path} is a {art.kind} dir; predict needs the fine-tuned run or "
                          "checkpoint dir (its finetune settings say how rows are read)")  # fmt: skip
    return art.load_model(device), art.tokenizer(), art.head, art.config["finetune"]


@torch.no_grad()
def predict(model, tok, rows: list[dict], *, spec: dict, ft: dict, batch_size: int = 32):
    """Each row plus its prediction (`label`/`value`, `probs`), in input order."""
    T, device = model.config.block_size, model.transformer.wte.weight.device
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        encoded = [_encode(row, s + i, tok=tok, ft=ft, spec=spec, T=T)
                   for i, row in enumerate(chunk)]  # fmt: skip
        examples = [labeled.Example(ids, [0] * len(ids)) for ids, _ in encoded]
        idx, mask, _ = labeled.collate(examples, kind="lm", pad_id=tok.eot_id, device=device)
        scores = model(idx, attention_mask=mask).float().cpu()
        for i, row in enumerate(chunk):
            out.append({**row, **_result(scores[i], spec, encoded[i][1])})
    return out


def _encode(row, i, *, tok, ft, spec, T):
    if spec["name"] == "token_classification":
        words = labeled.field(row, ft["tokens_field"], "the input", i)
        if not isinstance(words, list):
            raise GptkitError(f"row {i + 1} of the input: '{ft['tokens_field']}' is not a list")
        return labeled.encode_words(tok, words, T, subtoken=spec.get("subtoken", "first"))
    text = str(labeled.field(row, ft["text_field"], "the input", i))
    return labeled.encode_text(tok, text, T), None


def _result(score, spec: dict, positions) -> dict:
    if spec["name"] == "regression":
        values = score.tolist()
        return {"value": values[0] if len(values) == 1 else values}
    labels = spec["labels"]
    if positions is None:  # one prediction for the sequence
        return _classes(score, labels)
    words = [
        _classes(score[p], labels) if p >= 0 else {"label": None, "probs": None} for p in positions
    ]
    return {"label": [w["label"] for w in words], "probs": [w["probs"] for w in words]}


def _classes(score, labels: list) -> dict:
    probs = torch.softmax(score, -1).tolist()
    best = max(range(len(probs)), key=probs.__getitem__)
    return {
        "label": labels[best],
        "probs": {str(lab): p for lab, p in zip(labels, probs, strict=True)},
    }


def run(args) -> int:
    """CLI entry: `gptkit predict RUN [--input] [--output] [--device]`."""
    device = runtime.resolve_device(args.device)
    model, tok, spec, ft = load_predictor(args.path, device)
    rows = _read_input(args.input)
    text = "".join(
        json.dumps(r, ensure_ascii=False) + "\n"
        for r in predict(model, tok, rows, spec=spec, ft=ft)
    )
    _write_output(args.output, text)
    return 0


def _read_input(source: str | None) -> list[dict]:
    """Rows from --input: a .jsonl/.json/.csv/.parquet file, or stdin when absent or '-'."""
    if source is None or source == "-":
        return labeled.parse_jsonl(sys.stdin, "stdin")
    if not Path(source).is_file():
        raise GptkitError(
            f"--input {source} not found; pass an existing .jsonl (or .csv/.parquet) file, "
            "or '-' for stdin"
        )
    return labeled.read_rows(source)


def _write_output(target: str | None, text: str):
    """Predictions to --output (written atomically), or to stdout when absent or '-'."""
    if target is None or target == "-":
        sys.stdout.write(text)
        return
    try:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(target), text)
    except OSError as e:  # a file where a folder should be, no permission, disk full
        raise GptkitError(
            f"cannot write --output {target} ({e.strerror or e}); pass a writable path"
        ) from None
