"""`gptkit pretrain -c configs/demo.yaml [section.key=value ...]`: train a GPT on token shards.

Wiring only: data meta -> model -> runtime wrap -> optimizer -> `fit()`. Under
`torchrun --nproc_per_node=N -m gptkit pretrain -c ...` every rank runs this same function.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from gptkit import artifacts
from gptkit.config import Config, dump_yaml, to_dict
from gptkit.data.shards import META_NAME, read_meta
from gptkit.data.tokenizer import get_tokenizer
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT
from gptkit.train import adapt, checkpoint, runtime
from gptkit.train.loop import fit
from gptkit.train.optim import build_optimizer
from gptkit.train.tasks import lm_task, split_tokens


def pretrain(cfg: Config) -> dict:
    """Train (or resume) the run `cfg` describes; returns the last logged metrics."""
    rt = runtime.setup(cfg.train.device, cfg.train.dtype)
    try:
        return _pretrain(cfg, rt)
    finally:
        runtime.cleanup(rt)


def _pretrain(cfg: Config, rt) -> dict:
    train = runtime.resolve_grad_accum(cfg.train, rt)  # refuses an uneven global batch up front
    data_meta = read_data_meta(cfg)
    source = None
    if cfg.train.init_from:
        source, cfg = adapt.load_pretrain_source(cfg, data_meta["tokenizer"])
    cfg = resolve_vocab(cfg, data_meta)
    check_data(cfg, data_meta)
    # config.yaml keeps the config as given (global_batch_size holds on any number of ranks);
    # the loader, the step plan and fit() get grad_accum resolved for this one
    run_cfg = dataclasses.replace(cfg, train=train)
    run_dir = Path(cfg.train.out_dir)
    ckpt = checkpoint.resume_checkpoint(cfg, run_dir, data_meta["tokenizer"])
    runtime.seed_everything(cfg.train.seed)
    model = GPT(cfg.model)
    if ckpt is not None:
        _load_weights(model, ckpt)
    elif source is not None:
        model.load_state_dict(source.state_dict())
    model.to(rt.device)
    torch.manual_seed(cfg.train.seed + rt.rank)  # dropout differs per rank, init did not
    wrapped = runtime.parallelize(model, rt, cfg.train)
    optimizer = build_optimizer(runtime.unwrap(wrapped), cfg.train, device_type=rt.device.type)
    task = lm_task(run_cfg, rt, model, data_meta)
    max_steps = planned_steps(run_cfg, rt)
    if rt.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        except OSError as e:
            raise GptkitError(
                f"cannot write the run dir {run_dir} ({e.strerror or e}); choose a writable "
                "train.out_dir (a folder, not a file) with free space"
            ) from None
        _announce(run_cfg, rt, model, max_steps, ckpt)
        if not (Path(cfg.data.dir) / META_NAME).is_file():  # a meta made from the files
            runtime.print0(
                f"data: {data_meta['source']}, tokenizer {data_meta['tokenizer']['name']}"
            )
    meta = {"config": to_dict(cfg), "tokenizer": data_meta["tokenizer"], "head": {"name": "lm"}}
    last = fit(wrapped, optimizer, task, cfg=train, rt=rt, run_dir=run_dir, meta=meta,
               max_steps=max_steps, resume_from=ckpt, wandb_cfg=cfg.logging.wandb)  # fmt: skip
    if rt.is_main:
        _summary(run_dir)
    return last


def _summary(run_dir: Path):
    """One closing line: first and last val loss of the run, and where its checkpoint is."""
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl", encoding="utf-8")]
    vals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    ckpt = artifacts.latest_checkpoint(run_dir)
    if vals:
        (s0, v0), (s1, v1) = vals[0], vals[-1]
        runtime.print0(f"val loss {v0:.4f} (step {s0}) -> {v1:.4f} (step {s1}); latest: {ckpt}")
    else:
        runtime.print0(f"done; latest checkpoint: {ckpt}")


def read_data_meta(cfg: Config) -> dict:
    """data.dir's meta.json, or a meta made from the llm.c / nanoGPT files of a folder with none
    (tokenizer: data.tokenizer, default gpt2 for llm.c shards)."""
    name, data = cfg.data.tokenizer, Path(cfg.data.dir)
    if (data / META_NAME).is_file():
        meta = read_meta(data)
        theirs = meta["tokenizer"].get("name")
        if name is not None and name != theirs:
            raise GptkitError(
                f"data.tokenizer={name} but {data / META_NAME} says the data was tokenized with "
                f"{theirs}; remove data.tokenizer (meta.json names it) or prepare the data with "
                f"prepare.tokenizer={name}"
            )
        return meta
    try:
        spec = None if name is None else get_tokenizer(name).spec()
    except GptkitError as e:
        raise GptkitError(f"data.tokenizer={name}: {e}") from None
    return read_meta(data, tokenizer=spec)


def check_data(cfg: Config, data_meta: dict):
    """Fail before any work when the data cannot feed this model."""
    tokens = split_tokens(data_meta, "train")
    if tokens <= cfg.model.block_size:
        raise GptkitError(
            f"{cfg.data.dir} has {tokens:,} train tokens, not enough for one window of "
            f"model.block_size={cfg.model.block_size} + 1; lower model.block_size or prepare "
            "more data"
        )


def resolve_vocab(cfg: Config, data_meta: dict) -> Config:
    """Take vocab_size from the data; refuse a model vocabulary smaller than the tokenizer's."""
    vocab = data_meta["tokenizer"]["vocab_size"]
    if cfg.model.vocab_size is None:
        model = dataclasses.replace(cfg.model, vocab_size=vocab)
        return dataclasses.replace(cfg, model=model)
    if cfg.model.vocab_size < vocab:
        raise GptkitError(
            f"model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's {vocab} "
            f"in {cfg.data.dir}/meta.json; remove model.vocab_size to take it from the data"
        )
    return cfg


def _load_weights(model, ckpt: Path):
    """The checkpoint's weights into the fresh model; a fine-tuned run's do not fit."""
    try:
        model.load_state_dict(artifacts.read_weights(ckpt / "model.safetensors"))
    except RuntimeError as e:  # a task head or LoRA adapters: keys this LM does not have
        detail = " ".join(str(e).split())[:200]
        raise GptkitError(
            f"checkpoint {ckpt} does not hold a plain language model ({detail}); pretrain "
            "resumes pretraining runs only: continue a fine-tuned run with 'gptkit finetune'"
        ) from None


def planned_steps(cfg: Config, rt) -> int:
    """max_steps, or the steps a token budget (train.max_tokens) needs."""
    if cfg.train.max_tokens is None:
        return cfg.train.max_steps
    per_step = cfg.train.batch_size * cfg.train.grad_accum * rt.world_size * cfg.model.block_size
    return max(1, -(-cfg.train.max_tokens // per_step))


def _announce(cfg, rt, model, max_steps, ckpt):
    t = cfg.train
    seqs = t.batch_size * t.grad_accum * rt.world_size
    where = f"resuming from {ckpt}" if ckpt else "starting fresh"
    runtime.print0(
        f"gptkit pretrain: {model.num_params() / 1e6:.2f}M params | {rt.device} "
        f"{str(rt.dtype).replace('torch.', '')} x{rt.world_size} | {seqs} seqs "
        f"(grad_accum {t.grad_accum}) = {seqs * cfg.model.block_size:,} tokens/step | "
        f"{max_steps} steps | {where} | run dir {t.out_dir}"
    )


def run(args) -> int:
    """CLI entry: `gptkit pretrain -c FILE.yaml [overrides]`."""
    pretrain(args.cfg)
    return 0
