"""The train/val split of `gptkit prepare`: whole documents, routed by a seeded hash.

`val_mask` decides per document index (the same whatever the chunking or worker count);
`Splitter` feeds the train and val `ShardWriter`s and counts documents, tokens and text bytes;
`train_documents` streams the same train documents without tokenizing (for bpe:N training).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gptkit.data.shards import ShardWriter

if TYPE_CHECKING:
    from gptkit.config import PrepareConfig


def val_mask(start: int, n: int, *, seed: int, val_fraction: float) -> np.ndarray:
    """Which of documents start..start+n-1 go to val: a splitmix64 hash of (seed, index)."""
    # splitmix64's output number `index` for state `seed` (uint64 arithmetic wraps by design)
    index = np.arange(start + 1, start + n + 1, dtype=np.uint64)
    z = np.uint64(seed % 2**64) + index * np.uint64(0x9E3779B97F4A7C15)
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    is_val = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < val_fraction
    if start == 0 and n:
        is_val[0] = False  # train always gets the first document
    return is_val


def train_documents(docs: Iterable[str], *, seed: int, val_fraction: float) -> Iterator[str]:
    """The documents `Splitter` sends to train, streamed (what bpe:N trains a tokenizer on)."""
    docs, held, val_seen, n = iter(docs), None, val_fraction == 0, 0
    while chunk := list(islice(docs, 1024)):
        is_val = val_mask(n, len(chunk), seed=seed, val_fraction=val_fraction).tolist()
        for doc, to_val in zip(chunk, is_val, strict=True):
            n += 1
            if held is not None:
                yield held  # a held-back document that is not the last one is train
                held = None
            if to_val:
                val_seen = True
            elif val_seen:
                yield doc
            else:
                held = doc  # as in Splitter: the newest train document while val is empty
    if held is not None and n < 2:
        yield held  # Splitter.close(): the held document goes to val unless it is the only one


class Splitter:
    """Routes whole documents to the train or val writer and counts them.

    While val has no document yet, the newest train document is held back; if val is still
    empty at the end (and there are >= 2 documents) that document goes to val instead.
    """

    def __init__(self, out_dir: Path, cfg: PrepareConfig, dtype):
        kw = dict(shard_tokens=cfg.shard_tokens, dtype=dtype)
        self.writers = {s: ShardWriter(out_dir, s, **kw) for s in ("train", "val")}
        self.stats = {s: {"documents": 0, "tokens": 0, "text_bytes": 0} for s in self.writers}
        self.seed, self.val_fraction = cfg.seed, cfg.val_fraction
        self.n_docs = 0
        self.val_seen = cfg.val_fraction == 0  # nothing to guarantee
        self.pending: tuple[np.ndarray, int] | None = None

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.stats.values())

    @property
    def text_bytes(self) -> int:
        return sum(s["text_bytes"] for s in self.stats.values())

    def add(self, tokens: np.ndarray, lengths: np.ndarray, nbytes: np.ndarray):
        n = len(lengths)
        is_val = val_mask(self.n_docs, n, seed=self.seed, val_fraction=self.val_fraction)
        ends = np.cumsum(lengths)
        # runs of consecutive documents bound for the same split
        cuts = [0, *(np.flatnonzero(is_val[1:] != is_val[:-1]) + 1).tolist(), n]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            toks = tokens[ends[a] - lengths[a] : ends[b - 1]]
            self._run(bool(is_val[a]), toks, lengths[a:b], nbytes[a:b])
        self.n_docs += n

    def _run(self, to_val: bool, toks: np.ndarray, lengths: np.ndarray, nbytes: np.ndarray):
        if to_val or self.val_seen:
            self._flush_pending("train")
            self._emit("val" if to_val else "train", toks, len(lengths), int(nbytes.sum()))
            self.val_seen = self.val_seen or to_val
            return
        self._flush_pending("train")
        last = int(lengths[-1])
        self._emit("train", toks[:-last], len(lengths) - 1, int(nbytes[:-1].sum()))
        self.pending = (toks[-last:].copy(), int(nbytes[-1]))

    def _flush_pending(self, split: str):
        if self.pending is not None:
            toks, nbytes = self.pending
            self.pending = None
            self._emit(split, toks, 1, nbytes)

    def _emit(self, split: str, toks: np.ndarray, docs: int, nbytes: int):
        if docs:
            self.writers[split].write(toks)
            st = self.stats[split]
            st["documents"] += docs
            st["tokens"] += int(toks.size)
            st["text_bytes"] += nbytes

    def close(self) -> dict:
        """Finish both writers; per split: documents, tokens, text_bytes, shards."""
        self._flush_pending("val" if self.n_docs >= 2 else "train")
        return {s: {**self.stats[s], "shards": w.close()} for s, w in self.writers.items()}
