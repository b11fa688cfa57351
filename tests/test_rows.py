"""gptkit/data/rows.py: one reader of .jsonl/.json/.csv/.parquet rows for prepare and finetune.

Same rows from every format, the two bad-bytes policies (replace + count vs refuse), and errors
that name the file and line.
"""

import json

import pytest

from gptkit.data.rows import column_names, parse_jsonl, read_rows
from gptkit.errors import GptkitError

# strings only, so a CSV holds them exactly; a comma, quote and newline test the CSV quoting
ROWS = [
    {"text": 'héllo, "wörld"', "label": "a"},
    {"text": "two\nlines", "label": "b"},
    {"text": "", "label": "c"},
]


def _write_all(tmp_path) -> dict:
    """ROWS in every format (and JSON lines under a .json name); name -> path."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {n: tmp_path / n for n in ("r.jsonl", "r.json", "lines.json", "r.csv", "r.parquet")}
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n\n" for r in ROWS)  # blanks skipped
    paths["r.jsonl"].write_text(lines, encoding="utf-8")
    paths["lines.json"].write_text(lines, encoding="utf-8")
    paths["r.json"].write_text("\n  " + json.dumps(ROWS, indent=2), encoding="utf-8")
    with open(paths["r.csv"], "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), paths["r.parquet"], row_group_size=2)
    return paths


def test_every_format_gives_the_same_rows(tmp_path):
    paths = _write_all(tmp_path)
    for name, path in paths.items():
        assert [row for _, row in read_rows(path)] == ROWS, name
    wheres = {name: [w for w, _ in read_rows(path)] for name, path in paths.items()}
    assert wheres["r.jsonl"] == [f"{paths['r.jsonl']}:{n}" for n in (1, 3, 5)]
    assert wheres["r.json"] == [f"{paths['r.json']}[{i}]" for i in range(3)]
    assert wheres["r.parquet"][-1] == f"{paths['r.parquet']} row 3"  # across row groups
    assert column_names(paths["r.csv"]) == column_names(paths["r.parquet"]) == ["text", "label"]
    assert column_names(paths["r.jsonl"]) is None
    only = [row for _, row in read_rows(paths["r.parquet"], columns=["text"])]
    assert only == [{"text": r["text"]} for r in ROWS]


def test_csv_lines_end_at_a_lone_carriage_return_too(tmp_path):
    path = tmp_path / "mac.csv"
    path.write_bytes(b'text,label\r"x\ry",a\rz,b\r\nlast,c')
    assert [row for _, row in read_rows(path)] == [
        {"text": "x\ry", "label": "a"},  # inside quotes it is data
        {"text": "z", "label": "b"},
        {"text": "last", "label": "c"},
    ]


def test_bad_bytes_are_replaced_and_counted_or_refused(tmp_path):
    jsonl, csv_file = tmp_path / "x.jsonl", tmp_path / "x.csv"
    # line 2 holds a latin-1 byte; the U+FFFD already in line 1 is text, not a replacement
    jsonl.write_bytes('{"text": "ok \ufffd"}\n'.encode() + b'{"text": "caf\xe9"}\n')
    csv_file.write_bytes(b"text\ncaf\xe9 \xff\n")
    counts = {"replaced_chars": 0}
    got = [row["text"] for _, row in read_rows(jsonl, bad_bytes="replace", counts=counts)]
    assert got == ["ok \ufffd", "caf\ufffd"] and counts["replaced_chars"] == 1
    got = [row["text"] for _, row in read_rows(csv_file, bad_bytes="replace", counts=counts)]
    assert got == ["caf\ufffd \ufffd"] and counts["replaced_chars"] == 3
    offset = len('{"text": "ok \ufffd"}\n'.encode()) + len(b'{"text": "caf')
    with pytest.raises(GptkitError) as e:
        list(read_rows(jsonl, bad_bytes="refuse"))
    assert str(e.value) == (
        f"{jsonl} is not UTF-8 text (invalid continuation byte at byte {offset}); save it as UTF-8"
    )
    with pytest.raises(GptkitError, match=r"x\.csv is not UTF-8 text \(invalid"):
        list(read_rows(csv_file))  # refusing is the default


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.jsonl", '{"a": 1}\n\n{oops\n', r"x\.jsonl:3 is not valid JSON \(Expecting property"),
        ("x.jsonl", '{"a": 1}\n[1, 2]\n', r"x\.jsonl:2 is not a JSON object"),
        ("x.json", '[{"a": 1},\n {"a": 2]\n', r"x\.json is not valid JSON \(.* at line 2\)"),
        ("x.json", '[{"a": 1}, "b"]', r"item 2 of the array in .*x\.json is not a JSON object"),
        ("x.json", '{"a": 1}\n{"a": 2\n', r"x\.json:2 is not valid JSON"),  # JSON lines
        ("x.parquet", "PAR1 nope", r"x\.parquet is not a readable parquet file"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(GptkitError, match=message):
        list(read_rows(tmp_path / name))


def test_rows_stream_and_stdin_lines_parse_alike(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{oops\n')
    rows = read_rows(path)
    assert next(rows) == (f"{path}:1", {"a": 1})  # read before the bad line is reached
    with pytest.raises(GptkitError, match=r"x\.jsonl:3 is not valid JSON"):
        list(rows)
    assert parse_jsonl(['{"a": 1}\n', "\n", '{"b": 2}\n'], "stdin") == [{"a": 1}, {"b": 2}]
    with pytest.raises(GptkitError, match=r"^stdin:2 is not valid JSON"):
        parse_jsonl(['{"a": 1}\n', "nope\n"], "stdin")
