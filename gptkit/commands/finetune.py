"""`gptkit finetune -c configs/finetune_classify.yaml [section.key=value ...]`: adapt a backbone.

Wiring only: backbone (gptkit run/checkpoint or local HF GPT-2 dir) -> fresh head, freezing or
LoRA -> labelled batches -> the shared `fit()` -> checkpoints (the head spec, labels included,
in meta.json), RUN_DIR/metrics.json and a final table. Runs under torchrun like pretrain.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.commands.pretrain import check_model_section, resume_checkpoint, seed_everything
from gptkit.config import Config, dump_yaml, to_dict
from gptkit.data import labeled
from gptkit.errors import GptkitError
from gptkit.model import hf, lora
from gptkit.model.gpt import CausalSelfAttention, GPTConfig
from gptkit.model.heads import HEADS, swap_head
from gptkit.train import checkpoint, runtime
from gptkit.train.loop import Task, fit, lm_loss, unwrap
from gptkit.train.optim import build_optimizer

# which val metric picks the best checkpoint (and drives early stopping), per head kind
BEST = {"classification": ("val_acc", "max"), "token_classification": ("val_acc", "max"),
        "regression": ("val_mse", "min"), "lm": ("val_loss", "min"),
        "sft": ("val_loss", "min")}  # fmt: skip


def finetune(cfg: Config) -> dict:
    """Fine-tune (or resume) the run `cfg` describes; returns the last logged metrics."""
    _check_head_name(cfg.finetune.head)
    if cfg.train.max_tokens is not None:
        raise GptkitError("finetune counts optimizer steps (batches are padded to varying "
                          "lengths); remove train.max_tokens and set train.max_steps")  # fmt: skip
    rt = runtime.setup(cfg.train.device, cfg.train.dtype)
    try:
        return _finetune(cfg, rt)
    finally:
        runtime.cleanup(rt)


def _finetune(cfg: Config, rt) -> dict:
    ft, run_dir = cfg.finetune, Path(cfg.train.out_dir)
    _check_out_dir(run_dir, ft.init_from)
    model, source_head, tok = load_backbone(ft.init_from)
    _apply_model_section(model, cfg.model, ft.init_from)
    cfg = dataclasses.replace(cfg, model=model.config)  # the run's model is the backbone's
    kind = "sft" if ft.head == "lm" and ft.prompt_field else ft.head
    train_ex, val_ex, head = _examples(cfg, kind, tok, source_head)
    ckpt = resume_checkpoint(cfg, run_dir, tok.spec())
    seed_everything(cfg.train.seed)
    # a task head always starts fresh; an LM fine-tune keeps the backbone's own LM head
    trainable = _prepare(model, head, cfg, swap=kind not in ("lm", "sft") or head != source_head)
    if ckpt is not None:
        _check_resume(ckpt, head, to_dict(ft.lora) if ft.lora.rank else None)
        model.load_state_dict(checkpoint.read_weights(ckpt / "model.safetensors"))
    model.to(rt.device)
    torch.manual_seed(cfg.train.seed + rt.rank)  # dropout differs per rank, init did not
    wrapped = runtime.parallelize(model, rt, strategy=cfg.train.strategy, compile=cfg.train.compile)
    scale = (ft.head_lr or cfg.train.lr) / cfg.train.lr  # head lr relative to the backbone's
    optimizer = build_optimizer(unwrap(wrapped), cfg.train, device_type=rt.device.type,
                                head_lr_scale=scale)  # fmt: skip
    task = finetune_task(kind, model, train_ex, val_ex, cfg=cfg, rt=rt, pad_id=tok.eot_id)
    meta = {"config": to_dict(cfg), "tokenizer": tok.spec(), "head": head,
            "init_from": ft.init_from}  # fmt: skip
    if ft.lora.rank:
        meta["lora"] = to_dict(ft.lora)  # model_from_checkpoint re-injects, then merges
    if rt.is_main:
        _announce(cfg, rt, model, trainable, kind=kind, sizes=(len(train_ex), len(val_ex)),
                  ckpt=ckpt)  # fmt: skip
    last = fit(wrapped, optimizer, task, cfg=cfg.train, rt=rt, run_dir=run_dir, meta=meta,
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


def load_backbone(path: str):
    """A gptkit run/checkpoint/export or a local HF GPT-2 dir -> (GPT with its own head, head
    spec, tokenizer). Backbone weights load bit for bit; LoRA checkpoints come back merged."""
    if not str(path).startswith("hf:") and not Path(path).exists():
        raise GptkitError(
            f"finetune.init_from {path} does not exist; pass a gptkit run or checkpoint dir "
            "(e.g. runs/demo from 'make demo') or a local Hugging Face GPT-2 dir"
        )
    export = checkpoint.export_config(path)
    if export is not None:  # `gptkit export --format safetensors`: config.json is its meta
        head = export.get("head", {"name": "lm"})
        return checkpoint.load_model(path), head, checkpoint.load_tokenizer(path)
    if str(path).startswith("hf:") or hf.is_hf_dir(path):
        return hf.load_hf(path), {"name": "lm"}, checkpoint.load_tokenizer(path)
    ckpt = checkpoint.find(path)
    model, meta = checkpoint.model_from_checkpoint(ckpt)
    return model, meta.get("head", {"name": "lm"}), checkpoint.load_tokenizer(ckpt)


def _apply_model_section(model, user: GPTConfig, init_from: str):
    """Put the config's `model.dropout` on the backbone; other model.* keys are an error, as the
    shape comes from the backbone (a key equal to the backbone's, as in a run's config.yaml, is
    fine)."""
    check_model_section(user, model.config, f"finetune.init_from={init_from}")
    model.config.dropout = user.dropout  # the same object as model.transformer.config
    for module in model.modules():  # before LoRA: its adapters keep finetune.lora.dropout
        if isinstance(module, nn.Dropout):
            module.p = user.dropout
        elif isinstance(module, CausalSelfAttention):
            module.dropout = user.dropout  # SDPA's dropout_p on the attention weights


def _examples(cfg: Config, kind: str, tok, source_head: dict):
    """Read, split and encode the data; return (train, val examples, head spec)."""
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
    head = _head_spec(kind, ft, train_rows, source_head)
    common = dict(kind=kind, tok=tok, ft=ft, labels=head.get("labels"),
                  block_size=cfg.model.block_size)  # fmt: skip
    train = labeled.encode(train_rows, where=ft.train_file, **common)
    val = labeled.encode(val_rows, where=val_where, **common) if val_rows else []
    return train, val, head


def _head_spec(kind: str, ft, rows: list[dict], source_head: dict) -> dict:
    if kind in ("lm", "sft"):  # keep the backbone's own LM head (tied or trained)
        return source_head if source_head.get("name") == "lm" else {"name": "lm"}
    if kind == "regression":
        return {"name": "regression", "num_targets": ft.num_targets, "pooling": ft.pooling}
    per_token = kind == "token_classification"
    labels = labeled.label_list(rows, name=ft.label_field, per_token=per_token,
                                num_labels=ft.num_labels, where=ft.train_file)  # fmt: skip
    spec = {"name": kind, "num_labels": len(labels), "labels": labels}
    if per_token:  # predict labels the same sub-token of each word
        return {**spec, "subtoken": ft.label_subtoken}
    return {**spec, "pooling": ft.pooling}


def _prepare(model, head: dict, cfg: Config, *, swap: bool) -> int:
    """New head, then LoRA adapters or frozen layers; returns the trainable parameter count."""
    ft = cfg.finetune
    if swap:
        swap_head(model, head)
    if ft.lora.rank:
        try:
            lora.inject(model.transformer, rank=ft.lora.rank, alpha=ft.lora.alpha,
                        dropout=ft.lora.dropout, targets=ft.lora.targets)  # fmt: skip
        except ValueError as e:
            raise GptkitError(f"finetune.lora.targets: {e}") from None
        lora.freeze_for_lora(model, keep=("head.",))
    elif ft.freeze != "none":
        for module in _frozen_modules(model, ft.freeze):
            module.requires_grad_(False)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n == 0:
        raise GptkitError(
            f"finetune.freeze={ft.freeze} leaves nothing to train (the lm head is tied to the "
            "frozen embeddings); use freeze: none, first_n_layers:N, or LoRA"
        )
    return n


def _frozen_modules(model, freeze: str) -> list:
    if freeze == "backbone":
        return [model.transformer]
    n_text = freeze.removeprefix("first_n_layers:")
    if not n_text.isdigit() or not 1 <= int(n_text) <= model.config.n_layer:
        raise GptkitError(
            f"finetune.freeze={freeze}: N must be an integer in 1..{model.config.n_layer} "
            "(the backbone's layers); e.g. first_n_layers:2"
        )
    t = model.transformer
    return [t.wte, t.wpe, *t.h[: int(n_text)]]


def _check_resume(ckpt: Path, head: dict, lora_cfg: dict | None):
    meta = checkpoint.read_meta(ckpt)
    for what, old, new in (("head", meta.get("head"), head), ("lora", meta.get("lora"), lora_cfg)):
        if old != new:
            raise GptkitError(
                f"checkpoint {ckpt} has {what} {old} but this run builds {new}; resume with the "
                "same head, labels and LoRA settings, or start a new run in another train.out_dir"
            )


# --------------------------------------------------------------------------------------------
# Loss and evaluation


def finetune_task(kind: str, model, train_ex, val_ex, *, cfg: Config, rt, pad_id: int) -> Task:
    """Batches, loss and val metrics of one head kind, for `fit()`."""
    common = dict(kind=kind, batch_size=cfg.train.batch_size, pad_id=pad_id, rank=rt.rank,
                  world_size=rt.world_size, device=rt.device)  # fmt: skip
    train = labeled.LabeledBatches(train_ex, seed=cfg.train.seed, **common)
    num_classes = getattr(getattr(model.head, "score", None), "out_features", 0)

    def evaluate(m):
        if not val_ex:
            return {}
        return evaluate_head(m, kind, labeled.eval_batches(val_ex, **common), rt, num_classes)

    best_key, best_mode = BEST[kind]
    return Task(train=train, loss=_lm_loss if kind in ("lm", "sft") else _head_loss,
                evaluate=evaluate, tokens=lambda batch: batch[0].numel(), count=_targets,
                best_key=best_key, best_mode=best_mode,
                flops_per_token=model.flops_per_token())  # fmt: skip


def _targets(batch) -> int:
    """Loss targets of a micro-batch: labelled tokens (lm, sft, token labels) or rows."""
    target = batch[2]
    if target.dtype == torch.long and target.dim() == 2:
        return int((target != -100).sum())
    return target.shape[0]


def _lm_loss(model, batch):
    idx, _, target = batch  # right padding: causal attention never sees it, targets are -100
    if not (target != -100).any():  # nothing to learn here: a zero loss, not 0/0
        return model(idx).sum() * 0.0
    return lm_loss(model, (idx, target))


def _head_loss(model, batch):
    idx, mask, target = batch
    out = model(idx, attention_mask=mask)
    if target.dtype == torch.long and target.dim() == 2 and not (target != -100).any():
        return out.sum() * 0.0
    return unwrap(model).head.loss(out, target)


@torch.no_grad()
def evaluate_head(model, kind: str, batches, rt, num_classes: int) -> dict:
    """Val metrics over every rank's share: loss and accuracy/macro-F1, MSE/MAE or perplexity."""
    raw = unwrap(model)
    sums = None
    for idx, mask, target, valid in batches:
        with runtime.autocast(rt):
            out = raw(idx, attention_mask=None if kind in ("lm", "sft") else mask)
        part = _batch_sums(kind, out.float(), target, valid, num_classes)
        sums = part if sums is None else sums + part
    if rt.distributed:  # sum over ranks (runtime averages floats)
        sums = torch.tensor([runtime.all_reduce_mean(float(v), rt) * rt.world_size for v in sums])
    return _metrics(kind, sums.double().cpu(), num_classes)


def _batch_sums(kind, out, target, valid, K) -> torch.Tensor:
    """Additive statistics of one batch (so ranks and batches combine by summing)."""
    if kind == "regression":
        err = (out - target)[valid]
        return torch.stack([(err**2).mean(-1).sum(), err.abs().mean(-1).sum(),
                            valid.sum().float()]).cpu()  # fmt: skip
    if target.dim() == 2:  # a label per token: flatten, dropping -100 and invalid rows
        target = target.masked_fill(~valid[:, None], -100).flatten()
        out = out.flatten(0, 1)
    else:
        target = target.masked_fill(~valid, -100)
    keep = target != -100
    out, target = out[keep], target[keep]
    head = torch.stack([F.cross_entropy(out, target, reduction="sum"), keep.sum().float()])
    if kind in ("lm", "sft"):
        return head.cpu()
    pred = out.argmax(-1)
    hit = pred == target
    counts = [torch.bincount(t, minlength=K).float() for t in (target[hit], pred, target)]
    return torch.cat([head, hit.sum().float()[None], *counts]).cpu()


def _metrics(kind, s, K) -> dict:
    n = max(float(s[1] if kind != "regression" else s[2]), 1.0)
    if kind == "regression":
        return {"val_loss": float(s[0]) / n, "val_mse": float(s[0]) / n, "val_mae": float(s[1]) / n}
    loss = float(s[0]) / n
    if kind in ("lm", "sft"):
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
    tp, npred, ntrue = s[3 : 3 + K], s[3 + K : 3 + 2 * K], s[3 + 2 * K :]
    present = (npred + ntrue) > 0  # macro-F1 over classes seen in labels or predictions
    f1 = (2 * tp[present] / (npred + ntrue)[present]).mean() if present.any() else 0.0
    return {"val_loss": loss, "val_acc": float(s[2]) / n, "val_f1": float(f1)}


# --------------------------------------------------------------------------------------------
# The final report


def report(run_dir: Path, last: dict, best_key: str) -> dict:
    """Print the final/best val metrics as a table and write RUN_DIR/metrics.json atomically."""
    final = {k: v for k, v in last.items() if k == "step" or k.startswith("val_") or k == "loss"}
    best = _best_record(run_dir, best_key)
    summary = {"final": final, "best": best, "best_key": best_key}
    checkpoint.write_text_atomic(run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    keys = [k for k in final if k != "step"]
    head = f"{'metric':<12}{'final (step ' + str(final.get('step')) + ')':>20}"
    if best:
        head += f"{'best (step ' + str(best['step']) + ')':>20}"
    lines = [head]
    for k in keys:
        row = f"{k:<12}{final[k]:>20.4f}"
        if best and isinstance(best.get(k), float):
            row += f"{best[k]:>20.4f}"
        lines.append(row)
    runtime.print0("\n".join(lines))
    return summary


def _best_record(run_dir: Path, best_key: str) -> dict | None:
    """The metrics.jsonl record of the best checkpoint's evaluation, if any."""
    latest = checkpoint.latest_checkpoint(run_dir)
    name = checkpoint.read_meta(latest).get("best") if latest else None
    if not name:
        return None
    step, found = int(name.removeprefix("step_")), None
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record.get("step") == step and best_key in record:
                found = record
    return (
        {k: v for k, v in found.items() if k == "step" or k.startswith("val_")} if found else None
    )


def run(args) -> int:
    """CLI entry: `gptkit finetune -c FILE.yaml [overrides]`."""
    finetune(args.cfg)
    return 0
