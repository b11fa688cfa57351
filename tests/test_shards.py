"""Shard files: llm.c header bytes, round trips, atomic writes, nanoGPT/llm.c reads, bad files."""

import hashlib
import json
import struct

import numpy as np
import pytest

from gptkit.data import shards
from gptkit.data.shards import ShardWriter, read_meta, read_shard, shard_dtype, split_files
from gptkit.errors import GptkitError


def _write(tmp_path, tokens, *, shard_tokens=1000, dtype=np.uint16, prefix="train"):
    with ShardWriter(tmp_path, prefix, shard_tokens=shard_tokens, dtype=dtype) as w:
        for part in np.array_split(tokens, 7):  # several appends, crossing shard edges
            w.write(part)
    return w.shards


def test_uint16_header_bytes_and_round_trip(tmp_path):
    tokens = (np.arange(2500) * 37 % 50257).astype(np.uint32)
    info = _write(tmp_path, tokens)
    assert [s["file"] for s in info] == ["train_000000.bin", "train_000001.bin", "train_000002.bin"]
    assert [s["tokens"] for s in info] == [1000, 1000, 500]
    raw = (tmp_path / "train_000002.bin").read_bytes()
    assert len(raw) == 1024 + 2 * 500
    assert struct.unpack("<3i", raw[:12]) == (20240520, 1, 500)
    assert raw[12:1024] == bytes(1012)
    assert np.frombuffer(raw[1024:], "<u2").tolist() == tokens[2000:].tolist()
    assert info[2]["bytes"] == len(raw) and info[2]["sha256"] == hashlib.sha256(raw).hexdigest()
    back = np.concatenate([read_shard(tmp_path / s["file"]) for s in info])
    assert back.dtype == np.uint16 and back.tolist() == tokens.tolist()


def test_uint32_picked_for_big_vocabularies(tmp_path):
    assert shard_dtype(50257) == np.uint16 and shard_dtype(65536) == np.uint16
    assert shard_dtype(100277) == np.uint32
    tokens = np.array([0, 65535, 65536, 100276], dtype=np.uint32)
    _write(tmp_path, tokens, dtype=shard_dtype(100277))
    raw = (tmp_path / "train_000000.bin").read_bytes()
    assert struct.unpack("<3i", raw[:12]) == (20240801, 7, 4) and len(raw) == 1024 + 16
    back = read_shard(tmp_path / "train_000000.bin")
    assert back.dtype == np.uint32 and back.tolist() == tokens.tolist()


def test_headerless_nanogpt_train_bin(tmp_path):
    tokens = np.array([5, 6, 7, 50256], dtype=np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    assert read_shard(tmp_path / "train.bin").tolist() == tokens.tolist()
    assert split_files(tmp_path, "train") == [tmp_path / "train.bin"]


def test_llmc_shard_names_are_found(tmp_path):
    for i in (1, 0):  # written out of order, found sorted
        path = tmp_path / f"fineweb_train_{i:06d}.bin"
        path.write_bytes(shards.header(3, np.uint16) + np.arange(3, dtype="<u2").tobytes())
    (tmp_path / "fineweb_val_000000.bin").write_bytes(shards.header(0, np.uint16))
    assert [p.name for p in split_files(tmp_path, "train")] == [
        "fineweb_train_000000.bin",
        "fineweb_train_000001.bin",
    ]
    assert len(read_shard(split_files(tmp_path, "val")[0])) == 0
    with pytest.raises(GptkitError, match="no test shards in"):
        split_files(tmp_path, "test")


def test_truncated_shard_is_refused_naming_the_file(tmp_path):
    _write(tmp_path, np.arange(100))
    path = tmp_path / "train_000000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(GptkitError, match=r"train_000000\.bin is 1222 bytes.*100 tokens"):
        read_shard(path)


def test_corrupt_header_is_refused(tmp_path):
    _write(tmp_path, np.arange(100))
    path = tmp_path / "train_000000.bin"
    raw = bytearray(path.read_bytes())
    raw[0:4] = struct.pack("<i", 123)
    path.write_bytes(bytes(raw))
    with pytest.raises(GptkitError, match=r"train_000000\.bin is not a token shard \(magic 123"):
        read_shard(path)
    raw[0:8] = struct.pack("<2i", 20240520, 3)
    path.write_bytes(bytes(raw))
    with pytest.raises(GptkitError, match="version 3, expected 1"):
        read_shard(path)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(GptkitError, match="empty.bin is not a token shard"):
        read_shard(tmp_path / "empty.bin")


def test_unfinished_shard_never_looks_complete(tmp_path):
    w = ShardWriter(tmp_path, "val", shard_tokens=10, dtype=np.uint16)
    w.write(np.arange(15))  # one full shard, one open
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0].startswith(".val_000001.bin.tmp") and names[1] == "val_000000.bin"
    tmp = tmp_path / names[0]
    w._file.flush()
    assert tmp.read_bytes()[:4] == bytes(4)  # zero magic until finished
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val_000000.bin"]


def test_read_meta_errors(tmp_path):
    with pytest.raises(GptkitError, match=r"no prepared data in .*meta.json.*gptkit prepare"):
        read_meta(tmp_path / "nope")
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(GptkitError, match="not valid JSON"):
        read_meta(tmp_path)
    meta = {"format_version": 1, "splits": {"train": {"shards": [{"file": "a.bin", "bytes": 9}]}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(GptkitError, match=r"a\.bin is missing"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(GptkitError, match="format_version 99"):
        read_meta(tmp_path)
