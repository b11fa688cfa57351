"""`gptkit prepare`: sources, train/val split, shards + meta.json, determinism, refusals, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gptkit.config import PrepareConfig
from gptkit.data.prepare import build_shards, read_meta, val_mask
from gptkit.data.shards import read_shard
from gptkit.data.sources import describe_source, iter_documents
from gptkit.data.tokenizer import get_tokenizer
from gptkit.errors import GptkitError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus(tmp_path, n=40):
    """n unique .txt documents (unicode, code) in nested folders; returns (folder, texts)."""
    src = tmp_path / "src"
    texts = []
    for i in range(n):
        text = f"doc {i}: héllo wörld 🙂 " * (i % 5 + 1) + f"\ndef f{i}():\n    return {i}\n"
        path = src / f"part{i % 3}" / f"{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        texts.append(text)
    return src, texts


def _cfg(tmp_path, source, **kw):
    kw.setdefault("tokenizer", "byte")
    return PrepareConfig(source=str(source), out_dir=str(tmp_path / "out"), workers=1, **kw)


def _split_docs(out, split, tok) -> list[str]:
    """Documents of a split, decoded back from its shards."""
    meta = read_meta(out)
    ids = np.concatenate([read_shard(out / s["file"]) for s in meta["splits"][split]["shards"]])
    return tok.decode(ids.tolist()).split("<|endoftext|>")[:-1] if ids.size else []


def test_meta_and_split_cover_every_document_once(tmp_path):
    src, texts = _corpus(tmp_path)
    cfg = _cfg(tmp_path, src, val_fraction=0.2, shard_tokens=500)
    meta = build_shards(cfg, progress=False)
    out, tok = tmp_path / "out", get_tokenizer("byte")
    train, val = _split_docs(out, "train", tok), _split_docs(out, "val", tok)
    assert not set(train) & set(val) and sorted(train + val) == sorted(texts)
    assert 0 < len(val) < len(texts) // 2
    assert meta == json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == tok.spec() and meta["dtype"] == "uint16"
    assert meta["documents"] == len(texts) and meta["replaced_chars"] == 0
    assert meta["source"] == {"kind": "files", "source": str(src), "files": 40,
                              "bytes": sum(len(t.encode()) for t in texts)}  # fmt: skip
    for split, docs in (("train", train), ("val", val)):
        info = meta["splits"][split]
        assert info["documents"] == len(docs)
        assert info["text_bytes"] == sum(len(d.encode()) for d in docs)
        assert (
            info["tokens"]
            == sum(s["tokens"] for s in info["shards"])
            == info["text_bytes"] + len(docs)
        )
        assert all(s["tokens"] <= 500 for s in info["shards"])
    assert meta["prepare"]["seed"] == 1337 and "workers" not in meta["prepare"]
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # no temp folder left


def test_workers_do_not_change_a_single_byte(tmp_path, monkeypatch):
    from gptkit.data import prepare

    monkeypatch.setattr(prepare, "CHUNK_DOCS", 7)  # many chunks racing through the pool
    src, _ = _corpus(tmp_path, n=300)
    outputs = []
    for workers in (1, 2):
        cfg = _cfg(tmp_path, src, tokenizer="gpt2", shard_tokens=3000)
        cfg.out_dir, cfg.workers = str(tmp_path / f"w{workers}"), workers
        build_shards(cfg, progress=False)
        folder = tmp_path / f"w{workers}"
        outputs.append({p.name: p.read_bytes() for p in sorted(folder.iterdir())})
    assert len(outputs[0]) > 3 and outputs[0] == outputs[1]


def test_val_mask_is_seeded_and_stable():
    a = val_mask(0, 10_000, seed=1, val_fraction=0.1)
    assert not a[0] and 800 < a.sum() < 1200
    assert (val_mask(5000, 5000, seed=1, val_fraction=0.1) == a[5000:]).all()
    assert (val_mask(0, 10_000, seed=2, val_fraction=0.1) != a).any()


def test_val_gets_a_document_and_train_the_first(tmp_path):
    for n in (1, 2, 3):
        src, texts = _corpus(tmp_path / str(n), n=n)
        cfg = _cfg(tmp_path / str(n), src, val_fraction=1e-9)
        meta = build_shards(cfg, progress=False)
        assert meta["splits"]["val"]["documents"] == (1 if n >= 2 else 0)
        assert _split_docs(tmp_path / str(n) / "out", "train", get_tokenizer("byte"))[0] == texts[0]
    meta = build_shards(_cfg(tmp_path, src, val_fraction=0.0), progress=False)
    assert meta["splits"]["val"] == {"documents": 0, "tokens": 0, "text_bytes": 0, "shards": []}


def test_structured_sources_and_replaced_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"text": "three"}, {"text": ""}]))
    (tmp_path / "c.csv").write_text('id,text\n1,four\n2,"five, with comma"\n')
    pq.write_table(pa.table({"text": ["six", None]}), tmp_path / "d.parquet")
    (tmp_path / "e.txt").write_bytes(b"bad \xff\xfe bytes \xef\xbf\xbd kept")
    counts = {}
    docs = list(iter_documents(_cfg(tmp_path, tmp_path), counts))
    assert docs[:6] == ["one", "two", "three", "four", "five, with comma", "six"]
    assert docs[6] == "bad \ufffd\ufffd bytes \ufffd kept" and counts["replaced_chars"] == 2
    meta = build_shards(_cfg(tmp_path, f"{tmp_path}/e.txt"), progress=False)
    assert meta["replaced_chars"] == 2
    assert list(iter_documents(_cfg(tmp_path, tmp_path, max_documents=2))) == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "x.jsonl",
            '{"body": "a", "id": 1}\n',
            r"x\.jsonl:1 has no field 'text' \(fields: body, id\)",
        ),
        ("x.csv", "body,id\na,1\n", r"x\.csv has no column 'text' \(columns: body, id\)"),
        ("x.jsonl", '{"text": "a"}\n{oops\n', r"x\.jsonl:2 is not valid JSON"),
        ("x.jsonl", '{"text": 5}\n', r"'text' in .*x\.jsonl:1 is a int, not text"),
    ],
)
def test_bad_rows_are_clear_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(GptkitError, match=message):
        build_shards(_cfg(tmp_path, tmp_path / name), progress=False)
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == [name]  # the temp folder is gone too


def test_missing_empty_and_offline_sources(tmp_path, monkeypatch):
    with pytest.raises(GptkitError, match="nope does not exist"):
        build_shards(_cfg(tmp_path, tmp_path / "nope"), progress=False)
    with pytest.raises(GptkitError, match="no files match"):
        build_shards(_cfg(tmp_path, f"{tmp_path}/*.txt"), progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(GptkitError, match="no documents in"):
        build_shards(_cfg(tmp_path, tmp_path / "empty"), progress=False)
    with pytest.raises(GptkitError, match="unknown built-in corpus 'big'"):
        describe_source(_cfg(tmp_path, "builtin:big"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail at once instead of retrying for ~23 s
    with pytest.raises(GptkitError, match="could not reach the Hugging Face Hub for some/set"):
        build_shards(_cfg(tmp_path, "hf:some/set"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["empty"]


def test_existing_output_needs_force_and_out_dir_must_be_a_folder(tmp_path):
    src, _ = _corpus(tmp_path, n=5)
    cfg = _cfg(tmp_path, src)
    first = build_shards(cfg, progress=False)
    with pytest.raises(GptkitError, match="already holds prepared data.*--force"):
        build_shards(cfg, progress=False)
    cfg.tokenizer = "char"
    second = build_shards(cfg, force=True, progress=False)
    assert second["tokenizer"]["kind"] == "char" != first["tokenizer"]["kind"]
    assert read_meta(tmp_path / "out") == second
    assert second["tokenizer"]["chars"] == "".join(sorted(set("".join(_corpus(tmp_path, 5)[1]))))
    (tmp_path / "file").write_text("x")
    cfg.out_dir = str(tmp_path / "file")
    with pytest.raises(GptkitError, match="is a file"):
        build_shards(cfg, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    cfg.out_dir = str(tmp_path / "mine")
    with pytest.raises(GptkitError, match="not prepared data"):
        build_shards(cfg, force=True, progress=False)


def test_interrupted_run_leaves_the_old_output(tmp_path, monkeypatch):
    from gptkit.data import prepare

    src, _ = _corpus(tmp_path, n=10)
    cfg = _cfg(tmp_path, src)
    before = build_shards(cfg, progress=False)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare.Splitter, "close", boom)
    with pytest.raises(KeyboardInterrupt):
        build_shards(cfg, force=True, progress=False)
    assert read_meta(tmp_path / "out") == before
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]


def test_builtin_tiny_is_deterministic_and_offline(tmp_path):
    desc = describe_source(_cfg(tmp_path, "builtin:tiny"))
    assert desc["kind"] == "builtin" and 200_000 < desc["bytes"] < 500_000
    docs = list(iter_documents(_cfg(tmp_path, "builtin:tiny")))
    assert docs == list(iter_documents(_cfg(tmp_path, "builtin:tiny"))) and len(docs) >= 5


def _gptkit(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "gptkit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_cli_prepare_and_bad_source(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("prepare:\n  source: builtin:tiny\n  out_dir: data/tiny\n  workers: 2\n")
    done = _gptkit("prepare", "-c", str(cfg), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "gptkit prepare: data/tiny | gpt2" in done.stdout
    meta = read_meta(tmp_path / "data" / "tiny")
    assert meta["splits"]["train"]["tokens"] > 50_000 and meta["splits"]["val"]["documents"] >= 1
    bad = _gptkit(
        "prepare", "-c", str(cfg), "prepare.source=missing/*.txt", "--force", cwd=tmp_path
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "gptkit: error: no files match missing/*.txt; check prepare.source"
    ]
    assert read_meta(tmp_path / "data" / "tiny") == meta  # the good output is untouched
