"""Where documents come from: local files, folders and globs, Hugging Face datasets, built-ins.

`iter_documents(cfg)` yields one str per document (a .txt file, a row's `text_field`), in a
deterministic order; `describe_source(cfg)` checks the source exists and describes it for
meta.json. `builtin:stdlib` / `builtin:tiny` are Python's own standard-library sources: no network.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit.data import rows
from gptkit.errors import GptkitError

if TYPE_CHECKING:  # gptkit.config pulls in torch; worker processes need not
    from gptkit.config import PrepareConfig

STRUCTURED = rows.FORMATS  # one document per row, from its prepare.text_field
FOLDER_TEXT = (".txt", ".text", ".md", ".rst")  # read from folders; a glob may name any file
# built-in corpus -> most bytes of .py source it takes from the interpreter's stdlib
BUILTIN_BYTES = {"stdlib": 8_000_000, "tiny": 300_000}
STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def describe_source(cfg: PrepareConfig) -> dict:
    """What `cfg.source` is (kind, files, bytes, ...); raises GptkitError if it is missing."""
    src = cfg.source
    if src.startswith("hf:"):
        return {"kind": "hf", "source": src, "name": src[3:], "config": cfg.hf_config,
                "split": cfg.hf_split, "text_field": cfg.text_field}  # fmt: skip
    files = _builtin_files(src[8:]) if src.startswith("builtin:") else _local_files(src)
    desc = {"kind": "builtin" if src.startswith("builtin:") else "files", "source": src}
    desc.update(files=len(files), bytes=sum(f.stat().st_size for f in files))
    if src.startswith("builtin:"):
        desc["python"] = sys.version.split()[0]
    elif any(f.suffix in STRUCTURED for f in files):
        desc["text_field"] = cfg.text_field
    return desc


def iter_documents(
    cfg: PrepareConfig, counts: dict | None = None, *, lazy: bool = False
) -> Iterator[str | Path]:
    """Every non-empty document of the source in order (at most prepare.max_documents).

    `counts["replaced_chars"]` is increased by the undecodable bytes replaced with U+FFFD.
    lazy=True yields a whole-file text document as its Path, to be read with `read_text` by
    whoever tokenizes it (prepare's worker processes), so the caller does not decode it.
    """
    counts = counts if counts is not None else {}
    counts.setdefault("replaced_chars", 0)
    src = cfg.source
    if src.startswith("hf:"):
        docs = _hf_documents(src[3:], cfg)
    else:
        files = _builtin_files(src[8:]) if src.startswith("builtin:") else _local_files(src)
        docs = (d for f in files for d in _file_documents(f, cfg, counts, lazy))
    n = 0
    for doc in islice((d for d in docs if d), cfg.max_documents):
        n += 1
        yield doc
    if n == 0:
        raise GptkitError(
            f"no documents in {src} (every file or row is empty); point prepare.source at text"
        )


# ---------------------------------------------------------------------------------------------
# Finding files


def _local_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if any(ch in source for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
        files = [f for f in files if f.is_file()]
        where = f"no files match {source}"
    elif path.is_dir():
        files = _folder_files(path)
        where = f"no {'/'.join(FOLDER_TEXT + STRUCTURED)} files in folder {source}"
    elif path.is_file():
        files, where = [path], ""
    else:
        raise GptkitError(
            f"prepare.source {source} does not exist; give a file, folder, glob, hf:NAME or "
            "builtin:stdlib"
        )
    if not files:
        raise GptkitError(f"{where}; check prepare.source")
    return files


def _folder_files(root: Path) -> list[Path]:
    """Text and table files under `root`, hidden ones skipped, in sorted path order."""
    files = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        files += [
            Path(folder, n)
            for n in names
            if not n.startswith(".") and Path(n).suffix.lower() in FOLDER_TEXT + STRUCTURED
        ]
    return sorted(files, key=lambda f: f.parts)  # tuples of str sort far faster than Paths


def _builtin_files(name: str) -> list[Path]:
    """A deterministic sample (by hash of relative path) of the stdlib's .py files."""
    if name not in BUILTIN_BYTES:
        raise GptkitError(
            f"unknown built-in corpus {name!r}; choose builtin:{' or builtin:'.join(BUILTIN_BYTES)}"
        )
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in STDLIB_SKIP]  # never walk site-packages
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    if not files:
        raise GptkitError(
            f"builtin:{name} found no .py files under {root} (a stripped Python?); "
            "point prepare.source at local text files instead"
        )
    # hash order spreads the sample over the whole library instead of its first letters
    files.sort(key=lambda f: hashlib.sha1(f.relative_to(root).as_posix().encode()).hexdigest())
    picked, total = [], 0
    for f in files:
        if total >= BUILTIN_BYTES[name]:
            break
        picked.append(f)
        total += f.stat().st_size
    return sorted(picked, key=lambda f: f.parts)


# ---------------------------------------------------------------------------------------------
# Reading documents


def read_text(path: Path, counts: dict) -> str:
    """A text file as one document; undecodable bytes become U+FFFD and are counted."""
    return rows.decode(path.read_bytes(), path=path, bad_bytes="replace", counts=counts)


def _file_documents(path: Path, cfg, counts: dict, lazy: bool) -> Iterator[str | Path]:
    if path.suffix.lower() in STRUCTURED:
        yield from _row_documents(path, cfg.text_field, counts)
    elif cfg.split_on:  # one text file, many documents (e.g. paragraphs of a novel)
        yield from read_text(path, counts).split(cfg.split_on)
    elif not lazy:
        yield read_text(path, counts)
    elif path.stat().st_size:  # an empty file is no document, lazy or not
        yield path


def _row_documents(path: Path, field: str, counts: dict) -> Iterator[str]:
    """The `field` of every row of a table file, streamed (bad bytes replaced and counted)."""
    names = rows.column_names(path)  # a table says up front whether it has the column
    if names is not None and field not in names:
        raise GptkitError(
            f"{path} has no column {field!r} (columns: {', '.join(names)}); set prepare.text_field"
        )
    for where, row in rows.read_rows(path, bad_bytes="replace", counts=counts, columns=[field]):
        yield _field(row, field, where)


def _field(row: dict, field: str, where: str) -> str:
    if field not in row:
        raise GptkitError(
            f"{where} has no field {field!r} (fields: {', '.join(map(str, row))}); "
            "set prepare.text_field"
        )
    value = row[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise GptkitError(
            f"field {field!r} in {where} is a {type(value).__name__}, not text; "
            "set prepare.text_field to a text column"
        )
    return value


def _hf_documents(name: str, cfg: PrepareConfig) -> Iterator[str]:
    import datasets  # heavy: only for hf: sources

    try:
        ds = datasets.load_dataset(name, cfg.hf_config, split=cfg.hf_split, streaming=True)
        for i, row in enumerate(ds):
            yield _field(row, cfg.text_field, f"hf:{name} row {i}")
    except ConnectionError:
        raise GptkitError(
            f"could not reach the Hugging Face Hub for {name}; download it when online or "
            "point prepare.source at local files"
        ) from None
    except (FileNotFoundError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GptkitError(
            f"could not load hf:{name} ({reason}); check prepare.source, prepare.hf_config "
            "and prepare.hf_split"
        ) from None
