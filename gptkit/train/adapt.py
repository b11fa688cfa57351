"""Starting a run from another model: its shape, our dropout, a new head, LoRA or freezing.

`train.init_from` (continued pretraining) and `finetune.init_from` both take the source's shape;
only `model.dropout` may be set. Fine-tuning then swaps the head and picks what trains.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from gptkit import artifacts
from gptkit.errors import GptkitError
from gptkit.model import lora
from gptkit.model.gpt import CausalSelfAttention, GPTConfig, LMHead
from gptkit.model.heads import swap_head


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


def load_pretrain_source(cfg, tokenizer: dict):
    """train.init_from: (the language model to continue from, cfg with its shape)."""
    path = cfg.train.init_from
    source = artifacts.resolve(path, what="train.init_from")
    model = source.load_model()
    if type(model.head) is not LMHead:
        raise GptkitError(
            f"train.init_from={path} has a {type(model.head).__name__}; pretraining continues "
            "language models only (use gptkit finetune for heads)"
        )
    theirs = source.tokenizer().spec()
    if theirs != tokenizer:
        raise GptkitError(
            f"train.init_from={path} uses tokenizer {theirs.get('name')} but {cfg.data.dir} was "
            f"prepared with {tokenizer.get('name')}; prepare the data with prepare.tokenizer="
            f"{theirs.get('name')}"
        )
    check_model_section(cfg.model, model.config, f"train.init_from={path}")
    shape = dataclasses.replace(model.config, dropout=cfg.model.dropout)
    return model, dataclasses.replace(cfg, model=shape)


def set_dropout(model, user: GPTConfig, init_from: str):
    """Put the config's `model.dropout` on a loaded backbone (other model.* keys: an error)."""
    check_model_section(user, model.config, f"finetune.init_from={init_from}")
    model.config.dropout = user.dropout  # the same object as model.transformer.config
    for module in model.modules():  # before LoRA: its adapters keep finetune.lora.dropout
        if isinstance(module, nn.Dropout):
            module.p = user.dropout
        elif isinstance(module, CausalSelfAttention):
            module.dropout = user.dropout  # SDPA's dropout_p on the attention weights


@torch.no_grad()
def grow_vocab(model, vocab_size: int):
    """Give the token embedding (and an untied LM head) rows for ids up to `vocab_size`, e.g.
    added chat tokens. Old rows stay bit-identical; each new row starts as the mean of the old
    rows, a token the model already half-understands (random rows would give it noise, zero
    rows a logit that ignores the context), which the fine-tune then moves."""
    old = model.config.vocab_size
    if vocab_size <= old:
        return
    model.config.vocab_size = vocab_size  # the same object as model.transformer.config
    rows = model.config.padded_vocab_size
    wte = model.transformer.wte
    model.transformer.wte = nn.Embedding(rows, wte.embedding_dim, device=wte.weight.device,
                                         dtype=wte.weight.dtype)  # fmt: skip
    model.transformer.wte.weight.copy_(_grown(wte.weight, old, vocab_size, rows))
    if isinstance(model.head, LMHead):
        model.head.vocab_size = vocab_size
        if not model.head.tied:
            model.head.weight = nn.Parameter(_grown(model.head.weight, old, vocab_size, rows))


def _grown(weight, old: int, new: int, rows: int):
    """(rows, C): weight's first `old` rows, then their mean up to `new`, then zero padding."""
    out = weight.new_zeros(rows, weight.shape[1])
    out[:old] = weight[:old]
    out[old:new] = weight[:old].mean(0)
    return out


def attach(model, head: dict | None, ft) -> int:
    """Swap in a fresh `head` (None keeps the model's own), then add LoRA adapters or freeze
    layers as `ft` (the finetune section) says; returns the trainable parameter count."""
    if head is not None:
        swap_head(model, head)
    if ft.lora.rank:
        try:
            lora.inject(
                model.transformer,
                rank=ft.lora.rank,
                alpha=ft.lora.alpha,
                dropout=ft.lora.dropout,
                targets=ft.lora.targets,
            )
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
    embeddings = [t.wte, t.wpe] if hasattr(t, "wpe") else [t.wte]  # RoPE models have no wpe
    return [*embeddings, *t.h[: int(n_text)]]
