"""Shared test set-up: offline hubs, quiet wandb, small thread counts, and tiny things to train.

`TINY` (import it: `from conftest import TINY`) is the tiny model/train overrides; `tiny_data`
and `shared_tiny_run` are built once per session and are read-only; a test that changes a run
takes `tiny_run`, its own copy.
"""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

# Tiny models are dominated by per-op overhead: one thread is faster and steadier on 2 shared cores.
torch.set_num_threads(1)

# Hubs cannot be reached from CI; fail fast instead of retrying for ~20 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def tiny_config():
    """A GPTConfig small enough to train in seconds on a CPU."""
    from gptkit.model.gpt import GPTConfig

    return GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=97)


# Tiny model on CPU in float32, a record every step: the base of every test that trains. A module
# appends the train.* settings its assertions need (the later of two overrides wins).
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "train.batch_size=4", "train.eval_steps=2", "train.dtype=float32", "train.device=cpu",
    "train.log_interval=1",
]  # fmt: skip
# The shared run: 2 steps at the default lr, no warmup, no evals.
TINY_RUN = [*TINY, "train.warmup_steps=0", "train.eval_interval=0", "train.max_steps=2"]


def _digest(folder: Path) -> dict:
    """sha256 of every file under folder, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """builtin:tiny in byte tokens (10% val), prepared once per session. Read-only."""
    from gptkit.commands.prepare import prepare
    from gptkit.config import load_config

    out = tmp_path_factory.mktemp("tiny") / "data"
    prepare(load_config(None, ["prepare.source=builtin:tiny", "prepare.tokenizer=byte",
                               f"prepare.out_dir={out}", "prepare.val_fraction=0.1",
                               "prepare.workers=1"]))  # fmt: skip
    before = _digest(out)
    yield out
    assert _digest(out) == before, f"a test changed the shared {out}; work on a copy"


@pytest.fixture(scope="session")
def shared_tiny_run(tiny_data, tmp_path_factory):
    """A TINY_RUN run on tiny_data (one checkpoint, step 2), trained once per session in this
    process. Read-only: a test that writes into a run takes `tiny_run` instead."""
    from gptkit.commands.pretrain import pretrain
    from gptkit.config import load_config

    run = tmp_path_factory.mktemp("tiny") / "run"
    pretrain(load_config(None, [*TINY_RUN, f"data.dir={tiny_data}", f"train.out_dir={run}"]))
    before = _digest(run)
    yield run
    assert _digest(run) == before, f"a test changed the shared {run}; take tiny_run instead"


@pytest.fixture
def tiny_run(shared_tiny_run, tmp_path) -> Path:
    """This test's own copy of the shared run, at tmp_path / "run"."""
    return Path(shutil.copytree(shared_tiny_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def random_lm_run(tmp_path_factory) -> Path:
    """A byte-level LM checkpoint with random weights (seed 0; TINY's shape; matrices x10):
    unlike a 2-step run, its greedy outputs and log-likelihoods vary with the context. Read-only."""
    from gptkit.config import Config, to_dict
    from gptkit.data.tokenizer import ByteTokenizer
    from gptkit.model.gpt import GPT, GPTConfig
    from gptkit.train import checkpoint

    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=257)
    meta = {"config": to_dict(Config(model=cfg)), "tokenizer": ByteTokenizer().spec(),
            "head": {"name": "lm"}}  # fmt: skip
    model = GPT(cfg)
    with torch.no_grad():  # peaked logits: greedy decoding is far from ties
        for p in model.parameters():
            p.mul_(10 if p.dim() == 2 else 1)
    run = tmp_path_factory.mktemp("random") / "run"
    checkpoint.save(run, step=0, model=model, state={}, meta=meta, keep_last=1)
    return run
