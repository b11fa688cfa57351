"""Tables of `gptkit eval` results: LM loss, a head's stored metrics, generation metrics,
multiple choice and lm-eval tasks (lm-eval's own table). `--json` prints the result dicts.
A fine-tuned head is not re-scored: its run's metrics.json is read back (`head_metrics`).
"""

from __future__ import annotations

import json
from pathlib import Path

from gptkit.errors import GptkitError

_SCALE = {"bleu": "0-100", "chrf": "0-100"}  # sacrebleu's scale; every other metric is 0-1


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


def lm_table(result: dict) -> str:
    """A short human-readable table of a loss/perplexity (or stored head metrics) result."""
    if "head" in result:
        rows = [f"  {k:<20}{v:>12.4f}" for k, v in _final_then_best(result["metrics"])]
        title = f"{result['path']} ({result['head']} head, from metrics.json)"
        return "\n".join([title, *(rows or ["  (no metrics stored)"])])
    bpb = "n/a" if result["bpb"] is None else f"{result['bpb']:.4f}"
    at = f" (step {result['step']})" if result.get("step") is not None else ""
    return "\n".join(
        [
            f"{result['path']}{at} on {result['data']} [{result['split']}]: "
            f"{result['windows']} windows x {result['context']} tokens = "
            f"{result['tokens']:,} tokens",
            f"  {'loss (nats)':<16}{result['loss']:>12.4f}",
            f"  {'perplexity':<16}{result['ppl']:>12.4f}",
            f"  {'bits/byte':<16}{bpb:>12}",
        ]
    )


def _final_then_best(m: dict):
    """("final val_acc", 0.97), ... from a finetune summary {"final": {...}, "best": {...}}."""
    for part in ("final", "best"):
        for k, v in (m.get(part) or {}).items():
            if k != "step" and isinstance(v, (int, float)):
                yield f"{part} {k}", v


def scores_table(result: dict, path, file: str) -> str:
    """`PATH on FILE: N rows`, then one line per score of a --generate or --choices result, then
    any note (METEOR without synonyms) so a changed method is never silent."""
    lines = [f"{path} on {'stdin' if file == '-' else file}: {result['n']} rows"]
    for key, value in result.items():
        if isinstance(value, float):
            name = f"{key} ({_SCALE[key]})" if key in _SCALE else key
            lines.append(f"  {name:<18}{value:>10.4f}")
    if result.get("meteor_note"):
        lines.append(f"note: {result['meteor_note']}")
    return "\n".join(lines)


def tasks_table(result: dict) -> str:
    """lm-eval's own markdown table(s) of a --tasks result."""
    from lm_eval.utils import make_table

    tables = [f"{result['path']} (lm-evaluation-harness)", make_table(result)]
    if result.get("groups"):
        tables.append(make_table(result, "groups"))
    return "\n".join(tables)
