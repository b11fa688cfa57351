"""`gptkit predict`: a fine-tuned run labels jsonl rows (files or stdin/stdout), string labels."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptkit import artifacts
from gptkit.cli import main
from gptkit.commands.finetune import finetune
from gptkit.commands.predict import predict
from gptkit.config import Config, load_config, to_dict
from gptkit.data.tokenizer import get_tokenizer
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.model.heads import swap_head
from gptkit.train import checkpoint

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=257)
ROWS = [{"id": 1, "text": "the old apple tree"}, {"id": 2, "text": "banana"}, {"id": 3, "text": ""}]


def _save(root: Path, head: dict) -> Path:
    """A run dir holding one random model with `head` (what a finished fine-tune leaves)."""
    torch.manual_seed(0)
    model = swap_head(GPT(CFG), head)
    meta = {"config": to_dict(Config(model=CFG)), "tokenizer": get_tokenizer("byte").spec(),
            "head": head}  # fmt: skip
    checkpoint.save(root, step=1, model=model, state={}, meta=meta, keep_last=1)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short real fine-tune with string labels (accuracy does not matter here)."""
    root = tmp_path_factory.mktemp("pred")
    _save(root / "backbone", {"name": "lm"})
    rows = [{"text": f"{w} and more", "label": w} for w in ("yes", "no", "maybe") * 10]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"finetune.init_from={root}/backbone", f"train.out_dir={root}/run",
                             f"finetune.train_file={root}/train.jsonl", "finetune.val_fraction=0.2",
                             "train.device=cpu", "train.dtype=float32", "train.batch_size=8",
                             "train.max_steps=3", "train.warmup_steps=1", "train.eval_interval=1",
                             "train.ckpt_interval=0"])  # fmt: skip
    finetune(cfg)
    return root / "run"


def test_round_trip_through_files(run, tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "sub/out.jsonl"
    r = subprocess.run([sys.executable, "-m", "gptkit", "predict", str(run), "--input",
                        str(tmp_path / "in.jsonl"), "--output", str(out), "--device", "cpu"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [1, 2, 3] and got[0]["text"] == ROWS[0]["text"]
    labels = {"maybe", "no", "yes"}
    for g in got:
        assert g["label"] in labels and set(g["probs"]) == labels
        assert abs(sum(g["probs"].values()) - 1) < 1e-5
        assert g["label"] == max(g["probs"], key=g["probs"].get)


def test_stdin_to_stdout_matches_the_function(run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(json.dumps(r) for r in ROWS) + "\n"))
    assert main(["predict", str(run), "--device", "cpu"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    model, meta = artifacts.model_from_checkpoint(artifacts.resolve(run, best=True).dir)
    want = predict(model.eval(), get_tokenizer("byte"), ROWS, spec=meta["head"],
                   ft=meta["config"]["finetune"])  # fmt: skip
    assert got == want


def test_regression_and_token_outputs(tmp_path):
    tok = get_tokenizer("byte")
    reg = _save(tmp_path / "reg", {"name": "regression", "num_targets": 2, "pooling": "mean"})
    model, meta = artifacts.model_from_checkpoint(artifacts.find_checkpoint(reg))
    (row,) = predict(model.eval(), tok, ROWS[:1], spec=meta["head"], ft=meta["config"]["finetune"])
    assert row["id"] == 1 and len(row["value"]) == 2 and "probs" not in row
    spec = {"name": "token_classification", "num_labels": 2, "labels": ["O", "FRUIT"]}
    ner = _save(tmp_path / "ner", spec)
    model, meta = artifacts.model_from_checkpoint(artifacts.find_checkpoint(ner))
    rows = [{"tokens": ["an", "apple", "here"]}]
    (row,) = predict(model.eval(), tok, rows, spec=meta["head"], ft=meta["config"]["finetune"])
    assert len(row["label"]) == 3 and set(row["label"]) <= {"O", "FRUIT"}
    assert all(set(p) == {"O", "FRUIT"} for p in row["probs"])


def test_lm_run_and_missing_field_are_user_errors(tmp_path, capsys):
    lm = _save(tmp_path / "lm", {"name": "lm"})
    assert main(["predict", str(lm), "--device", "cpu"]) == 2
    assert "use 'gptkit sample'" in capsys.readouterr().err
    cls = _save(tmp_path / "cls", {"name": "classification", "num_labels": 2, "labels": [0, 1]})
    (tmp_path / "in.jsonl").write_text('{"txt": "oops"}\n')
    assert main(["predict", str(cls), "--input", str(tmp_path / "in.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptkit: error: row 1 of the input has no field 'text'")


def test_unwritable_output_is_one_line_exit_2(tmp_path, capsys):
    cls = _save(tmp_path / "cls", {"name": "classification", "num_labels": 2, "labels": [0, 1]})
    (tmp_path / "in.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (tmp_path / "a_file").write_text("")  # a file where --output needs a folder
    out = tmp_path / "a_file" / "out.jsonl"
    argv = ["predict", str(cls), "--input", str(tmp_path / "in.jsonl"), "--output", str(out),
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gptkit: error: cannot write --output {out} ("), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_dash_means_stdin_and_stdout(tmp_path, monkeypatch, capsys):
    cls = _save(tmp_path / "cls", {"name": "classification", "num_labels": 2, "labels": [0, 1]})
    monkeypatch.chdir(tmp_path)  # a file named '-' would land here
    outputs = []
    for extra in ([], ["--input", "-", "--output", "-"]):
        monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in ROWS)))
        assert main(["predict", str(cls), "--device", "cpu", *extra]) == 0
        captured = capsys.readouterr()
        assert captured.err == "", captured.err
        outputs.append([json.loads(line) for line in captured.out.splitlines()])
    assert outputs[0] == outputs[1] and [r["id"] for r in outputs[1]] == [1, 2, 3]
    assert not (tmp_path / "-").exists()


def test_missing_input_names_the_dash_alternative(tmp_path, capsys):
    cls = _save(tmp_path / "cls", {"name": "classification", "num_labels": 2, "labels": [0, 1]})
    assert main(["predict", str(cls), "--input", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptkit: error: --input ") and "'-' for stdin" in err


# The same '-' convention on the other commands' file arguments (see gptkit/cli.py).
def test_sample_prompt_file_dash_reads_stdin(monkeypatch):
    from gptkit.cli import build_parser
    from gptkit.commands.sample import config_from_args

    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    args = build_parser().parse_args(["sample", "runs/x", "--prompt-file", "-"])
    assert config_from_args(args).prompt == "from stdin"


def test_plot_out_dash_writes_png_to_stdout(tmp_path, capsysbinary):
    pytest.importorskip("matplotlib")
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 5.0 - s, "lr": 1e-3}) + "\n" for s in range(1, 4)
    ))  # fmt: skip
    assert main(["plot", str(run), "--out", "-"]) == 0
    captured = capsysbinary.readouterr()
    assert captured.out.startswith(b"\x89PNG\r\n\x1a\n"), captured.out[:20]
    assert b"gptkit plot: wrote a PNG to stdout" in captured.err


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["export", "runs/x", "--out", "-"], "--out"),
        (["eval", "runs/x", "--data", "-"], "--data"),
        (["prepare", "-c", "-"], "-c/--config"),
    ],
)
def test_dash_for_a_folder_or_config_is_a_usage_error(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"gptkit: error: argument {flag}: '-'"), err
    assert len(err.strip().splitlines()) == 1
