"""Labelled data for fine-tuning: rows -> token ids + targets -> padded, resumable batches.

`read_rows("train.jsonl")` (also .json arrays, .csv, .parquet, hf:NAME[:SPLIT]) -> list of dicts;
`label_list` builds the label <-> id map; `encode(rows, kind=..., ...)` -> `Example`s;
`LabeledBatches` streams shuffled, rank-sharded training batches (exact resume from two ints);
`eval_batches` covers a val set once. Padding uses end-of-text and is masked out everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptkit.config import FinetuneConfig
from gptkit.data import rows as tables
from gptkit.errors import GptkitError

KINDS = ("classification", "regression", "token_classification", "lm", "sft")


@dataclass(slots=True)
class Example:
    """One encoded row: token ids and what the head should predict."""

    ids: list[int]
    target: object  # class id | list of floats (regression) | list of ints per token (-100 = none)


# --------------------------------------------------------------------------------------------
# Reading


def read_rows(source: str) -> list[dict]:
    """All rows of a .jsonl/.json/.csv/.parquet file or `hf:NAME[:SPLIT]` dataset, as dicts."""
    if source.startswith("hf:"):
        return _read_hf(source[3:])
    path = Path(source)
    if not path.is_file():
        raise GptkitError(f"data file {source} not found; check finetune.train_file/val_file")
    if path.suffix.lower() not in tables.FORMATS:
        raise GptkitError(
            f"{source}: unknown data format; use .jsonl, .json, .csv, .parquet or hf:NAME"
        )
    return [row for _, row in tables.read_rows(path, bad_bytes="refuse")]  # no U+FFFD in labels


parse_jsonl = tables.parse_jsonl  # rows of stdin, for `gptkit predict`


def _read_hf(spec: str) -> list[dict]:
    name, _, split = spec.partition(":")
    from datasets import load_dataset  # heavy: imported only for hf: sources

    try:
        return list(load_dataset(name, split=split or "train"))
    except Exception as e:  # noqa: BLE001 - offline, missing dataset or split: one message
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise GptkitError(f"cannot load hf:{spec} ({first}); check the name and split") from None


def split_rows(rows: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded (train, val) split; val gets round(n * val_fraction) rows (>= 1 if > 0)."""
    order = np.random.default_rng(seed).permutation(len(rows))
    n_val = max(1, round(len(rows) * val_fraction)) if val_fraction > 0 else 0
    if n_val >= len(rows):
        raise GptkitError(
            f"{len(rows)} rows are too few to hold out {val_fraction:.0%} for validation; "
            "add rows, lower finetune.val_fraction, or give finetune.val_file"
        )
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


def field(row: dict, name: str, where: str, i: int):
    """row[name], or a GptkitError naming the row and the fields it has."""
    if name not in row or row[name] is None:
        have = ", ".join(map(str, row)) or "none"
        raise GptkitError(
            f"row {i + 1} of {where} has no field '{name}' (fields: {have}); fix the data or "
            "set the finetune.*_field that names it"
        )
    return row[name]


# --------------------------------------------------------------------------------------------
# Labels


def label_list(rows: list[dict], *, name: str, per_token: bool, num_labels: int | None,
               where: str) -> list:  # fmt: skip
    """Id -> label for the labels in `rows`: ints 0..N-1 as they are, strings sorted."""
    values = []
    for i, row in enumerate(rows):
        v = field(row, name, where, i)
        values += v if per_token and isinstance(v, list) else [v]
    kinds = {("int" if isinstance(v, int) and not isinstance(v, bool) else type(v).__name__)
             for v in values}  # fmt: skip
    if kinds == {"int"}:
        labels = list(range(max(values) + 1))
        if min(values) < 0:
            raise GptkitError(f"{where}: integer labels must be >= 0, found {min(values)}")
    elif kinds == {"str"}:  # digit strings sort as numbers, so class ids follow the values
        labels = sorted(set(values), key=lambda s: (0, int(s), s) if s.lstrip("-").isdigit()
                        else (1, 0, s))  # fmt: skip
    else:
        raise GptkitError(
            f"{where}: labels in '{name}' must be all strings or all integers, found "
            f"{', '.join(sorted(kinds))}; make them one type"
        )
    if num_labels is not None:
        if len(labels) > num_labels or (kinds == {"str"} and len(labels) != num_labels):
            raise GptkitError(
                f"finetune.num_labels is {num_labels} but {where} has {len(labels)} classes "
                f"({', '.join(map(str, labels[:8]))}); fix num_labels or remove it to infer it"
            )
        labels = list(range(num_labels)) if kinds == {"int"} else labels
    if len(labels) < 2:
        raise GptkitError(f"{where}: '{name}' has only the label {labels}; need >= 2 classes")
    return labels


# --------------------------------------------------------------------------------------------
# Encoding


def encode_text(tok, text: str, block_size: int) -> list[int]:
    """Token ids of `text`, cut to `block_size`; an empty text becomes one end-of-text."""
    return tok.encode(text)[:block_size] or [tok.eot_id]


def encode_words(tok, words: list[str], block_size: int, *, subtoken: str = "first"):
    """(ids of space-joined `words`, position of each word's first or last sub-token; -1 = cut)."""
    ids, where = [], []
    space = tok.encode(" ") if len(words) > 1 else []
    for j, word in enumerate(words):
        piece = tok.encode((" " if j else "") + str(word))
        # where the space is a token of its own (char, byte), the word starts after it
        own = j and len(piece) > len(space) and piece[: len(space)] == space
        first = len(ids) + (len(space) if own else 0)
        pos = first if subtoken == "first" else len(ids) + len(piece) - 1
        where.append(pos if pos < block_size else -1)
        ids += piece
    return ids[:block_size] or [tok.eot_id], where


def encode(rows: list[dict], *, kind: str, tok, ft: FinetuneConfig, labels: list | None,
           block_size: int, where: str) -> list[Example]:  # fmt: skip
    """Rows -> examples for one head kind (see KINDS); raises on missing fields or labels."""
    assert kind in KINDS, f"unknown kind {kind!r}"
    index = {lab: i for i, lab in enumerate(labels or [])}
    make = {"classification": _classification, "regression": _regression, "lm": _lm,
            "token_classification": _token_classification, "sft": _sft}[kind]  # fmt: skip
    out = [make(row, i, tok=tok, ft=ft, index=index, T=block_size, where=where)
           for i, row in enumerate(rows)]  # fmt: skip
    out = [e for e in out if e is not None]
    if not out:
        raise GptkitError(f"{where} holds no usable examples for the {kind} head; check the data")
    return out


def _label_id(value, index: dict, where: str, i: int) -> int:
    if value not in index or isinstance(value, bool):
        known = ", ".join(map(str, list(index)[:8]))
        raise GptkitError(
            f"label {value!r} in row {i + 1} of {where} never appears in the training data "
            f"(known: {known}); fix the row or add it to the training data"
        )
    return index[value]


def _classification(row, i, *, tok, ft, index, T, where):
    ids = encode_text(tok, str(field(row, ft.text_field, where, i)), T)
    return Example(ids, _label_id(field(row, ft.label_field, where, i), index, where, i))


def _regression(row, i, *, tok, ft, index, T, where):
    value = field(row, ft.label_field, where, i)
    values = value if isinstance(value, list) else [value]
    try:
        target = [float(v) for v in values]
    except (TypeError, ValueError):
        raise GptkitError(f"row {i + 1} of {where}: target {value!r} is not a number") from None
    if len(target) != ft.num_targets:
        raise GptkitError(
            f"row {i + 1} of {where} has {len(target)} targets but finetune.num_targets is "
            f"{ft.num_targets}; make them agree"
        )
    return Example(encode_text(tok, str(field(row, ft.text_field, where, i)), T), target)


def _token_classification(row, i, *, tok, ft, index, T, where):
    words, tags = field(row, ft.tokens_field, where, i), field(row, ft.label_field, where, i)
    if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags):
        raise GptkitError(
            f"row {i + 1} of {where}: '{ft.tokens_field}' and '{ft.label_field}' must be lists "
            "of the same length (one label per word)"
        )
    ids, positions = encode_words(tok, words, T, subtoken=ft.label_subtoken)
    target = [-100] * len(ids)
    for pos, tag in zip(positions, tags, strict=True):
        label = _label_id(tag, index, where, i)
        if pos >= 0:
            target[pos] = label
    return Example(ids, target)


def _lm(row, i, *, tok, ft, index, T, where):
    seq = (tok.encode(str(field(row, ft.text_field, where, i))) + [tok.eot_id])[: T + 1]
    return Example(seq[:-1], seq[1:]) if len(seq) > 1 else None


def _sft(row, i, *, tok, ft, index, T, where):
    prompt = tok.encode(str(field(row, ft.prompt_field, where, i)))
    completion = tok.encode(str(field(row, ft.completion_field, where, i))) + [tok.eot_id]
    seq = (prompt + completion)[: T + 1]
    labels = ([-100] * len(prompt) + completion)[: T + 1]  # no loss on the prompt
    if all(t == -100 for t in labels[1:]):
        return None  # the prompt fills the whole block: nothing left to learn from
    return Example(seq[:-1], labels[1:])


# --------------------------------------------------------------------------------------------
# Batches


def collate(examples: list[Example], *, kind: str, pad_id: int, device="cpu"):
    """Right-pad to the longest example -> (idx (B,T), attention_mask (B,T), target)."""
    T = max(len(e.ids) for e in examples)
    idx = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), T, dtype=torch.long)
    for b, e in enumerate(examples):
        idx[b, : len(e.ids)] = torch.tensor(e.ids)
        mask[b, : len(e.ids)] = 1
    if kind in ("classification", "regression"):  # a class id or a list of floats per row
        dtype = torch.long if kind == "classification" else torch.float32
        target = torch.tensor([e.target for e in examples], dtype=dtype)
    else:  # a label per position, -100 on padding
        target = torch.full((len(examples), T), -100, dtype=torch.long)
        for b, e in enumerate(examples):
            target[b, : len(e.target)] = torch.tensor(e.target)
    return idx.to(device), mask.to(device), target.to(device)


class LabeledBatches:
    """Endless shuffled training batches; each rank takes its own slice of every global batch.

    The stream is one permutation per epoch, seeded by (seed, epoch), so the position `pos`
    (examples consumed by all ranks together) is the whole state."""

    def __init__(self, examples: list[Example], *, kind: str, batch_size: int, pad_id: int,
                 rank: int = 0, world_size: int = 1, seed: int = 1337, device="cpu"):  # fmt: skip
        self.examples, self.kind, self.batch_size, self.pad_id = examples, kind, batch_size, pad_id
        self.rank, self.world_size, self.seed, self.device = rank, world_size, seed, device
        self.pos, self._epoch, self._perm = 0, -1, None  # _perm: this epoch's order

    def _index(self, p: int) -> int:
        epoch, i = divmod(p, len(self.examples))
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, rng.permutation(len(self.examples))
        return int(self._perm[i])

    def next_batch(self):
        """The next (idx, attention_mask, target) micro-batch of this rank."""
        start = self.pos + self.rank * self.batch_size
        chosen = [self.examples[self._index(p)] for p in range(start, start + self.batch_size)]
        self.pos += self.batch_size * self.world_size
        return collate(chosen, kind=self.kind, pad_id=self.pad_id, device=self.device)

    @property
    def epoch(self) -> float:
        """Passes over the training examples so far (fractional)."""
        return self.pos / len(self.examples)

    def state_dict(self) -> dict:
        """Plain ints that `load_state_dict` resumes from exactly."""
        return {"pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict):
        """Continue from a `state_dict()`."""
        self.pos, self.seed = int(state["pos"]), int(state["seed"])
        self._epoch = -1


def eval_batches(examples: list[Example], *, kind: str, batch_size: int, pad_id: int,
                 rank: int = 0, world_size: int = 1, device="cpu"):  # fmt: skip
    """Yield (idx, mask, target, valid) over this rank's share of `examples`, once.

    Every rank yields the same number of batches (lock-step for FSDP); slots past the end of a
    rank's share repeat an example with valid = False, so sums over valid rows are exact."""
    mine = list(range(rank, len(examples), world_size))
    per_rank = -(-len(examples) // world_size)
    valid = [True] * len(mine) + [False] * (per_rank - len(mine))
    mine += [0] * (per_rank - len(mine))
    for s in range(0, per_rank, batch_size):
        chosen = [examples[i] for i in mine[s : s + batch_size]]
        idx, mask, target = collate(chosen, kind=kind, pad_id=pad_id, device=device)
        yield idx, mask, target, torch.tensor(valid[s : s + batch_size], device=device)
