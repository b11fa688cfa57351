"""The GPT: attention with a KV cache, MLP, block, backbone and the LM head, for every family.

`GPT(config)` is a language model: a backbone (`transformer`: wte, [wpe], h, ln_f -> hidden
states) plus a swappable head (`head`, default the LM projection, tied to `wte` or not). GPT-2,
Llama and nanochat-style models are configurations of these modules, not subclasses: the blocks
read `config.pos_emb`, `norm`, `mlp`, `n_kv_head`, `qk_norm`, ... Parameter names follow GPT-2
so its weights map one to one. Torch only: no ranks, autocast or printing here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gptkit.model import fused
from gptkit.model.attention import (  # noqa: F401 - KVCache is part of this module's API
    CausalSelfAttention,
    KVCache,
    cached_padding,
    padding_mask,
    rope_cos_sin,
    segment_mask,
)

# GPTConfig lives in a torch-free module; it stays importable from here too.
from gptkit.model.config import GPTConfig


def norm_layer(config: GPTConfig, dim: int) -> nn.Module:
    """LayerNorm or RMSNorm of `dim` features, with a learned gain unless `norm_gain` is off."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.norm_eps, elementwise_affine=config.norm_gain)
    gain = config.norm_gain
    return nn.LayerNorm(
        dim, eps=config.norm_eps, elementwise_affine=gain, bias=gain and config.bias
    )


def activation(kind: str, up: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """The MLP's nonlinearity on its up-projection: silu(gate) * up, relu(up)^2 or GELU (tanh)."""
    if kind == "swiglu":
        return F.silu(gate) * up
    if kind == "relu2":
        return F.relu(up).square()
    return F.gelu(up, approximate="tanh")


class MLP(nn.Module):
    """GELU (GPT-2), SwiGLU (Llama: silu(gate) * up) or ReLU squared (modded-nanogpt)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        if self.kind == "swiglu":
            self.c_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = fused.Dropout(config.dropout)

    def forward(self, x):
        gate = self.c_gate(x) if self.kind == "swiglu" else None
        return self.dropout(fused.activation_linear(self.act, self.c_fc(x), gate, self.c_proj))

    def act(self, up, gate):
        return activation(self.kind, up, gate)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = norm_layer(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm_layer(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, *, mask=None, rope=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), mask=mask, rope=rope, cache=cache, layer=layer)
        return x + self.mlp(self.ln_2(x))


class Backbone(nn.Module):
    """Token (+ learned position) embeddings, `n_layer` blocks, final norm -> hidden states."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        if config.pos_emb == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = fused.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = norm_layer(config, config.n_embd)
        # Activation checkpointing (train.activation_checkpointing: blocks): keep only each
        # block's input in training and recompute the block in backward. Dropout masks repeat
        # exactly (checkpoint restores the RNG state), so the gradients are the same.
        self.checkpoint_blocks = False

    def forward(self, idx, *, attention_mask=None, segments=None, cache: KVCache | None = None):
        """idx (B, T) token ids -> hidden states (B, T, C). attention_mask (B, T): 1 = real
        token, 0 = padding; segments (B, T): document number of each token in a packed row."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}"
            )
        if cache is not None:
            cache.check_room(T)
        mask = None
        if segments is not None:
            assert cache is None and attention_mask is None, "segments are for packed training rows"
            pos, mask = segment_mask(segments)
        elif cache is not None and (cache.padded or attention_mask is not None):
            pos, mask = cached_padding(cache, attention_mask, B, T)
        elif attention_mask is not None:
            # Positions count real tokens only, so left padding sees the same positions as right.
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            mask = padding_mask(attention_mask)
        else:
            pos = torch.arange(start, start + T, device=idx.device)[None, :]
        x = self.wte(idx)
        rope = None
        if self.config.pos_emb == "learned":
            x = x + self.wpe(pos)
        else:
            rope = rope_cos_sin(pos, self.config, x.dtype)
        x = self.drop(x)
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.h):
            if recompute:
                x = checkpoint(block, x, mask=mask, rope=rope, use_reentrant=False)
            else:
                x = block(x, mask=mask, rope=rope, cache=cache, layer=i)
        if cache is not None:
            cache.pos += T
        return self.ln_f(x)


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero rows appended to a (vocab, C) matrix up to `rows` (the padded vocabulary)."""
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], t.shape[1])])


class LMHead(nn.Module):
    """Projection to the vocabulary; tied to `wte` unless `tied=False` (default: the config's
    `tie_embeddings`). Crops vocab padding; soft-caps logits when `logit_softcap` > 0."""

    def __init__(self, config: GPTConfig, *, tied: bool | None = None):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.tied = config.tie_embeddings if tied is None else tied
        self.softcap = config.logit_softcap
        if not self.tied:
            self.weight = nn.Parameter(torch.empty(config.padded_vocab_size, config.n_embd))
            nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, h, *, wte=None, attention_mask=None):
        weight = wte if self.tied else self.weight
        return self.crop_and_cap(F.linear(h, weight))

    def crop_and_cap(self, logits):
        """Projected logits -> the vocabulary's (padding dropped), soft-capped when asked."""
        logits = logits[..., : self.vocab_size]
        if self.softcap:  # smooth clamp to (-cap, cap): keeps early training from spiking
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


class GPT(nn.Module):
    """A backbone and one head. `GPT(config)(idx)` -> logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig, head: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.transformer = Backbone(config)
        self.head = head if head is not None else LMHead(config)
        self.init_weights()

    def init_weights(self):
        """GPT-2 init, in one place:
        - Linear and Embedding weights ~ N(0, 0.02); biases zero; norm gains 1, norm biases 0;
        - residual projections (`attn.c_proj`, `mlp.c_proj`) ~ N(0, 0.02 / sqrt(2 * n_layer)),
          or zero with `zero_init_proj` (every block then starts as the identity, nanochat).
        The head initialises its own parameters when it is built.
        """
        for m in self.transformer.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, (nn.Linear, nn.LayerNorm)) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
        std = 0.0 if self.config.zero_init_proj else 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.transformer.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, *, attention_mask=None, segments=None, cache: KVCache | None = None):
        h = self.transformer(idx, attention_mask=attention_mask, segments=segments, cache=cache)
        return self.head(h, wte=self.transformer.wte.weight, attention_mask=attention_mask)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for up to `max_len` positions, on this model's device and dtype."""
        p = self.transformer.wte.weight
        return KVCache(self.config, batch_size, max_len=max_len, device=p.device, dtype=p.dtype)

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count; by default without position embeddings (as GPT-2 papers count)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and hasattr(self.transformer, "wpe"):
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12 * L * C * T (PaLM appendix B)."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * T
