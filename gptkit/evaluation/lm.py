"""The language model under evaluation: load it with its tokenizer, score continuations.

`loglikelihoods(model, pairs)` sums log p(continuation | context) for token-id pairs, many per
forward: rows are sorted longest first, right-padded and masked with `attention_mask`.
`encode_pair` splits text the way lm-evaluation-harness does, so `--choices` and `--tasks`
score the same tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptkit import artifacts
from gptkit.errors import GptkitError
from gptkit.model.gpt import LMHead
from gptkit.train import runtime


def load_lm(path, device: str = "auto"):
    """(model in eval mode, tokenizer) of a run/checkpoint/export/HF dir with an LM head."""
    dev = runtime.resolve_device(device)
    art = artifacts.resolve(path)
    if art.head["name"] != "lm":
        raise GptkitError(
            f"{path} has a {art.head['name']} head; --generate, --choices and --tasks score "
            "language models (evaluate the pretrained run it was fine-tuned from)"
        )
    tok = art.tokenizer()
    model = art.load_model(dev)
    if dev.type == "cpu":  # bf16/fp16 weights: fp32 on CPU (see NOTES.md on CPU half precision)
        model = model.float()
    assert isinstance(model.head, LMHead), "an lm head spec builds an LMHead"
    if tok.vocab_size > model.config.vocab_size:
        raise GptkitError(
            f"{path}: tokenizer {tok.name} has {tok.vocab_size} ids but the model only "
            f"{model.config.vocab_size}; its metadata names the wrong tokenizer"
        )
    return model, tok


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval's TemplateLM makes them: the context's
    trailing whitespace moves to the continuation, the whole text is encoded once and split
    after the context's tokens; an empty context becomes the end-of-text token."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:
        cont = tok.encode(continuation)
        return ([tok.eot_id], cont) if cont[:1] != [tok.eot_id] else (cont[:1], cont[1:])
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def loglikelihoods(model, pairs, *, batch_size: int) -> list[tuple[float, bool]]:
    """(sum of log p of the continuation's tokens, whether greedy decoding yields them all) for
    each (context ids, continuation ids) pair. Longer inputs keep their last block_size tokens."""
    windows = [_window(ctx, cont, model.config.block_size) for ctx, cont in pairs]
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))  # less padding
    out: list = [None] * len(windows)
    for start in range(0, len(order), batch_size):
        ids = order[start : start + batch_size]
        for i, result in zip(ids, _score_batch(model, [windows[i] for i in ids]), strict=True):
            out[i] = result
    return out


def _window(ctx: list[int], cont: list[int], block: int) -> tuple[list[int], list[int]]:
    """(model input, targets): the last block+1 tokens, shifted; targets = the continuation."""
    assert cont, "a continuation has at least one token"
    seq = (ctx + cont)[-(block + 1) :]
    n = min(len(cont), len(seq) - 1)
    return seq[:-1], seq[-n:]


def _score_batch(model, windows) -> list[tuple[float, bool]]:
    device = next(model.parameters()).device
    B, T = len(windows), max(len(inp) for inp, _ in windows)
    x = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, (inp, _) in enumerate(windows):  # right padding: real tokens keep positions 0..L-1
        x[b, : len(inp)] = torch.tensor(inp)
        mask[b, : len(inp)] = 1
    padded = not bool(mask.all())
    logits = model(x.to(device), attention_mask=mask.to(device) if padded else None)  # (B, T, V)
    results = []
    for b, (inp, targets) in enumerate(windows):
        L, n = len(inp), len(targets)
        logp = F.log_softmax(logits[b, L - n : L].float(), dim=-1)  # (n, V)
        t = torch.tensor(targets, device=logp.device)
        ll = logp.gather(-1, t[:, None]).sum().item()
        results.append((ll, bool((logp.argmax(-1) == t).all())))
    return results
