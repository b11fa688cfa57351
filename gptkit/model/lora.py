"""LoRA (Hu et al. 2021): low-rank adapters around existing `nn.Linear` layers.

`inject(model.transformer, rank=8, alpha=16, targets=["c_attn"])` wraps each named Linear in a
`LoRALinear` (composition: the original Linear is kept, frozen, as `.base`); `freeze_for_lora`
leaves only adapters (and the head) trainable; `merge` folds adapters back into plain Linears.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * dropout(x) @ A^T @ B^T, with B = 0 at the start."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        assert rank >= 1, f"LoRA rank must be >= 1, got {rank}"
        self.base = base
        self.scale = alpha / rank
        p = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(rank, base.in_features, device=p.device, dtype=p.dtype)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, rank, device=p.device, dtype=p.dtype)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and the paper)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.base(x) + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged(self) -> nn.Linear:
        """A plain Linear computing the same function (W + scale * B @ A)."""
        w, b = self.base.weight, self.base.bias
        out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale
            out.weight.copy_((w.float() + delta).to(w.dtype))
            if b is not None:
                out.bias.copy_(b)
        return out


def inject(module: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0,
           targets=("c_attn", "c_proj", "c_fc")) -> int:  # fmt: skip
    """Wrap every `nn.Linear` whose attribute name is in `targets`; return how many were wrapped."""
    found = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if name in targets and type(child) is nn.Linear
    ]
    for parent, name, child in found:
        setattr(parent, name, LoRALinear(child, rank=rank, alpha=alpha, dropout=dropout))
    if not found:
        names = sorted({n for n, m in module.named_modules() if type(m) is nn.Linear})
        last = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ValueError(f"no Linear layer named {list(targets)}; choose from {', '.join(last)}")
    return len(found)


def merge(module: nn.Module) -> int:
    """Replace every LoRALinear under `module` by its merged plain Linear; return how many."""
    found = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, LoRALinear)
    ]
    for parent, name, child in found:
        setattr(parent, name, child.merged())
    return len(found)


def is_lora_param(name: str) -> bool:
    """True for adapter parameters (`...lora_A`, `...lora_B`)."""
    return name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")


def freeze_for_lora(model: nn.Module, *, keep=("head.",)) -> int:
    """Train only adapters and parameters whose names start with `keep`; return trainable count."""
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad = is_lora_param(name) or name.startswith(tuple(keep))
        n += p.numel() if p.requires_grad else 0
    return n
