"""`GPTConfig` (the model's shape) and `SampleConfig` (how it generates) as plain data.

Stdlib only, so `gptkit.config` (and with it `gptkit prepare` and `--print-config`) can read and
check a model section without importing torch. `gptkit.model.gpt` re-exports it beside the modules
that use it. The docstring under each field is the config reference's doc column.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True, slots=True)
class GPTConfig:
    n_layer: int = 6
    """number of transformer blocks"""
    n_head: int = 6
    """attention heads per block"""
    n_embd: int = 384
    """width of the residual stream"""
    block_size: int = 256
    """longest context in tokens (learned position embeddings)"""
    vocab_size: int | None = None
    """tokenizer vocabulary; null = taken from the data's meta.json"""
    dropout: float = 0.0
    """dropout on embeddings, attention and residual paths (0 for pretraining is fine)"""
    bias: bool = True
    """biases in Linear and LayerNorm layers (GPT-2 has them)"""
    pad_vocab_to: int = 64
    """round the embedding table up to a multiple of this (faster matmuls); 1 = no padding"""

    def __post_init__(self):
        problems = []
        for name in ("n_layer", "n_head", "n_embd", "block_size", "pad_vocab_to"):
            if getattr(self, name) < 1:
                problems.append(f"`model.{name}` must be >= 1, got {getattr(self, name)}")
        if self.n_head >= 1 and self.n_embd % self.n_head:
            problems.append(
                f"`model.n_embd` ({self.n_embd}) must be divisible by `model.n_head` "
                f"({self.n_head}); change one of them"
            )
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
