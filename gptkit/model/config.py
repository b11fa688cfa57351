"""`GPTConfig` (the model's shape) and `SampleConfig` (how it generates) as plain data.

Stdlib only, so `gptkit.config` (and with it `gptkit prepare` and `--print-config`) can read and
check a model section without importing torch. `gptkit.model.gpt` re-exports it beside the modules
that use it. The docstring under each field is the config reference's doc column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# What each `model.family` fills in for keys left unset (null). Explicit keys always win.
FAMILIES = {
    # GPT-2 (2019): learned positions, LayerNorm with bias, GELU, tied embeddings
    "gpt2": dict(pos_emb="learned", norm="layernorm", norm_eps=1e-5, norm_gain=True, mlp="gelu",
                 bias=True, qk_norm=False, tie_embeddings=True, logit_softcap=0.0,
                 zero_init_proj=False),
    # Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, untied LM head
    "llama": dict(pos_emb="rope", norm="rmsnorm", norm_eps=1e-5, norm_gain=True, mlp="swiglu",
                  bias=False, qk_norm=False, tie_embeddings=False, logit_softcap=0.0,
                  zero_init_proj=False, gqa=True),
    # nanochat / modded-nanogpt: RoPE, QK-norm, ReLU^2, parameter-free RMSNorm, no biases,
    # untied, zero-initialised output projections, logits soft-capped at 15
    "modern": dict(pos_emb="rope", norm="rmsnorm", norm_eps=1e-5, norm_gain=False, mlp="relu2",
                   bias=False, qk_norm=True, tie_embeddings=False, logit_softcap=15.0,
                   zero_init_proj=True),
}  # fmt: skip


@dataclass(kw_only=True, slots=True)
class GPTConfig:
    n_layer: int = 6
    """number of transformer blocks"""
    n_head: int = 6
    """attention heads per block"""
    n_embd: int = 384
    """width of the residual stream"""
    block_size: int = 256
    """longest context in tokens"""
    vocab_size: int | None = None
    """tokenizer vocabulary; null = taken from the data's meta.json"""
    dropout: float = 0.0
    """dropout on embeddings, attention and residual paths (0 for pretraining is fine)"""
    pad_vocab_to: int = 64
    """round the embedding table up to a multiple of this (faster matmuls); 1 = no padding"""
    family: Literal["gpt2", "llama", "modern"] = "gpt2"
    """architecture preset filling the keys below that are left null: gpt2 | llama | modern"""
    pos_emb: Literal["learned", "rope"] | None = None
    """positions: learned absolute embeddings (GPT-2) or rotary (RoPE)"""
    rope_theta: float = 10000.0
    """RoPE base frequency"""
    norm: Literal["layernorm", "rmsnorm"] | None = None
    """normalisation layer"""
    norm_eps: float | None = None
    """epsilon of every norm layer"""
    norm_gain: bool | None = None
    """norms have a learned gain (false = parameter-free, as in nanochat)"""
    mlp: Literal["gelu", "swiglu", "relu2"] | None = None
    """MLP: GELU (GPT-2), SwiGLU (Llama) or ReLU squared (modded-nanogpt)"""
    mlp_hidden: int | None = None
    """MLP hidden width; null = 4 x n_embd (gelu, relu2) or 8/3 x n_embd rounded up to 64 (swiglu)"""
    head_dim: int | None = None
    """width of each attention head; null = n_embd / n_head (Qwen3 sets it explicitly)"""
    n_kv_head: int | None = None
    """key/value heads (grouped-query attention; 1 = multi-query); null = n_head, or n_head/2
    when the family is llama and n_head is even"""
    qk_norm: bool | None = None
    """RMS-normalise queries and keys per head before RoPE (Qwen3, nanochat)"""
    tie_embeddings: bool | None = None
    """the LM head reuses the token embedding matrix"""
    bias: bool | None = None
    """biases in Linear and LayerNorm layers (GPT-2 has them)"""
    qkv_bias: bool | None = None
    """biases on the query/key/value projection only; null = `bias` (Qwen2: true with bias false)"""
    logit_softcap: float | None = None
    """cap logits smoothly at +-this value (cap * tanh(logits / cap)); 0 = off"""
    zero_init_proj: bool | None = None
    """initialise the attention and MLP output projections to zero (nanochat)"""

    def __post_init__(self):
        _fill_from_family(self)
        problems = []
        for name in ("n_layer", "n_head", "n_embd", "block_size", "pad_vocab_to", "n_kv_head",
                     "mlp_hidden", "head_dim"):  # fmt: skip
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"`model.{name}` must be >= 1, got {getattr(self, name)}")
        if self.head_dim is None and self.n_head >= 1:
            problems.append(
                f"`model.n_embd` ({self.n_embd}) must be divisible by `model.n_head` "
                f"({self.n_head}); change one of them"
            )
        problems += _option_problems(self)
        if self.vocab_size is not None and self.vocab_size < 1:
            problems.append(f"`model.vocab_size` must be >= 1, got {self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"`model.dropout` must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("\n".join(problems))

    @property
    def padded_vocab_size(self) -> int:
        assert self.vocab_size is not None, "vocab_size must be resolved before building a model"
        m = self.pad_vocab_to
        return (self.vocab_size + m - 1) // m * m


def _fill_from_family(c: GPTConfig):
    """Keys left null take the family's value; derived sizes follow from the shape."""
    preset = FAMILIES.get(c.family, FAMILIES["gpt2"])  # an unknown family is reported later
    for key, value in preset.items():
        if key != "gqa" and getattr(c, key) is None:
            setattr(c, key, value)
    if c.head_dim is None and c.n_head >= 1 and c.n_embd % c.n_head == 0:
        c.head_dim = c.n_embd // c.n_head  # else stays null: reported with both keys
    if c.qkv_bias is None:
        c.qkv_bias = c.bias
    if c.n_kv_head is None:
        gqa = preset.get("gqa") and c.n_head % 2 == 0
        c.n_kv_head = c.n_head // 2 if gqa else c.n_head
    if c.mlp_hidden is None:
        # SwiGLU has three matrices instead of two: 8/3 keeps the parameter count of 4x
        c.mlp_hidden = -(-8 * c.n_embd // 3 // 64) * 64 if c.mlp == "swiglu" else 4 * c.n_embd


def _option_problems(c: GPTConfig) -> list[str]:
    """Combinations of architecture keys that cannot work, each naming both keys."""
    problems = []
    if c.n_kv_head >= 1 and c.n_head % c.n_kv_head:
        problems.append(
            f"`model.n_head` ({c.n_head}) must be a multiple of `model.n_kv_head` "
            f"({c.n_kv_head}); choose n_kv_head from the divisors of n_head"
        )
    if c.pos_emb == "rope" and c.head_dim and c.head_dim % 2:
        problems.append(
            f"`model.pos_emb` rope needs an even `model.head_dim`, got {c.head_dim}; change "
            "head_dim (or n_embd / n_head)"
        )
    if c.rope_theta <= 0 or c.norm_eps <= 0:
        problems.append("`model.rope_theta` and `model.norm_eps` must be > 0")
    if c.logit_softcap < 0:
        problems.append(f"`model.logit_softcap` must be >= 0 (0 = off), got {c.logit_softcap}")
    if c.norm == "layernorm" and c.bias and not c.norm_gain:
        problems.append(
            "`model.norm_gain` false with `model.bias` true: a LayerNorm without a gain has no "
            "bias either; set bias false or norm_gain true"
        )
    return problems


@dataclass(kw_only=True, slots=True)
class SampleConfig:
    prompt: str = ""
    """text to continue ("" = start from end-of-text)"""
    max_new_tokens: int = 200
    """tokens to generate per sample"""
    temperature: float = 0.8
    """softmax temperature; 0 = greedy"""
    top_k: int | None = None
    """keep only the k most likely tokens"""
    top_p: float | None = None
    """nucleus sampling: smallest set of tokens with probability >= p"""
    repetition_penalty: float = 1.0
    """divide logits of already-seen tokens by this (> 1 discourages repeats)"""
    num_samples: int = 1
    """samples generated together in one batch"""
    seed: int = 1337
    """random seed (same seed, same text)"""
    stop: list[str] = field(default_factory=list)
    """strings that end a sample (end-of-text always does)"""

    def __post_init__(self):
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"`max_new_tokens` must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            problems.append(f"`temperature` must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            problems.append(f"`top_p` must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"`top_k` must be >= 1, got {self.top_k}")
        if self.num_samples < 1:
            problems.append(f"`num_samples` must be >= 1, got {self.num_samples}")
        if self.repetition_penalty <= 0:
            problems.append(f"`repetition_penalty` must be > 0, got {self.repetition_penalty}")
        if problems:
            raise ValueError("\n".join(problems))
