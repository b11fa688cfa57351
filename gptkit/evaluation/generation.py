"""Generation benchmarks: complete every row's prompt, score the outputs against references.

    gptkit eval runs/demo --generate rows.jsonl [--metrics bleu,rougeL] [--predictions out.jsonl]
Prompts are generated together in left-padded batches of similar lengths (`attention_mask`
keeps each row decoding as it would alone) with `gptkit sample`'s knobs; eval's defaults are
greedy and 64 new tokens. A chat row's prompt is `gptkit.data.chat.render_prompt` (and its
end-of-turn tokens end outputs) when the tokenizer has a chat template or ChatML tokens, else
the turns' contents joined by newlines. metrics.py scores the outputs.
"""

from __future__ import annotations

import torch

from gptkit.errors import GptkitError
from gptkit.evaluation import metrics
from gptkit.evaluation import rows as eval_rows
from gptkit.evaluation.lm import load_lm
from gptkit.model.config import SampleConfig
from gptkit.model.generate import generate

DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "seed": 1337}
# SampleConfig field -> the eval flag that sets it, so messages name what the user typed
_FLAGS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k",
          "top_p": "--top-p", "seed": "--seed", "stop": "--stop"}  # fmt: skip


def sampling(**flags) -> SampleConfig:
    """Generation settings from the flags that were given (None = eval's default)."""
    given = {k: v for k, v in flags.items() if v is not None}
    if any(s == "" for s in given.get("stop", [])):
        raise GptkitError("--stop must not be empty; pass the text that ends an output")
    try:
        return SampleConfig(**{**DEFAULTS, **given})
    except ValueError as e:
        message = "; ".join(str(e).splitlines())
        for field, flag in _FLAGS.items():
            message = message.replace(f"`{field}`", f"`{flag}`")
        raise GptkitError(f"{message}; fix the flag (see gptkit eval --help)") from None


def score_file(
    path,
    file: str,
    *,
    cfg: SampleConfig,
    metric_names=metrics.METRICS,
    predictions: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
) -> dict:
    """Corpus scores {metric: value, "n": rows} of the model at `path` on the rows of `file`;
    `predictions` also gets every row with its output and per-row scores."""
    pairs = eval_rows.read(file, "--generate")
    examples = eval_rows.generation_rows(pairs)
    metrics.check_installed(metric_names)
    eval_rows.check_output(predictions)
    model, tok = load_lm(path, device)
    chat = _chat(tok)
    prompts = [_prompt_ids(tok, ex, chat) for ex in examples]
    ends = chat.stop_ids(tok) if hasattr(chat, "stop_ids") else [tok.eot_id]  # + end of turn
    outputs = complete(model, tok, prompts, cfg, batch_size=batch_size, end_ids=ends)
    refs = [ex["references"] for ex in examples]
    corpus, per_row, note = metrics.score(outputs, refs, metric_names)
    if predictions is not None:
        rows = [{**row, "output": out, "scores": s}
                for (_, row), out, s in zip(pairs, outputs, per_row, strict=True)]  # fmt: skip
        eval_rows.write_jsonl(predictions, rows)
    return {**corpus, "n": len(outputs), **({"meteor_note": note} if note else {})}


def _prompt_ids(tok, example: dict, chat) -> list[int]:
    if "prompt" in example:
        ids = tok.encode(example["prompt"])
    elif chat is not None:
        ids = chat.render_prompt(tok, example["messages"])
    else:  # no chat template: the turns' text, one per line, the answer on a new line
        ids = tok.encode("".join(m["content"] + "\n" for m in example["messages"]))
    return ids or [tok.eot_id]  # an empty prompt starts a new document


def _chat(tok):
    """gptkit.data.chat where it exists and can render this tokenizer's conversations (its own
    template or ChatML tokens), else None."""
    try:
        from gptkit.data import chat
    except ImportError as e:
        if e.name not in ("gptkit.data.chat", "gptkit.data"):
            raise
        return None
    has_chat = getattr(chat, "has_chat", lambda tok: True)
    return chat if hasattr(chat, "render_prompt") and has_chat(tok) else None


def complete(model, tok, prompts: list[list[int]], cfg: SampleConfig, *, batch_size: int = 8,
             end_ids=None):  # fmt: skip
    """The completion (text) of every prompt, in prompt order; batches group similar lengths.
    A row ends at any of `end_ids` (default: end-of-text), a stop string or max_new_tokens."""
    ends = set(end_ids or [tok.eot_id])
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        ids = order[start : start + batch_size]
        texts = _complete_batch(model, tok, [prompts[i] for i in ids], cfg, gen, ends)
        for i, text in zip(ids, texts, strict=True):
            out[i] = text
    return out


def _complete_batch(model, tok, prompts, cfg: SampleConfig, gen, ends) -> list[str]:
    device = next(model.parameters()).device
    B, T = len(prompts), max(map(len, prompts))
    idx = torch.full((B, T), tok.eot_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding: every row's next token is at column T
        idx[b, T - len(p) :] = torch.tensor(p)
        mask[b, T - len(p) :] = 1
    ragged = None if bool(mask.all()) else mask.to(device)
    knobs = {k: getattr(cfg, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p")}
    tokens: list[list[int]] = [[] for _ in prompts]
    done: list[str | None] = [None] * B  # the finished text of each row
    for column in generate(model, idx.to(device), attention_mask=ragged, eot_id=tok.eot_id,
                           generator=gen, **knobs):  # fmt: skip
        for b, token in enumerate(column.tolist()):
            if done[b] is not None:
                continue
            if token in ends:
                done[b] = tok.decode(tokens[b])
                continue
            tokens[b].append(token)
            if cfg.stop:  # decode it all: a character split across tokens comes out whole
                done[b] = _before_stop(tok.decode(tokens[b]), cfg.stop)
        if all(d is not None for d in done):
            break
    return [d if d is not None else tok.decode(t) for d, t in zip(done, tokens, strict=True)]


def _before_stop(text: str, stops: list[str]) -> str | None:
    """`text` cut at its first stop string, or None when it holds none."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text[:cut] if cut >= 0 else None
