"""Optimizer and learning-rate schedule.

`lr_at(step, cfg)` is a pure function of the step (so resume needs no scheduler state);
`build_optimizer` makes AdamW with weight decay on matrices and embeddings only.
"""

from __future__ import annotations

import inspect
import math

import torch

from gptkit.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig, max_steps: int | None = None) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, then the schedule."""
    total = max_steps or cfg.max_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_start = max(cfg.warmup_steps, int(total * (1 - cfg.decay_fraction)))
        if step < decay_start:
            return cfg.lr
        frac = (step - decay_start) / max(1, total - decay_start)
        return cfg.lr + min(1.0, frac) * (cfg.min_lr - cfg.lr)
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.schedule == "linear":
        return cfg.lr + frac * (cfg.min_lr - cfg.lr)
    # cosine: 1 -> 0 as frac goes 0 -> 1
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (cfg.lr - cfg.min_lr)


def param_groups(model: torch.nn.Module, weight_decay: float, head_lr_scale: float = 1.0):
    """Decay >= 2-D weights (matrices, embeddings); never biases or LayerNorm gains.

    Head parameters get their own groups so a fine-tune can give them another learning rate
    (`lr_scale` multiplies the scheduled lr)."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.dim() >= 2
        scale = head_lr_scale if name.startswith("head.") else 1.0
        key = (decay, scale)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale,
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def build_optimizer(model, cfg: TrainConfig, *, device_type: str, head_lr_scale: float = 1.0):
    """AdamW over `param_groups`; fused kernels on CUDA and CPU (5x faster steps on CPU here)."""
    groups = param_groups(model, cfg.weight_decay, head_lr_scale)
    extra = {}
    if (
        device_type in ("cuda", "cpu")
        and "fused" in inspect.signature(torch.optim.AdamW).parameters
    ):
        extra["fused"] = True
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **extra)


def set_lr(optimizer, lr: float):
    """Apply the scheduled lr to every group (times its `lr_scale`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
