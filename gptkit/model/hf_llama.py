"""Hugging Face Llama family <-> gptkit: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM.

Config and key maps only (reading and writing folders is model/hf.py). HF keeps q/k/v apart;
gptkit stacks them into one `c_attn` ([q; k; v] rows) and names gate/up/down `c_gate`/`c_fc`/
`c_proj`. Qwen2 is Llama with q/k/v biases; Qwen3 is Llama with per-head QK RMSNorm. A config
that does not map exactly (rope scaling, sliding windows, other activations) is refused.
"""

from __future__ import annotations

import re

import torch

from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, GPTConfig, pad_rows

MODEL_TYPES = ("llama", "qwen2", "qwen3")
_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# HF name inside model.layers.{i}. -> gptkit name inside transformer.h.{i}.
_LAYER = {
    "input_layernorm": "ln_1",
    "post_attention_layernorm": "ln_2",
    "self_attn.o_proj": "attn.c_proj",
    "self_attn.q_norm": "attn.q_norm",
    "self_attn.k_norm": "attn.k_norm",
    "mlp.gate_proj": "mlp.c_gate",
    "mlp.up_proj": "mlp.c_fc",
    "mlp.down_proj": "mlp.c_proj",
}
_KEY = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)\.(weight|bias)$")


def config_from_hf(hf: dict, *, where: str = "config.json") -> GPTConfig:
    """Translate a Llama/Qwen2/Qwen3 config.json to a GPTConfig, refusing what does not map."""
    kind = hf.get("model_type")
    _refuse_unmapped(hf, where)
    rope = hf.get("rope_parameters") or {}  # transformers 5; 4.x keeps rope_theta at top level
    bias = bool(hf.get("attention_bias", False))
    try:
        return GPTConfig(
            family="llama",
            n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"],
            n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            n_embd=hf["hidden_size"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
            mlp_hidden=hf["intermediate_size"],
            block_size=hf.get("max_position_embeddings", 2048),
            vocab_size=hf["vocab_size"],
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bias=bias and kind != "qwen2",
            qkv_bias=True if kind == "qwen2" else bias,  # Qwen2 always has q/k/v biases
            qk_norm=kind == "qwen3",
            dropout=0.0,  # inference default; fine-tuning sets its own
        )
    except KeyError as e:
        raise GptkitError(
            f"{where} has no {e.args[0]!r}; is it a complete {kind} config?"
        ) from None
    except ValueError as e:
        raise GptkitError(
            f"{where}: invalid {kind} shape ({'; '.join(str(e).splitlines())})"
        ) from None


def _refuse_unmapped(hf: dict, where: str):
    """One line naming the first config key gptkit cannot reproduce exactly."""
    rope_type = (hf.get("rope_parameters") or {}).get("rope_type", "default")
    scaling = hf.get("rope_scaling") or {}  # transformers 4.x; 5.x folds it into rope_parameters
    scaling_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else None
    checks = [
        ("rope_scaling", scaling if scaling_type not in (None, "default") else None),
        ("rope_parameters.rope_type", rope_type if rope_type != "default" else None),
        ("use_sliding_window", hf.get("use_sliding_window") or None),
        ("attention_bias", True if hf.get("model_type") == "qwen3" and hf.get("attention_bias")
         else None),
        ("hidden_act", hf.get("hidden_act", "silu") if hf.get("hidden_act", "silu") != "silu"
         else None),
        ("mlp_bias", hf.get("mlp_bias") if hf.get("mlp_bias", False) != hf.get(
            "attention_bias", False) and hf.get("model_type") == "llama" else None),
        ("layer_types", hf.get("layer_types") if set(hf.get("layer_types") or ["full_attention"])
         != {"full_attention"} else None),
    ]  # fmt: skip
    for key, value in checks:
        if value is not None:
            raise GptkitError(
                f"{where}: {key}={value!r} has no exact gptkit equivalent (supported: default "
                "RoPE, full attention in every layer, SiLU gating); use the model with transformers"
            )


def to_gptkit(state: dict, config: GPTConfig, *, where: str) -> dict:
    """HF state dict -> gptkit keys: q/k/v stacked into c_attn, vocab rows padded."""
    out, qkv = {}, {}
    for key, t in state.items():
        key = key.removeprefix("model.")
        if key == "embed_tokens.weight":
            out["transformer.wte.weight"] = pad_rows(t, config.padded_vocab_size)
        elif key == "norm.weight":
            out["transformer.ln_f.weight"] = t
        elif key == "lm_head.weight":
            if not config.tie_embeddings:  # a tied file may still carry a copy: ignore it
                out["head.weight"] = pad_rows(t, config.padded_vocab_size)
        elif m := _KEY.match(key):
            layer, name, kind = m.groups()
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((layer, kind), {})[name[10]] = t
            elif name in _LAYER:
                out[f"transformer.h.{layer}.{_LAYER[name]}.{kind}"] = t
            else:
                out[key] = t  # reported as unexpected by the key check
        elif not key.endswith("rotary_emb.inv_freq"):  # a buffer some old files carry
            out[key] = t
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise GptkitError(f"weights in {where}: layer {layer} lacks some of q/k/v_proj.{kind}")
        stacked = torch.cat([parts["q"], parts["k"], parts["v"]])
        out[f"transformer.h.{layer}.attn.c_attn.{kind}"] = stacked
    return {k: v.contiguous() for k, v in out.items()}


def unmapped(c: GPTConfig) -> str | None:
    """The first model key the Llama/Qwen formats cannot express, as `key=value`, or None."""
    want = {"pos_emb": "rope", "norm": "rmsnorm", "norm_gain": True, "mlp": "swiglu",
            "logit_softcap": 0.0}  # fmt: skip
    bad = next((f"{k}={getattr(c, k)}" for k, v in want.items() if getattr(c, k) != v), None)
    if bad is None and c.bias and not c.qkv_bias:
        bad = f"bias={c.bias} with qkv_bias={c.qkv_bias}"
    if bad is None and c.qk_norm and c.qkv_bias:  # Qwen3's QK-norm layers come without biases
        bad = f"qk_norm={c.qk_norm} with qkv_bias={c.qkv_bias}"
    return bad


def model_type(c: GPTConfig) -> str:
    """qwen3 (QK-norm), qwen2 (biases on q/k/v only) or llama."""
    if c.qk_norm:
        return "qwen3"
    return "qwen2" if c.qkv_bias and not c.bias else "llama"


def to_hf(model: GPT) -> dict:
    """gptkit state dict -> HF Llama/Qwen keys: c_attn split into q/k/v, vocab padding cropped."""
    c, out = model.config, {}
    q_rows, kv_rows = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    inverse = {v: k for k, v in _LAYER.items()}
    for key, t in model.state_dict().items():
        t = t.detach().cpu()
        if key == "transformer.wte.weight":
            out["model.embed_tokens.weight"] = t[: c.vocab_size]
        elif key == "transformer.ln_f.weight":
            out["model.norm.weight"] = t
        elif key == "head.weight":
            out["lm_head.weight"] = t[: c.vocab_size]
        else:
            layer, name, kind = re.match(
                r"^transformer\.h\.(\d+)\.(.+)\.(weight|bias)$", key
            ).groups()
            prefix = f"model.layers.{layer}"
            if name == "attn.c_attn":
                q, k, v = t.split([q_rows, kv_rows, kv_rows])
                for part, x in zip("qkv", (q, k, v), strict=True):
                    out[f"{prefix}.self_attn.{part}_proj.{kind}"] = x
            else:
                out[f"{prefix}.{inverse[name]}.{kind}"] = t
    return {k: v.contiguous().clone() for k, v in out.items()}


def hf_config(model: GPT, eot_id: int | None) -> dict:
    """config.json for the Llama/Qwen model `model` is."""
    c, kind = model.config, model_type(model.config)
    config = {
        "architectures": [_ARCH[kind]], "model_type": kind, "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd, "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim, "hidden_act": "silu",
        "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "tie_word_embeddings": c.tie_embeddings, "attention_dropout": 0.0,
        "bos_token_id": eot_id, "eos_token_id": eot_id,
        "dtype": str(model.transformer.wte.weight.dtype).removeprefix("torch."),
    }  # fmt: skip
    if kind != "qwen2":
        config["attention_bias"] = c.bias
    if kind == "llama":
        config["mlp_bias"] = c.bias
    else:
        config["use_sliding_window"] = False
    return config
