"""GPT-2, exactly: attention with a KV cache, MLP, block, backbone and the LM head.

`GPT(config)` is a language model: a backbone (`transformer`: wte, wpe, h, ln_f -> hidden states)
plus a swappable head (`head`, default the LM projection tied to `wte`). Parameter names follow
GPT-2 so Hugging Face weights map one to one. Torch only: no ranks, autocast or printing here.
`GPTConfig` (model/config.py, torch-free) is re-exported here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# GPTConfig lives in a torch-free module; it stays importable from here too.
from gptkit.model.config import GPTConfig


class KVCache:
    """Per-layer key/value buffers of shape (B, nh, max_len, hs), filled from position `pos`."""

    def __init__(self, config: GPTConfig, batch_size: int, *, device=None, dtype=None):
        hs = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, hs)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0  # number of positions already stored

    def reset(self):
        self.pos = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(self, x, *, mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        is_causal = mask is None
        if cache is not None:
            start = cache.pos
            cache.k[layer][:B, :, start : start + T] = k
            cache.v[layer][:B, :, start : start + T] = v
            k, v = cache.k[layer][:B, :, : start + T], cache.v[layer][:B, :, : start + T]
            if start > 0 and mask is None:
                # SDPA's is_causal aligns top-left when q_len != k_len: build the bottom-right mask.
                # One new token may see every cached key: no mask (~2x faster SDPA when decoding).
                is_causal = False
                if T > 1:
                    q_pos = torch.arange(start, start + T, device=x.device)[:, None]
                    mask = q_pos >= torch.arange(start + T, device=x.device)[None, :]
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, *, mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), mask=mask, cache=cache, layer=layer)
        return x + self.mlp(self.ln_2(x))


class Backbone(nn.Module):
    """Token + position embeddings, `n_layer` blocks, final LayerNorm -> hidden states."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)

    def forward(self, idx, *, attention_mask=None, cache: KVCache | None = None):
        """idx (B, T) token ids; attention_mask (B, T) 1 = real token, 0 = padding -> (B, T, C)."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}"
            )
        mask = None
        if attention_mask is not None:
            # Positions count real tokens only, so left padding sees the same positions as right.
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            mask = _padding_mask(attention_mask)
        else:
            pos = torch.arange(start, start + T, device=idx.device)[None, :]
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.h):
            x = block(x, mask=mask, cache=cache, layer=i)
        if cache is not None:
            cache.pos += T
        return self.ln_f(x)


def _padding_mask(attention_mask):
    """(B, T) keep-mask -> (B, 1, T, T) causal mask that also hides padding keys."""
    T = attention_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    keep = causal[None] & attention_mask.bool()[:, None, :]
    # Every query may see itself, so a row of pure padding never becomes all -inf (NaN).
    keep |= torch.eye(T, dtype=torch.bool, device=attention_mask.device)[None]
    return keep[:, None]


class LMHead(nn.Module):
    """Projection to the vocabulary; tied to `wte` unless `tied=False`. Crops vocab padding."""

    def __init__(self, config: GPTConfig, *, tied: bool = True):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.tied = tied
        if not tied:
            self.weight = nn.Parameter(torch.empty(config.padded_vocab_size, config.n_embd))
            nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, h, *, wte=None, attention_mask=None):
        weight = wte if self.tied else self.weight
        return F.linear(h, weight)[..., : self.vocab_size]


class GPT(nn.Module):
    """A GPT-2 backbone and one head. `GPT(config)(idx)` -> logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig, head: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.transformer = Backbone(config)
        self.head = head if head is not None else LMHead(config)
        self.init_weights()

    def init_weights(self):
        """GPT-2 init, in one place:
        - Linear and Embedding weights ~ N(0, 0.02); biases zero; LayerNorm weight 1, bias 0;
        - residual projections (`attn.c_proj`, `mlp.c_proj`) ~ N(0, 0.02 / sqrt(2 * n_layer)).
        The head initialises its own parameters when it is built.
        """
        for m in self.transformer.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, (nn.Linear, nn.LayerNorm)) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
        for name, p in self.transformer.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def forward(self, idx, *, attention_mask=None, cache: KVCache | None = None):
        h = self.transformer(idx, attention_mask=attention_mask, cache=cache)
        return self.head(h, wte=self.transformer.wte.weight, attention_mask=attention_mask)

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache on this model's device and dtype."""
        p = self.transformer.wte.weight
        return KVCache(self.config, batch_size, device=p.device, dtype=p.dtype)

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count; by default without position embeddings (as GPT-2 papers count)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12 * L * C * T (PaLM appendix B)."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * T
