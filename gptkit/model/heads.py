"""Head registry: the module on top of the backbone's hidden states.

A head is an `nn.Module` taking `(h, *, wte, attention_mask)`; a spec is a JSON-able dict
(`{"name": "classification", "num_labels": 3, "pooling": "last", "labels": [...]}`) stored in
every checkpoint so the model can be rebuilt. Heads that train on labels carry a `loss(out,
target)`. A new head is one module plus one line in `HEADS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.model.gpt import GPT, GPTConfig, LMHead


def pool(h, attention_mask, how: str):
    """(B, T, C) hidden states -> (B, C): the last non-padding token, or the mean over them.

    `last` reads the mask, never token ids, so it is right for left and right padding and when
    the pad id is also end-of-text inside a text."""
    B, T, _ = h.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.long, device=h.device)
    mask = attention_mask.to(h.dtype)
    if how == "mean":
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    # index of the rightmost 1 in each row: argmax of position * mask
    last = (torch.arange(T, device=h.device)[None] * attention_mask.long()).argmax(-1)
    return h[torch.arange(B, device=h.device), last]


class SequenceHead(nn.Module):
    """Pool the sequence, then a Linear to `n_out` scores: classification and regression."""

    def __init__(self, config: GPTConfig, n_out: int, *, pooling: str, bias: bool, loss: str):
        super().__init__()
        assert pooling in ("last", "mean"), f"pooling must be last or mean, got {pooling!r}"
        self.pooling = pooling
        self.kind = loss  # "ce" (classes) or "mse" (numeric targets)
        # bias-free like Hugging Face's GPT2ForSequenceClassification.score
        self.score = nn.Linear(config.n_embd, n_out, bias=bias)
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)
        if bias:
            nn.init.zeros_(self.score.bias)

    def forward(self, h, *, wte=None, attention_mask=None):
        return self.score(pool(h, attention_mask, self.pooling))  # (B, n_out)

    def loss(self, out, target):
        """Cross-entropy against class ids (B,), or MSE against targets (B, n_out)."""
        if self.kind == "ce":
            return F.cross_entropy(out.float(), target, ignore_index=-100)
        return F.mse_loss(out.float(), target.float())


class TokenHead(nn.Module):
    """A class per token: Linear(n_embd, num_labels) at every position; -100 marks no label."""

    def __init__(self, config: GPTConfig, num_labels: int):
        super().__init__()
        self.score = nn.Linear(config.n_embd, num_labels, bias=False)
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)

    def forward(self, h, *, wte=None, attention_mask=None):
        return self.score(h)  # (B, T, num_labels)

    def loss(self, out, target):
        """Cross-entropy over labelled tokens only (target -100 elsewhere)."""
        return F.cross_entropy(out.float().flatten(0, 1), target.flatten(), ignore_index=-100)


def _lm(spec: dict, config: GPTConfig) -> nn.Module:
    return LMHead(config, tied=spec.get("tied"))  # null: the config's tie_embeddings


def _classification(spec: dict, config: GPTConfig) -> nn.Module:
    return SequenceHead(config, spec["num_labels"], pooling=spec.get("pooling", "last"),
                        bias=False, loss="ce")  # fmt: skip


def _regression(spec: dict, config: GPTConfig) -> nn.Module:
    return SequenceHead(config, spec.get("num_targets", 1), pooling=spec.get("pooling", "last"),
                        bias=True, loss="mse")  # fmt: skip


def _token_classification(spec: dict, config: GPTConfig) -> nn.Module:
    return TokenHead(config, spec["num_labels"])


HEADS = {
    "lm": _lm,
    "classification": _classification,
    "regression": _regression,
    "token_classification": _token_classification,
}


def build_head(spec: dict, config: GPTConfig) -> nn.Module:
    """Build the head a spec describes; ValueError names the known heads."""
    name = spec.get("name")
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    return HEADS[name](spec, config)


def backbone_state(state: dict) -> dict:
    """The `transformer.*` entries of a GPT state dict, prefix stripped (what a Backbone loads)."""
    return {
        k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")
    }


def swap_head(model: GPT, spec: dict) -> GPT:
    """Put a freshly initialised head of `spec` on `model`; the backbone is left untouched."""
    p = model.transformer.wte.weight
    model.head = build_head(spec, model.config).to(device=p.device, dtype=p.dtype)
    return model
