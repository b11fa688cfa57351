"""`gptkit eval`: deterministic LM loss/perplexity/bits-per-byte, HF dirs, head runs, errors."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from gptkit import artifacts
from gptkit.cli import main
from gptkit.commands.evaluate import evaluate
from gptkit.commands.pretrain import pretrain
from gptkit.config import Config, load_config, to_dict
from gptkit.data.batches import ShardBatches
from gptkit.data.tokenizer import get_tokenizer
from gptkit.errors import GptkitError
from gptkit.model import hf
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.model.heads import build_head
from gptkit.train import checkpoint

# 6 steps and a final eval over 3 batches of 4 (the 12 val windows the tests check)
RUN = [*TINY, "train.warmup_steps=2", "train.eval_steps=3", "train.lr=3e-3",
       "train.max_steps=6", "train.eval_interval=6"]  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_data):
    """Byte-tokenized builtin:tiny data (a link to the shared, read-only one) and a tiny run
    trained on it for 6 steps."""
    root = tmp_path_factory.mktemp("eval")
    (root / "data").symlink_to(tiny_data, target_is_directory=True)
    pretrain(load_config(None, [*RUN, f"data.dir={root}/data", f"train.out_dir={root}/run"]))
    return root


def test_matches_the_training_eval_and_a_hand_computed_loss(work):
    r = evaluate(work / "run", max_batches=3, batch_size=4, device="cpu")
    logged = [json.loads(line) for line in open(work / "run/metrics.jsonl")]
    assert r["loss"] == pytest.approx(logged[-1]["val_loss"], abs=1e-5)  # same 12 val windows
    assert r["windows"] == 12 and r["context"] == 32 and r["tokens"] == 12 * 32
    model = artifacts.load_model(work / "run")
    x, y = ShardBatches(work / "data", "val", block_size=32, batch_size=12,
                        sampling="sequential").next_batch()  # fmt: skip
    with torch.no_grad():
        by_hand = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert r["loss"] == pytest.approx(by_hand, abs=1e-5)
    split = json.loads((work / "data/meta.json").read_text())["splits"]["val"]
    assert r["ppl"] == pytest.approx(math.exp(r["loss"]))
    assert r["bpb"] == pytest.approx(
        r["loss"] / math.log(2) * split["tokens"] / split["text_bytes"]
    )
    assert 1.0 < split["tokens"] / split["text_bytes"] < 1.01  # bytes + one eot per document


def test_deterministic_and_independent_of_batch_split(work):
    a = evaluate(work / "run", max_batches=3, batch_size=4, device="cpu")
    b = evaluate(work / "run", max_batches=4, batch_size=3, device="cpu")
    c = evaluate(artifacts.find_checkpoint(work / "run"), max_batches=3, batch_size=4, device="cpu")
    assert a["loss"] == c["loss"] and a["windows"] == b["windows"] == 12
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    big = evaluate(work / "run", max_batches=10_000, batch_size=7, device="cpu", split="val")
    val_tokens = json.loads((work / "data/meta.json").read_text())["splits"]["val"]["tokens"]
    assert big["windows"] == (val_tokens - 1) // 32  # every window once, none twice


def test_hf_dir_needs_data_and_scores_like_the_run(work, tmp_path):
    model = artifacts.load_model(work / "run")
    hf.save_hf(model, tmp_path / "hf", eot_id=256)
    with pytest.raises(GptkitError, match="--data"):
        evaluate(tmp_path / "hf")
    # an HF dir means the gpt2 tokenizer; byte-tokenized data is a vocab mismatch
    with pytest.raises(GptkitError, match="vocab mismatch.*byte"):
        evaluate(tmp_path / "hf", data=work / "data")


def test_safetensors_export_evaluates_re_exports_and_fine_tunes(work, tmp_path, capsys):
    from gptkit.commands.finetune import finetune

    out = tmp_path / "exp"
    assert main(["export", str(work / "run"), "--format", "safetensors", "--out", str(out)]) == 0
    assert not hf.is_hf_dir(out)  # config.json + model.safetensors, but in gptkit's own names
    ours = evaluate(work / "run", max_batches=2, batch_size=4, device="cpu")
    theirs = evaluate(out, data=work / "data", max_batches=2, batch_size=4, device="cpu")
    assert theirs["loss"] == ours["loss"] and theirs["step"] == ours["step"] == 6
    capsys.readouterr()
    assert main(["eval", str(out)]) == 2  # no run of its own to take the data from
    err = capsys.readouterr().err
    assert err.startswith("gptkit: error: ") and "pass --data" in err and len(err.splitlines()) == 1
    assert main(["export", str(out), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf/gptkit.json").read_text())["step"] == 6
    rows = [{"text": f"{w} and more", "label": w} for w in ("yes", "no") * 8]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    finetune(load_config(None, [f"finetune.init_from={out}", f"train.out_dir={tmp_path}/ft",
                                f"finetune.train_file={tmp_path}/rows.jsonl",
                                "finetune.freeze=backbone", "train.device=cpu",
                                "train.dtype=float32", "train.batch_size=4", "train.max_steps=1",
                                "train.warmup_steps=0", "train.eval_interval=0"]))  # fmt: skip
    tuned = artifacts.read_weights(artifacts.find_checkpoint(tmp_path / "ft") / "model.safetensors")
    run = artifacts.read_weights(artifacts.find_checkpoint(work / "run") / "model.safetensors")
    backbone = [k for k in run if k.startswith("transformer.")]
    assert backbone and all(torch.equal(tuned[k], run[k]) for k in backbone)  # frozen, bit-exact


def test_data_with_another_tokenizer_is_refused(work, tmp_path):
    other = tmp_path / "data"
    shutil.copytree(work / "data", other)
    meta = json.loads((other / "meta.json").read_text())
    meta["tokenizer"] = {"kind": "char", "name": "char", "vocab_size": 60, "eot_id": 59,
                         "chars": "x" * 59}  # fmt: skip
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(GptkitError, match="vocab mismatch: .* char .* byte"):
        evaluate(work / "run", data=other)
    with pytest.raises(GptkitError, match="not there; pass --data"):
        evaluate(_moved_data_run(work, tmp_path))


def _moved_data_run(work, tmp_path):
    run = tmp_path / "moved"
    shutil.copytree(work / "run", run)
    ckpt = artifacts.find_checkpoint(run)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["config"]["data"]["dir"] = str(tmp_path / "gone")
    (ckpt / "meta.json").write_text(json.dumps(meta))
    return run


def test_classifier_reports_its_stored_metrics(tmp_path, capsys):
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=257)
    head = {"name": "classification", "num_labels": 2, "labels": ["no", "yes"], "pooling": "last"}
    meta = {"config": to_dict(Config(model=cfg)), "tokenizer": get_tokenizer("byte").spec(),
            "head": head}  # fmt: skip
    model = GPT(cfg, head=build_head(head, cfg))
    checkpoint.save(tmp_path / "cls", step=3, model=model, state={}, meta=meta, keep_last=1)
    with pytest.raises(GptkitError, match="metrics.json does not exist"):
        evaluate(tmp_path / "cls")
    summary = {"final": {"step": 3, "val_acc": 0.75}, "best": None, "best_key": "val_acc"}
    (tmp_path / "cls/metrics.json").write_text(json.dumps(summary))
    assert evaluate(tmp_path / "cls")["metrics"] == summary
    assert main(["eval", str(tmp_path / "cls")]) == 0
    assert "final val_acc" in capsys.readouterr().out


def test_cli_table_json_and_errors(work, capsys):
    assert main(["eval", str(work / "run"), "--max-batches", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bits/byte" in out and "perplexity" in out
    assert (
        main(["eval", str(work / "run"), "--max-batches", "2", "--json", "--split", "train"]) == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["split"] == "train" and r["windows"] == 16 and r["bpb"] > 0
    assert main(["eval", str(work / "nope")]) == 2
    assert main(["eval", str(work / "run"), "--max-batches", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("gptkit: error:") == 2 and "Traceback" not in err


def test_a_split_shorter_than_the_context_is_scored_with_shorter_windows():
    from gptkit.commands.evaluate import _context

    assert _context(32, {"shards": [{"tokens": 10}, {"tokens": 7}]}, "val") == 9
    assert _context(32, {"shards": [{"tokens": 1000}]}, "val") == 32
    with pytest.raises(GptkitError, match="under 2 tokens"):
        _context(32, {"shards": [{"tokens": 1}]}, "val")
