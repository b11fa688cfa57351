"""Autoregressive sampling with the KV cache: `generate(model, idx, ...)` yields token columns.

The prompt is prefilled once through the modules, then each step feeds one token through
`Decoder` (decode.py: the same values with far fewer ops). A full cache cannot be shifted
exactly (see `_advance`): when it fills up, the context slides by re-prefilling
the last `block_size // 2` tokens (one re-prefill per block_size // 2 new tokens keeps the cost
per token within ~2x of a pure cached step). Call `model.eval()` first; the model is not changed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from gptkit.model.decode import Decoder
from gptkit.model.gpt import GPT


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, V) -> (B,); temperature 0 = greedy (argmax)."""
    logits = logits.float()
    if repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        logits = apply_top_p(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to >= top_p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop = before >= top_p  # the set was complete before this token; the top token always stays
    drop[..., 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float):
    """CTRL / HF penalty on tokens in `seen` (B, L): positive logits / penalty, negative * it."""
    score = logits.gather(-1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(-1, seen, score)


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eot_id: int | None = None,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), up to `max_new_tokens` times.

    Prompts of different lengths go in left-padded, with `attention_mask` (B, T) 1 = real
    token: each row then decodes as it would alone (its own positions, padding never attended;
    past the context all rows slide together, when the longest one fills it). With `eot_id`,
    rows that emitted it keep yielding `eot_id` and generation ends once every row has;
    otherwise stopping is the caller's choice (break out of the loop).
    """
    assert idx.dim() == 2 and idx.shape[1] >= 1, "idx must be (B, T) with at least one token"
    B, T0 = idx.shape
    filters = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    # Every token so far: the sliding window and the repetition penalty read from it.
    seq = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=idx.device)
    seq[:, :T0] = idx
    keep = torch.ones_like(seq, dtype=torch.bool)  # False where a row is left padding
    if attention_mask is not None:
        keep[:, :T0] = attention_mask.bool()
    cache = model.new_cache(B, max_len=T0 + max_new_tokens)
    decoder = Decoder.build(model)  # None: every step through the modules (e.g. LoRA layers)
    start = max(0, T0 - model.config.block_size)
    logits = _forward(model, cache, seq[:, start:T0], keep[:, start:T0])
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    for n in range(T0, T0 + max_new_tokens):
        seen = None
        if repetition_penalty != 1.0:
            # padding is not "seen" text: the row's newest token stands in (a repeat is harmless)
            seen = torch.where(keep[:, :n], seq[:, :n], seq[:, n - 1 : n])
        tok = sample_next(logits, repetition_penalty=repetition_penalty, seen=seen, **filters)
        if eot_id is not None:
            tok = tok.masked_fill(finished, eot_id)
            finished |= tok == eot_id
        seq[:, n] = tok
        yield tok
        if n + 1 == T0 + max_new_tokens or (eot_id is not None and bool(finished.all())):
            return
        logits = _advance(model, decoder, cache, seq[:, : n + 1], keep[:, : n + 1])


def _advance(model: GPT, decoder, cache, seq: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Feed the newest token of `seq`; when the cache is full, slide the window instead."""
    block = model.config.block_size
    if cache.pos < block:
        if decoder is not None:
            return decoder.step(seq[:, -1], cache)
        return _forward(model, cache, seq[:, -1:])
    # A full cache is rebuilt from the newest tokens. Learned positions cannot shift at all;
    # RoPE keys could (scores depend on relative positions only), but the cached keys of every
    # layer above the first were computed while the dropped tokens were still in context, so a
    # shifted cache is not what the model computes on the window: every family re-prefills.
    # Half a block, not a full one: one re-prefill then buys block/2 cheap steps, and the model
    # still sees at least block/2 tokens of context.
    cache.reset()
    window = max(1, block // 2)
    return _forward(model, cache, seq[:, -window:], keep[:, -window:])


def _forward(model: GPT, cache, idx: torch.Tensor, keep=None) -> torch.Tensor:
    """Append `idx` (B, T) to the cache -> logits (B, V) of its last position."""
    mask = None if keep is None or bool(keep.all()) else keep.long()
    h = model.transformer(idx, attention_mask=mask, cache=cache)
    # Only the last position is sampled from: skip the (T, vocab) projection of the others.
    return model.head(h[:, -1:], wte=model.transformer.wte.weight)[:, -1]
