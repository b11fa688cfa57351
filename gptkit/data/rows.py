"""Rows (dicts) from .jsonl, .json, .csv and .parquet files: the one reader of tabular data.

`read_rows(path, bad_bytes=...)` streams `(where, row)` pairs, `where` naming the file and line
(or item, or row) for error messages. Undecodable bytes are refused (fine-tuning data must be
clean) or replaced with U+FFFD and counted (pretraining text: `prepare`'s meta.json reports them).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from gptkit.errors import GptkitError

FORMATS = (".jsonl", ".json", ".csv", ".parquet")
BAD_BYTES = ("refuse", "replace")  # what to do with bytes that are not UTF-8
_MOJIBAKE = b"\xef\xbf\xbd"  # a U+FFFD that was already in the file, not a replacement


def read_rows(
    path: Path,
    *,
    bad_bytes: str = "refuse",
    counts: dict | None = None,
    columns: list[str] | None = None,
) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of a .jsonl/.json/.csv/.parquet file, in file order.

    bad_bytes="replace" turns undecodable bytes into U+FFFD and adds how many to
    `counts["replaced_chars"]`; "refuse" raises a GptkitError naming the file and byte.
    `columns` lets a .parquet file read only those columns (other formats give whole rows).
    """
    assert bad_bytes in BAD_BYTES, f"bad_bytes must be one of {BAD_BYTES}, not {bad_bytes!r}"
    suffix = path.suffix.lower()
    assert suffix in FORMATS, f"{path} is not one of {FORMATS}; callers check the format"
    if suffix == ".parquet":
        return _parquet_rows(path, columns)
    if suffix == ".csv":
        return _csv_rows(path, bad_bytes, counts)
    if suffix == ".json":
        return _json_rows(path, bad_bytes, counts)
    return _jsonl_rows(path, bad_bytes, counts)


def column_names(path: Path) -> list[str] | None:
    """The columns of a .csv (its header) or .parquet (its schema) file; None for JSON rows."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_file(path).schema_arrow.names
    if suffix != ".csv":
        return None
    with _open(path) as f:  # replaced header bytes are counted when the rows are read
        return next(csv.reader(_csv_lines(f, path, "replace", None)), [])


def decode(raw: bytes, *, path: Path, at: int = 0, bad_bytes: str, counts: dict | None) -> str:
    """UTF-8 `raw` (the bytes of `path` from offset `at`) as text, under the bad-bytes policy."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if bad_bytes == "refuse":
            raise GptkitError(
                f"{path} is not UTF-8 text ({e.reason} at byte {at + e.start}); save it as UTF-8"
            ) from None
        text = raw.decode("utf-8", errors="replace")
        if counts is not None:
            replaced = text.count("\ufffd") - raw.count(_MOJIBAKE)
            counts["replaced_chars"] = counts.get("replaced_chars", 0) + replaced
        return text


def parse_jsonl(lines: Iterable[str], where: str) -> list[dict]:
    """The rows of JSON lines already read as text (stdin); a bad line names `where`:number."""
    return [row for _, row in _jsonl_pairs(lines, where)]


def _jsonl_pairs(lines: Iterable[str], where: str) -> Iterator[tuple[str, dict]]:
    """One JSON object per non-empty line, as (where:line, row)."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        at = f"{where}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptkitError(
                f"{at} is not valid JSON ({e.msg}); fix or remove that line"
            ) from None
        if not isinstance(row, dict):
            raise GptkitError(f"{at} is not a JSON object ({{...}}); fix or remove that line")
        yield at, row


# ---------------------------------------------------------------------------------------------
# Text formats: read as bytes, so each line is decoded (and its bad bytes placed) on its own


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise GptkitError(f"cannot read {path} ({e.strerror or e}); check the file") from None


def _lines(f, path: Path, bad_bytes: str, counts: dict | None) -> Iterator[str]:
    """The lines of binary file `f` as text, split at \\n only (U+2028 is valid inside JSON)."""
    at = 0
    for raw in f:
        yield decode(raw, path=path, at=at, bad_bytes=bad_bytes, counts=counts)
        at += len(raw)


def _jsonl_rows(path: Path, bad_bytes: str, counts: dict | None) -> Iterator[tuple[str, dict]]:
    with _open(path) as f:
        yield from _jsonl_pairs(_lines(f, path, bad_bytes, counts), str(path))


def _json_rows(path: Path, bad_bytes: str, counts: dict | None) -> Iterator[tuple[str, dict]]:
    """A .json file: one top-level array of objects (Alpaca style), else JSON lines."""
    with _open(path) as f:
        array = _starts_with(f, b"[")
        f.seek(0)
        if not array:  # JSON lines under a .json name: stream them
            yield from _jsonl_pairs(_lines(f, path, bad_bytes, counts), str(path))
            return
        text = decode(f.read(), path=path, bad_bytes=bad_bytes, counts=counts)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise GptkitError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file"
        ) from None
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise GptkitError(f"item {i + 1} of the array in {path} is not a JSON object; fix it")
        yield f"{path}[{i}]", item


def _starts_with(f, token: bytes) -> bool:
    """Whether binary file `f` starts with `token` after whitespace (reads up to there only)."""
    while chunk := f.read(4096):
        if chunk.strip():
            return chunk.lstrip().startswith(token)
    return False


def _csv_lines(f, path: Path, bad_bytes: str, counts: dict | None) -> Iterator[str]:
    """Lines as `open(newline="")` gives them to csv: a lone \\r ends a line too (old Macs)."""
    for line in _lines(f, path, bad_bytes, counts):
        if "\r" in line:
            yield from (piece for piece in re.split(r"(?<=\r)(?!\n)", line) if piece)
        else:
            yield line


def _csv_rows(path: Path, bad_bytes: str, counts: dict | None) -> Iterator[tuple[str, dict]]:
    old = csv.field_size_limit(2**31 - 1)  # a document can be longer than the 128 KB default
    try:
        with _open(path) as f:
            reader = csv.DictReader(_csv_lines(f, path, bad_bytes, counts))
            try:
                for row in reader:
                    yield f"{path}:{reader.line_num}", row
            except csv.Error as e:
                raise GptkitError(
                    f"{path} is not valid CSV ({e} at line {reader.line_num}); fix it"
                ) from None
    finally:
        csv.field_size_limit(old)


# ---------------------------------------------------------------------------------------------
# Parquet: streamed in record batches, only the columns asked for


def _parquet_file(path: Path):
    import pyarrow.parquet as pq  # installed with `datasets`; only parquet needs it

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise _parquet_error(path, e) from None


def _parquet_rows(path: Path, columns: list[str] | None) -> Iterator[tuple[str, dict]]:
    pf = _parquet_file(path)
    if columns is not None:  # asking for a column the file lacks is the caller's check
        columns = [c for c in columns if c in pf.schema_arrow.names]
    batches = pf.iter_batches(batch_size=1024, columns=columns)
    n = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # noqa: BLE001 - a corrupt page shows only when it is read
            raise _parquet_error(path, e) from None
        if batch is None:
            return
        for row in batch.to_pylist():
            n += 1
            yield f"{path} row {n}", row


def _parquet_error(path: Path, e: Exception) -> GptkitError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    first = first.split("': ", 1)[-1].split(". ")[0][:160]  # pyarrow names the path first
    return GptkitError(f"{path} is not a readable parquet file ({first}); rewrite it")
