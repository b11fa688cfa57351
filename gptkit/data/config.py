"""The `data` config section: where pretraining reads its tokens and how rows are cut.

Stdlib only (like model/config.py), so loading a config never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True, slots=True)
class DataConfig:
    dir: str = "data/demo"
    """`gptkit prepare`'s folder, or llm.c *train*/*val*.bin shards or nanoGPT's train/val.bin"""
    tokenizer: str | None = None
    """tokenizer of a folder without meta.json (null = gpt2 for llm.c shards); must match one"""
    sampling: Literal["random", "sequential"] = "random"
    """training windows: random offsets (nanoGPT) or one sequential pass per epoch"""
    packing: Literal["none", "bos"] = "none"
    """training rows: windows at any offset (none), or whole documents best-fit from a document
    start (bos: no row starts mid-document; nanochat)"""
    doc_mask: bool = False
    """attention stays inside each document of a training row (block-diagonal causal mask,
    positions restart per document); val loss is computed without it, as for any run"""
