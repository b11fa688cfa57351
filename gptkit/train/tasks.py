"""Tasks: what pretraining and each fine-tuning head give `fit()` — batches, loss, val metrics.

A `Task` is the only thing that differs between `gptkit pretrain` and `gptkit finetune`;
`fit()` is the same loop for both. LM losses and val metrics go through `train/evaluate.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from gptkit.data import labeled
from gptkit.data.batches import ShardBatches
from gptkit.data.packing import segments
from gptkit.errors import GptkitError
from gptkit.train import runtime
from gptkit.train.evaluate import lm_metrics, lm_sums

# which val metric picks the best checkpoint (and drives early stopping), per head kind
BEST = {
    "classification": ("val_acc", "max"),
    "token_classification": ("val_acc", "max"),
    "regression": ("val_mse", "min"),
    "lm": ("val_loss", "min"),
    "sft": ("val_loss", "min"),
}


@dataclass(kw_only=True)
class Task:
    """Data, loss and evaluation of one kind of training."""

    train: object  # next_batch() -> batch; state_dict(); load_state_dict()
    loss: Callable  # (model, batch) -> mean loss of the micro-batch
    evaluate: Callable  # (model) -> {"val_loss": ..., ...} over every rank's share
    tokens: Callable = lambda batch: batch[0].numel()  # tokens in a micro-batch
    # Loss targets in a micro-batch, for losses that average over a varying number of targets
    # (padded SFT, token labels): micro-batches are then weighted so a step's loss is the mean
    # over every target of the global batch, whatever its split into ranks x accumulation.
    count: Callable | None = None
    best_key: str = "val_loss"  # metric that picks the best checkpoint
    best_mode: str = "min"  # or "max"
    flops_per_token: float | None = None  # for MFU


def lm_loss(model, batch):
    """Mean next-token cross-entropy of an (x, y) batch (targets of -100 ignored)."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-100)


def _val_metrics(nll: float, count: int) -> dict:
    return {f"val_{k}": v for k, v in lm_metrics(nll, count).items()}


# --------------------------------------------------------------------------------------------
# Pretraining


def lm_task(cfg, rt, model, data_meta: dict) -> Task:
    """Train/val batch streams and the LM loss for pretraining on token shards."""
    common = dict(
        block_size=cfg.model.block_size,
        rank=rt.rank,
        world_size=rt.world_size,
        seed=cfg.train.seed,
        device=rt.device,
        vocab_size=cfg.model.vocab_size,
        batch_size=cfg.train.batch_size,
        grad_accum=cfg.train.grad_accum,
    )
    eot = data_meta["tokenizer"].get("eot_id")
    if eot is None and (cfg.data.packing != "none" or cfg.data.doc_mask):
        raise GptkitError(f"data.packing and data.doc_mask need the end-of-text id that "
                          f"separates documents; {cfg.data.dir}'s tokenizer has none")  # fmt: skip
    train = ShardBatches(cfg.data.dir, "train", sampling=cfg.data.sampling,
                         packing=cfg.data.packing, eot_id=eot, **common)  # fmt: skip
    # The same eval_steps global batches every time, however they are split into ranks x accum,
    # so val loss does not depend on the number of ranks.
    steps = cfg.train.eval_steps * cfg.train.grad_accum
    has_val = split_tokens(data_meta, "val") > cfg.model.block_size

    def evaluate(m):
        if not has_val:
            return {}
        val = ShardBatches(cfg.data.dir, "val", sampling="sequential", **common)
        return _val_metrics(*lm_sums(m, (val.next_batch() for _ in range(steps)), rt))

    return Task(
        train=train,
        loss=partial(_doc_masked_loss, eot_id=eot) if cfg.data.doc_mask else lm_loss,
        evaluate=evaluate,
        flops_per_token=model.flops_per_token(cfg.model.block_size),
    )


def _doc_masked_loss(model, batch, *, eot_id: int):
    """lm_loss with attention kept inside each document of a packed row."""
    x, y = batch
    logits = model(x, segments=segments(x, eot_id))
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-100)


def split_tokens(meta: dict, split: str) -> int:
    """Tokens in one split of a prepared data dir's meta.json."""
    return sum(s["tokens"] for s in meta["splits"].get(split, {}).get("shards", []))


# --------------------------------------------------------------------------------------------
# Fine-tuning


def finetune_task(kind: str, model, train_ex, val_ex, *, cfg, rt, pad_id: int) -> Task:
    """Batches, loss and val metrics of one head kind (lm, sft or a task head)."""
    common = dict(
        kind=kind,
        batch_size=cfg.train.batch_size,
        pad_id=pad_id,
        rank=rt.rank,
        world_size=rt.world_size,
        device=rt.device,
    )
    train = labeled.LabeledBatches(train_ex, seed=cfg.train.seed, **common)
    num_classes = getattr(getattr(model.head, "score", None), "out_features", 0)
    is_lm = kind in ("lm", "sft")

    def evaluate(m):
        if not val_ex:
            return {}
        batches = labeled.eval_batches(val_ex, **common)
        if is_lm:  # rows past the end of this rank's share carry valid=False: no targets
            pairs = ((x, y.masked_fill(~ok[:, None], -100)) for x, _, y, ok in batches)
            return _val_metrics(*lm_sums(m, pairs, rt))
        return evaluate_head(m, kind, batches, rt, num_classes)

    best_key, best_mode = BEST[kind]
    return Task(
        train=train,
        loss=_sft_loss if is_lm else _head_loss,
        evaluate=evaluate,
        count=_targets,
        best_key=best_key,
        best_mode=best_mode,
        flops_per_token=model.flops_per_token(),
    )


def _targets(batch) -> int:
    """Loss targets of a micro-batch: labelled tokens (lm, sft, token labels) or rows."""
    target = batch[2]
    if target.dtype == torch.long and target.dim() == 2:
        return int((target != -100).sum())
    return target.shape[0]


def _sft_loss(model, batch):
    idx, _, target = batch  # right padding: causal attention never sees it, targets are -100
    if not (target != -100).any():  # nothing to learn here: a zero loss, not 0/0
        return model(idx).sum() * 0.0
    return lm_loss(model, (idx, target))


def _head_loss(model, batch):
    idx, mask, target = batch
    out = model(idx, attention_mask=mask)
    if target.dtype == torch.long and target.dim() == 2 and not (target != -100).any():
        return out.sum() * 0.0
    return runtime.unwrap(model).head.loss(out, target)


@torch.no_grad()
def evaluate_head(model, kind: str, batches, rt, num_classes: int) -> dict:
    """Val metrics of a task head over every rank's share: loss and accuracy/macro-F1, or
    MSE/MAE. Statistics are sums, so batches and ranks combine by adding."""
    raw, sums = runtime.unwrap(model), None
    for idx, mask, target, valid in batches:
        with runtime.autocast(rt):
            out = raw(idx, attention_mask=mask)
        part = _batch_sums(kind, out.float(), target, valid, num_classes)
        sums = part if sums is None else sums + part
    sums = torch.tensor(runtime.all_reduce_sum(sums.double().tolist(), rt), dtype=torch.float64)
    return _head_metrics(kind, sums, num_classes)


def _batch_sums(kind, out, target, valid, K) -> torch.Tensor:
    """Additive statistics of one batch: [loss sum, count, hits, per-class counts...]."""
    if kind == "regression":
        err = (out - target)[valid]
        return torch.stack(
            [(err**2).mean(-1).sum(), err.abs().mean(-1).sum(), valid.sum().float()]
        ).cpu()
    if target.dim() == 2:  # a label per token: flatten, dropping -100 and invalid rows
        target = target.masked_fill(~valid[:, None], -100).flatten()
        out = out.flatten(0, 1)
    else:
        target = target.masked_fill(~valid, -100)
    keep = target != -100
    out, target = out[keep], target[keep]
    pred = out.argmax(-1)
    hit = pred == target
    counts = [torch.bincount(t, minlength=K).float() for t in (target[hit], pred, target)]
    loss = F.cross_entropy(out, target, reduction="sum")
    return torch.cat([torch.stack([loss, keep.sum().float(), hit.sum().float()]), *counts]).cpu()


def _head_metrics(kind, s, K) -> dict:
    if kind == "regression":
        n = max(float(s[2]), 1.0)
        return {"val_loss": float(s[0]) / n, "val_mse": float(s[0]) / n, "val_mae": float(s[1]) / n}
    n = max(float(s[1]), 1.0)
    tp, npred, ntrue = s[3 : 3 + K], s[3 + K : 3 + 2 * K], s[3 + 2 * K :]
    present = (npred + ntrue) > 0  # macro-F1 over classes seen in labels or predictions
    f1 = (2 * tp[present] / (npred + ntrue)[present]).mean() if present.any() else 0.0
    return {"val_loss": float(s[0]) / n, "val_acc": float(s[2]) / n, "val_f1": float(f1)}
