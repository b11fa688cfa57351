"""ShardBatches: shifted targets, sequential coverage, exact resume, rank/accumulation splits."""

import io

import numpy as np
import pytest
import torch

from gptkit.data.batches import ShardBatches
from gptkit.data.shards import ShardWriter
from gptkit.errors import GptkitError

SHARD_SIZES = (1000, 700, 33)  # the last shard is shorter than some windows


@pytest.fixture
def data_dir(tmp_path):
    """llm.c-style shards (no meta.json) holding 0, 1, 2, ... so positions are visible."""
    tokens = np.arange(sum(SHARD_SIZES), dtype=np.uint32)
    start = 0
    for i, n in enumerate(SHARD_SIZES):
        with ShardWriter(tmp_path, f"train_{i}", shard_tokens=10**6, dtype=np.uint16) as w:
            w.write(tokens[start : start + n])  # file train_{i}_000000.bin: one shard each
        start += n
    return tmp_path


def _batches(data_dir, **kw):
    kw = {"block_size": 16, "batch_size": 4, "seed": 7, **kw}
    return ShardBatches(data_dir, "train", **kw)


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_y_is_x_shifted_within_one_shard(data_dir, sampling):
    loader = _batches(data_dir, sampling=sampling)
    assert loader.num_tokens == sum(SHARD_SIZES)
    for _ in range(20):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y, x + 1)  # consecutive tokens: no shard edge inside a window


def test_sequential_covers_every_token_once_per_epoch(data_dir):
    T = 16
    loader = _batches(data_dir, sampling="sequential", block_size=T, batch_size=3)
    per_shard = [(n - 1) // T for n in SHARD_SIZES]
    assert loader.num_windows == sum(per_shard)
    want, start = [], 0
    for n, w in zip(SHARD_SIZES, per_shard, strict=True):
        want += list(range(start, start + w * T))  # all but each shard's short tail
        start += n
    steps = -(-loader.num_windows // 3)
    seen = torch.cat([loader.next_batch()[0].flatten() for _ in range(steps)]).tolist()
    assert seen[: len(want)] == want  # in order, each once
    assert seen[len(want) :] == want[: len(seen) - len(want)]  # then the next epoch
    assert loader.epoch == 1


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_state_dict_resumes_exactly(data_dir, sampling):
    a = _batches(data_dir, sampling=sampling, grad_accum=2)
    for _ in range(5):
        a.next_batch()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = _batches(data_dir, sampling=sampling, grad_accum=2)
    b.load_state_dict(state)
    for _ in range(6):
        assert all(torch.equal(u, v) for u, v in zip(a.next_batch(), b.next_batch(), strict=True))
    with pytest.raises(GptkitError, match="block_size=16 but this run uses 8"):
        _batches(data_dir, sampling=sampling, block_size=8, grad_accum=2).load_state_dict(state)


def _global_batch(data_dir, world_size, grad_accum, step_count, sampling):
    """Per step: the windows of every rank's every micro-step, in rank-major order."""
    loaders = [
        _batches(data_dir, sampling=sampling, rank=r, world_size=world_size, grad_accum=grad_accum)
        for r in range(world_size)
    ]
    steps = []
    for _ in range(step_count):
        steps.append([torch.cat([ld.next_batch()[0] for _ in range(grad_accum)]) for ld in loaders])
    return steps


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_ranks_times_accumulation_split_the_same_global_batch(data_dir, sampling):
    single = _global_batch(data_dir, 1, 4, 3, sampling)  # 1 rank x accum 4
    for world, accum in ((2, 2), (4, 1)):
        split = _global_batch(data_dir, world, accum, 3, sampling)
        for one, parts in zip(single, split, strict=True):
            assert torch.equal(one[0], torch.cat(parts))  # union == the single-process batch
            starts = [set(p[:, 0].tolist()) for p in parts]
            if sampling == "sequential":  # disjoint windows across ranks
                assert sum(map(len, starts)) == len(set().union(*starts)) == 16


def test_fresh_sequential_loader_gives_fixed_eval_batches(data_dir):
    first = [_batches(data_dir, sampling="sequential").next_batch()[0] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    random = [_batches(data_dir, seed=s).next_batch()[0] for s in (1, 2)]
    assert not torch.equal(random[0], random[1])


def test_block_size_larger_than_the_data_is_a_clear_error(data_dir):
    with pytest.raises(GptkitError, match=r"1,733 tokens .*longest shard 1,000.*block_size"):
        _batches(data_dir, block_size=1000)
    (data_dir / "empty").mkdir()
    (data_dir / "empty" / "val_000000.bin").write_bytes(bytes(1024))  # unfinished: no magic
    with pytest.raises(GptkitError, match=r"val_000000\.bin is not a token shard"):
        ShardBatches(data_dir / "empty", "val", block_size=8, batch_size=1)


def test_prepared_folder_and_headerless_train_bin(tmp_path):
    from gptkit.config import PrepareConfig
    from gptkit.data.prepare import build_shards

    (tmp_path / "a.txt").write_text("abcdefghij" * 20)
    (tmp_path / "b.txt").write_text("klmnopqrst" * 20)
    cfg = PrepareConfig(
        source=str(tmp_path / "*.txt"), tokenizer="byte", out_dir=str(tmp_path / "d")
    )
    build_shards(cfg, progress=False)
    val = ShardBatches(tmp_path / "d", "val", block_size=8, batch_size=2, sampling="sequential")
    x, y = val.next_batch()
    assert torch.equal(x[:, 1:], y[:, :-1]) and val.num_tokens == 201
    cfg.out_dir, cfg.val_fraction = str(tmp_path / "d0"), 0.0
    build_shards(cfg, progress=False)
    with pytest.raises(GptkitError, match="val split of .*d0 is empty.*val_fraction"):
        ShardBatches(tmp_path / "d0", "val", block_size=8, batch_size=2)
    nano = tmp_path / "nano"
    nano.mkdir()
    np.arange(100, dtype=np.uint16).tofile(nano / "train.bin")
    x, y = ShardBatches(nano, "train", block_size=8, batch_size=2).next_batch()
    assert torch.equal(y, x + 1)
