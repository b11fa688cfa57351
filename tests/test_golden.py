"""Recorded losses: the first 8 steps of a fixed tiny pretraining run, to a relative 1e-4.

CPU, float32, one thread (conftest), byte tokens of a text this test writes itself (not builtin:,
which changes with the Python version). The run goes through the real `pretrain` (init, batch
order, loss, AdamW, clipping, warmup + cosine), and its losses are read back from metrics.jsonl.
"""

import json

import pytest

from gptkit.commands.prepare import prepare
from gptkit.commands.pretrain import pretrain
from gptkit.config import load_config

# Every setting that shapes the numbers, spelled out so a changed default does not move them.
CONFIG = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "model.dropout=0.0", "model.bias=true", "model.pad_vocab_to=64",
    "train.batch_size=4", "train.grad_accum=1", "train.max_steps=8", "train.lr=3e-3",
    "train.min_lr=3e-4", "train.warmup_steps=2", "train.schedule=cosine",
    "train.weight_decay=0.1", "train.beta1=0.9", "train.beta2=0.95", "train.grad_clip=1.0",
    "train.seed=1337", "train.log_interval=1", "train.eval_interval=0", "train.dtype=float32",
    "train.device=cpu", "data.sampling=random",
]  # fmt: skip
# Train losses of steps 1..8. A mismatch means the numerics changed (init, data order, loss,
# optimizer, schedule, torch): find out why before touching these. To regenerate after an intended
# change, run this test: its failure message prints the new list to paste here.
GOLDEN = [
    5.568263053894043, 5.451717376708984, 5.252044677734375, 5.114906311035156,
    4.996766567230225, 4.90007209777832, 4.807933330535889, 4.7539496421813965,
]  # fmt: skip
WORDS = """the model reads a window of bytes and learns to guess the next one from what came
before , so common words and spaces get cheap while rare letters stay costly .""".split()


def _write_corpus(folder, docs=4, words=1500):
    """Pseudo-random word documents from a fixed LCG: the same text on every Python."""
    x = 12345
    for d in range(docs):
        picked = []
        for _ in range(words):
            x = (1103515245 * x + 12345) % 2**31
            picked.append(WORDS[(x >> 16) % len(WORDS)])
        (folder / f"doc{d}.txt").write_text(" ".join(picked) + "\n", encoding="utf-8")


def test_first_steps_reproduce_the_recorded_losses(tmp_path):
    (tmp_path / "text").mkdir()
    _write_corpus(tmp_path / "text")
    prepare(load_config(None, [f"prepare.source={tmp_path}/text/*.txt", "prepare.tokenizer=byte",
                               f"prepare.out_dir={tmp_path}/data", "prepare.val_fraction=0.25",
                               "prepare.workers=1"]))  # fmt: skip
    run = tmp_path / "run"
    pretrain(load_config(None, [*CONFIG, f"data.dir={tmp_path}/data", f"train.out_dir={run}"]))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == list(range(1, 9))
    got = [losses[step] for step in range(1, 9)]
    assert got == pytest.approx(GOLDEN, rel=1e-4, abs=0), f"new losses: {got}"
