"""Shared test set-up: offline hubs, quiet wandb, small thread counts, a tiny-model factory."""

import os

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
