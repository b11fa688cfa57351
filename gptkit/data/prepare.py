"""Source text -> token shards + meta.json, streaming in bounded memory.

Documents are grouped into ~1 MB chunks, tokenized in a pool of worker processes (results kept in
order), split into train/val by a seeded hash of the document index, and written by two
ShardWriters into a hidden sibling folder that is renamed to `out_dir` only when complete.
Same inputs -> byte-identical output, whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import multiprocessing as mp
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gptkit.data.shards import META_FORMAT_VERSION, META_NAME, ShardWriter, read_meta, shard_dtype
from gptkit.data.sources import describe_source, iter_documents, read_text
from gptkit.data.tokenizer import char_tokenizer, get_tokenizer
from gptkit.errors import GptkitError

if TYPE_CHECKING:
    from gptkit.config import PrepareConfig

__all__ = ["build_shards", "read_meta", "val_mask", "tokenizer_for"]

CHUNK_CHARS = 1 << 20  # text per worker task: big enough to amortise IPC, small for memory
CHUNK_DOCS = 4096
_worker: dict = {}  # set by _init_worker inside pool worker processes only


def build_shards(cfg: PrepareConfig, *, force: bool = False, progress: bool = True) -> dict:
    """Tokenize `cfg.source` into `cfg.out_dir` (shards + meta.json); returns the meta dict."""
    out = Path(cfg.out_dir)
    _check_out_dir(out, force)
    source = describe_source(cfg)
    tokenizer = tokenizer_for(cfg)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    _remove_stale(out)
    shutil.rmtree(tmp, ignore_errors=True)  # only a crashed run with our pid leaves one
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise GptkitError(f"cannot create {tmp} ({e.strerror}); check prepare.out_dir") from None
    try:
        meta = _write(cfg, tokenizer, source, tmp, progress)
        _install(tmp, out)
    except OSError as e:  # disk full, permission denied, a source file gone
        shutil.rmtree(tmp, ignore_errors=True)
        what = f"{e.filename}: " if e.filename else ""
        raise GptkitError(
            f"prepare stopped ({what}{e.strerror or e}); free disk space or fix permissions and "
            f"run it again ({out} is unchanged)"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _remove_stale(out: Path):
    """Delete the temp/old folders that killed runs (pid no longer alive) left beside out_dir."""
    for path in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        kind, _, pid = path.name[len(out.name) + 2 :].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process
    return True


def tokenizer_for(cfg: PrepareConfig):
    """The tokenizer prepare.tokenizer names; `char` reads the corpus once for its alphabet."""
    if cfg.tokenizer == "char":
        return char_tokenizer(iter_documents(cfg))
    return get_tokenizer(cfg.tokenizer)


def _check_out_dir(out: Path, force: bool):
    if out.exists() and not out.is_dir():
        raise GptkitError(f"prepare.out_dir {out} is a file; choose a folder path")
    if not out.is_dir():
        return
    if (out / META_NAME).exists():
        if not force:
            raise GptkitError(
                f"{out} already holds prepared data ({META_NAME}); pass --force to replace it "
                "or choose another prepare.out_dir"
            )
    elif any(out.iterdir()):
        raise GptkitError(
            f"{out} exists and is not prepared data (no {META_NAME}); empty it or choose another "
            "prepare.out_dir"
        )


def _install(tmp: Path, out: Path):
    """Move the finished folder into place; an old output is removed only after that."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old.exists():
            os.replace(old, out)  # put the previous output back
        raise
    shutil.rmtree(old, ignore_errors=True)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename durable
    finally:
        os.close(fd)


def _write(cfg: PrepareConfig, tokenizer, source: dict, tmp: Path, progress: bool) -> dict:
    from tqdm import tqdm

    from gptkit import __version__

    counts = {"replaced_chars": 0}
    dtype = shard_dtype(tokenizer.vocab_size)
    splitter = _Splitter(tmp, cfg, dtype)
    chunks = _chunks(iter_documents(cfg, counts, lazy=True))
    workers = cfg.workers or _cores()
    start = time.perf_counter()
    hide = None if progress else True  # None: a bar only on a terminal
    with _encoder(tokenizer, workers, dtype) as encode, tqdm(unit="doc", disable=hide) as bar:
        for tokens, lengths, nbytes, chunk_counts in encode(chunks):
            splitter.add(tokens, lengths, nbytes)
            counts["replaced_chars"] += chunk_counts["replaced_chars"]
            bar.update(len(lengths))
            mb = splitter.text_bytes / 1e6
            rate = mb / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{splitter.tokens:,} tokens, {rate:.1f} MB/s", refresh=False)
    splits = splitter.close()
    meta = {
        "format_version": META_FORMAT_VERSION,
        "gptkit_version": __version__,
        "tokenizer": tokenizer.spec(),
        "dtype": dtype.name,
        "documents": sum(s["documents"] for s in splits.values()),
        "replaced_chars": counts["replaced_chars"],
        "splits": splits,
        "source": source,
        "prepare": {
            k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("workers", "out_dir")
        },
    }
    with open(tmp / META_NAME, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return meta


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _chunks(docs: Iterable[str | Path]) -> Iterator[list[str | Path]]:
    chunk, size = [], 0
    for doc in docs:
        chunk.append(doc)
        size += doc.stat().st_size if isinstance(doc, Path) else len(doc)
        if size >= CHUNK_CHARS or len(chunk) >= CHUNK_DOCS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------------------------
# Tokenizing in worker processes


def _encode(tokenizer, docs: list[str | Path], dtype) -> tuple:
    """Tokenize one chunk -> (ids, eot after each doc; tokens per doc; UTF-8 bytes per doc; counts).

    Paths are text files, read and decoded here (in a worker) rather than in the parent.
    """
    counts = {"replaced_chars": 0}
    texts = [read_text(d, counts) if isinstance(d, Path) else d for d in docs]
    tokens, lengths = tokenizer.encode_docs(texts)
    nbytes = np.array([len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts])
    return tokens.astype(dtype, copy=False), lengths, nbytes.astype(np.int64), counts


def _init_worker(tokenizer, dtype):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the pool, quietly
    _worker.update(tokenizer=tokenizer, dtype=dtype)


def _encode_in_worker(texts: list[str]):
    return _encode(_worker["tokenizer"], texts, _worker["dtype"])


@contextlib.contextmanager
def _encoder(tokenizer, workers: int, dtype):
    """Yields a function: chunks -> encoded chunks in input order (a process pool if workers > 1).

    The pool starts before any other thread exists (tqdm, datasets), so forking it is safe.
    """
    if workers == 1:
        yield lambda chunks: (_encode(tokenizer, chunk, dtype) for chunk in chunks)
        return
    # fork (Linux) hands the tokenizer over without pickling; other start methods pickle it
    with mp.get_context().Pool(workers, _init_worker, (tokenizer, dtype)) as pool:
        yield functools.partial(_ordered, pool, 2 * workers)


def _ordered(pool, in_flight: int, chunks: Iterable[list[str]]) -> Iterator:
    """Results in input order with at most `in_flight` chunks queued (bounded memory)."""
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
        if len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# ---------------------------------------------------------------------------------------------
# Train/val split


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


class _Splitter:
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
