"""Document-aligned packing (data.packing: bos) and document masks (data.doc_mask).

Rows start at document starts and hold whole documents best-fit (the last one cropped); the
rows of a step do not depend on how the global batch is split over ranks x accumulation; a run
with packing + masks resumes bit for bit and trains alike on 2 gloo ranks and on 1.
"""

import numpy as np
import pytest
import test_pretrain
import torch
from test_pretrain import config, losses

from gptkit.commands.pretrain import pretrain
from gptkit.data.batches import ShardBatches
from gptkit.data.packing import DocumentIndex, pack_rows, segments
from gptkit.data.shards import ShardWriter

EOT = 0
START = 1  # every document begins with this token and holds it nowhere else


def _docs_dir(tmp_path, n_docs=60, seed=0):
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[START], rng.integers(2, 50, size=int(rng.integers(3, 40))), [EOT]])
            for _ in range(n_docs)]  # fmt: skip
    out = tmp_path / "docs"
    out.mkdir()
    for split in ("train", "val"):
        writer = ShardWriter(out, split, shard_tokens=10_000, dtype=np.uint16)
        writer.write(np.concatenate(docs).astype(np.uint16))
        writer.close()
    return out


def test_rows_start_at_document_starts_and_hold_whole_documents(tmp_path):
    shards = [np.concatenate([[START, 5, 6, EOT], [START, 7, EOT], [START, 8, 9, 10, 11, EOT]])]
    index = DocumentIndex(shards, EOT)
    assert list(index.length) == [4, 3, 6]
    rows = pack_rows(index, shards, rng=np.random.default_rng(0), rows=50, width=8)
    assert (rows[:, 0] == START).all()  # never starts mid-document
    for row in rows:
        after_eot = np.flatnonzero(row[:-1] == EOT) + 1
        assert (row[after_eot] == START).all()  # the next document starts right after a separator


def test_batches_with_packing_are_aligned_and_split_invariant(tmp_path):
    data = _docs_dir(tmp_path)
    common = dict(block_size=32, batch_size=2, seed=3, packing="bos", eot_id=EOT)
    one = ShardBatches(data, "train", grad_accum=2, **common)
    rows_one = [one.next_batch()[0] for _ in range(4)]  # 2 steps x 2 micro-steps
    two = [ShardBatches(data, "train", rank=r, world_size=2, **common) for r in range(2)]
    rows_two = [b.next_batch()[0] for _ in range(2) for b in two]
    assert all(torch.equal(a, b) for a, b in zip(rows_one, rows_two, strict=True))
    assert all((x[:, 0] == START).all() for x in rows_one)
    # the loader state resumes exactly where it was
    state = one.state_dict()
    again = ShardBatches(data, "train", grad_accum=2, **common)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()[0], one.next_batch()[0])


def test_segments_number_documents_with_the_separator_closing_its_own():
    x = torch.tensor([[START, 4, EOT, START, 5, 6, EOT, START]])
    assert segments(x, EOT).tolist() == [[0, 0, 0, 1, 1, 1, 1, 2]]


PACKED = ["data.packing=bos", "data.doc_mask=true", "model.family=modern", "model.n_head=2"]


def test_packed_masked_run_resumes_bit_for_bit(tiny_data, tmp_path):
    common = [*PACKED, "train.max_steps=10", "train.ckpt_interval=5", "train.eval_interval=5",
              "train.keep_last=5"]  # fmt: skip
    full = tmp_path / "full"
    pretrain(config(tiny_data, full, *common))
    part = tmp_path / "part"
    pretrain(config(tiny_data, part, *common, f"train.resume={full}/checkpoints/step_000005"))
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(6, 11)) and all(a[s] == b[s] for s in b), (a, b)


@pytest.mark.parametrize("optimizer", ["muon"])
def test_two_gloo_ranks_equal_one_rank_with_packing_and_muon(tiny_data, tmp_path, optimizer):
    common = [*test_pretrain.DIST, *PACKED, f"train.optimizer={optimizer}"]
    test_pretrain.assert_two_ranks_equal_one(tiny_data, tmp_path, common)
