"""Causal self-attention: rotary positions, grouped key/value heads, the KV cache and its masks.

`CausalSelfAttention` computes one block's attention for a full sequence, a chunk appended to a
`KVCache`, or one decoded token; `KVCache` also records which slots hold real tokens, so
prompts of different lengths (left-padded) share one cache and decode together.
"""

from __future__ import annotations

import torch
from torch import nn

from gptkit.model import fused
from gptkit.model.config import GPTConfig


class KVCache:
    """Per-layer key/value buffers of shape (B, n_kv_head, max_len, hs), filled from `pos`."""

    def __init__(
        self, config: GPTConfig, batch_size: int, *, max_len=None, device=None, dtype=None
    ):
        # only as long as the generation needs: a 32k-context model need not hold 32k positions
        length = min(config.block_size, max_len or config.block_size)
        shape = (batch_size, config.n_kv_head, length, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        # Which slots hold real tokens, per row: prompts of different lengths share one cache,
        # left-padded. `padded` turns on the masked path; an all-real batch keeps the fast one.
        self.keep = torch.ones(batch_size, length, dtype=torch.bool, device=device)
        self.padded = False
        self.pos = 0  # number of positions already stored

    def check_room(self, n: int):
        """ValueError unless `n` more positions fit (the cache is at most block_size long)."""
        if self.pos + n > self.keep.shape[1]:
            raise ValueError(f"{self.pos + n} tokens do not fit a KV cache of {self.keep.shape[1]}")

    def reset(self):
        self.pos, self.padded = 0, False
        self.keep.fill_(True)


def rope_cos_sin(pos: torch.Tensor, config: GPTConfig, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles at positions `pos` (B or 1, T) -> each (B, 1, T, hs).

    Hugging Face's "rotate half" layout (frequencies repeated over both halves), so Llama and
    Qwen weights load without permuting the query/key rows. Computed in fp32 from the positions
    every call: a bf16 angle table loses precision at long positions."""
    hs = config.head_dim
    inv_freq = config.rope_theta ** -(torch.arange(0, hs, 2, device=pos.device).float() / hs)
    angles = pos.float()[..., None] * inv_freq  # (B, T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, hs)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.hs = config.n_head, config.n_kv_head, config.head_dim
        qkv = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv, bias=config.qkv_bias)  # [q; k; v] rows
        self.c_proj = nn.Linear(config.n_head * self.hs, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(
                self.hs, eps=config.norm_eps, elementwise_affine=config.norm_gain
            )
            self.k_norm = nn.RMSNorm(
                self.hs, eps=config.norm_eps, elementwise_affine=config.norm_gain
            )
        self.resid_dropout = fused.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(self, x, *, mask=None, rope=None, cache: KVCache | None = None, layer: int = 0):
        B, T, _ = x.shape
        sizes = [self.n_head * self.hs, self.n_kv_head * self.hs, self.n_kv_head * self.hs]
        q, k, v = self.c_attn(x).split(sizes, 2)
        q = q.view(B, T, self.n_head, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.hs).transpose(1, 2)
        if hasattr(self, "q_norm"):  # before RoPE (Qwen3); with no gain the order is moot
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        is_causal = mask is None
        if cache is not None:
            start = cache.pos
            cache.k[layer][:B, :, start : start + T] = k  # stored after RoPE: keys never move
            cache.v[layer][:B, :, start : start + T] = v
            k, v = cache.k[layer][:B, :, : start + T], cache.v[layer][:B, :, : start + T]
            if start > 0 and mask is None:
                # SDPA's is_causal aligns top-left when q_len != k_len: build the bottom-right mask.
                # One new token may see every cached key: no mask (~2x faster SDPA when decoding).
                is_causal = False
                if T > 1:
                    q_pos = torch.arange(start, start + T, device=x.device)[:, None]
                    mask = q_pos >= torch.arange(start + T, device=x.device)[None, :]
        if self.n_kv_head != self.n_head:  # each key/value head serves n_head / n_kv_head queries
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        y = fused.attention(q, k, v, mask=mask, is_causal=is_causal, dropout_p=self.dropout,
                            training=self.training)  # fmt: skip
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # (B, nh, T, hs) -> (B, T, nh * hs)
        return self.resid_dropout(self.c_proj(y))


def cached_padding(cache: KVCache, attention_mask, B: int, T: int):
    """Positions (B, T) and mask (B, 1, T, start + T) for T new tokens of a padded batch: each
    row sees its own real tokens only, numbered from 0 as if it were alone."""
    start, device = cache.pos, cache.keep.device
    new = attention_mask.bool() if attention_mask is not None else torch.ones(B, T, device=device)
    cache.keep[:B, start : start + T] = new
    cache.padded = cache.padded or not bool(new.all())
    keep = cache.keep[:B, : start + T]
    pos = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
    q = torch.arange(start, start + T, device=device)[:, None]
    k = torch.arange(start + T, device=device)[None, :]
    mask = (k <= q)[None] & keep[:, None, :]
    mask |= (k == q)[None]  # a padding query sees itself: its row never becomes all -inf (NaN)
    return pos, mask[:, None]


def padding_mask(attention_mask):
    """(B, T) keep-mask -> (B, 1, T, T) causal mask that also hides padding keys."""
    T = attention_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    keep = causal[None] & attention_mask.bool()[:, None, :]
    # Every query may see itself, so a row of pure padding never becomes all -inf (NaN).
    keep |= torch.eye(T, dtype=torch.bool, device=attention_mask.device)[None]
    return keep[:, None]


def segment_mask(segments: torch.Tensor):
    """Positions (B, T) and mask (B, 1, T, T) for rows packed with several documents:
    `segments` (B, T) numbers each token's document. Attention stays inside a document
    (block-diagonal causal) and positions restart at each document's first token, so every
    document computes what it would alone."""
    B, T = segments.shape
    idx = torch.arange(T, device=segments.device)
    first = torch.ones(B, T, dtype=torch.bool, device=segments.device)
    first[:, 1:] = segments[:, 1:] != segments[:, :-1]
    starts = torch.where(first, idx, 0).cummax(dim=-1).values  # where each token's document began
    same = segments[:, :, None] == segments[:, None, :]
    mask = same & torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return idx - starts, mask[:, None]
