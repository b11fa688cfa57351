"""`gptkit eval PATH`: loss, perplexity and bits-per-byte of a model on a prepared split.

    gptkit eval runs/demo [--data data/demo] [--split val] [--max-batches 50] [--batch-size 8]
PATH is a run, checkpoint, `gptkit export` or local HF GPT-2 dir (exports and HF dirs need
--data). Windows are read in order, so the numbers are deterministic. Fine-tuned
classifiers/regressors report the RUN_DIR/metrics.json that `gptkit finetune` wrote.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from gptkit.data.batches import ShardBatches
from gptkit.data.shards import META_NAME
from gptkit.data.shards import read_meta as read_data_meta
from gptkit.errors import GptkitError
from gptkit.model import hf
from gptkit.train import checkpoint, runtime
from gptkit.train.loop import lm_loss


def run(args) -> int:
    """CLI entry: evaluate, then print a table or one JSON object."""
    result = evaluate(args.path, data=args.data, split=args.split, max_batches=args.max_batches,
                      batch_size=args.batch_size, device=args.device)  # fmt: skip
    print(json.dumps(result) if args.json else format_table(result))
    sys.stdout.flush()
    return 0


def evaluate(path, *, data=None, split="val", max_batches=50, batch_size=8, device="auto") -> dict:
    """Score the model at `path`: LM metrics on a data split, or a head's stored metrics."""
    if max_batches < 1 or batch_size < 1:
        raise GptkitError("--max-batches and --batch-size must be >= 1")
    dev = runtime.resolve_device(device)
    export = checkpoint.export_config(path)  # a `gptkit export --format safetensors` dir
    if export is not None:
        _check_export(path, export, data)
        tok_spec, step = checkpoint.load_tokenizer(path).spec(), export.get("step")
        load = lambda: checkpoint.load_model(path)  # noqa: E731
    elif str(path).startswith("hf:") or hf.is_hf_dir(path):
        if data is None:
            raise GptkitError(
                f"{path} is a Hugging Face dir with no training data of its own; pass "
                "--data DIR (a folder written by 'gptkit prepare' with prepare.tokenizer=gpt2)"
            )
        tok_spec, step = checkpoint.load_tokenizer(path).spec(), None
        load = lambda: hf.load_hf(path)  # noqa: E731 - loaded only once the data checks pass
    else:
        ckpt = checkpoint.find(path)
        meta = checkpoint.read_meta(ckpt)
        head = meta.get("head", {"name": "lm"})
        if head.get("name") != "lm":
            return head_metrics(ckpt, head["name"])
        tok_spec, step = meta.get("tokenizer"), meta.get("step")
        data = data if data is not None else _run_data_dir(ckpt, meta)
        load = lambda: checkpoint.model_from_checkpoint(ckpt)[0]  # noqa: E731
    data_meta = _check_data(data, split, tok_spec)
    model = load().to(dev).eval()
    _check_vocab(data, data_meta, model.config.vocab_size)
    info = data_meta["splits"][split]
    T = _context(model.config.block_size, info, f"the {split} split of {data}")
    scores = score(model, data, split, block_size=T, max_batches=max_batches, batch_size=batch_size)
    tokens_per_byte = info["tokens"] / info["text_bytes"] if info.get("text_bytes") else None
    bpb = scores["loss"] / math.log(2) * tokens_per_byte if tokens_per_byte else None
    return {"path": str(path), "step": step, "data": str(data), "split": split, **scores,
            "ppl": math.exp(min(scores["loss"], 50.0)), "bpb": bpb,
            "tokens_per_byte": tokens_per_byte}  # fmt: skip


def _check_export(path, export: dict, data):
    """An exported model is scored on --data, and only as a language model."""
    head = export.get("head", {"name": "lm"}).get("name")
    if head != "lm":
        raise GptkitError(
            f"{path} is an exported {head} model; eval scores language models (a fine-tuned "
            "run dir reports its metrics.json; 'gptkit predict' labels rows)"
        )
    if data is None:
        raise GptkitError(
            f"{path} is an exported model dir with no training data of its own; pass --data DIR "
            "(a folder written by 'gptkit prepare' with the model's tokenizer)"
        )


def _run_data_dir(ckpt: Path, meta: dict) -> str:
    """The data.dir the run was trained on, if it is still there."""
    data = meta["config"].get("data", {}).get("dir")
    if data is None or not (Path(data) / META_NAME).is_file():
        raise GptkitError(
            f"the data this model was trained on ({data}, from {ckpt}/meta.json) is not there; "
            "pass --data DIR (a folder written by 'gptkit prepare' with the same tokenizer)"
        )
    return data


def _check_data(data, split: str, tok_spec: dict | None) -> dict:
    """The data dir's meta.json, after checking the split exists and the tokenizer matches."""
    data_meta = read_data_meta(data)
    theirs = data_meta.get("tokenizer", {})
    if tok_spec is not None and theirs != tok_spec:
        raise GptkitError(
            f"vocab mismatch: {data} was tokenized with {_tok_name(theirs)} but the model uses "
            f"{_tok_name(tok_spec)}; prepare the data with prepare.tokenizer={tok_spec.get('name')}"
            " or pass --data with a matching folder"
        )
    if not data_meta["splits"].get(split, {}).get("tokens"):
        raise GptkitError(
            f"the {split} split of {data} is empty; choose --split train or prepare again with "
            "a larger prepare.val_fraction"
        )
    return data_meta


def _check_vocab(data, data_meta: dict, vocab_size: int):
    """Every token id of the data must have an embedding row."""
    if data_meta["tokenizer"]["vocab_size"] > vocab_size:
        raise GptkitError(
            f"vocab mismatch: {data} has {data_meta['tokenizer']['vocab_size']} token ids, the "
            f"model only {vocab_size}; pass --data prepared with the model's tokenizer"
        )


def _tok_name(spec: dict) -> str:
    return f"{spec.get('name', spec.get('kind', '?'))} (vocab {spec.get('vocab_size', '?')})"


@torch.no_grad()
def score(model, data, split: str, *, block_size: int, max_batches: int, batch_size: int) -> dict:
    """Mean next-token loss (nats) over the first `max_batches * batch_size` windows, in order."""
    p, T = model.transformer.wte.weight, block_size
    batches = ShardBatches(data, split, block_size=T, batch_size=batch_size,
                           sampling="sequential", device=p.device,
                           vocab_size=model.config.vocab_size)  # fmt: skip
    windows = min(max_batches * batch_size, batches.num_windows)  # no window scored twice
    total, done = 0.0, 0
    while done < windows:
        x, y = batches.next_batch()
        rows = min(batch_size, windows - done)
        x, y = x[:rows], y[:rows]
        total += lm_loss(model, (x, y)).item() * y.numel()
        done += rows
    return {"loss": total / (windows * T), "tokens": windows * T, "windows": windows, "context": T}


def _context(block_size: int, info: dict, where: str) -> int:
    """The model's block_size, shortened when the split's shards are smaller than one window."""
    longest = max((s["tokens"] for s in info["shards"]), default=0)
    if longest < 2:
        raise GptkitError(f"{where} has under 2 tokens in every shard; prepare more data")
    return min(block_size, longest - 1)


def head_metrics(ckpt: Path, head: str) -> dict:
    """The metrics a fine-tuned head run stored in RUN_DIR/metrics.json."""
    run_dir = ckpt.parent.parent  # RUN_DIR/checkpoints/step_N
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise GptkitError(
            f"{ckpt} has a {head} head and {path} does not exist (gptkit finetune writes it when "
            "a run ends); finish the run, or score rows with 'gptkit predict'"
        )
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GptkitError(
            f"{path} is unreadable ({e}); rerun the fine-tune to rewrite it"
        ) from None
    return {"path": str(run_dir), "head": head, "metrics": stored}


def format_table(result: dict) -> str:
    """A short human-readable table of an `evaluate` result."""
    if "head" in result:
        rows = [f"  {k:<20}{v:>12.4f}" for k, v in _final_then_best(result["metrics"])]
        title = f"{result['path']} ({result['head']} head, from metrics.json)"
        return "\n".join([title, *(rows or ["  (no metrics stored)"])])
    bpb = "n/a" if result["bpb"] is None else f"{result['bpb']:.4f}"
    at = f" (step {result['step']})" if result.get("step") is not None else ""
    return "\n".join([
        f"{result['path']}{at} on {result['data']} [{result['split']}]: "
        f"{result['windows']} windows x {result['context']} tokens = {result['tokens']:,} tokens",
        f"  {'loss (nats)':<16}{result['loss']:>12.4f}",
        f"  {'perplexity':<16}{result['ppl']:>12.4f}",
        f"  {'bits/byte':<16}{bpb:>12}",
    ])  # fmt: skip


def _final_then_best(m: dict):
    """("final val_acc", 0.97), ... from a finetune summary {"final": {...}, "best": {...}}."""
    for part in ("final", "best"):
        for k, v in (m.get(part) or {}).items():
            if k != "step" and isinstance(v, (int, float)):
                yield f"{part} {k}", v
