"""Document-aligned rows (`data.packing: bos`): every training row starts at a document start.

Shards separate documents with the end-of-text id (prepare appends it to each document), so a
document is its tokens plus that separator. A row of block_size + 1 tokens is filled best-fit,
nanochat-style: the longest drawn document that still fits goes next; when none fits, the next
one is cropped to fill the row (the cropped tail is dropped, never started mid-document).
Rows are a pure function of (seed, step), so resume and any ranks x accumulation split stay exact.
"""

from __future__ import annotations

import numpy as np

# documents drawn per row: enough that best-fit usually finds a close fit
_CANDIDATES_PER_ROW = 8


class DocumentIndex:
    """Start offset and length of every document in a list of token shards."""

    def __init__(self, shards: list, eot_id: int):
        shard_ids, starts, lengths = [], [], []
        for i, tokens in enumerate(shards):
            ends = np.flatnonzero(np.asarray(tokens) == eot_id) + 1  # one past each separator
            if len(tokens) and (not len(ends) or ends[-1] != len(tokens)):
                ends = np.append(ends, len(tokens))  # a last document without a separator
            begin = np.concatenate([[0], ends[:-1]])
            shard_ids.append(np.full(len(ends), i, dtype=np.int64))
            starts.append(begin.astype(np.int64))
            lengths.append((ends - begin).astype(np.int64))
        self.shard = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int64)
        self.start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.length)


def pack_rows(index: DocumentIndex, shards: list, *, rng, rows: int, width: int) -> np.ndarray:
    """`rows` rows of `width` tokens, each a best-fit sequence of whole documents drawn by
    `rng`, the last one cropped to fill the row."""
    out = np.empty((rows, width), dtype=np.int64)
    pool = list(rng.integers(0, len(index), size=rows * _CANDIDATES_PER_ROW))
    for r in range(rows):
        filled = 0
        while filled < width:
            if not pool:  # drawn documents ran out: draw more (deterministic: same rng)
                pool = list(rng.integers(0, len(index), size=_CANDIDATES_PER_ROW))
            room = width - filled
            fits = [j for j, d in enumerate(pool) if index.length[d] <= room]
            # the longest document that fits, else crop the next one drawn
            j = max(fits, key=lambda j: index.length[pool[j]]) if fits else 0
            doc = pool.pop(j)
            n = min(int(index.length[doc]), room)
            start = int(index.start[doc])
            out[r, filled : filled + n] = shards[int(index.shard[doc])][start : start + n]
            filled += n
    return out


def segments(x, eot_id: int):
    """Document number of every token of rows `x` (B, T): the separator closes its document."""
    ends = (x == eot_id).long()
    return ends.cumsum(-1) - ends  # eots strictly before each position
