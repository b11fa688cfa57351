"""`gptkit prepare -c configs/demo.yaml [section.key=value ...] [--force]`: text -> token shards.

Wiring only: the `prepare` config section goes to `gptkit.data.prepare.build_shards`, which writes
`prepare.out_dir` (train_000000.bin, ..., val_000000.bin, meta.json); then one summary line.
"""

from __future__ import annotations

import time

from gptkit.config import Config
from gptkit.data.prepare import build_shards


def prepare(cfg: Config, *, force: bool = False) -> dict:
    """Tokenize cfg.prepare.source into cfg.prepare.out_dir; returns the written meta.json dict."""
    start = time.perf_counter()
    meta = build_shards(cfg.prepare, force=force)
    seconds = time.perf_counter() - start
    splits = meta["splits"]
    text_mb = sum(s["text_bytes"] for s in splits.values()) / 1e6
    parts = [
        f"{name} {s['tokens']:,} tokens / {s['documents']:,} docs / {len(s['shards'])} shard(s)"
        for name, s in splits.items()
    ]
    print(
        f"gptkit prepare: {cfg.prepare.out_dir} | {meta['tokenizer']['name']} "
        f"(vocab {meta['tokenizer']['vocab_size']:,}) | {' | '.join(parts)} | "
        f"{text_mb:.1f} MB in {seconds:.1f} s ({text_mb / max(seconds, 1e-9):.1f} MB/s)"
    )
    if meta["replaced_chars"]:
        print(f"gptkit prepare: replaced {meta['replaced_chars']:,} undecodable bytes with U+FFFD")
    return meta


def run(args) -> int:
    prepare(args.cfg, force=args.force)
    return 0
