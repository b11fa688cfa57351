"""`gptkit finetune -c configs/finetune_classify.yaml [section.key=value ...]`: adapt a backbone.

Wiring only: backbone (a gptkit run/checkpoint/export or HF dir) -> fresh head, freezing or
LoRA (`train/adapt.py`) -> labelled batches -> the head's task (`train/tasks.py`) -> the shared
`fit()` -> checkpoints (head spec and labels in meta.json), RUN_DIR/metrics.json and a table.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import torch

from gptkit import artifacts
from gptkit.config import Config, dump_yaml, to_dict
from gptkit.data import chat, labeled
from gptkit.data.tokenizer import get_tokenizer
from gptkit.errors import GptkitError
from gptkit.model.heads import HEADS
from gptkit.train import adapt, checkpoint, runtime
from gptkit.train.loop import fit
from gptkit.train.metrics import report
from gptkit.train.optim import build_optimizer
from gptkit.train.tasks import finetune_task


def finetune(cfg: Config) -> dict:
    """Fine-tune (or resume) the run `cfg` describes; returns the last logged metrics."""
    _check_head_name(cfg.finetune.head)
    if cfg.train.max_tokens is not None:
        raise GptkitError(
            "finetune counts optimizer steps (batches are padded to varying "
            "lengths); remove train.max_tokens and set train.max_steps"
        )
    rt = runtime.setup(cfg.train.device, cfg.train.dtype)
    try:
        return _finetune(cfg, rt)
    finally:
        runtime.cleanup(rt)


def _finetune(cfg: Config, rt) -> dict:
    train = runtime.resolve_grad_accum(cfg.train, rt)  # config.yaml keeps global_batch_size
    ft, run_dir = cfg.finetune, Path(cfg.train.out_dir)
    _check_out_dir(run_dir, ft.init_from)
    source = artifacts.resolve(ft.init_from, what="finetune.init_from")
    model, tok = source.load_model(), source.tokenizer()
    adapt.set_dropout(model, cfg.model, ft.init_from)
    kind = "sft" if ft.head == "lm" and ft.prompt_field else ft.head
    rows = _rows(cfg)
    if kind == "lm" and rows[0] and ft.messages_field in rows[0][0]:  # chat rows (data/chat.py)
        kind, tok = "chat", get_tokenizer(chat.with_chat_tokens(tok.spec()))
        adapt.grow_vocab(model, tok.vocab_size)  # room for the added chat tokens, if any
    cfg = dataclasses.replace(cfg, model=model.config)  # the run's model is the backbone's
    train_ex, val_ex, head = _examples(cfg, kind, tok, source.head, rows)
    ckpt = checkpoint.resume_checkpoint(cfg, run_dir, tok.spec())
    runtime.seed_everything(cfg.train.seed)
    # a task head always starts fresh; an LM fine-tune keeps the backbone's own LM head
    fresh = kind not in ("lm", "sft", "chat") or head != source.head
    trainable = adapt.attach(model, head if fresh else None, ft)
    if ckpt is not None:
        _check_resume(ckpt, head, to_dict(ft.lora) if ft.lora.rank else None)
        model.load_state_dict(artifacts.read_weights(ckpt / "model.safetensors"))
    model.to(rt.device)
    torch.manual_seed(cfg.train.seed + rt.rank)  # dropout differs per rank, init did not
    wrapped = runtime.parallelize(model, rt, cfg.train)
    scale = (ft.head_lr or cfg.train.lr) / cfg.train.lr  # head lr relative to the backbone's
    optimizer = build_optimizer(
        runtime.unwrap(wrapped), cfg.train, device_type=rt.device.type, head_lr_scale=scale
    )
    task_kind = "sft" if kind == "chat" else kind  # chat examples are SFT examples
    task = finetune_task(task_kind, model, train_ex, val_ex, cfg=cfg, rt=rt, pad_id=tok.eot_id)
    meta = {
        "config": to_dict(cfg),
        "tokenizer": tok.spec(),
        "head": head,
        "init_from": ft.init_from,
    }
    if ft.lora.rank:
        meta["lora"] = to_dict(ft.lora)  # artifacts.model_from_checkpoint re-injects, then merges
    if rt.is_main:
        _announce(cfg, rt, model, trainable, kind=kind, sizes=(len(train_ex), len(val_ex)),
                  ckpt=ckpt)  # fmt: skip
    last = fit(wrapped, optimizer, task, cfg=train, rt=rt, run_dir=run_dir, meta=meta,
               max_steps=cfg.train.max_steps, resume_from=ckpt, wandb_cfg=cfg.logging.wandb,
               patience=ft.early_stopping)  # fmt: skip
    if rt.is_main and last:
        report(run_dir, last, task.best_key)
    elif rt.is_main:
        runtime.print0(f"{run_dir} is already at train.max_steps; raise it to train longer")
    return last


def _announce(cfg: Config, rt, model, trainable: int, *, kind: str, sizes, ckpt):
    run_dir = Path(cfg.train.out_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    except OSError as e:  # out_dir is a file, read-only, disk full
        raise GptkitError(
            f"cannot write the run folder train.out_dir={run_dir} ({e.strerror or e}); set "
            "train.out_dir to a writable folder"
        ) from None
    where = f"resuming from {ckpt}" if ckpt else "starting fresh"
    runtime.print0(
        f"gptkit finetune: {kind} head on {cfg.finetune.init_from} | {trainable / 1e6:.3f}M of "
        f"{model.num_params(non_embedding=False) / 1e6:.2f}M params trained | {sizes[0]} train / "
        f"{sizes[1]} val | {rt.device} {str(rt.dtype).removeprefix('torch.')} x{rt.world_size} | "
        f"{where} | run dir {run_dir}"
    )


def _check_head_name(name: str):
    if name not in HEADS:
        close = difflib.get_close_matches(name, list(HEADS), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(HEADS)}"
        raise GptkitError(f"unknown head '{name}' in finetune.head; {hint}")


def _check_out_dir(run_dir: Path, init_from: str):
    src = Path(init_from).resolve()
    if run_dir.resolve() == src or run_dir.resolve() in src.parents:
        raise GptkitError(
            f"train.out_dir {run_dir} is the backbone's own run (finetune.init_from "
            f"{init_from}); set train.out_dir to a new folder"
        )


def _rows(cfg: Config) -> tuple[list, list, str]:
    """(train rows, val rows, where the val rows come from): val_file or a seeded split."""
    ft = cfg.finetune
    if ft.train_file is None:
        raise GptkitError(
            "finetune.train_file is not set; point it at a .jsonl/.json/.csv/.parquet"
        )
    rows = labeled.read_rows(ft.train_file)
    if ft.val_file:
        train_rows, val_rows, val_where = rows, labeled.read_rows(ft.val_file), ft.val_file
    else:
        train_rows, val_rows = labeled.split_rows(rows, ft.val_fraction, cfg.train.seed)
        val_where = f"{ft.train_file} (val split)"
    if ft.early_stopping and not val_rows:
        raise GptkitError("finetune.early_stopping needs validation data; set val_fraction > 0")
    return train_rows, val_rows, val_where


def _examples(cfg: Config, kind: str, tok, source_head: dict, rows: tuple):
    """Encode the rows; return (train, val examples, head spec)."""
    ft, (train_rows, val_rows, val_where) = cfg.finetune, rows
    head = _head_spec(kind, ft, train_rows, source_head)
    if kind == "chat":  # (ids, targets) pairs with loss on the assistant turns only
        common = dict(tok=tok, field=ft.messages_field, block_size=cfg.model.block_size)
        train = chat.encode_rows(train_rows, where=ft.train_file, **common)
        val = chat.encode_rows(val_rows, where=val_where, **common)
        return [labeled.Example(*e) for e in train], [labeled.Example(*e) for e in val], head
    common = dict(
        kind=kind, tok=tok, ft=ft, labels=head.get("labels"), block_size=cfg.model.block_size
    )
    train = labeled.encode(train_rows, where=ft.train_file, **common)
    val = labeled.encode(val_rows, where=val_where, **common) if val_rows else []
    return train, val, head


def _head_spec(kind: str, ft, rows: list[dict], source_head: dict) -> dict:
    if kind in ("lm", "sft", "chat"):  # keep the backbone's own LM head (tied or trained)
        return source_head if source_head.get("name") == "lm" else dict(artifacts.LM_HEAD)
    if kind == "regression":
        return {"name": "regression", "num_targets": ft.num_targets, "pooling": ft.pooling}
    per_token = kind == "token_classification"
    labels = labeled.label_list(
        rows,
        name=ft.label_field,
        per_token=per_token,
        num_labels=ft.num_labels,
        where=ft.train_file,
    )
    spec = {"name": kind, "num_labels": len(labels), "labels": labels}
    if per_token:  # predict labels the same sub-token of each word
        return {**spec, "subtoken": ft.label_subtoken}
    return {**spec, "pooling": ft.pooling}


def _check_resume(ckpt: Path, head: dict, lora_cfg: dict | None):
    meta = artifacts.read_meta(ckpt)
    for what, old, new in (("head", meta.get("head"), head), ("lora", meta.get("lora"), lora_cfg)):
        if old != new:
            raise GptkitError(
                f"checkpoint {ckpt} has {what} {old} but this run builds {new}; resume with the "
                "same head, labels and LoRA settings, or start a new run in another train.out_dir"
            )


def run(args) -> int:
    """CLI entry: `gptkit finetune -c FILE.yaml [overrides]`."""
    finetune(args.cfg)
    return 0
