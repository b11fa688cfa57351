"""The one language-model evaluator: summed NLL and target count over ranks, then metrics.

Pretraining's val loss, a fine-tune's LM/SFT val metrics and `gptkit eval` all call
`lm_sums` then `lm_metrics`, so a loss means the same thing everywhere: the mean NLL per target
token over every batch and rank (not a mean of per-batch means, which weights short batches up).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from gptkit.train import runtime

PPL_CAP = 50.0  # exp(50) ~ 5e21: a diverged model's perplexity is "huge", never inf/overflow


@torch.no_grad()
def lm_sums(model, batches: Iterable, rt=None) -> tuple[float, int]:
    """(summed next-token NLL in nats, number of targets) over `(x, y)` batches and all ranks.

    Targets of -100 are ignored (prompt tokens of SFT, padding)."""
    nll, count = 0.0, 0
    for x, y in batches:
        with runtime.autocast(rt) if rt is not None else contextlib.nullcontext():
            logits = model(x)
        flat = logits.float().view(-1, logits.size(-1))
        nll += F.cross_entropy(flat, y.view(-1), ignore_index=-100, reduction="sum").item()
        count += int((y != -100).sum())
    if rt is not None:
        nll, count = runtime.all_reduce_sum([nll, float(count)], rt)
    return nll, int(count)


def lm_metrics(nll: float, count: int, *, tokens_per_byte: float | None = None) -> dict:
    """loss (nats per token), perplexity and, when the text's bytes are known, bits per byte."""
    loss = nll / max(count, 1)
    out = {"loss": loss, "ppl": math.exp(min(loss, PPL_CAP))}
    if tokens_per_byte is not None:
        out["bpb"] = loss / math.log(2) * tokens_per_byte  # nats/token -> bits/byte
    return out
