"""`gptkit eval PATH`: loss, perplexity and bits-per-byte of a model on a prepared split.

    gptkit eval runs/demo [--data data/demo] [--split val] [--max-batches 50] [--batch-size 8]
    gptkit eval runs/demo --generate rows.jsonl | --choices rows.jsonl | --tasks NAMES
PATH is a run, checkpoint, `gptkit export` or local HF GPT-2 dir (exports and HF dirs need
--data). Windows are read in order, so the numbers are deterministic. Fine-tuned
classifiers/regressors report the RUN_DIR/metrics.json that `gptkit finetune` wrote.
Generation metrics, multiple choice and lm-eval tasks live in gptkit/evaluation/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gptkit import artifacts
from gptkit.data.batches import ShardBatches
from gptkit.data.shards import read_meta as read_data_meta
from gptkit.errors import GptkitError
from gptkit.evaluation import choices, generation, metrics, report
from gptkit.evaluation.optional import require
from gptkit.train import runtime
from gptkit.train.evaluate import lm_metrics, lm_sums

# flag -> the mode it belongs to ("" = loss on a prepared split): a flag given without its mode
# is a mistake to point out, not a setting to ignore; _DEFAULTS are the values that say "not given"
_MODE_FLAGS = {
    "--generate": ("metrics", "predictions", "max_new_tokens", "temperature", "top_k", "top_p",
                   "stop", "seed"),
    "--tasks": ("task_dir", "limit", "num_fewshot"),
    "": ("data", "split", "max_batches"),
}  # fmt: skip
_DEFAULTS = {"split": "val", "max_batches": 50}


def run(args) -> int:
    """CLI entry: evaluate, then print a table or one JSON object."""
    mode = _mode(args)
    if mode == "--generate":
        knobs = {k: getattr(args, k) for k in _MODE_FLAGS["--generate"][2:]}
        result = generation.score_file(
            args.path, args.generate, cfg=generation.sampling(**knobs),
            metric_names=metrics.parse_metrics(args.metrics), predictions=args.predictions,
            batch_size=args.batch_size, device=args.device)  # fmt: skip
        text = report.scores_table(result, args.path, args.generate)
    elif mode == "--choices":
        result = choices.score_file(args.path, args.choices, batch_size=args.batch_size,
                                    device=args.device)  # fmt: skip
        text = report.scores_table(result, args.path, args.choices)
    elif mode == "--tasks":
        require("lm_eval")
        from gptkit.evaluation import harness

        result = harness.run_tasks(args.path, args.tasks, task_dir=args.task_dir,
                                   limit=args.limit, num_fewshot=args.num_fewshot,
                                   batch_size=args.batch_size, device=args.device)  # fmt: skip
        text = report.tasks_table(result)
    else:
        result = evaluate(args.path, data=args.data, split=args.split,
                          max_batches=args.max_batches, batch_size=args.batch_size,
                          device=args.device)  # fmt: skip
        text = report.lm_table(result)
    print(json.dumps(result, default=str) if args.json else text)
    sys.stdout.flush()
    return 0


def _mode(args) -> str:
    """The benchmark asked for ("--generate", "--choices", "--tasks"; "" = loss), once every
    flag given belongs to it."""
    given = [f for f in ("--generate", "--choices", "--tasks") if getattr(args, f[2:]) is not None]
    mode = given[0] if given else ""
    for owner, names in _MODE_FLAGS.items():
        for name in (n for n in names if owner != mode):
            if getattr(args, name) not in (None, _DEFAULTS.get(name)):
                flag = "--" + name.replace("_", "-")
                needs = f"needs {owner}" if owner else f"is for loss evaluation, not {mode}"
                raise GptkitError(f"{flag} {needs}; drop it or change the mode")
    if args.batch_size < 1:
        raise GptkitError("--batch-size must be >= 1")
    return mode


def evaluate(path, *, data=None, split="val", max_batches=50, batch_size=8, device="auto") -> dict:
    """Score the model at `path`: LM metrics on a data split, or a head's stored metrics."""
    if max_batches < 1 or batch_size < 1:
        raise GptkitError("--max-batches and --batch-size must be >= 1")
    dev = runtime.resolve_device(device)
    art = artifacts.resolve(path)
    if art.kind == "checkpoint" and art.head["name"] != "lm":
        return report.head_metrics(art.dir, art.head["name"])
    _check_lm(art, data)
    if data is None:  # a run is scored on the data it was trained on
        data = _run_data_dir(art.dir, art.meta)
    tok_spec = art.tokenizer_spec()
    data_meta = _check_data(data, split, tok_spec)
    model = art.load_model(dev)  # loaded only once the data checks pass
    _check_vocab(data, data_meta, model.config.vocab_size)
    info = data_meta["splits"][split]
    T = _context(model.config.block_size, info, f"the {split} split of {data}")
    windows, batches = _windows(model, data, split, T, max_batches, batch_size)
    tokens_per_byte = info["tokens"] / info["text_bytes"] if info.get("text_bytes") else None
    nll, count = lm_sums(model, batches)
    scores = lm_metrics(nll, count, tokens_per_byte=tokens_per_byte)
    return {"path": str(path), "step": art.step, "data": str(data), "split": split,
            "tokens": count, "windows": windows, "context": T, **scores, "bpb": scores.get("bpb"),
            "tokens_per_byte": tokens_per_byte}  # fmt: skip


def _check_lm(art, data):
    """Exports and HF dirs are scored on --data, and only as language models."""
    if art.kind == "checkpoint":
        return
    what = "a Hugging Face dir" if art.kind == "hf" else "an exported model dir"
    if art.head["name"] != "lm":
        raise GptkitError(
            f"{art.path} is an exported {art.head['name']} model; eval scores language models "
            "(a fine-tuned run dir reports its metrics.json; 'gptkit predict' labels rows)"
        )
    if data is None:
        raise GptkitError(
            f"{art.path} is {what} with no training data of its own; pass --data DIR (a folder "
            "written by 'gptkit prepare' with the model's tokenizer, e.g. prepare.tokenizer=gpt2)"
        )


def _run_data_dir(ckpt: Path, meta: dict) -> str:
    """The data.dir the run was trained on, if it is still there."""
    data = meta["config"].get("data", {}).get("dir")
    # a prepared folder, or llm.c / nanoGPT files without a meta.json (read_meta scans those)
    if data is None or not Path(data).is_dir():
        raise GptkitError(
            f"the data this model was trained on ({data}, from {ckpt}/meta.json) is not there; "
            "pass --data DIR (a folder written by 'gptkit prepare' with the same tokenizer)"
        )
    return data


def _check_data(data, split: str, tok_spec: dict | None) -> dict:
    """The data dir's meta.json, after checking the split exists and the tokenizer matches."""
    data_meta = read_data_meta(data, tok_spec)  # tok_spec: for files that carry no tokenizer
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


def _windows(model, data, split: str, T: int, max_batches: int, batch_size: int):
    """(number of windows, (x, y) batches): the split's first windows in order, none twice."""
    device, vocab = model.transformer.wte.weight.device, model.config.vocab_size
    batches = ShardBatches(data, split, block_size=T, batch_size=batch_size,
                           sampling="sequential", device=device, vocab_size=vocab)  # fmt: skip
    windows = min(max_batches * batch_size, batches.num_windows)

    def rows():
        for done in range(0, windows, batch_size):
            x, y = batches.next_batch()
            n = min(batch_size, windows - done)
            yield x[:n], y[:n]

    return windows, rows()


def _context(block_size: int, info: dict, where: str) -> int:
    """The model's block_size, shortened when the split's shards are smaller than one window."""
    longest = max((s["tokens"] for s in info["shards"]), default=0)
    if longest < 2:
        raise GptkitError(f"{where} has under 2 tokens in every shard; prepare more data")
    return min(block_size, longest - 1)
