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
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gptkit.data.shards import META_FORMAT_VERSION, META_NAME, read_meta, shard_dtype
from gptkit.data.sources import describe_source, iter_documents, read_text
from gptkit.data.split import Splitter, train_documents, val_mask
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
    tokenizer = tokenizer_for(cfg, progress=progress)
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


def tokenizer_for(cfg: PrepareConfig, *, progress: bool = False):
    """The tokenizer prepare.tokenizer names; `char` reads the corpus once for its alphabet,
    `bpe:N` once to train on its train split."""
    if cfg.tokenizer == "char":
        return char_tokenizer(iter_documents(cfg))
    if cfg.tokenizer.startswith("bpe:"):
        # Trained in a child process: the tokenizers library's thread pool must not start in
        # this one, which forks the tokenizing workers next (a pool does not survive a fork:
        # tokenizers would warn and run single-threaded in them).
        with ProcessPoolExecutor(1, mp_context=mp.get_context()) as pool:
            return get_tokenizer(pool.submit(_bpe_spec, cfg, progress).result())
    return get_tokenizer(cfg.tokenizer)


def _bpe_spec(cfg: PrepareConfig, progress: bool) -> dict:
    """The spec of a byte-level BPE of prepare.tokenizer=bpe:N ids, trained on the train split."""
    from gptkit.data.hf_tokenizer import train_bpe

    docs = train_documents(iter_documents(cfg), seed=cfg.seed, val_fraction=cfg.val_fraction)
    progress = progress and sys.stderr.isatty()  # the trainer's own bar, on a terminal only
    return train_bpe(docs, int(cfg.tokenizer[4:]), progress=progress).spec()


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
    splitter = Splitter(tmp, cfg, dtype)
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
    if "json" in meta["tokenizer"]:  # a tokenizer.json kind: also as a file, for other tools
        (tmp / "tokenizer.json").write_text(meta["tokenizer"]["json"], encoding="utf-8")
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
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # tokenizer.json kinds: the pool is parallel
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
