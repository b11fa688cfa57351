"""Token shard files and the prepared-data folder: atomic writes, validated memmap reads.

A shard is a header of 256 little-endian int32 (magic, version, token count, zeros) followed by
the tokens: uint16 (magic 20240520, version 1) or uint32 (20240801, version 7), as llm.c and
modded-nanogpt write them. Headerless nanoGPT `train.bin`/`val.bin` (uint16) are read too.
`read_meta` validates the folder's meta.json (written by gptkit.data.prepare), or makes one from
the files of a folder that has none (llm.c / modded-nanogpt shards, nanoGPT bins). Imports only
errors.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from gptkit.errors import GptkitError

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# dtype -> (magic, version) of llm.c's shard format
FORMATS = {np.dtype(np.uint16): (20240520, 1), np.dtype(np.uint32): (20240801, 7)}
MAGICS = {magic: (version, dtype) for dtype, (magic, version) in FORMATS.items()}
META_NAME = "meta.json"
META_FORMAT_VERSION = 1
NANOGPT_NAMES = ("train.bin", "val.bin")
# what llm.c / modded-nanogpt uint16 shards hold: GPT-2 ids (= gptkit's gpt2 tokenizer spec)
GPT2_SPEC = {"kind": "tiktoken", "name": "gpt2", "vocab_size": 50257, "eot_id": 50256}


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in it (GPT-2), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def header(count: int, dtype) -> bytes:
    """The 1024-byte header of a shard holding `count` tokens of `dtype`."""
    magic, version = FORMATS[np.dtype(dtype)]
    head = np.zeros(HEADER_INTS, dtype="<i4")
    head[:3] = (magic, version, count)
    return head.tobytes()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Writes `{prefix}_000000.bin, ...` of at most `shard_tokens` tokens each, atomically.

    Tokens go to a hidden temp file whose header stays zero (no valid magic) until the shard is
    full or `close()` runs; then header, fsync and `os.replace` to the final name.
    """

    def __init__(self, out_dir: str | Path, prefix: str, *, shard_tokens: int, dtype):
        self.out_dir, self.prefix = Path(out_dir), prefix
        self.shard_tokens, self.dtype = shard_tokens, np.dtype(dtype)
        self.shards: list[dict] = []  # finished: {"file", "tokens", "bytes", "sha256"}
        self._file, self._tmp, self._count = None, None, 0

    def write(self, tokens: np.ndarray):
        """Append tokens, starting a new shard whenever the current one is full."""
        tokens = np.asarray(tokens)
        assert tokens.size == 0 or int(tokens.max()) <= np.iinfo(self.dtype).max, "id too large"
        while tokens.size:
            if self._file is None:
                self._open()
            room = self.shard_tokens - self._count
            part, tokens = tokens[:room], tokens[room:]
            self._file.write(part.astype(self.dtype, copy=False).tobytes())
            self._count += part.size
            if self._count == self.shard_tokens:
                self._finish()

    def close(self) -> list[dict]:
        """Finish the last shard; returns every shard's file name, tokens, bytes and sha256."""
        if self._file is not None:
            self._finish()
        return self.shards

    def abort(self):
        """Drop the unfinished shard (finished shards stay)."""
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.abort() if exc_type else self.close()

    def _open(self):
        name = f"{self.prefix}_{len(self.shards):06d}.bin"
        self._tmp = self.out_dir / f".{name}.tmp-{os.getpid()}"
        self._file = open(self._tmp, "wb")
        self._file.write(bytes(HEADER_BYTES))  # zero magic: never looks complete
        self._count = 0

    def _finish(self):
        f, final = self._file, self.out_dir / f"{self.prefix}_{len(self.shards):06d}.bin"
        f.seek(0)
        f.write(header(self._count, self.dtype))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(self._tmp, final)
        self._file = None
        info = {"file": final.name, "tokens": self._count, "bytes": final.stat().st_size}
        self.shards.append({**info, "sha256": file_sha256(final)})


def read_shard(path: str | Path) -> np.ndarray:
    """The tokens of a shard as a read-only memmap, after checking magic, version and size."""
    path = Path(path)
    if not path.is_file():
        raise GptkitError(f"token shard {path} not found; run 'gptkit prepare' again")
    size = path.stat().st_size
    magic, version, count = _head(path)
    if magic not in MAGICS:
        if _headerless(path):
            return np.memmap(path, dtype=np.uint16, mode="r")  # headerless nanoGPT file
        raise GptkitError(
            f"{path} is not a token shard (magic {magic}, expected 20240520 or 20240801): it is "
            "corrupt or unfinished; delete the folder and run 'gptkit prepare' again"
        )
    want_version, dtype = MAGICS[magic]
    if version != want_version:
        raise GptkitError(
            f"{path} has shard version {version}, expected {want_version} for magic {magic}; "
            "it was written by an unknown tool, prepare the data again"
        )
    want = HEADER_BYTES + count * dtype.itemsize
    if count < 0 or size != want:
        raise GptkitError(
            f"{path} is {size} bytes but its header promises {count} tokens ({want} bytes): it "
            "is truncated or corrupt; delete the folder and run 'gptkit prepare' again"
        )
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def _head(path: Path) -> tuple[int, int, int]:
    """(magic, version, token count) from a shard's header (zeros for a tiny file)."""
    size = path.stat().st_size
    head = np.fromfile(path, dtype="<i4", count=3) if size >= 12 else np.zeros(3, "<i4")
    return tuple(int(v) for v in head)


def _headerless(path: Path) -> bool:
    """A nanoGPT train.bin/val.bin: raw uint16 ids, no llm.c magic."""
    size = path.stat().st_size
    return (
        path.name in NANOGPT_NAMES and size % 2 == 0 and size > 0 and _head(path)[0] not in MAGICS
    )


def read_meta(data_dir: str | Path, tokenizer: dict | None = None) -> dict:
    """meta.json of a prepared-data folder, checked (format version, shard files present); for a
    folder without one, a meta made from its llm.c / nanoGPT files with `tokenizer` (a spec;
    None = gpt2 for llm.c's uint16 shards)."""
    data_dir = Path(data_dir)
    path = data_dir / META_NAME
    if not path.is_file():
        return _scan_meta(data_dir, tokenizer)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise GptkitError(f"{path} is not valid JSON ({e}); run 'gptkit prepare' again") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != META_FORMAT_VERSION:
        raise GptkitError(
            f"{path} has format_version {version}, this gptkit reads {META_FORMAT_VERSION}; "
            "prepare the data again with this gptkit"
        )
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(i, dict) for i in splits.values()):
        raise GptkitError(f"{path} has no 'splits' mapping; run 'gptkit prepare --force' again")
    for split, info in splits.items():
        for shard in info.get("shards") if isinstance(info.get("shards"), list) else [None]:
            problem = _shard_problem(shard, split)
            if problem:
                raise GptkitError(f"{path} is damaged ({problem}); run 'gptkit prepare --force'")
            f = data_dir / shard["file"]
            if not f.is_file() or f.stat().st_size != shard["bytes"]:
                raise GptkitError(
                    f"{split} shard {f} is missing or not {shard['bytes']} bytes as {path} says; "
                    "the folder is damaged, run 'gptkit prepare --force' again"
                )
    problem = _meta_problem(meta)
    if problem:
        raise GptkitError(f"{path} is damaged ({problem}); run 'gptkit prepare --force' again")
    return meta


def _shard_problem(shard, split: str) -> str | None:
    """What is wrong with one shard entry of meta.json (None if nothing)."""
    file = shard.get("file") if isinstance(shard, dict) else None
    if not isinstance(file, str) or Path(file).name != file or file in ("", "..") or "\0" in file:
        return f"a {split} shard entry has no plain file name"
    if type(shard.get("bytes")) is not int:
        return f"{split} shard {file} has no byte count"
    return None


def _meta_problem(meta: dict) -> str | None:
    """What is wrong with the other fields readers rely on (None if nothing): no KeyError later."""
    tok, splits = meta.get("tokenizer"), meta["splits"]
    if not isinstance(tok, dict) or type(tok.get("vocab_size")) is not int:
        return "no tokenizer with a vocab_size"
    if not {"train", "val"} <= splits.keys():
        return "'splits' lacks train or val"
    for split, info in splits.items():
        if any(type(s.get("tokens")) is not int or s["tokens"] < 0 for s in info["shards"]):
            return f"a {split} shard has no token count"
        if type(info.get("tokens", 0)) is not int:
            return f"split {split!r} has a non-integer token count"
    return None


def _scan_meta(data_dir: Path, tokenizer: dict | None) -> dict:
    """The meta of a folder of llm.c / modded-nanogpt shards or nanoGPT bins (no meta.json)."""
    splits, kinds = {}, set()
    for split in ("train", "val"):
        shards = []
        for f in _find(data_dir, split):
            n = len(read_shard(f))  # checks magic, version and size
            kinds.add("nanoGPT" if _headerless(f) else f"llm.c v{_head(f)[1]}")
            shards.append({"file": f.name, "tokens": n, "bytes": f.stat().st_size})
        splits[split] = {"shards": shards, "tokens": sum(s["tokens"] for s in shards)}
    if not splits["train"]["shards"]:
        raise GptkitError(
            f"no prepared data in {data_dir} (expected {META_NAME}, llm.c shards like "
            "fineweb_train_000001.bin, or nanoGPT's train.bin); run 'gptkit prepare -c CONFIG' "
            "first"
        )
    kind = " + ".join(sorted(kinds))
    if tokenizer is None and kinds == {"llm.c v1"}:
        tokenizer = dict(GPT2_SPEC)
    elif tokenizer is None:
        raise GptkitError(_unknown_tokenizer(data_dir, kind))
    return {"format_version": META_FORMAT_VERSION, "tokenizer": tokenizer, "splits": splits,
            "source": f"{kind} files in {data_dir} (no {META_NAME})"}  # fmt: skip


def _unknown_tokenizer(data_dir: Path, kind: str) -> str:
    """Why a folder without meta.json needs data.tokenizer, and how to set it."""
    if "nanoGPT" not in kind:  # uint32 shards: llm.c writes them for LLaMA-3 ids
        return (
            f"{data_dir} holds uint32 {kind} shards and no {META_NAME}, so their tokenizer is "
            "unknown; set data.tokenizer to the one that wrote them (e.g. cl100k_base)"
        )
    pkl, why = data_dir / "meta.pkl", ""
    if pkl.is_file():
        why = f", and {pkl} is a pickle, which gptkit never loads (unpickling can run code)"
    return (
        f"{data_dir} holds nanoGPT's headerless train.bin/val.bin, which do not name their "
        f"tokenizer{why}; set data.tokenizer (gpt2 for nanoGPT's openwebtext and shakespeare "
        "bins), or prepare the text again with 'gptkit prepare' (prepare.tokenizer=char "
        "rebuilds a char vocabulary)"
    )


def _find(data_dir: Path, split: str) -> list[Path]:
    """The folder's *{split}*.bin files in name order (llm.c shards, nanoGPT's {split}.bin)."""
    found = sorted(glob.glob(os.path.join(glob.escape(str(data_dir)), f"*{split}*.bin")))
    return [Path(f) for f in found]


def split_files(data_dir: str | Path, split: str) -> list[Path]:
    """Shard files of `split`: from meta.json, else the folder's *{split}*.bin files."""
    data_dir = Path(data_dir)
    if (data_dir / META_NAME).is_file():
        return [data_dir / s["file"] for s in read_meta(data_dir)["splits"][split]["shards"]]
    if not data_dir.is_dir():
        raise GptkitError(
            f"no prepared data in {data_dir} (expected {META_NAME}); "
            "run 'gptkit prepare -c CONFIG' first"
        )
    found = _find(data_dir, split)
    if not found:
        raise GptkitError(
            f"no {split} shards in {data_dir} (expected {META_NAME} or {split}_000000.bin); "
            "run 'gptkit prepare -c CONFIG' first"
        )
    return found
