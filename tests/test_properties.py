"""Property tests (hypothesis): tokenizer round trips, fuzzed shard/meta/config readers, batches.

Tokenizers give back any text they encode (byte, char with a covering alphabet, gpt2), also the
literal "<|endoftext|>". Random or damaged shard files, meta.json contents and config overrides
raise GptkitError (never another exception), and the shard reader never maps past the file.
ShardBatches, for random shard sizes, block sizes, batches, ranks and accumulation, yields ids in
[0, vocab) from windows inside one shard, and the ranks' slices add up to the global batch.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gptkit.config import Config, field_docs, load_config
from gptkit.data.batches import ShardBatches
from gptkit.data.shards import HEADER_BYTES, ShardWriter, header, read_meta, read_shard
from gptkit.data.tokenizer import EOT_TEXT, ByteTokenizer, char_tokenizer, get_tokenizer
from gptkit.errors import GptkitError

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
TEXT = st.text(
    alphabet=st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(["\n", " "])),
    max_size=60,
).flatmap(lambda t: st.sampled_from([t, t + EOT_TEXT, EOT_TEXT + t]))


@pytest.fixture(scope="module")
def gpt2():
    return get_tokenizer("gpt2")


# --- tokenizers --------------------------------------------------------------------------------


@SETTINGS
@given(st.lists(TEXT, min_size=1, max_size=4))
def test_byte_and_char_round_trip_any_unicode(texts):
    char = char_tokenizer(["".join(texts) or "a"])  # an alphabet covering the texts
    for tok in (ByteTokenizer(), char):
        for text in texts:
            ids = tok.encode(text)
            assert all(0 <= i < tok.vocab_size and i != tok.eot_id for i in ids)
            assert tok.decode(ids) == text
        ids, counts = tok.encode_docs(texts)  # what prepare writes: eot after each document
        assert counts.sum() == len(ids) and (ids == tok.eot_id).sum() == len(texts)
        assert tok.decode(ids.tolist()) == "".join(t + EOT_TEXT for t in texts)


@SETTINGS
@given(st.lists(TEXT, min_size=1, max_size=4))
def test_gpt2_round_trips_and_never_emits_eot_for_text(gpt2, texts):
    for text in texts:
        ids = gpt2.encode(text)
        assert gpt2.eot_id not in ids  # "<|endoftext|>" in data is text, not the special id
        assert gpt2.decode(ids) == text
    ids, counts = gpt2.encode_docs(texts)
    assert list(ids[np.cumsum(counts) - 1]) == [gpt2.eot_id] * len(texts)
    assert gpt2.decode(ids.tolist()) == "".join(t + EOT_TEXT for t in texts)


# --- shard reader --------------------------------------------------------------------------------


def _check_read(path: Path):
    """read_shard either refuses with GptkitError or returns tokens that end at the file's end."""
    size = path.stat().st_size
    try:
        tokens = read_shard(path)
    except GptkitError:
        return None
    offset = 0 if path.name == "train.bin" else HEADER_BYTES  # headerless nanoGPT file
    assert offset + tokens.nbytes == size  # never past (nor short of) the file
    int(np.asarray(tokens, dtype=np.int64).sum())  # every mapped byte is readable
    return tokens


@SETTINGS
@given(st.binary(max_size=3000), st.sampled_from(["x.bin", "train.bin", "val_000001.bin"]))
def test_shard_reader_on_random_bytes(raw, name):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(raw)
        _check_read(path)


@SETTINGS
@given(
    st.sampled_from([np.uint16, np.uint32]),
    st.integers(-(2**31), 2**31 - 1) | st.integers(0, 600),
    st.integers(0, 1200),
    st.sampled_from(["exact", "random version", "garbage header"]),
)
def test_shard_reader_on_headers_that_lie(dtype, count, body_bytes, kind):
    head = bytearray(header(max(count, 0), dtype))
    head[8:12] = np.int32(count).tobytes()
    if kind == "random version":
        head[4:8] = np.int32(count % 9).tobytes()
    elif kind == "garbage header":
        head[12:] = (bytes(range(256)) * 4)[: HEADER_BYTES - 12]  # only the first 3 ints count
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.bin"
        path.write_bytes(bytes(head) + bytes(body_bytes))
        tokens = _check_read(path)
        exact = body_bytes == count * np.dtype(dtype).itemsize
        if kind != "random version" and exact:
            assert tokens is not None and len(tokens) == count


# --- meta.json and config overrides ------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from gptkit.config import PrepareConfig
    from gptkit.data.prepare import build_shards

    out = tmp_path_factory.mktemp("prop") / "data"
    (out.parent / "a.txt").write_text("some text to tokenize " * 50)
    (out.parent / "b.txt").write_text("and a second document " * 40)
    cfg = PrepareConfig(source=str(out.parent / "*.txt"), tokenizer="byte", out_dir=str(out),
                        workers=1, val_fraction=0.5)  # fmt: skip
    return out, build_shards(cfg, progress=False)


def _paths(node, prefix=()):
    """Every key path inside a JSON value."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
        node, list) else []  # fmt: skip
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


@SETTINGS
@given(data=st.data())
def test_read_meta_on_damaged_meta_json_raises_only_gptkit_error(prepared, data):
    folder, meta = prepared
    damaged = json.loads(json.dumps(meta))
    path = data.draw(st.sampled_from(sorted(_paths(damaged), key=str)))
    parent = damaged
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON)
    with tempfile.TemporaryDirectory() as d:
        for f in folder.iterdir():
            (Path(d) / f.name).write_bytes(f.read_bytes())
        (Path(d) / "meta.json").write_text(json.dumps(damaged))
        try:
            read_meta(d)
        except GptkitError:
            pass


KEYS = [key for key, *_ in field_docs(Config)] + ["train", "model.n_layer.x", "nope.key", "."]


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=20) | JSON.map(json.dumps)),
                max_size=4))  # fmt: skip
def test_config_overrides_raise_only_gptkit_error(pairs):
    try:
        load_config(None, [f"{key}={value}" for key, value in pairs])
    except GptkitError:
        pass


# --- batches -----------------------------------------------------------------------------------


@SETTINGS
@given(
    shards=st.lists(st.integers(1, 300), min_size=1, max_size=4),
    block_size=st.integers(1, 64),
    batch_size=st.integers(1, 4),
    world_size=st.integers(1, 3),
    grad_accum=st.integers(1, 3),
    sampling=st.sampled_from(["random", "sequential"]),
    seed=st.integers(0, 2**63),
    steps=st.integers(1, 3),
)
def test_batches_stay_in_range_and_ranks_partition_the_global_batch(
    shards, block_size, batch_size, world_size, grad_accum, sampling, seed, steps
):
    assume(max(shards) > block_size)  # otherwise: a clear GptkitError (tested elsewhere)
    total = sum(shards)
    bounds = np.cumsum([0, *shards])  # token value = its position in the whole split
    with tempfile.TemporaryDirectory() as d:
        for i, n in enumerate(shards):
            with ShardWriter(d, f"train_{i}", shard_tokens=10**6, dtype=np.uint16) as w:
                w.write(np.arange(bounds[i], bounds[i] + n, dtype=np.uint32))
        common = dict(block_size=block_size, seed=seed, sampling=sampling, vocab_size=total)
        whole = ShardBatches(d, "train", batch_size=batch_size * grad_accum * world_size,
                             **common)  # fmt: skip
        ranks = [
            ShardBatches(
                d,
                "train",
                batch_size=batch_size,
                grad_accum=grad_accum,
                rank=r,
                world_size=world_size,
                **common,
            )  # fmt: skip
            for r in range(world_size)
        ]
        for _ in range(steps):
            gx, gy = whole.next_batch()
            parts = [r.next_batch() for r in ranks for _ in range(grad_accum)]
            x = np.concatenate([p[0].numpy() for p in parts])
            y = np.concatenate([p[1].numpy() for p in parts])
            assert np.array_equal(x, gx.numpy()) and np.array_equal(y, gy.numpy())
            assert x.shape == (batch_size * grad_accum * world_size, block_size)
            assert 0 <= x.min() and y.max() < total  # ids in [0, vocab)
            assert np.array_equal(y, x + 1)  # y is x shifted, no shard edge inside
            shard = np.searchsorted(bounds, x[:, 0], side="right") - 1
            assert (x[:, -1] + 1 < bounds[shard + 1]).all()  # the window's target is inside too
