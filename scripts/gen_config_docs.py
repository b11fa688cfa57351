"""Render the config reference (key, type, default, doc) as markdown, one table per section.

    python scripts/gen_config_docs.py                    # print it
    python scripts/gen_config_docs.py --write README.md  # replace the marked block in README.md
Rows come from gptkit.config.field_docs(); tests/test_config_docs.py fails when README.md is stale.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
FIX = "run 'python scripts/gen_config_docs.py --write README.md'"


def render() -> str:
    """The whole config reference as markdown: a heading and a table per top-level section."""
    from gptkit.config import field_docs

    sections: dict[str, list[str]] = {}
    for key, type_name, default, doc in field_docs():
        cells = [f"`{key}`", f"`{_cell(_type(type_name))}`", f"`{_cell(_default(default))}`"]
        row = "| " + " | ".join([*cells, _cell(doc)]) + " |"
        sections.setdefault(key.split(".")[0], []).append(row)
    parts = []
    for section, rows in sections.items():
        head = f"#### `{section}`\n\n| key | type | default | doc |\n|---|---|---|---|"
        parts.append("\n".join([head, *rows]))
    return "\n\n".join(parts) + "\n"


def _type(name: str) -> str:
    """`Literal['a', 'b']` -> `a | b` (the values a user may write); other types unchanged."""
    if name.startswith("Literal[") and name.endswith("]"):
        values = ast.literal_eval(f"({name[len('Literal[') : -1]},)")
        return " | ".join(map(str, values))
    return name


def _default(value) -> str:
    """A default as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_default(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)


def _cell(text: str) -> str:
    """Escape what would break a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def extract(text: str) -> str | None:
    """The text between the markers (stripped of blank edges), or None if they are missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(START) : end].strip("\n")


def replace(text: str, body: str) -> str:
    """`text` with the block between the markers set to `body`."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no '{START}' ... '{END}' markers in the file")
    return text[: start + len(START)] + "\n" + body.strip("\n") + "\n" + text[end:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE.md", help="replace the marked block in FILE.md")
    args = parser.parse_args(argv)
    body = render()
    if args.write is None:
        sys.stdout.write(body)
        return 0
    path = Path(args.write)
    try:
        text = replace(path.read_text(encoding="utf-8"), body)
    except (OSError, ValueError) as e:
        print(f"gen_config_docs: {path}: {e}; add the two marker lines first", file=sys.stderr)
        return 2
    path.write_text(text, encoding="utf-8")
    print(f"gen_config_docs: updated the config reference in {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
    sys.exit(main())
