"""`gptkit pretrain -c configs/demo.yaml [section.key=value ...]`: train a GPT on token shards.

Wiring only: data meta -> model -> runtime wrap -> optimizer -> `fit()`. Under
`torchrun --nproc_per_node=N -m gptkit pretrain -c ...` every rank runs this same function.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch

from gptkit.config import Config, dump_yaml, to_dict
from gptkit.data.batches import ShardBatches
from gptkit.data.prepare import read_meta
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, GPTConfig, LMHead
from gptkit.train import checkpoint, runtime
from gptkit.train.loop import Task, evaluate_lm, fit, lm_loss, unwrap
from gptkit.train.optim import build_optimizer


def pretrain(cfg: Config) -> dict:
    """Train (or resume) the run `cfg` describes; returns the last logged metrics."""
    rt = runtime.setup(cfg.train.device, cfg.train.dtype)
    try:
        return _pretrain(cfg, rt)
    finally:
        runtime.cleanup(rt)


def _pretrain(cfg: Config, rt) -> dict:
    data_meta = read_meta(cfg.data.dir)
    source = None
    if cfg.train.init_from:
        source, cfg = load_source(cfg, data_meta["tokenizer"])
    cfg = resolve_vocab(cfg, data_meta)
    check_data(cfg, data_meta)
    run_dir = Path(cfg.train.out_dir)
    ckpt = resume_checkpoint(cfg, run_dir, data_meta["tokenizer"])
    seed_everything(cfg.train.seed)
    model = GPT(cfg.model)
    if ckpt is not None:
        _load_weights(model, ckpt)
    elif source is not None:
        model.load_state_dict(source.state_dict())
    model.to(rt.device)
    torch.manual_seed(cfg.train.seed + rt.rank)  # dropout differs per rank, init did not
    wrapped = runtime.parallelize(model, rt, strategy=cfg.train.strategy, compile=cfg.train.compile)
    optimizer = build_optimizer(unwrap(wrapped), cfg.train, device_type=rt.device.type)
    task = lm_task(cfg, rt, model, data_meta)
    max_steps = planned_steps(cfg, rt)
    if rt.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        except OSError as e:
            raise GptkitError(
                f"cannot write the run dir {run_dir} ({e.strerror or e}); choose a writable "
                "train.out_dir (a folder, not a file) with free space"
            ) from None
        _announce(cfg, rt, model, max_steps, ckpt)
    meta = {"config": to_dict(cfg), "tokenizer": data_meta["tokenizer"], "head": {"name": "lm"}}
    last = fit(wrapped, optimizer, task, cfg=cfg.train, rt=rt, run_dir=run_dir, meta=meta,
               max_steps=max_steps, resume_from=ckpt, wandb_cfg=cfg.logging.wandb)  # fmt: skip
    if rt.is_main:
        _summary(run_dir)
    return last


def _summary(run_dir: Path):
    """One closing line: first and last val loss of the run, and where its checkpoint is."""
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl", encoding="utf-8")]
    vals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    ckpt = checkpoint.latest_checkpoint(run_dir)
    if vals:
        (s0, v0), (s1, v1) = vals[0], vals[-1]
        runtime.print0(f"val loss {v0:.4f} (step {s0}) -> {v1:.4f} (step {s1}); latest: {ckpt}")
    else:
        runtime.print0(f"done; latest checkpoint: {ckpt}")


def lm_task(cfg: Config, rt, model, data_meta: dict) -> Task:
    """Train/val batch streams and the LM loss for pretraining (or LM fine-tuning)."""
    common = dict(block_size=cfg.model.block_size, rank=rt.rank, world_size=rt.world_size,
                  seed=cfg.train.seed, device=rt.device,
                  vocab_size=cfg.model.vocab_size)  # fmt: skip
    train = ShardBatches(cfg.data.dir, "train", batch_size=cfg.train.batch_size,
                         grad_accum=cfg.train.grad_accum, sampling=cfg.data.sampling, **common)  # fmt: skip

    def val_batches():  # eval_steps global batches, however they are split into ranks x accum
        return ShardBatches(cfg.data.dir, "val", batch_size=cfg.train.batch_size,
                            grad_accum=cfg.train.grad_accum, sampling="sequential", **common)  # fmt: skip

    has_val = _split_tokens(data_meta, "val") > cfg.model.block_size
    steps = cfg.train.eval_steps * cfg.train.grad_accum if has_val else 0
    return Task(
        train=train,
        loss=lm_loss,
        evaluate=(lambda m: evaluate_lm(m, val_batches, steps, rt)) if has_val else (lambda m: {}),
        flops_per_token=model.flops_per_token(cfg.model.block_size),
    )


def _split_tokens(meta: dict, split: str) -> int:
    return sum(s["tokens"] for s in meta["splits"].get(split, {}).get("shards", []))


def check_data(cfg: Config, data_meta: dict):
    """Fail before any work when the data cannot feed this model."""
    tokens = _split_tokens(data_meta, "train")
    if tokens <= cfg.model.block_size:
        raise GptkitError(
            f"{cfg.data.dir} has {tokens:,} train tokens, not enough for one window of "
            f"model.block_size={cfg.model.block_size} + 1; lower model.block_size or prepare "
            "more data"
        )


def load_source(cfg: Config, tokenizer: dict):
    """train.init_from: the model to continue from, and cfg with its shape (and our dropout)."""
    path = cfg.train.init_from
    source = checkpoint.load_model(path)
    if type(source.head) is not LMHead or not source.head.tied:
        raise GptkitError(
            f"train.init_from={path} has a {type(source.head).__name__}; pretraining continues "
            "language models only (use gptkit finetune for heads)"
        )
    theirs = checkpoint.load_tokenizer(path).spec()
    if theirs != tokenizer:
        raise GptkitError(
            f"train.init_from={path} uses tokenizer {theirs.get('name')} but {cfg.data.dir} was "
            f"prepared with {tokenizer.get('name')}; prepare the data with prepare.tokenizer="
            f"{theirs.get('name')}"
        )
    check_model_section(cfg.model, source.config, f"train.init_from={path}")
    model = dataclasses.replace(source.config, dropout=cfg.model.dropout)
    return source, dataclasses.replace(cfg, model=model)


def check_model_section(user: GPTConfig, shape: GPTConfig, source: str):
    """A run started from another model takes its shape: a model.* key other than dropout must
    be left at its default or equal the source's (as in a run's own config.yaml)."""
    defaults = GPTConfig()
    for name in (f.name for f in dataclasses.fields(GPTConfig) if f.name != "dropout"):
        if getattr(user, name) not in (getattr(defaults, name), getattr(shape, name)):
            raise GptkitError(
                f"{source} fixes the model shape ({name}={getattr(shape, name)}); remove "
                f"model.{name} from the config (only model.dropout may be set)"
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


def resume_checkpoint(cfg: Config, run_dir: Path, tokenizer: dict) -> Path | None:
    """The checkpoint to continue from (train.resume), checked against this run's config."""
    mode = cfg.train.resume
    if mode == "never":
        if checkpoint.latest_checkpoint(run_dir) is not None:
            raise GptkitError(
                f"{run_dir} already has checkpoints and train.resume is never; choose another "
                "train.out_dir, delete the old run, or set train.resume=auto"
            )
        return None
    ckpt = checkpoint.latest_checkpoint(run_dir) if mode == "auto" else checkpoint.find(mode)
    if ckpt is None:
        return None
    meta = checkpoint.read_meta(ckpt)
    if meta.get("tokenizer") != tokenizer:
        raise GptkitError(
            f"checkpoint {ckpt} was trained with tokenizer {meta.get('tokenizer', {}).get('name')}"
            f" but {cfg.data.dir} uses {tokenizer.get('name')}; point data.dir at matching data "
            "or start a new run (train.resume=never, new train.out_dir)"
        )
    saved = meta["config"].get("model") if isinstance(meta["config"], dict) else None
    if saved != dataclasses.asdict(cfg.model):
        raise GptkitError(
            f"model config differs from checkpoint {ckpt}; resume with the same model section "
            "or start a new run in another train.out_dir"
        )
    return ckpt


def _load_weights(model, ckpt: Path):
    """The checkpoint's weights into the fresh model; a fine-tuned run's do not fit."""
    try:
        model.load_state_dict(checkpoint.read_weights(ckpt / "model.safetensors"))
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


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _announce(cfg, rt, model, max_steps, ckpt):
    t = cfg.train
    per_step = t.batch_size * t.grad_accum * rt.world_size * cfg.model.block_size
    where = f"resuming from {ckpt}" if ckpt else "starting fresh"
    runtime.print0(
        f"gptkit pretrain: {model.num_params() / 1e6:.2f}M params | {rt.device} "
        f"{str(rt.dtype).replace('torch.', '')} x{rt.world_size} | {per_step:,} tokens/step | "
        f"{max_steps} steps | {where} | run dir {t.out_dir}"
    )


def run(args) -> int:
    pretrain(args.cfg)
    return 0
