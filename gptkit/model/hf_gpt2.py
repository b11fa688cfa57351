"""Hugging Face GPT-2 <-> gptkit: the config and key maps of GPT2LMHeadModel / GPT2Model.

HF's Conv1D stores weights as [in, out]: the four matrices of every block are transposed on
the way in and out. Reading and writing folders is model/hf.py.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, Backbone, GPTConfig, pad_rows

# The four Conv1D matrices per block; everything else has the same layout as nn.Linear/LayerNorm.
_CONV1D = re.compile(r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
# Causal-mask buffers of transformers 4.x; a bare endswith("attn.bias") would also hit c_attn.bias.
_BUFFERS = re.compile(r"\.attn\.(masked_)?bias$")
MODEL_TYPES = ("gpt2",)


def config_from_hf(hf: dict, *, where: str = "config.json") -> GPTConfig:
    """Check an HF config describes plain GPT-2 and translate it to a GPTConfig."""
    n_embd, n_pos = hf.get("n_embd", 768), hf.get("n_positions", 1024)
    checks = [
        ("activation_function", hf.get("activation_function", "gelu_new"),
         ("gelu_new", "gelu_pytorch_tanh")),
        ("layer_norm_epsilon", hf.get("layer_norm_epsilon", 1e-5), (1e-5,)),
        ("n_inner", hf.get("n_inner"), (None, 4 * n_embd)),
        ("n_ctx", hf.get("n_ctx", n_pos), (n_pos,)),
        ("tie_word_embeddings", hf.get("tie_word_embeddings", True), (True,)),
        ("scale_attn_weights", hf.get("scale_attn_weights", True), (True,)),
        ("scale_attn_by_inverse_layer_idx", hf.get("scale_attn_by_inverse_layer_idx", False),
         (False,)),
        ("add_cross_attention", hf.get("add_cross_attention", False), (False,)),
    ]  # fmt: skip
    for key, value, allowed in checks:
        if value not in allowed:
            raise GptkitError(
                f"{where}: {key}={value!r} is not plain GPT-2 (gptkit supports "
                f"{' or '.join(map(repr, allowed))}); convert the model another way"
            )
    try:
        return GPTConfig(
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=n_embd,
            block_size=n_pos,
            vocab_size=hf.get("vocab_size", 50257),
            dropout=0.0,  # inference default; fine-tuning sets its own
            bias=True,
        )
    except ValueError as e:
        raise GptkitError(
            f"{where}: invalid GPT-2 shape ({'; '.join(str(e).splitlines())})"
        ) from None


def to_gptkit(state: dict, config: GPTConfig, *, where: str) -> dict:
    """HF GPT-2 state dict -> ours: strip `transformer.`, transpose Conv1D, pad wte rows."""
    prefixed = any(k.startswith("transformer.") for k in state)  # a model with a head
    out = {}
    for key, t in state.items():
        if prefixed and not key.startswith("transformer."):
            continue  # lm_head is tied to wte; other heads (score, ...) are not the backbone
        key = key.removeprefix("transformer.")
        if _BUFFERS.search(key):
            continue  # 4.x causal-mask buffers: SDPA masks for us
        if _CONV1D.match(key):
            t = t.t()
        if key == "wte.weight":
            t = pad_rows(t, config.padded_vocab_size)
        out[f"transformer.{key}"] = t.contiguous()
    return out


def to_hf(model: GPT) -> dict:
    """Our backbone -> HF keys: Conv1D layout, vocab padding cropped, zero biases if bias=False."""
    out = {}
    for key, t in model.transformer.state_dict().items():
        t = t.detach().cpu()
        if _CONV1D.match(key):
            t = t.t()
        if key == "wte.weight":
            t = t[: model.config.vocab_size]
        out[f"transformer.{key}"] = t.contiguous().clone()
    with torch.device("meta"):  # HF GPT-2 always has biases; zeros compute the same function
        full = Backbone(dataclasses.replace(model.config, bias=True, qkv_bias=True)).state_dict()
    dtype = model.transformer.wte.weight.dtype
    for key, t in full.items():
        out.setdefault(f"transformer.{key}", torch.zeros(t.shape, dtype=dtype))
    return out


def hf_config(model: GPT, eot_id: int | None) -> dict:
    c = model.config
    if eot_id is None and c.vocab_size == 50257:
        eot_id = 50256  # the GPT-2 tokenizer's <|endoftext|>
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "tie_word_embeddings": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "dtype": str(model.transformer.wte.weight.dtype).removeprefix("torch."),
    }


def unmapped(c: GPTConfig) -> str | None:
    """The first model key that HF GPT-2 cannot express, as `key=value`, or None."""
    want = {"pos_emb": "learned", "norm": "layernorm", "norm_eps": 1e-5, "norm_gain": True,
            "mlp": "gelu", "mlp_hidden": 4 * c.n_embd, "n_kv_head": c.n_head,
            "head_dim": c.n_embd // c.n_head, "qk_norm": False, "tie_embeddings": True,
            "qkv_bias": c.bias, "logit_softcap": 0.0}  # fmt: skip
    return next((f"{k}={getattr(c, k)}" for k, v in want.items() if getattr(c, k) != v), None)
