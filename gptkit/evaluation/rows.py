"""The rows `gptkit eval` scores, read and checked once; a bad row is named by file:line.

--generate rows: `prompt` + `reference` (a string) or `references` (a list), or `messages`
(OpenAI chat format) whose last assistant turn is the reference. --choices rows: `context`,
`choices` (two or more strings) and `label` (the index of the right choice). Files are .jsonl
(also .json / .parquet); '-' reads JSON lines from stdin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gptkit.data.rows import parse_jsonl, read_rows
from gptkit.errors import GptkitError
from gptkit.train.checkpoint import write_text_atomic

_SHAPES = {
    "--generate": "prompt + reference, or messages",
    "--choices": "context + choices + label",
}


def read(path: str, flag: str) -> list[tuple[str, dict]]:
    """(where, row) pairs of the file given to `flag`; a missing or empty file is an error."""
    shape = _SHAPES[flag]
    if path == "-":
        pairs = [(f"stdin row {i + 1}", r) for i, r in enumerate(parse_jsonl(sys.stdin, "stdin"))]
    else:
        p = Path(path)
        if not p.is_file():
            raise GptkitError(f"{flag} {p} does not exist; pass a .jsonl file of {shape} rows")
        if p.suffix.lower() not in (".jsonl", ".json", ".parquet"):
            raise GptkitError(f"{flag} {p}: expected a .jsonl file of {shape} rows")
        pairs = list(read_rows(p))
    if not pairs:
        raise GptkitError(f"{flag} {path} has no rows; add {shape} rows")
    return pairs


def generation_rows(pairs) -> list[dict]:
    """[{"prompt": str} or {"messages": [...]}, plus "references": [str, ...]], one per row."""
    return [_generation_row(where, row) for where, row in pairs]


def _generation_row(where: str, row: dict) -> dict:
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(_is_turn(m) for m in messages):
            raise GptkitError(
                f'{where}: \'messages\' must be a list of {{"role": ..., "content": ...}} '
                "turns with string values (OpenAI chat format)"
            )
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        if last < 0:
            raise GptkitError(
                f"{where}: 'messages' has no assistant turn; end the conversation with the "
                "assistant reply the model should produce (it is the reference)"
            )
        return {"messages": messages[:last], "references": [messages[last]["content"]]}
    if not isinstance(row.get("prompt"), str):
        raise GptkitError(
            f"{where} has no 'prompt' string (nor 'messages'); every --generate row needs one"
        )
    refs = row["references"] if "references" in row else row.get("reference")
    refs = [refs] if isinstance(refs, str) else refs
    if not (isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs)):
        raise GptkitError(
            f"{where} has no 'reference' (a string) or 'references' (a list of strings); "
            "every --generate row needs the text the model should produce"
        )
    return {"prompt": row["prompt"], "references": refs}


def _is_turn(m) -> bool:
    return (
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
    )


def choice_rows(pairs) -> list[tuple[str, list[str], int]]:
    """[(context, choices, label)], checked: 2+ non-empty choices and a label in range."""
    out = []
    for where, row in pairs:
        context, choices, label = row.get("context"), row.get("choices"), row.get("label")
        if not isinstance(context, str):
            raise GptkitError(f"{where} has no 'context' string; every --choices row needs one")
        if not (isinstance(choices, list) and len(choices) >= 2
                and all(isinstance(c, str) and c for c in choices)):  # fmt: skip
            raise GptkitError(f"{where}: 'choices' must be a list of two or more non-empty strings")
        if isinstance(label, bool) or not isinstance(label, int):
            raise GptkitError(f"{where}: 'label' must be the index of the right choice (an int)")
        if not 0 <= label < len(choices):
            raise GptkitError(
                f"{where}: label {label} is out of range for {len(choices)} choices "
                f"(0..{len(choices) - 1}); labels are 0-based indexes into 'choices'"
            )
        out.append((context, choices, label))
    return out


def check_output(path: str | None):
    """Refuse an output file whose folder is missing before any work, not after it."""
    if path not in (None, "-") and not Path(path).resolve().parent.is_dir():
        raise GptkitError(
            f"--predictions {path}: folder {Path(path).parent} does not exist; create it first"
        )


def write_jsonl(path: str, rows: list[dict]):
    """Rows as JSON lines to `path`, written atomically ('-': stdout)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        write_text_atomic(Path(path), text)
    except OSError as e:
        raise GptkitError(
            f"cannot write --predictions {path} ({e.strerror or e}); pass a writable file path"
        ) from None
