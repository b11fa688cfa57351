"""One decoded token with few ops: the step `generate` and `serve` run once a prompt is cached.

At batch 1 a decode step reads every weight once for ~2 FLOPs each, so memory bandwidth sets
its floor. Through the modules, eager PyTorch spends about as long again on small ops and
Python per token (views, masks, module calls, branches only training and prefill need): the
baby GPT decoded at ~8 ms/token of which its 24 weight GEMVs took ~3 ms. `Decoder` reads each
layer's parameters once, up front, and runs a step as a flat list of ops over the same
`KVCache` the prefill filled, in inference mode (541 aten calls a token instead of 713). It
computes what the modules compute, in the same order (tests compare its logits and greedy text
with the module path). Two more savings:

- One GEMV per core. BLAS runs a matrix-vector product on one thread, but it is bound by
  memory bandwidth, which one core cannot use up: the weight rows split into one `bmm` batch
  entry per thread (~1.6x for the baby GPT's GEMVs on 2 cores), the LM head included (a third
  of GPT-2's weights).
- Grouped-query attention without copies: the query heads that share a key/value head attend
  as that head's rows (q viewed (B, n_kv, group, hs)) instead of repeating the cached keys.

Only plain `nn.Linear` projections and the LM head are read; a model with LoRA layers (not
merged) or another head keeps the module path (`Decoder.build` returns None).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.model.attention import KVCache, _rotate, rope_cos_sin
from gptkit.model.gpt import GPT, LMHead, activation

# Below this many weights a matrix stays in cache and one thread is faster (a 48-wide model
# decoded ~1.3x slower with the split).
SPLIT_MIN_WEIGHTS = 2**16


class _Linear:
    """`F.linear(x, weight, bias)` for x (rows, in); with one or two rows on a multi-core CPU,
    one GEMV per thread (each output is the same dot product of a weight row and x)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias
        threads = torch.get_num_threads()
        self.threads = threads if (
            weight.device.type == "cpu"
            and threads > 1
            and weight.shape[0] % threads == 0
            and weight.numel() >= SPLIT_MIN_WEIGHTS
        ) else 0  # fmt: skip
        if self.threads:
            self.w3 = weight.view(threads, -1, weight.shape[1])
            self.b3 = None if bias is None else bias.view(threads, -1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.threads or x.shape[0] > 2:
            return F.linear(x, self.weight, self.bias)
        x = x.contiguous()  # the strides below assume it (free when it already is)
        rows, n = x.shape
        # x.t() repeated per thread without a copy; BLAS wants this layout (x.view(1, n, 1)
        # expanded to the same shape runs ~4x slower)
        x3 = x.as_strided((self.threads, n, rows), (0, 1, n))
        out = torch.bmm(self.w3, x3) if self.b3 is None else torch.baddbmm(self.b3, self.w3, x3)
        if rows == 1:
            return out.view(1, -1)
        return out.view(self.weight.shape[0], rows).t().contiguous()


def _linear(layer: nn.Linear) -> _Linear:
    return _Linear(layer.weight, layer.bias)


def _norm(module: nn.Module):
    """The norm module as one functional call (no module dispatch per token)."""
    if isinstance(module, nn.LayerNorm):
        return partial(F.layer_norm, normalized_shape=module.normalized_shape,
                       weight=module.weight, bias=module.bias, eps=module.eps)  # fmt: skip
    return partial(F.rms_norm, normalized_shape=module.normalized_shape, weight=module.weight,
                   eps=module.eps)  # fmt: skip


class _Layer:
    """One block's parameters, read once."""

    def __init__(self, block: nn.Module):
        attn, mlp = block.attn, block.mlp
        self.ln_1, self.ln_2 = _norm(block.ln_1), _norm(block.ln_2)
        self.qkv, self.proj = _linear(attn.c_attn), _linear(attn.c_proj)
        self.qk_norm = (_norm(attn.q_norm), _norm(attn.k_norm)) if hasattr(attn, "q_norm") else None
        self.up, self.down = _linear(mlp.c_fc), _linear(mlp.c_proj)
        self.gate = _linear(mlp.c_gate) if hasattr(mlp, "c_gate") else None
        self.mlp = mlp.kind


class Decoder:
    """`Decoder.build(model)`, then `step(tok, cache)` per token: logits (B, V) of the next one."""

    PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_gate", "mlp.c_proj")

    def __init__(self, model: GPT):
        c = model.config
        self.config = c
        self.n_head, self.n_kv_head, self.hs = c.n_head, c.n_kv_head, c.head_dim
        tr = model.transformer
        self.wte = tr.wte.weight
        self.wpe = tr.wpe.weight if c.pos_emb == "learned" else None
        self.layers = [_Layer(block) for block in tr.h]
        self.ln_f = _norm(tr.ln_f)
        self.lm_head = model.head  # its crop and soft cap
        self.head = _Linear(self.wte if model.head.tied else model.head.weight, None)

    @classmethod
    def build(cls, model: GPT) -> Decoder | None:
        """A decoder for `model` in eval mode, or None where the module path must run."""
        if model.training or type(model.head) is not LMHead:
            return None
        for block in model.transformer.h:
            for name, module in block.named_modules():
                if name in cls.PROJECTIONS and type(module) is not nn.Linear:
                    return None  # e.g. an unmerged LoRA layer
        return cls(model)

    @torch.inference_mode()  # ~10% faster than no_grad here: no view or version tracking
    def step(self, tok: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append one token per row, `tok` (B,), to the first B rows of `cache` -> logits (B, V).

        A padded cache (`cache.padded`: prompts of different lengths, left-padded) numbers each
        row's positions from its own first real token and never attends its padding, as the
        module path does. The logits are an inference tensor: read them, do not train on them."""
        cache.check_room(1)
        pos = cache.pos
        x, rope, mask = self._embed(tok, cache)
        for i, layer in enumerate(self.layers):
            x = self._block(layer, x, cache.k[i], cache.v[i], pos, rope, mask)
        cache.pos += 1
        return self.lm_head.crop_and_cap(self.head(self.ln_f(x)))

    def _embed(self, tok, cache):
        """Token (+ position) embeddings (B, C), RoPE's cos and sin, the attention mask."""
        B, pos = tok.shape[0], cache.pos
        mask = None
        if cache.padded:
            keep = cache.keep[:B, : pos + 1]
            keep[:, pos] = True
            positions = keep.sum(-1, keepdim=True) - 1  # (B, 1): this row's real tokens before
            mask = keep[:, None, None, :]  # (B, 1, 1, S): every real token so far, itself too
        else:
            positions = torch.full((1, 1), pos, device=tok.device)
        x = F.embedding(tok, self.wte)  # (B, C)
        if self.wpe is not None:
            return x + F.embedding(positions[:, 0], self.wpe), None, mask
        return x, rope_cos_sin(positions, self.config, x.dtype), mask  # cos, sin (B|1, 1, 1, hs)

    def _block(self, layer: _Layer, x, keys, values, pos: int, rope, mask):
        """One block on x (B, C); this token's key and value go into slot `pos` of the cache."""
        B, nh, nkv, hs = x.shape[0], self.n_head, self.n_kv_head, self.hs
        q, k, v = layer.qkv(layer.ln_1(x)).split([nh * hs, nkv * hs, nkv * hs], dim=1)
        q, k, v = q.view(B, nh, 1, hs), k.view(B, nkv, 1, hs), v.view(B, nkv, 1, hs)
        if layer.qk_norm is not None:
            q, k = layer.qk_norm[0](q), layer.qk_norm[1](k)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        keys, values = keys[:B], values[:B]
        keys[:, :, pos : pos + 1] = k
        values[:, :, pos : pos + 1] = v
        # A query head group shares one key/value head: attend as that head's `group` rows.
        y = F.scaled_dot_product_attention(
            q.view(B, nkv, nh // nkv, hs),
            keys[:, :, : pos + 1],
            values[:, :, : pos + 1],
            attn_mask=mask,
        )
        x = x + layer.proj(y.reshape(B, nh * hs))
        h = layer.ln_2(x)
        gate = layer.gate(h) if layer.gate is not None else None
        return x + layer.down(activation(layer.mlp, layer.up(h), gate))
