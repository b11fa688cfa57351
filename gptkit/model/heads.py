"""Head registry: the module on top of the backbone's hidden states.

A head is an `nn.Module` taking `(h, *, wte, attention_mask)`; a spec is a JSON-able dict
(`{"name": "lm"}`) stored in every checkpoint so the model can be rebuilt. A new head is one
module plus one line in `HEADS`.
"""

from __future__ import annotations

from torch import nn

from gptkit.model.gpt import GPTConfig, LMHead


def _lm(spec: dict, config: GPTConfig) -> nn.Module:
    return LMHead(config, tied=spec.get("tied", True))


HEADS = {"lm": _lm}


def build_head(spec: dict, config: GPTConfig) -> nn.Module:
    """Build the head a spec describes; ValueError names the known heads."""
    name = spec.get("name")
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    return HEADS[name](spec, config)
